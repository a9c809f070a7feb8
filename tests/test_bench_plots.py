"""``python -m fusec.bench.plots``: every plot from a synthetic sweep, the recorded runs, and what
is skipped (with a note) when its data is absent. The numbers in the synthetic results are
made up here, so the selections (which runs each plot uses, the speed-ups it draws) are
checked against values computed in this file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusec.bench import plots
from fusec.bench.util import load_results
from fusec.errors import FusecError

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "bench" / "results"
NETS = {"none": None, "lan": {"name": "lan", "bandwidth_bps": 1e9, "rtt_seconds": 5e-4},
        "wan": {"name": "wan", "bandwidth_bps": 4e8, "rtt_seconds": 4e-3}}


def _online(gates: str, seq: int, batch: int, net: str, padded: bool = True) -> float:
    """Made-up online seconds per batch: sigma 2.5x fused, linear in seq and sublinear in batch,
    plus 390 rounds (fused) / 1535 (sigma) of half an RTT."""
    base = 0.4 * seq / 128 * batch ** 0.6 * (2.5 if gates == "sigma" else 1.0) * (1.0 if padded else 0.8)
    rtt = (NETS[net] or {}).get("rtt_seconds", 0.0)
    return base + (1535 if gates == "sigma" else 390) * rtt / 2


def record(model: str, seq: int, batch: int, gates: str, net: str = "none", padded: bool = True,
           skipped: str | None = None) -> dict:
    label = gates if padded else f"{gates}-unpadded"
    name = f"{model}/seq{seq}/b{batch}/{label}/1gpu" + ("" if net == "none" else f"/{net}")
    c = {"name": name, "model": model, "label": model, "seq": seq, "batch": batch, "internal_batch": 1,
         "gates": gates, "padded": padded, "gpus": 1, "backend": "gpu", "net": NETS[net]}
    if skipped:
        return {"config": c, "skipped": skipped, "skip_kind": "memory"}
    t = _online(gates, seq, batch, net, padded)
    scopes = {"linear": {"compute_seconds": 0.1 * t}, "gelu": {"compute_seconds": 0.3 * t, "bytes_sent": 1e8},
              "softmax": {"compute_seconds": 0.2 * t, "bytes_sent": 5e7},
              "rescale": {"wire_seconds": 0.3 * t, "bytes_sent": 2e8}}
    return {"config": c, "keygen": {"per_batch": {"key_bytes_per_party": 4.3e9 * batch * (0.9 if not padded else 1)}},
            "online": {"per_batch": {"online_seconds": t, "bytes_sent": 3.5e8 * batch, "rounds": 390},
                       "tokens_per_second": batch * seq / t, "scopes_per_batch": scopes}}


def sweep_doc() -> dict:
    """The issue-14 grid for two models: batch 1-8 at seq 128, 1-4 at 512, seq 128-1024
    (1024 sigma out of memory), the padding ablation, and none/lan/wan at seq 128, batch 1."""
    rs = []
    for m in ("bert-base", "gpt2"):
        for g in ("fused", "sigma"):
            rs += [record(m, 128, b, g) for b in (1, 2, 4, 8)] + [record(m, 512, b, g) for b in (1, 2, 4)]
            rs += [record(m, s, 1, g) for s in (256, 1024) if not (s == 1024 and g == "sigma")]
            rs += [record(m, 128, 1, g, net) for net in ("lan", "wan")]
        rs.append(record(m, 1024, 1, "sigma", skipped="P1 killed (out of memory): 139 GB needed"))
        rs.append(record(m, 128, 1, "fused", padded=False))
    return {"fusec_bench": 1, "date": "2026-12-07T00:00:00+00:00", "machine": {}, "command": "synthetic",
            "settings": {}, "results": rs}


@pytest.fixture
def sweep(tmp_path):
    p = tmp_path / "sweep.json"
    p.write_text(json.dumps(sweep_doc()))
    return p


def test_every_plot_from_a_full_sweep(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    made, notes = plots.plot_all([sweep], tmp_path / "out")
    assert {p.name for p in made} == {"scopes_bert-base.png", "scopes_gpt2.png", "throughput.png", "speedup.png",
                                      "seq_sweep.png", "padding_bert-base.png", "padding_gpt2.png", "network.png"}
    assert notes == []
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in made)


def test_what_each_plot_draws(sweep):
    results, _ = load_results([sweep])
    base = plots.loopback(results)
    assert len(base) == len(results) - 2 * 2 * 2            # the lan/wan runs only in the network plot
    panels = plots._batch_panels(plots.speedup_rows(base))
    assert [(m, f["seq"], sorted(r["config"]["batch"] for r in rs)) for m, f, rs in panels] == [
        ("bert-base", 128, [1, 2, 4, 8]), ("bert-base", 512, [1, 2, 4]),
        ("gpt2", 128, [1, 2, 4, 8]), ("gpt2", 512, [1, 2, 4])]
    assert panels[0][2][0]["online"]["ratio"] == pytest.approx(2.5)   # sigma / fused, no network
    shaped = plots.speedup_rows([r for r in results if plots.net_name(r["config"]) == "wan"])
    want = _online("sigma", 128, 1, "wan") / _online("fused", 128, 1, "wan")   # the rounds' latency
    assert [r["online"]["ratio"] for r in shaped] == [pytest.approx(want)] * 2


def test_absent_data_is_skipped_with_a_note(tmp_path):
    pytest.importorskip("matplotlib")
    only = [record("bert-base", 128, 1, "fused"), record("bert-base", 128, 1, "sigma"),
            record("bert-base", 128, 1, "fused", padded=False, skipped="compiler refused")]
    p = tmp_path / "one.json"
    p.write_text(json.dumps({**sweep_doc(), "results": only}))
    made, notes = plots.plot_all([p], tmp_path / "out")
    assert [m.name for m in made] == ["scopes_bert-base.png"]
    text = "\n".join(notes)
    for name in ("throughput.png", "speedup.png", "seq_sweep.png", "padding_bert-base.png", "network.png"):
        assert name in text
    assert "compiler refused" not in text and "memory" in text    # the ablation's skip kind is named


def test_a_rerun_replaces_the_first_measurement(tmp_path):
    first, rerun = record("gpt2", 128, 4, "fused"), record("gpt2", 128, 4, "fused")
    rerun["online"]["per_batch"]["online_seconds"] = 123.0
    failed = record("gpt2", 128, 4, "fused", skipped="out of memory")
    for i, rs in enumerate(([first], [rerun], [failed])):
        (tmp_path / f"{i}.json").write_text(json.dumps({**sweep_doc(), "results": rs}))
    results, docs = load_results([tmp_path / f"{i}.json" for i in range(3)])
    assert len(docs) == 3 and len(results) == 1 and results[0]["online"]["per_batch"]["online_seconds"] == 123.0


def test_two_runtimes_of_one_configuration_stay_apart(tmp_path):
    """A launch-plan run and an interpreted run of one configuration are two results (older
    files learn their runtime from the workers' options), and sigma / fused pairs one runtime."""
    doc = {**sweep_doc(), "results": [record("bert-base", 128, 1, g) for g in ("fused", "sigma")]}
    plans = {**doc, "settings": {"party_argv": ["--cuda-graphs"]}}
    plans["results"] = [record("bert-base", 128, 1, "fused")]
    plans["results"][0]["online"]["per_batch"]["online_seconds"] = 0.1
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (tmp_path / "b.json").write_text(json.dumps(plans))
    results, _ = load_results([tmp_path / "a.json", tmp_path / "b.json"])
    assert sorted((r["config"]["gates"], r["config"]["runtime"]) for r in results) == [
        ("fused", "interpreted"), ("fused", "launch plans"), ("sigma", "interpreted")]
    assert {r["config"]["name"] for r in results} >= {"bert-base/seq128/b1/fused/1gpu/plans"}
    (ratio,) = [r["online"]["ratio"] for r in plots.speedup_rows(results)]
    assert ratio == pytest.approx(_online("sigma", 128, 1, "none") / _online("fused", 128, 1, "none"))


def test_one_configuration_on_one_connection_and_on_four_stays_two_results(tmp_path):
    """The same build timed over 1 and 4 TCP connections (--stripes; 4 the default since the
    eleventh session) is two results, labelled by their connections where not the default; a
    file from before the bench recorded --stripes ran on one connection; sigma / fused pairs
    runs of one connection count only."""
    old = {**sweep_doc(), "results": [record("bert-base", 128, 1, "sigma")]}       # no --stripes: 1
    runs = []
    for n, secs in ((1, 0.3), (4, 0.2)):
        doc = {**sweep_doc(), "settings": {"party_argv": ["--stripes", str(n)]},
               "results": [record("bert-base", 128, 1, "fused")]}
        doc["results"][0]["online"]["per_batch"]["online_seconds"] = secs
        runs.append(doc)
    for i, doc in enumerate([old, *runs]):
        (tmp_path / f"{i}.json").write_text(json.dumps(doc))
    results, _ = load_results([tmp_path / f"{i}.json" for i in range(3)])
    assert sorted((r["config"]["gates"], r["config"]["stripes"]) for r in results) == [
        ("fused", 1), ("fused", 4), ("sigma", 1)]
    labels = {r["config"]["stripes"]: plots.series(r["config"]) for r in results if r["config"]["gates"] == "fused"}
    assert labels == {1: "fused, 1 connection", 4: "fused"}
    (ratio,) = [r["online"]["ratio"] for r in plots.speedup_rows(results)]
    assert ratio == pytest.approx(_online("sigma", 128, 1, "none") / 0.3)


def test_overlapping_scope_times_are_scaled_to_the_online_time():
    """Scopes that add up to more than the online time (launch plans' events overlap) are
    scaled down alike, leaving no "rest"; scopes that add up to less keep their values."""
    pytest.importorskip("matplotlib")
    over, under = record("bert-base", 128, 1, "fused"), record("bert-base", 128, 1, "sigma")
    t = plots.online(over)
    over["online"]["scopes_per_batch"] = {"gelu": {"compute_seconds": 1.5 * t}, "cmp": {"compute_seconds": 0.5 * t}}
    (so, su), _, _ = plots._scope_parts(plots._pyplot(), [over, under])
    assert so == pytest.approx({"gelu": 0.75 * t, "cmp": 0.25 * t, "rest": 0.0})
    t_u = plots.online(under)
    assert su["gelu"] == pytest.approx(0.3 * t_u) and su["rest"] == pytest.approx(0.1 * t_u)


def test_recorded_results_and_the_command_line(tmp_path):
    pytest.importorskip("matplotlib")
    files = sorted((RESULTS / "h200_2026-12-06").glob("*.json"))
    r = subprocess.run([sys.executable, "-m", "fusec.bench.plots", *map(str, files), "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "scopes_bert-base.png")]
    assert "skipped throughput.png" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": []}')
    r = subprocess.run([sys.executable, "-m", "fusec.bench.plots", str(bad), "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is not the output of fusec bench" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_without_matplotlib_one_line(monkeypatch, sweep, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)            # import matplotlib -> ImportError
    with pytest.raises(FusecError, match=r"pip install 'fusec\[plot\]'"):
        plots.plot_all([sweep], tmp_path)


def test_a_batch_in_lanes_is_a_line_of_its_own_and_pairs_only_with_lanes(tmp_path):
    """--lanes: batch 4 as 2 lanes of 2 is drawn beside batch 4 in one lane, not on its line,
    and sigma / fused pairs lanes with lanes."""
    one = [record("bert-base", 128, b, g) for b in (1, 4) for g in ("fused", "sigma")]
    lanes = [record("bert-base", 128, 4, g) for g in ("fused", "sigma")]
    for r, t in zip(lanes, (0.5, 2.0)):
        r["config"].update(lanes=2, lane_batch=2, name=r["config"]["name"].replace("/b4/", "/b4/2x2/"))
        r["online"]["per_batch"]["online_seconds"] = t
    results = one + lanes
    assert plots.series(lanes[0]["config"]) == "fused, 2 lanes" and plots.series(one[0]["config"]) == "fused"
    ratios = sorted(r["online"]["ratio"] for r in plots.speedup_rows(results))
    want = sorted([2.0 / 0.5] + [_online("sigma", 128, b, "none") / _online("fused", 128, b, "none") for b in (1, 4)])
    assert ratios == pytest.approx(want)
    pytest.importorskip("matplotlib")
    doc = {**sweep_doc(), "results": results}
    (tmp_path / "lanes.json").write_text(json.dumps(doc))
    made, _ = plots.plot_all([tmp_path / "lanes.json"], tmp_path / "out")
    assert "throughput.png" in {p.name for p in made}


def test_a_skipped_row_keeps_the_sizes_the_compile_found():
    """Where memory stops a configuration the table says so, with the rounds and the key per
    inference per party the build needed (issue 14: the table says so with the sizes)."""
    from fusec.bench.markdown import _row

    rec = record("bert-base", 128, 8, "fused", skipped="P0 failed: the GPU ran out of memory")
    assert _row(rec)[5:] == ["skipped (memory)"] + ["-"] * 7        # nothing compiled: nothing known
    rec["compile"] = {"rounds_planned": 511, "key_bytes_per_set": 27_799_928_832}
    row = _row(rec)
    assert row[5] == "skipped (memory)" and row[9] == "511" and row[11] == "3.47 GB"
