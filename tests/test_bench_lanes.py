"""``fusec bench --lanes L``: a batch as L worker pairs in flight (fusec/bench/lanes.py).

The end-to-end test recomputes the step's time from the four workers' own files (the
covered length of their online intervals, by a sweep over start and end events, not the
bench's merge) and checks that per-inference key and bytes do not change with lanes.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusec.bench.lanes import merge_lanes, union_seconds
from fusec.bench.plan import BenchOptions, plan_cases
from fusec.bench.presets import resolve_model
from fusec.errors import FusecError
from fusec.runtime.layout import KeyLayout
from fusec.runtime.seeded_shares import party_layout

ROOT = Path(__file__).parent.parent
DIGITS = ROOT / "fusec" / "examples" / "digits_mlp.onnx"


def _covered(intervals):
    """Length covered by at least one interval: a sweep over the events with a counter."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda t: (t[0], -t[1]))
    total, depth, since = 0.0, 0, None
    for t, d in events:
        if depth == 0 and d == 1:
            since = t
        depth += d
        if depth == 0:
            total += t - since
    return total


@pytest.mark.parametrize("intervals", [
    [], [(0, 1)], [(0, 1), (2, 3)], [(0, 2), (1, 3)], [(0, 5), (1, 2), (3, 4)], [(2, 3), (0, 1), (0.5, 2.5)],
    [(0, 1), (1, 2)], [(1, 1), (0, 3)],
])
def test_union_counts_overlaps_once(intervals):
    assert union_seconds(intervals) == pytest.approx(_covered(intervals))


def _rec(online, start, nbytes, scopes, phases):
    return {"step": 1, "warmup": False, "online_seconds": online, "bytes_sent": nbytes, "rounds": 3,
            "online_intervals": [[start, start + online]], "scopes": scopes, "round_phases": phases,
            "keys_unpacked_late": False}


def test_lanes_merge_bytes_added_times_the_union():
    lane0 = (_rec(1.0, 10.0, 100, {"gelu": {"bytes_sent": 5, "compute_seconds": 0.2}}, {"wire": 0.3}),
             _rec(1.1, 10.0, 100, {"gelu": {"bytes_sent": 5, "compute_seconds": 0.1}}, {"wire": 0.5}))
    lane1 = (_rec(1.0, 10.6, 100, {"gelu": {"bytes_sent": 5, "compute_seconds": 0.4}}, {"wire": 0.2}),
             _rec(0.9, 10.7, 100, {"gelu": {"bytes_sent": 5, "compute_seconds": 0.3}}, {"wire": 0.6}))
    m = merge_lanes([lane0, lane1])
    assert m["online_seconds"] == pytest.approx(11.6 - 10.0)      # the lanes overlap from 10.6 to 11.1
    assert m["lane_online_seconds"] == pytest.approx(1.1)
    assert m["bytes_sent"] == 400 and m["rounds"] == 3
    assert m["scopes"]["gelu"] == {"bytes_sent": 20, "compute_seconds": pytest.approx(0.4)}
    assert m["round_phases"] == {"p0": {"wire": 0.3}, "p1": {"wire": 0.6}}


def test_lanes_split_each_batch_that_allows_it(tmp_path):
    opts = BenchOptions(models=[resolve_model(str(DIGITS), None, None)], batches=[1, 2, 8], gates=["fused"],
                        lanes=2, workdir=tmp_path)
    opts.validate()
    cases = plan_cases(opts)
    assert [(c.batch, c.lanes, c.lane_batch) for c in cases] == [(1, 1, 1), (2, 2, 1), (8, 2, 4)]
    assert cases[2].name.endswith("/b8/2x4/fused/cpu")
    assert cases[2].build_slug.endswith("_b4_fused")                # one lane's build
    opts.batches = [4, 3]
    with pytest.raises(FusecError, match=r"--lanes 2 does not divide --batch 3"):
        opts.validate()


def test_each_worker_gets_its_share_of_a_shared_card(monkeypatch):
    from fusec.bench.pair import party_envs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("FUSEC_GPU_SHARE", raising=False)
    assert party_envs("gpu", 1, lanes=2)[0]["FUSEC_GPU_SHARE"] == "0.25"    # 2 parties x 2 lanes on GPU 0
    assert party_envs("gpu", 2, lanes=2)[1]["FUSEC_GPU_SHARE"] == "0.5"     # 2 lanes on each card


def _bench(tmp_path, *args):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "fusec", "bench", "--model", str(DIGITS), "--seq", "1", "--gates", "fused",
                        "--internal-batch", "2", "--warmup", "1", "--repeat", "2", "--workdir", str(tmp_path),
                        "--json", str(out), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())["results"]


@pytest.mark.parametrize("lanes, keys", [(2, []), (4, ["--keys", "stream"])])
def test_a_batch_in_lanes_end_to_end_on_the_cpu(lanes, keys, tmp_path):
    """Batch 1 in one lane against batch 4 in 2 lanes of 2 (key files) or 4 lanes of 1
    (a key-stream dealer per lane)."""
    one, lanes = _bench(tmp_path, "--batch", "1,4", "--lanes", str(lanes), *keys)
    assert lanes["config"]["lanes"] > 1 and "skipped" not in lanes, lanes.get("skipped")
    n = lanes["config"]["lanes"]
    files = lanes["party_files"]
    assert len(files) == 2 * n
    docs = [json.loads(Path(f).read_text()) for f in files]
    assert [d["party"] for d in docs] == [0, 1] * n
    steps = lanes["online"]["steps"]
    for i, step in enumerate(steps):
        recs = [d["steps"][i] for d in docs]
        assert step["online_seconds"] == pytest.approx(_covered([iv for r in recs for iv in r["online_intervals"]]))
        assert step["bytes_sent"] == sum(r["bytes_sent"] for r in recs)
        assert step["online_seconds"] <= sum(r["online_seconds"] for r in recs)
        for lane in range(n):       # both parties of a lane evaluated the same key sets, two per step
            assert recs[2 * lane]["sets"] == recs[2 * lane + 1]["sets"] and len(recs[2 * lane]["sets"]) == 2
    assert lanes["online"]["per_batch"]["rounds"] == lanes["compile"]["rounds_planned"] == \
        one["online"]["per_batch"]["rounds"]
    # per inference, key and bytes do not depend on how the batch ran
    for metric in ("bytes_sent",):
        assert lanes["online"]["per_inference"][metric] == pytest.approx(one["online"]["per_inference"][metric],
                                                                         rel=0.01)
    assert lanes["keygen"]["per_inference"]["key_bytes_per_party"] == pytest.approx(
        one["keygen"]["per_inference"]["key_bytes_per_party"], rel=0.01)
    layout = KeyLayout.from_json((Path(lanes["compile"]["build"]) / "keys.layout.json").read_text())
    assert lanes["keygen"]["per_batch"]["key_bytes_per_party"] == n * sum(
        party_layout(layout, p).set_nbytes for p in (0, 1)) / 2
    assert lanes["keygen"]["sets"] == n * 3 * 2
    assert lanes["online"]["tokens_per_second"] == pytest.approx(4 * 2 * 1 / lanes["online"]["per_step"]["online_seconds"])


def test_lanes_that_do_not_divide_the_batch_are_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fusec", "bench", "--model", str(DIGITS), "--batch", "3", "--lanes", "2",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--lanes 2 does not divide --batch 3" in error[0]
