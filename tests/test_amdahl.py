"""The Amdahl reconciliation of ``fusec bench`` (fusec/bench/amdahl.py) against numbers worked
out by hand in the comments, and its command line on the recorded H200 runs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fusec.bench.amdahl import load_gate_speedups, predict, reconcile, reconcile_all
from fusec.errors import FusecError

ROOT = Path(__file__).parent.parent
H200 = ROOT / "bench" / "results" / "h200_2026-12-06"


def rec(gates, online, scopes, padded=True, net=None, seq=128, batch=1):
    return {"config": {"model": "m", "label": "m", "seq": seq, "batch": batch, "gpus": 1, "gates": gates,
                       "padded": padded, "net": net},
            "online": {"per_batch": {"online_seconds": online}, "scopes_per_batch": scopes}}


# sigma: 10 s online; linear 1 + input 0.5 (not nonlinear), gelu 3 + 1, softmax 2, rescale 2: nonlinear 8 s
SIGMA = rec("sigma", 10.0, {"linear": {"compute_seconds": 1.0}, "input": {"wire_seconds": 0.5, "bytes_sent": 9},
                            "gelu": {"compute_seconds": 3.0, "wire_seconds": 1.0}, "softmax": {"compute_seconds": 2.0},
                            "rescale": {"wire_seconds": 2.0, "bytes_sent": 100}})
# fused: 5 s online; linear 1 + input 0.5, gelu 1, softmax 1, rescale 0.5, lookup 0.5 (a scope sigma lacks): 3 s
FUSED = rec("fused", 5.0, {"linear": {"compute_seconds": 1.0}, "input": {"wire_seconds": 0.5},
                           "gelu": {"compute_seconds": 1.0}, "softmax": {"wire_seconds": 1.0},
                           "rescale": {"wire_seconds": 0.5}, "lookup": {"wire_seconds": 0.5}})


def test_predict_is_amdahls_law():
    assert predict(0.5, 2.0) == pytest.approx(1 / 0.75)          # half the time twice as fast: 4/3
    assert predict(0.8, 4.0) == pytest.approx(2.5)               # 1 / (0.2 + 0.2)
    assert predict(0.0, 7.0) == 1.0 and predict(1.0, 3.0) == pytest.approx(3.0)
    assert predict(0.9, math.inf) == pytest.approx(10.0) and predict(1.0, math.inf) == math.inf
    with pytest.raises(ValueError):
        predict(1.2, 2.0)


def test_from_scope_times():
    a = reconcile(SIGMA, FUSED)
    assert a.f == pytest.approx(0.8)                             # 8 / 10
    assert a.s == pytest.approx(8 / 3)                           # nonlinear 8 s -> 3 s
    assert a.predicted == pytest.approx(2.0)                     # 1 / (0.2 + 0.8 * 3/8) = 1 / 0.5
    assert a.measured == pytest.approx(2.0) and a.gap == pytest.approx(0.0)
    assert a.other_ratio == pytest.approx(1.0)                   # outside: 10 - 8 = 2 s and 5 - 3 = 2 s
    assert a.source == "scope times"


def test_the_gap_is_what_changed_outside_the_nonlinear_scopes():
    slower = rec("fused", 6.0, FUSED["online"]["scopes_per_batch"])    # 1 s more in no scope
    a = reconcile(SIGMA, slower)
    assert a.predicted == pytest.approx(2.0) and a.measured == pytest.approx(10 / 6)
    assert a.gap == pytest.approx((10 / 6) / 2 - 1)              # -16.7 %
    assert a.other_ratio == pytest.approx(2 / 3)                 # 2 s against 3 s


def test_from_a_gate_microbenchmark_with_the_rest_from_scope_times():
    a = reconcile(SIGMA, FUSED, {"source": "bench", "speedups": {"gelu": 2.0, "softmax": 4.0}})
    # f_gelu = 0.4 at 2x, f_softmax = 0.2 at 4x; the rest, rescale (0.2 of sigma) against rescale + lookup of
    # fused (1 s), runs 2x: 1 / predicted = 0.2 + 0.4/2 + 0.2/4 + 0.2/2 = 0.55
    assert a.predicted == pytest.approx(1 / 0.55)
    assert a.s == pytest.approx(0.8 / 0.35)
    assert a.source == "microbench (gelu, softmax) + scope times (rest)"
    one = reconcile(SIGMA, FUSED, {"speedups": {"nonlinear": 4.0}})
    assert (one.s, one.predicted, one.source) == (pytest.approx(4.0), pytest.approx(2.5), "microbench")


def test_scope_times_above_the_online_time_are_scaled_alike():
    # per-scope times are each the slower party's: 5 s of scopes in a 4 s run -> x 0.8 each
    sigma = rec("sigma", 4.0, {"linear": {"compute_seconds": 1.0}, "gelu": {"compute_seconds": 4.0}})
    fused = rec("fused", 2.0, {"linear": {"compute_seconds": 0.5}, "gelu": {"compute_seconds": 1.0}})
    a = reconcile(sigma, fused)
    assert a.f == pytest.approx(0.8) and a.s == pytest.approx(3.2 / 1.0)
    assert a.predicted == pytest.approx(1 / (0.2 + 0.8 / 3.2))


def test_pairs_by_configuration():
    other_net = {"name": "wan", "bandwidth_bps": 4e8, "rtt_seconds": 0.004}
    results = [SIGMA, FUSED, rec("fused", 1.0, {"gelu": {"compute_seconds": 1}}, padded=False),
               rec("sigma", 20.0, SIGMA["online"]["scopes_per_batch"], net=other_net),
               {"config": dict(FUSED["config"], net=other_net), "skipped": "out of memory"},
               rec("sigma", 10.0, SIGMA["online"]["scopes_per_batch"], batch=2),
               rec("fused", 4.0, FUSED["online"]["scopes_per_batch"], batch=2)]
    plans = rec("fused", 0.5, FUSED["online"]["scopes_per_batch"])     # a launch-plan run has no sigma partner
    plans["config"]["runtime"] = "launch plans"
    striped = rec("fused", 0.6, FUSED["online"]["scopes_per_batch"])  # on 4 connections: not sigma's partner on 1
    striped["config"]["stripes"] = 4
    rows = reconcile_all(results + [plans, striped])
    assert [k for k, _ in rows] == [("m", 128, 1, 1, None, "interpreted", 1, 1),
                                    ("m", 128, 2, 1, None, "interpreted", 1, 1)]
    assert rows[0][1].measured == pytest.approx(2.0)             # the unpadded ablation is not "fused"
    assert rows[1][1].measured == pytest.approx(2.5)


@pytest.mark.parametrize("doc, what", [
    ("not json", "cannot read it as JSON"), ({"speedups": {}}, "expected"), ([1, 2], "expected"),
    ({"speedups": {"gelu": -2}}, "must be a positive number"), ({"speedups": {"gelu": True}}, "positive number"),
    ({"speedups": {"linear": 2.0}}, "not a nonlinear scope"),
])
def test_bad_gate_speedups_file(doc, what, tmp_path):
    p = tmp_path / "g.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(FusecError, match=what) as e:
        load_gate_speedups(p)
    assert "\n" not in str(e.value)


def test_command_line_on_the_recorded_h200_runs(tmp_path):
    files = [H200 / "bert_base_fused.json", H200 / "bert_base_sigma.json"]
    docs = [json.loads(f.read_text()) for f in files]
    online = {d["results"][0]["config"]["gates"]: d["results"][0]["online"]["per_batch"]["online_seconds"]
              for d in docs}
    r = subprocess.run([sys.executable, "-m", "fusec.bench.amdahl", *map(str, files)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{online['sigma'] / online['fused']:.2f}x" in r.stdout and "| bert-base | 128 | 1 |" in r.stdout
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"source": "hand", "speedups": {"gelu": -1}}))
    r = subprocess.run([sys.executable, "-m", "fusec.bench.amdahl", *map(str, files), "--gate-speedups", str(g)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "positive number" in r.stderr and "Traceback" not in r.stderr


def test_markdown_of_a_bench_run_carries_the_table(tmp_path):
    from fusec.bench import render_markdown

    doc = {"fusec_bench": 1, "date": "2026-12-07T00:00:00+00:00", "machine": {}, "command": "fusec bench ...",
           "settings": {"backend": "gpu", "warmup": 1, "repeat": 3, "internal_batch": 1},
           "gate_microbench": {"source": "gates alone, H200", "speedups": {"nonlinear": 4.0}}, "results": []}
    for r in (SIGMA, FUSED):
        r = json.loads(json.dumps(r))
        r["config"]["name"] = f"m/seq128/b1/{r['config']['gates']}/1gpu"
        r["online"].update(steps=[], per_step={"online_seconds": 1.0}, tokens_per_second=1.0,
                           per_inference={"online_seconds": 1.0, "bytes_sent": 1})
        r["online"]["per_batch"].update(bytes_sent=1, rounds=1)
        r["keygen"] = {"per_batch": {"key_bytes_per_party": 1}, "per_inference": {"seconds": 1, "key_bytes_per_party": 1}}
        doc["results"].append(r)
    md = render_markdown(doc)
    assert "Amdahl reconciliation" in md and "gate micro-benchmark: gates alone, H200" in md
    row = next(line for line in md.splitlines() if line.startswith("| m | 128 | 1 | 1 | - | interpreted | 80.0% |"))
    assert "| 4.00x | microbench | 2.50x | 2.00x | -20.0% |" in row      # 1 / (0.2 + 0.8 / 4) = 2.5
    assert "\u2020" not in md
    doc["results"][0]["online"]["keys_unpacked_late"] = True
    md = render_markdown(doc)
    assert "| sigma \u2020 |" in md and "\u2020 Each gate's keys were unpacked when the gate started" in md
    assert "\u2021" not in md
    doc["results"][1]["online"]["plan_refused"] = "the launch plan was not recorded: it would not fit"
    md = render_markdown(doc)
    assert "| fused \u2021 |" in md
    assert "\u2021 Asked for launch plans, these ran interpreted: the launch plan was not recorded: it would not fit." in md


def test_bench_refuses_a_bad_gate_speedups_file_before_running(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"speedups": {"gelu": 0}}))
    r = subprocess.run([sys.executable, "-m", "fusec", "bench", "--model", "bert-tiny", "--gate-speedups", str(g),
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "positive number" in r.stderr and len(r.stderr.strip().splitlines()) == 1
