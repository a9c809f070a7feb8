"""``--max-tree auto``: the first levels of the max tree packed where their saving pays for
their extra rounds (passes/pricing.py), priced here from one comparison's cost and the level
widths, not from the rule's code."""
from types import SimpleNamespace

import pytest

from fusec.errors import CompileError
from fusec.passes.lower import _Lowering
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.compare import MaxTreeNarrow


def _choose(shape, view_bits=20, **opts) -> MaxTreeNarrow:
    lowering = SimpleNamespace(o=CompileOptions(**opts), n=50)
    return _Lowering.max_tree(lowering, shape, len(shape) - 1, view_bits, 0)


def _best_packed_levels(shape, view_bits, worth=32 << 20) -> int:
    """The j whose first j packed levels save the most over their j extra rounds, priced from
    one comparison's cost() of each kind and the level widths counted here: key bytes + 16
    bytes per AES, over every row."""
    from fusec.runtime.gates.compare import ReLU2
    from fusec.runtime.gates.sign_relu import SignReLU

    sh, pk = SignReLU(1, view_bits).cost(), ReLU2(1, view_bits).cost()
    per_cmp = (sh.key_bits - pk.key_bits) / 8 + 16 * (sh.aes - pk.aes)
    rows = 1
    for d in shape[:-1]:
        rows *= d
    widths, w = [], shape[-1]
    while w > 1:                    # comparisons per row at each level: the pairs, the odd one carried
        widths.append(w // 2)
        w -= w // 2
    best, net, saved = 0, 0.0, 0.0
    for j, c in enumerate(widths, start=1):
        saved += per_cmp * c * rows
        if saved >= worth * j and saved - worth * j > net:
            best, net = j, saved - worth * j
    return best


@pytest.mark.parametrize("shape", [(12, 16, 16), (12, 128, 128), (24, 128, 128), (12, 512, 512), (96, 128, 128),
                                   (5, 100)])
def test_auto_packs_the_levels_whose_saving_beats_32_mib_a_round_by_the_most(shape):
    assert _choose(shape).packed_levels == _best_packed_levels(shape, 20)


def test_bert_base_batch_1_packs_its_widest_level_larger_ones_more():
    """BERT-base's attention rows (12 heads x seq) on the grid's 18-bit view: at seq 128 and
    batch 1 the first level (64 of the 127 comparisons a row) pays for its round, the next does
    not; batch 8 packs four levels of seven, seq 512 more. The widest levels go first."""
    assert _choose((12, 128, 128), view_bits=18).lookup == "packed 1/7"
    assert _choose((8 * 12, 128, 128), view_bits=18).lookup == "packed 4/7"
    assert _choose((12, 512, 512), view_bits=18).packed_levels == _best_packed_levels((12, 512, 512), 18) >= 4
    tree = _choose((12, 128, 128), view_bits=18)
    assert [type(g).__name__ for g in tree.levels] == ["ReLU2"] + ["SignReLU"] * 6


def test_the_worth_of_a_round_moves_the_choice():
    """--round-worth: 0 packs even a tiny tree; a high-latency link's large value keeps BERT-base's
    batch-8 trees at one round a level."""
    assert _choose((12, 16, 16), round_worth_mib=0).lookup == "packed"
    assert _choose((8 * 12, 128, 128), view_bits=18, round_worth_mib=4096).lookup == "shifted"
    with pytest.raises(CompileError, match="round worth"):
        CompileOptions(round_worth_mib=-1)


def test_an_explicit_choice_wins_and_a_bad_one_is_refused():
    assert _choose((12, 16, 16), max_tree="packed").lookup == "packed"
    assert _choose((96, 512, 512), max_tree="shifted").lookup == "shifted"
    with pytest.raises(CompileError, match="unknown max tree"):
        CompileOptions(max_tree="pieces")


def test_the_worth_of_a_round_trades_rounds_for_key_in_a_whole_build(tmp_path):
    """gpt2-tiny compiled with a round worth nothing, the default, and a round worth a lot: the
    rounds fall and the key grows in that order (every choice the rule makes goes one way)."""
    from pathlib import Path

    from fusec.build import compile_model
    from fusec.report import totals

    model = Path(__file__).parent / "data" / "gpt2_tiny.onnx"
    t = [totals(compile_model(model, tmp_path / str(w), CompileOptions(bits=37, round_worth_mib=w), batch=1, seq=16))
         for w in (0.0, 32.0, 1e5)]
    assert t[0]["rounds"] > t[1]["rounds"] >= t[2]["rounds"]
    assert t[0]["key_bytes"] <= t[1]["key_bytes"] < t[2]["key_bytes"]
