"""``fusec inspect``: the JSON summary, the text report and the ranges section agree.

One bert-tiny build (seq 8, n = 37) serves every test: the JSON totals equal the text
report's and an independent sum of every gate's ``cost()`` over its elements; the per-class
and per-kind rows add up to the totals; the ranges section works with and without
``meta["proven"]`` (the proven-range pass).
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusec.build import compile_model
from fusec.passes.options import CompileOptions
from fusec.passes.ranges import width_bits
from fusec.report import CLASSES, ranges, report, summary

MODEL = Path(__file__).parent / "data" / "bert_tiny_legacy.onnx"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "build"
    return compile_model(MODEL, out, CompileOptions(bits=37), batch=1, seq=8)


def _num(text: str, pattern: str) -> int:
    m = re.search(pattern, text)
    assert m, pattern
    return int(m.group(1).replace(",", ""))


def test_json_totals_match_text_and_an_independent_sum(build):
    d = summary(build)
    t = d["totals"]
    text = report(build)
    assert _num(text, r"gates: (\d+)") == t["gates"] == len(build.gates.nodes)
    assert _num(text, r"rounds: (\d+)") == t["rounds"] == max(s.end for s in build.steps)
    assert _num(text, r"key per party: ([\d,]+) bytes") == t["key_bytes"]
    assert _num(text, r"online bytes sent per party: ([\d,]+)") == round(t["bytes_sent_per_party"])
    assert _num(text, r"both parties: ([\d,]+)") == round(t["bytes_sent_both"])
    assert _num(text, r"AES calls per party: ([\d,]+)") == t["aes_calls"]

    key_bits = aes = open_bits = both = 0
    for n in build.gates.nodes:
        c = n.gate.cost()
        E = n.gate.elements
        key_bits += c.key_bits * E
        aes += c.aes * E
        open_bits += c.open_bits * E
        both += c.open_bits * E * (1 if n.gate.kind == "input" else 2)
    assert t["key_bits_model"] == key_bits and t["aes_calls"] == aes
    assert t["open_bits_per_party"] == open_bits and t["bytes_sent_per_party"] == open_bits / 8
    assert t["open_bits_both"] == both and t["bytes_sent_both"] == both / 8
    layout = build.gates.layout()
    assert t["key_bytes_unseeded"] == layout.set_nbytes == sum(s.nbytes for s in layout.slots)
    # the layout packs fields to whole bytes: within a few bytes per gate of the cost model
    assert abs(t["key_bytes_unseeded"] - key_bits / 8) <= 8 * len(layout.slots)
    # the files: one party of each gate holds a 16-byte seed in place of its share fields
    saved = [sum(f.nbytes for f in s.fields if f.share) - 16 for s in layout.slots]
    assert t["key_bytes_p0"] + t["key_bytes_p1"] == 2 * layout.set_nbytes - sum(v for v in saved if v > 0)
    assert t["key_bytes"] == (t["key_bytes_p0"] + t["key_bytes_p1"]) / 2 < layout.set_nbytes
    assert aes > 0 and open_bits > 0 and t["rounds"] > 0

    # the command prints the same numbers
    r = subprocess.run([sys.executable, "-m", "fusec", "inspect", str(build.path), "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(d))
    r = subprocess.run([sys.executable, "-m", "fusec", "inspect", str(build.path)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout == report(build) + "\n"


def test_class_and_kind_rows_add_up_to_the_totals(build):
    d = summary(build)
    t = d["totals"]
    assert [r["class"] for r in d["by_class"]] == list(CLASSES)
    for rows in (d["by_class"], d["by_kind"]):
        for k in ("gates", "elements", "free_elements", "key_bytes", "key_bits_model", "aes_calls",
                  "open_bits_per_party", "open_bits_both"):
            assert sum(r[k] for r in rows) == t[k], k
        assert math.isclose(sum(r["bytes_sent_per_party"] for r in rows), t["bytes_sent_per_party"])
    by = {r["class"]: r for r in d["by_class"]}
    for c in ("gelu", "softmax", "layernorm", "rescale", "linear"):     # bert has all of them
        assert by[c]["elements"] > 0 and by[c]["key_bytes"] > 0, c
        assert by[c]["per_element"]["key_bytes"] == by[c]["key_bytes"] / by[c]["elements"]
    assert sum(r["rounds_critical_path"] for r in d["by_class"]) == t["rounds"]
    assert all(0 <= r["rounds_per_gate"] <= t["rounds"] for r in d["by_class"])
    # per class against the profiler scopes of the schedule, gate by gate
    scope = build.scopes
    for c in CLASSES:
        aes = sum(n.gate.cost().aes * n.gate.elements for n in build.gates.nodes if scope[n.id] == c)
        assert by[c]["aes_calls"] == aes
    # specs: the fused build fits every labelled scalar
    assert d["specs"] and all(s["pieces"] >= 1 and s["degree"] >= 0 and s["count"] >= 1 for s in d["specs"])
    assert {s["label"] for s in d["specs"]} >= {"gelu", "nexp", "reciprocal", "rsqrt"}


def test_per_inference_shares_divide_by_the_true_batch(build):
    one = summary(build)
    build.manifest["batch"] = 4
    try:
        four = summary(build)
        text = report(build)
    finally:
        build.manifest["batch"] = 1
    assert four["batch"] == 4
    for k in ("key_bytes", "aes_calls", "bytes_sent_per_party", "bytes_sent_both"):
        assert four["per_inference"][k] == one["totals"][k] / 4
    assert four["per_inference"]["rounds"] == one["totals"]["rounds"]
    assert f"({one['totals']['key_bytes'] / 4:,.0f} per inference, batch 4; P0 " in text


def test_ranges_without_and_with_proven(build):
    meta = build.ir.meta
    saved = meta.pop("proven", None)
    try:
        rng = ranges(build)
        s = rng["summary"]
        assert not s["proven_available"] and s["with_proven"] == 0 and s["max_bits_proven"] is None
        assert s["secret_tensors"] == len(rng["tensors"]) > 20 and s["with_calibrated"] > 20
        assert all(r["proven"] is None and r["bits_proven"] is None for r in rng["tensors"])
        for r in rng["tensors"]:
            if r["calibrated"] is not None:
                assert r["bits_calibrated"] == width_bits(*r["calibrated"], r["scale"])
        text = report(build)
        assert "proven ranges: -" in text and "the 10 widest" in text
        full = report(build, all_ranges=True)
        section = full.split("## ranges")[1].split("## notes")[0]
        lines = [ln.rstrip() for ln in section.splitlines()]
        assert all(any(ln.endswith("  " + r["tensor"]) for ln in lines) for r in rng["tensors"])

        # a proven-range pass: every calibrated interval widened by 1, one tensor unbounded
        cal = meta["ranges"]
        tensors = [r["tensor"] for r in rng["tensors"] if r["calibrated"] is not None]
        meta["proven"] = {t: [cal[t][0] - 1.0, cal[t][1] + 1.0] for t in tensors}
        meta["proven"][tensors[0]] = [float("-inf"), float("inf")]
        d = summary(build)
        json.dumps(d, allow_nan=False)           # strict JSON: unbounded ends are null
        rp = d["ranges"]
        assert rp["summary"]["proven_available"] and rp["summary"]["with_proven"] == len(tensors)
        assert rp["summary"]["proven_unbounded"] == 1
        row = {r["tensor"]: r for r in rp["tensors"]}
        assert row[tensors[0]]["proven"] == [None, None] and row[tensors[0]]["bits_proven"] is None
        for t in tensors[1:]:
            assert row[t]["bits_proven"] == width_bits(cal[t][0] - 1.0, cal[t][1] + 1.0, row[t]["scale"])
            assert row[t]["bits_proven"] >= row[t]["bits_calibrated"]
        h = rp["summary"]["bits_proven_histogram"]
        assert sum(v["tensors"] for v in h.values()) == len(tensors) and h["unbounded"]["tensors"] == 1
        text = report(build, top=3)
        assert "1 of them unbounded" in text and "the 3 widest" in text
        widest = text.split("the 3 widest")[1].splitlines()[2]      # header, then the unbounded one first
        assert "[-inf, inf]" in widest and widest.rstrip().endswith(tensors[0])
    finally:
        meta.pop("proven", None)
        if saved is not None:
            meta["proven"] = saved


def test_bench_costs_script_reuses_the_summary(build, tmp_path):
    """bench/costs.py on a build directory: its JSON holds inspect's numbers, its markdown the table."""
    script = Path(__file__).parent.parent / "bench" / "costs.py"
    r = subprocess.run([sys.executable, str(script), str(build.path), "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "costs.json").read_text())
    assert doc["git"]["commit"] and doc["machine"]["cores"] and doc["command"].startswith("python bench/costs.py")
    (cfg,) = doc["configs"]
    d = json.loads(json.dumps(summary(build)))
    assert cfg["gates"] == "fused" and cfg["batch"] == 1
    assert cfg["summary"]["totals"] == d["totals"] and cfg["summary"]["by_class"] == d["by_class"]
    md = (tmp_path / "costs.md").read_text()
    assert "| bert_tiny_legacy | 8 | 1 | fused |" in md and "per gate class" in md and "per element" in md
