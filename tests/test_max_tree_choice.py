"""``--max-tree auto``: the packed max tree where its saving pays for its extra rounds
(passes/pricing.py), priced here from the gates' own costs, not from the rule's code."""
from types import SimpleNamespace

import pytest

from fusec.errors import CompileError
from fusec.passes.lower import _Lowering
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.compare import MaxTreeNarrow


def _choose(shape, view_bits=20, **opts):
    lowering = SimpleNamespace(o=CompileOptions(**opts), n=50)
    return _Lowering.max_tree(lowering, shape, len(shape) - 1, view_bits, 0).lookup


def _tree_saving(shape, view_bits):
    """Price saved by the packed tree over the whole gate, and its extra rounds, from the two
    gates' own cost(): key bytes + 16 bytes per AES, per output element (a row)."""
    sh, pk = (MaxTreeNarrow(shape, 50, len(shape) - 1, view_bits, lookup=lk).cost() for lk in ("shifted", "packed"))
    rows = 1
    for d in shape[:-1]:
        rows *= d
    saved = ((sh.key_bits - pk.key_bits) / 8 + 16 * (sh.aes - pk.aes)) * rows
    return saved, pk.rounds - sh.rounds


@pytest.mark.parametrize("shape", [(12, 16, 16), (12, 128, 128), (24, 128, 128), (12, 512, 512), (96, 128, 128)])
def test_auto_takes_the_packed_tree_where_it_saves_32_mib_a_round(shape):
    saved, extra = _tree_saving(shape, 20)
    want = "packed" if saved >= (32 << 20) * extra else "shifted"
    assert _choose(shape) == want


def test_bert_base_batch_1_keeps_the_one_round_tree_larger_ones_pack():
    """BERT-base's attention rows (12 heads x seq) on the grid's 18-bit view: seq 128 at batch 1
    stays one round a level; batch 8 and seq 512 take the packed tree."""
    assert _choose((12, 128, 128), view_bits=18) == "shifted"
    assert _choose((8 * 12, 128, 128), view_bits=18) == "packed"
    assert _choose((12, 512, 512), view_bits=18) == "packed"


def test_the_worth_of_a_round_moves_the_choice():
    """--round-worth: 0 packs even a tiny tree; a high-latency link's large value keeps BERT-base's
    batch-8 trees at one round a level."""
    assert _choose((12, 16, 16), round_worth_mib=0) == "packed"
    assert _choose((8 * 12, 128, 128), view_bits=18, round_worth_mib=4096) == "shifted"
    with pytest.raises(CompileError, match="round worth"):
        CompileOptions(round_worth_mib=-1)


def test_an_explicit_choice_wins_and_a_bad_one_is_refused():
    assert _choose((12, 16, 16), max_tree="packed") == "packed"
    assert _choose((96, 512, 512), max_tree="shifted") == "shifted"
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
