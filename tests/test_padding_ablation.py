"""The whole-model padding ablation (INSECURE builds, --insecure-mask-dependent-shapes).

Oracles: the spec evaluated with Python integers (poly_oracle), onnxruntime, and the padded
build run on the same input. The unpadded piece table keys only the u-space boundaries its
masks produce; the set records how many (``pieces_used``) in the gate's slot, under the set
checksum; the runtime slices the padded reservation to it after checking the bound.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from fusec.errors import KeyFileError
from fusec.runtime.dealer import write_keys
from fusec.runtime.gates.arith import Input
from fusec.runtime.gates.scalar import SplineLookup
from fusec.runtime.graph import GateGraph
from fusec.runtime.keyfile import data_offset
from fusec.runtime.keyio import KeyFile
from fusec.runtime.layout import INSECURE_KEY, KeyLayout
from fusec.runtime.rng import DealerRng
from fusec.runtime.seeded_shares import party_layout
from tests.harness import both_parties, queue_exchanges, run_gate
from tests.test_scalar import SMALL_SPEC, poly_oracle

BERT_TINY = "tests/data/bert_tiny_legacy.onnx"


def unpadded(elements: int, spec, lookup: str = "pieces") -> SplineLookup:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SplineLookup(elements, spec, lookup, pad=False)


# ---------------------------------------------------------------------- the gate
@pytest.mark.parametrize("n", [4, 6])
def test_unpadded_piece_table_is_exact_for_every_mask_and_records_its_count(n):
    spec = SMALL_SPEC[n]
    xs = np.arange(2 ** n, dtype=np.uint64)
    expect = poly_oracle(spec, xs, n)
    seen = set()
    for r in range(2 ** n):
        g = unpadded(xs.size, spec)
        masks = [np.full(xs.size, r, np.uint64)]
        got, _, _ = run_gate(g, [xs], [n], in_masks=masks)
        assert np.array_equal(got, expect), f"r={r}"
        _, k0, k1 = g.keygen(DealerRng(), masks)
        K = int(k0["pieces_used"])
        # independent count: the nonzero u-space images a + r of the unsigned partition's starts
        # (0, the signed wrap 2^(n-1) and every breakpoint mod 2^n)
        starts = {0, 1 << (n - 1)} | {b % (1 << n) for b in spec.breakpoints}
        assert len(starts) == g.M
        assert K == sum((a + r) % (1 << n) != 0 for a in starts) == int(k1["pieces_used"])
        assert not k0["dcf.root"][xs.size * K:].any()       # the rest of the reservation is not keyed
        seen.add(K)
    assert seen == {g.M - 1, g.M}      # the count depends on the mask: exactly the leak padding prevents


def test_only_the_piece_table_has_a_mask_dependent_shape():
    spec = SMALL_SPEC[6]
    assert [f[0] for f in unpadded(3, spec).fields()].count("pieces_used") == 1
    from fusec.runtime.gates.scalar import ScalarGate
    for lookup in ("packed", "shifted"):      # x-space comparisons: the flag changes nothing
        a = ScalarGate(3, spec, lookup, pad=True).fields()
        b = ScalarGate(3, spec, lookup, pad=False).fields()
        assert a == b


def test_a_count_beyond_the_reservation_is_refused_before_slicing():
    spec = SMALL_SPEC[6]
    g = unpadded(4, spec)
    from fusec.runtime.backend import get_backend
    _, k0, _ = g.keygen(DealerRng(), [np.full(4, 5, np.uint64)])
    k0["pieces_used"] = np.asarray(g.M + 1, np.uint64)
    be = get_backend("cpu")
    gen = g.eval(0, k0, [np.zeros(4, np.uint64)], be)
    with pytest.raises(KeyFileError, match="reserves"):
        next(gen)


# ---------------------------------------------------------------------- key files
def _graph(pad: bool, insecure: bool) -> GateGraph:
    g = GateGraph()
    g.insecure = insecure
    g.input("x", 64, 6)
    g.add("lut", unpadded(64, SMALL_SPEC[6]) if not pad else SplineLookup(64, SMALL_SPEC[6], "pieces"), ["x"])
    g.output("y", "lut")
    return g


def test_unpadded_layout_is_marked_and_padded_layout_unchanged():
    padded, insecure = _graph(True, False).layout(), _graph(False, True).layout()
    assert INSECURE_KEY not in padded.to_dict() and not padded.insecure
    assert insecure.to_dict()[INSECURE_KEY] is True
    assert KeyLayout.from_json(insecure.to_json()).insecure
    assert "INSECURE" in insecure.format_table() and "INSECURE" in repr(insecure)
    # the same gates, marked or not, give different digests
    assert _graph(True, True).layout().digest() != padded.digest()
    # the reservation is the padded size (plus the 8-byte count): a fixed set size per build
    assert insecure.set_nbytes == padded.set_nbytes + 8


def test_padded_and_unpadded_key_files_are_refused_by_the_other_build(tmp_path):
    pg, ug = _graph(True, False), _graph(False, True)
    write_keys(pg, tmp_path / "p", 1, seed=b"pad")
    write_keys(ug, tmp_path / "u", 1, seed=b"unpad")
    for keys, other in ((tmp_path / "p", ug), (tmp_path / "u", pg)):
        with pytest.raises(KeyFileError, match="another build"):
            KeyFile.open(keys / "p0.key", other.layout(), 0, tmp_path / "state")


def test_a_tampered_count_fails_like_a_corrupted_set(tmp_path):
    ug = _graph(False, True)
    write_keys(ug, tmp_path, 1, seed=b"tamper")
    lay = ug.layout()
    off, nb = party_layout(lay, 0).field_offsets("lut")["pieces_used"]     # where p0's file keeps it
    path = tmp_path / "p0.key"
    raw = bytearray(path.read_bytes())
    pos = data_offset(1) + off
    assert int.from_bytes(raw[pos:pos + 4], "little") in (SMALL_SPEC[6].pieces - 1, SMALL_SPEC[6].pieces)
    raw[pos] ^= 1
    path.write_bytes(bytes(raw))
    with KeyFile.open(path, lay, 0, tmp_path / "state") as kf:
        with pytest.raises(KeyFileError, match="corrupted"):
            kf.verify_set(0)
        with pytest.raises(KeyFileError, match="corrupted"):
            kf.claim(0)
        assert kf.used_sets() == []


def test_unpadded_graph_runs_two_party_from_key_files(tmp_path, monkeypatch):
    from fusec.runtime import ring
    from fusec.runtime.backend import get_backend
    from fusec.runtime.protocol import RoundLog

    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    g = _graph(False, True)
    write_keys(g, tmp_path, 1, seed=b"run")
    xs = np.arange(64, dtype=np.uint64)
    ex, out = queue_exchanges(), [None, None]

    def work(p):
        be = get_backend("cpu")
        with KeyFile.open(tmp_path / f"p{p}.key", g.layout(), p) as kf:
            reader = kf.claim(0)
            keys = {s.gate_id: reader.read_gate(s.gate_id) for s in g.layout().slots}
            reader.finish()
        out[p] = g.evaluate(p, keys, {"x": xs} if p == 1 else {}, ex[p], be, RoundLog())

    both_parties(work)
    assert np.array_equal(out[1]["y"], poly_oracle(SMALL_SPEC[6], xs, 6))
    assert isinstance(g.nodes[0].gate, Input)


# ---------------------------------------------------------------------- a whole model
@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    from fusec.build import compile_model, load_build
    from fusec.passes.options import CompileOptions

    builds = {}
    for insecure in (False, True):
        out = tmp_path_factory.mktemp("bert_unpadded" if insecure else "bert_padded")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            compile_model(BERT_TINY, out, CompileOptions(bits=37, insecure_mask_dependent_shapes=insecure),
                          batch=1, seq=8)
        assert any("INSECURE" in str(x.message) for x in w) == insecure
        builds[insecure] = load_build(out)
    return builds


def _run_build(build, keys_dir):
    from fusec.build import decode_outputs, encode_inputs
    from fusec.passes.calibrate import default_feeds
    from fusec.runtime.backend import get_backend
    from fusec.runtime.protocol import RoundLog

    feeds = default_feeds(build.ir, seed=7)
    ex, out, logs = queue_exchanges(), [None, None], [RoundLog(), RoundLog()]

    def work(p):
        be = get_backend("cpu")
        with KeyFile.open(keys_dir / f"p{p}.key", build.gates.layout(), p) as kf:
            reader = kf.claim(0)
            keys = {s.gate_id: reader.read_gate(s.gate_id) for s in build.gates.layout().slots}
            reader.finish()
        inputs = encode_inputs(build, feeds, p) if p == 1 else {}
        out[p] = build.gates.evaluate(p, keys, inputs, ex[p], be, logs[p])

    both_parties(work)
    return decode_outputs(build, out[1]), feeds, sum(sum(lg.bytes_sent.values()) for lg in logs)


def test_bert_tiny_unpadded_build_runs_end_to_end_and_matches(bert_pair, tmp_path, monkeypatch):
    from fusec.inputs import full_request
    from fusec.verify import compare, onnxruntime_reference

    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    padded, insecure = bert_pair[False], bert_pair[True]
    assert insecure.manifest["insecure"] and not padded.manifest["insecure"]
    assert insecure.gates.layout().insecure and not padded.gates.layout().insecure
    assert json.loads((insecure.path / "keys.layout.json").read_text())[INSECURE_KEY] is True
    assert "INSECURE" in (insecure.path / "report.txt").read_text()
    assert "INSECURE" not in (padded.path / "report.txt").read_text()
    # the fused lookups compare in x-space: no mask-dependent field, the same key bytes but
    # for the flag (a build of the same gates; only the layout's mark differs)
    assert insecure.gates.layout().set_nbytes <= padded.gates.layout().set_nbytes
    assert insecure.gates.layout().digest() != padded.gates.layout().digest()
    unmarked = insecure.gates.layout().to_dict()
    assert unmarked.pop(INSECURE_KEY) is True and unmarked == padded.gates.layout().to_dict()

    write_keys(padded.gates, tmp_path / "kp", 1)
    write_keys(insecure.gates, tmp_path / "ku", 1)
    with pytest.raises(KeyFileError, match="another build"):
        KeyFile.open(tmp_path / "kp" / "p0.key", insecure.gates.layout(), 0)
    with pytest.raises(KeyFileError, match="another build"):
        KeyFile.open(tmp_path / "ku" / "p1.key", padded.gates.layout(), 1)
    got_p, feeds, bytes_p = _run_build(padded, tmp_path / "kp")
    got_u, _, bytes_u = _run_build(insecure, tmp_path / "ku")
    assert bytes_u <= bytes_p
    ref = onnxruntime_reference(BERT_TINY, full_request(padded.ir, feeds), padded.ir.meta.get("public_inputs", {}))
    for name, v in got_u.items():
        onnx_name = name[:-len("_shared")] if name.endswith("_shared") else name
        c_u, c_p = compare(onnx_name, v, ref[onnx_name]), compare(onnx_name, got_p[name], ref[onnx_name])
        assert c_u.cosine > 0.99 and c_u.rel < 0.1, c_u.line()
        assert c_u.rel < 2 * c_p.rel + 1e-3, (c_u.line(), c_p.line())
        assert np.abs(np.asarray(v, float) - np.asarray(got_p[name], float)).max() < 0.1


def test_dealer_reports_the_bytes_the_sets_actually_key(tmp_path):
    from fusec.runtime.gates.scalar import unused_key_nbytes

    ug, pg = _graph(False, True), _graph(True, False)
    t_u, t_p = {}, {}
    write_keys(ug, tmp_path / "u", 2, timings=t_u)
    write_keys(pg, tmp_path / "p", 2, timings=t_p)
    assert "key_bytes_used" not in t_p                  # padded: the layout's bytes, nothing else to say
    # 64 random 6-bit masks: some element misses every boundary, so the table keys all M
    lay = ug.layout()       # per party as the files hold it: the two parties' mean (seeded shares)
    assert t_u["key_bytes_used"] == 2 * sum(party_layout(lay, p).set_nbytes for p in (0, 1)) / 2
    assert sum((tmp_path / "u" / f"p{p}.key").stat().st_size for p in (0, 1)) - 2 * data_offset(2) == \
        2 * t_u["key_bytes_used"]
    # one element whose mask lands on a boundary keys M - 1 boundaries: one DCF key fewer,
    # its fields packed (root 128 b, seeds 128 b and a 1-bit t per level, d+1 n-bit words per level + final)
    n, g = 6, unpadded(1, SMALL_SPEC[6])
    _, k0, _ = g.keygen(DealerRng(), [np.zeros(1, np.uint64)])
    assert int(k0["pieces_used"]) == g.M - 1
    w = (g.d + 1) * n

    def dcf_bytes(e):
        return sum(-(-bits // 64) * 8 for bits in (128 * e, n * 128 * e, n * e, n * w * e, w * e))
    assert unused_key_nbytes(g, k0) == dcf_bytes(g.M) - dcf_bytes(g.M - 1) > 0


# ---------------------------------------------------------------------- every command says so
def test_every_command_of_an_unpadded_build_says_insecure(tmp_path):
    import subprocess
    import sys

    def fusec(*args):
        return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    digits = "fusec/examples/digits_mlp.onnx"
    r = fusec("verify", digits, "--workdir", tmp_path / "wd", "--batch", "1", "--insecure-mask-dependent-shapes")
    assert r.returncode == 0, r.stderr
    assert "cosine" in r.stdout
    build = tmp_path / "wd" / "build"
    for args in (("inspect", build), ("inspect", build, "--json"), ("keygen", build, "-o", tmp_path / "k")):
        r = fusec(*args)
        assert r.returncode == 0 and "INSECURE" in r.stderr, (args, r.stderr)
    r = fusec("compile", digits, "-o", tmp_path / "b2", "--batch", "1", "--insecure-mask-dependent-shapes")
    assert r.returncode == 0 and "INSECURE" in r.stdout + r.stderr
    assert "INSECURE" in (tmp_path / "b2" / "report.txt").read_text()


@pytest.mark.slow   # bert-tiny compiled twice, keys and two parties per build: ~1 min on 2 loaded cores
def test_bench_padding_ablation_on_bert_tiny(tmp_path):
    import subprocess
    import sys

    out, md = tmp_path / "out.json", tmp_path / "out.md"
    r = subprocess.run([sys.executable, "-m", "fusec", "bench", "--model", "bert-tiny", "--seq", "8",
                        "--gates", "fused", "--padding-ablation", "--internal-batch", "1", "--warmup", "0",
                        "--repeat", "1", "--workdir", str(tmp_path), "--json", str(out), "--markdown", str(md)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    padded, unpadded = json.loads(out.read_text())["results"]
    assert (padded["config"]["padded"], unpadded["config"]["padded"]) == (True, False)
    assert "skipped" not in padded and "skipped" not in unpadded
    used = unpadded["keygen"]["per_set_parts"]["key_bytes_used"]
    assert used <= padded["keygen"]["per_batch"]["key_bytes_per_party"]
    assert unpadded["online"]["per_batch"]["bytes_sent"] <= padded["online"]["per_batch"]["bytes_sent"]
    text = md.read_text()
    assert "fused (no padding, INSECURE)" in text and "| bert-tiny | 8 | 1 | fused |" in text
    assert "Padding ablation: the unpadded build is INSECURE" in text and "key unpadded, keyed" in text


# ---------------------------------------------------------------------- the piece table in a whole model
def _pieces_build(monkeypatch, insecure: bool):
    """block_model (Linear, GELU, LayerNorm, Linear, Softmax) with every fused scalar gate on
    the piece-table lookup: the one construction whose key shape depends on the masks."""
    from fusec.build import Build, compile_graph
    from fusec.passes import pipeline
    from fusec.passes.options import CompileOptions
    from tests.test_compiler import block_model

    def pieces_then_pad(graph, opts):
        for node in graph.nodes():
            if node.op == "Scalar" and node.attrs.get("impl") == "fused":
                node.attrs["lookup"] = "pieces"
        return pipeline.pad_shapes(graph, opts)

    monkeypatch.setattr(pipeline, "PASSES", [*pipeline.PASSES[:-1], pieces_then_pad])
    g, ref, x = block_model()
    opts = CompileOptions(insecure_mask_dependent_shapes=insecure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir, low, steps = compile_graph(g, opts)
    return Build(None, ir, opts, low, steps, {}), ref, x


def test_piece_table_model_unpadded_runs_from_key_files(tmp_path, monkeypatch):
    from fusec.build import decode_outputs, encode_inputs
    from fusec.runtime.backend import get_backend
    from fusec.runtime.protocol import RoundLog

    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    results = {}
    for insecure in (False, True):
        b, ref, x = _pieces_build(monkeypatch, insecure)
        tables = [st for n in b.gates.nodes for st in getattr(n.gate, "stages", [n.gate])
                  if isinstance(st, SplineLookup) and st.lookup == "pieces"]
        assert tables and all(st.pad != insecure for st in tables)
        keys, timings = tmp_path / f"k{insecure}", {}
        write_keys(b.gates, keys, 1, timings=timings)
        ex, out, logs = queue_exchanges(), [None, None], [RoundLog(), RoundLog()]

        def work(p):
            with KeyFile.open(keys / f"p{p}.key", b.gates.layout(), p) as kf:
                reader = kf.claim(0)
                ks = {s.gate_id: reader.read_gate(s.gate_id) for s in b.gates.layout().slots}
                reader.finish()
            out[p] = b.gates.evaluate(p, ks, encode_inputs(b, {"x": x}, 1) if p == 1 else {}, ex[p],
                                      get_backend("cpu"), logs[p])

        both_parties(work)
        got = decode_outputs(b, out[1])["y"]
        assert np.abs(got - ref(x)).max() < 3e-3
        results[insecure] = (got, b.gates.layout(), timings, sum(sum(lg.bytes_sent.values()) for lg in logs),
                             len(tables))
    (gp, lp, _, bp, n_tables), (gu, lu, tu, bu, _) = results[False], results[True]
    assert np.abs(gu - gp).max() < 3e-3
    assert bu == bp and lu.digest() != lp.digest()
    # every element's mask would have to land on a boundary (probability M / 2^50 each) for
    # a table to key fewer than M: the sets key the padded size plus each table's count
    assert lu.set_nbytes == lp.set_nbytes + 8 * n_tables
    assert tu["key_bytes_used"] <= lu.set_nbytes
