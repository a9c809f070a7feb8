"""``fusec bench``: the merge rules, the end-to-end run on the CPU, failures, plots and tables.

The end-to-end test recomputes every merged number from the two workers' own JSON files
(latency = the slower party, bytes = both parties added, rounds = the larger count,
median over the timed steps), so it checks the bench against what the parties measured,
not against the bench's own code.
"""
import importlib.util
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusec.bench import (BenchError, BenchOptions, Case, ModelSpec, PartyPair, classify_failure, merge_parties,
                         plan_cases, plan_keys, render_markdown, resolve_model, summarize)
from fusec.errors import FusecError
from fusec.runtime.layout import KeyLayout
from fusec.runtime.seeded_shares import party_layout

ROOT = Path(__file__).parent.parent
BERT_TINY = ROOT / "tests" / "data" / "bert_tiny_legacy.onnx"
DIGITS = ROOT / "fusec" / "examples" / "digits_mlp.onnx"


def fusec(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------- merge and median, hand-made data
def _party_step(step, warmup, online, nbytes, rounds, scopes):
    return {"step": step, "warmup": warmup, "key_files": ["k"], "sets": [0], "online_seconds": online,
            "wall_seconds": online + 1.0, "stage_seconds": None, "bytes_sent": nbytes, "rounds": rounds,
            "scopes": scopes}


def test_merge_takes_the_slower_party_and_adds_bytes():
    p0 = _party_step(3, False, 2.0, 100, 10, {"gelu": {"seconds": 0.5, "bytes_sent": 40},
                                               "linear": {"seconds": 0.1, "bytes_sent": 0}})
    p1 = _party_step(3, False, 1.5, 60, 12, {"gelu": {"seconds": 0.7, "bytes_sent": 20},
                                              "softmax": {"seconds": 0.2, "bytes_sent": 8, "gpu_seconds": 0.1}})
    m = merge_parties(p0, p1)
    assert m["step"] == 3 and m["warmup"] is False
    assert m["online_seconds"] == 2.0 and m["wall_seconds"] == 3.0     # latency: max over parties
    assert m["bytes_sent"] == 160                                       # bytes: both parties' sends
    assert m["rounds"] == 12
    assert "stage_seconds" not in m and "sets" not in m and "key_files" not in m
    assert m["scopes"]["gelu"] == {"seconds": 0.7, "bytes_sent": 60}
    assert m["scopes"]["linear"] == {"seconds": 0.1, "bytes_sent": 0}   # a scope only one party has
    assert m["scopes"]["softmax"] == {"seconds": 0.2, "bytes_sent": 8, "gpu_seconds": 0.1}


def test_summary_is_the_median_of_timed_steps_per_batch_and_per_inference():
    sc = lambda s, b: {"cmp": {"seconds": s, "bytes_sent": b}}  # noqa: E731
    steps = [{"step": 0, "warmup": True, "online_seconds": 99.0, "bytes_sent": 999, "rounds": 9, "scopes": sc(9, 9)},
             {"step": 1, "warmup": False, "online_seconds": 4.0, "bytes_sent": 800, "rounds": 20, "scopes": sc(1, 80)},
             {"step": 2, "warmup": False, "online_seconds": 8.0, "bytes_sent": 800, "rounds": 20, "scopes": sc(3, 80)},
             {"step": 3, "warmup": False, "online_seconds": 5.0, "bytes_sent": 800, "rounds": 20, "scopes": {}}]
    s = summarize(steps, batch=2, internal_batch=4, seq=16)
    assert s["steps_timed"] == 3
    assert s["per_step"] == {"online_seconds": 5.0, "bytes_sent": 800, "rounds": 20}
    assert s["per_batch"] == {"online_seconds": 1.25, "bytes_sent": 200, "rounds": 5}
    assert s["per_inference"] == {"online_seconds": 0.625, "bytes_sent": 100, "rounds": 5}   # rounds stay
    assert s["tokens_per_second"] == pytest.approx(2 * 4 * 16 / 5.0)
    assert s["scopes_per_batch"]["cmp"] == {"seconds": 1 / 4, "bytes_sent": 80 / 4}           # missing = 0
    with pytest.raises(FusecError, match="no timed step"):
        summarize(steps[:1], 1, 1, 1)


def test_round_phases_are_kept_per_party_and_summarized_as_medians():
    """Each party's round phases survive the merge apart (their difference is the waiting)
    and the summary holds each phase's median over the timed steps, per batch."""
    def step(i, warm, p0, p1):
        a = {**_party_step(i, warm, 1.0, 10, 5, {}), "round_phases": {"step": p0, "wire": 1.0}}
        b = {**_party_step(i, warm, 1.0, 10, 5, {}), "round_phases": {"step": p1, "wire": 2.0}}
        return merge_parties(a, b)

    steps = [step(0, True, 50.0, 50.0), step(1, False, 2.0, 4.0), step(2, False, 6.0, 8.0), step(3, False, 4.0, 6.0)]
    assert steps[1]["round_phases"] == {"p0": {"step": 2.0, "wire": 1.0}, "p1": {"step": 4.0, "wire": 2.0}}
    s = summarize(steps, batch=1, internal_batch=2, seq=8)
    assert s["round_phases_per_batch"] == {"p0": {"step": 2.0, "wire": 0.5}, "p1": {"step": 3.0, "wire": 1.0}}


def test_keys_unpacked_late_by_either_party_mark_the_configuration():
    """A set staged but unpacked gate by gate inside the clock (it did not fit unpacked on the
    card) is slower online: one party saying so marks the step and the summary."""
    def step(i, late0, late1):
        return merge_parties({**_party_step(i, False, 1.0, 10, 5, {}), "keys_unpacked_late": late0},
                             {**_party_step(i, False, 1.0, 10, 5, {}), "keys_unpacked_late": late1})

    assert step(0, False, True)["keys_unpacked_late"] and not step(0, False, False)["keys_unpacked_late"]
    assert summarize([step(0, False, False), step(1, True, False)], 1, 1, 8)["keys_unpacked_late"]
    assert not summarize([step(0, False, False)], 1, 1, 8)["keys_unpacked_late"]


def test_seeded_shares_written_inside_the_clock_mark_the_configuration():
    """A set left in its stored layout on the card regenerates its seeded shares as each gate
    starts (AES inside the online clock): either party saying so marks the summary, and the
    table's footnote says it."""
    from fusec.bench.markdown import _late_keys_note

    def step(i, late0, late1):
        return merge_parties({**_party_step(i, False, 1.0, 10, 5, {}), "keys_unpacked_late": True,
                              "seeded_shares_late": late0},
                             {**_party_step(i, False, 1.0, 10, 5, {}), "keys_unpacked_late": True,
                              "seeded_shares_late": late1})

    late = summarize([step(0, False, True), step(1, False, False)], 1, 1, 8)
    assert late["seeded_shares_late"] and not summarize([step(0, False, False)], 1, 1, 8)["seeded_shares_late"]
    doc = {"settings": {"party_argv": ["--cuda-graphs"]}, "results": [{"online": {"keys_unpacked_late": True}}]}
    assert "inside the recorded graphs" in _late_keys_note(doc)[-1] and "seeds" not in _late_keys_note(doc)[-1]
    doc["results"].append({"online": late})
    assert "regenerated its seeded shares from their seeds" in _late_keys_note(doc)[-1]
    assert _late_keys_note({"settings": {}, "results": [{"online": {}}]}) == []


def test_a_launch_plan_either_party_did_not_record_marks_the_configuration():
    """A worker that recorded no launch plan (it would not have fit) interpreted every step:
    its memory record says why, the merge keeps both parties' records (and lanes' pairs), and
    the summary carries the reason, so the table does not call the run "launch plans"."""
    note = "the launch plan was not recorded: ... every inference is interpreted"

    def step(i, m0, m1):
        return merge_parties({**_party_step(i, False, 1.0, 10, 5, {}), "memory": m0},
                             {**_party_step(i, False, 1.0, 10, 5, {}), "memory": m1})

    fits = {"card_free": 1, "pool_held": 2}
    assert step(0, fits, {})["memory"] == [fits]
    assert summarize([step(0, fits, fits)], 1, 1, 8)["plan_refused"] is None
    assert summarize([step(0, fits, {**fits, "plan_refused": note})], 1, 1, 8)["plan_refused"] == note
    lanes = {"step": 0, "warmup": False, "online_seconds": 1.0, "memory": [[fits, fits], [fits, {"plan_refused": note}]]}
    assert summarize([lanes], 1, 1, 8)["plan_refused"] == note


def test_key_plan_up_front_per_step_streamed_or_skipped(tmp_path):
    gb = 10**9
    up = plan_keys("auto", gb, 6, 4, 100 * gb, tmp_path)        # 6 steps x 4 sets x 2 parties = 48 GB: fits
    assert up.mode == "upfront" and up.files(5) == [(tmp_path, 24)] and up.generated_before(0) == [(tmp_path, 24)]
    assert up.generated_before(1) == [] and up.stale(1) is None
    per = plan_keys("auto", gb, 6, 4, 20 * gb, tmp_path)         # one step (8 GB) fits, all do not
    assert per.mode == "per-step" and per.files(2) == [(tmp_path / "step2" / "part0", 4)]
    assert per.generated_before(2) == per.files(2) and per.stale(2) == tmp_path / "step1"
    assert [n for _, n in plan_keys("auto", gb, 6, 4, 20 * gb, tmp_path, dealers=3).files(0)] == [2, 1, 1]
    assert plan_keys("auto", gb, 6, 4, 5 * gb, tmp_path).mode == "stream"   # not even a step fits: no files
    with pytest.raises(BenchError, match="one step's key sets need 8.00 GB") as e:
        plan_keys("per-step", gb, 6, 4, 5 * gb, tmp_path)
    assert e.value.kind == "disk"
    with pytest.raises(BenchError, match="all key sets need 48.00 GB"):
        plan_keys("upfront", gb, 6, 4, 20 * gb, tmp_path)
    split = plan_keys("auto", gb, 6, 4, 100 * gb, tmp_path, dealers=3)      # parallel dealers: a file per step
    assert split.files(1) == [(tmp_path / "step1", 4)] and len(split.generated_before(0)) == 6
    assert split.resident == 24 and per.resident == 4


def test_memory_check_takes_the_machines_stated_memory(monkeypatch, tmp_path):
    """A microVM whose MemAvailable grows as it is used (the lent H200s start at about 31 GiB)
    would skip a configuration that fits; $FUSEC_HOST_MEMORY_GIB states the real size."""
    from fusec.bench.keys import check_memory
    gb = 10**9
    plan = plan_keys("stream", 28 * gb, 4, 1, 0, tmp_path)
    case = Case(resolve_model("bert-base", layers=1), seq=128, batch=8, gates="fused", gpus=1)
    monkeypatch.setenv("FUSEC_HOST_MEMORY_GIB", "31")
    with pytest.raises(BenchError, match="needs at least 56.00 GB of memory") as e:
        check_memory(28 * gb, plan, case)
    assert e.value.kind == "memory"
    monkeypatch.setenv("FUSEC_HOST_MEMORY_GIB", "120")
    check_memory(28 * gb, plan, case)
    monkeypatch.setenv("FUSEC_HOST_MEMORY_GIB", "lots")
    with pytest.raises(BenchError, match="not a number of GiB"):
        check_memory(28 * gb, plan, case)


def test_cases_grid_sweep_and_ablation(tmp_path):
    m = resolve_model("bert-base", layers=2)
    assert (m.layers, m.bits, m.label) == (2, 50, "bert-base-L2")
    opts = BenchOptions([m], seqs=[128], batches=[1, 2], seq_sweep=[256, 128], gpus=[1, 2], backend="gpu",
                        padding_ablation=True, workdir=tmp_path)
    names = [c.name for c in plan_cases(opts)]
    assert len(names) == len(set(names)) == 3 * 2 * 2 + 2
    assert "bert-base-L2/seq256/b1/sigma/2gpu" in names and "bert-base-L2/seq256/b2/fused/1gpu" not in names
    assert "bert-base-L2/seq128/b1/fused-unpadded/1gpu" in names
    cpu = plan_cases(BenchOptions([m], gpus=[1, 2], backend="cpu", workdir=tmp_path))
    assert [c.gpus for c in cpu] == [None, None]


def test_bad_configuration_is_a_clear_error(tmp_path):
    r = fusec("bench", "--model", "bert-huge", "--workdir", tmp_path)
    assert r.returncode == 2 and "unknown model 'bert-huge'" in r.stderr and "Traceback" not in r.stderr
    r = fusec("bench", "--model", DIGITS, "--gates", "fused,magic", "--workdir", tmp_path)
    assert r.returncode == 2 and "unknown gate set" in r.stderr
    r = fusec("bench", "--model", DIGITS, "--cuda-graphs", "--workdir", tmp_path)        # the CPU backend
    assert r.returncode == 2 and "--cuda-graphs" in r.stderr and "--backend gpu" in r.stderr
    r = fusec("bench", "--model", DIGITS, "--cuda-graphs", "--backend", "gpu", "--stream-keys", "--workdir", tmp_path)
    assert r.returncode == 2 and "no --stream-keys" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(FusecError, match="--layers applies to the presets"):
        resolve_model(str(DIGITS), layers=3)


def test_failure_kinds():
    assert classify_failure(-9, "") == "memory"
    assert classify_failure(1, "cupy.cuda.memory.OutOfMemoryError: out of memory allocating") == "memory"
    assert classify_failure(1, "OSError: [Errno 28] No space left on device") == "disk"
    assert classify_failure(2, "error: key file broken") == "error"


def test_worker_command_line_refuses_bad_input_in_one_line(tmp_path):
    """``python -m fusec.bench serve|keygen`` (the processes the bench starts): a usage
    error is exit status 2 with click's message; a worker given neither --listen nor --peer
    answers an error event on its protocol stream and exits 2."""
    def worker(*args):
        return subprocess.run([sys.executable, "-m", "fusec.bench", *map(str, args)], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    r = worker("keygen", tmp_path, "-o", tmp_path / "k", "--count", "0")
    assert r.returncode == 2 and "Invalid value for '--count'" in r.stderr and "Traceback" not in r.stderr
    r = worker("serve", tmp_path)
    assert r.returncode == 2 and "Missing option '--party'" in r.stderr
    r = worker("serve", tmp_path, "--party", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert json.loads(r.stdout) == {"event": "error", "message": "give exactly one of --listen and --peer"}


# ---------------------------------------------------------------------- end to end on the CPU
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One bench run: bert-tiny (legacy export), seq 8, batch 1, internal batch 2,
    warm-up 1 + 2 timed steps, fused and SIGMA-style gates, CPU backend."""
    wd = tmp_path_factory.mktemp("bench")
    out = wd / "out.json"
    t0 = time.perf_counter()
    r = fusec("bench", "--model", BERT_TINY, "--seq", "8", "--batch", "1", "--internal-batch", "2",
              "--warmup", "1", "--repeat", "2", "--gates", "fused,sigma", "--bits", "37", "--workdir", wd,
              "--json", out, "--markdown", wd / "out.md", "--timeout", "300")
    assert r.returncode == 0, r.stderr
    return wd, json.loads(out.read_text()), time.perf_counter() - t0


def _both(metric, a, b):
    """Bytes of both parties add up; times are the slower party's."""
    if a is None or b is None:
        return a if b is None else b
    return a + b if "bytes" in metric else max(a, b)


def _expected_steps(party_files):
    """Merged steps recomputed from the workers' own files."""
    docs = [json.loads(Path(f).read_text()) for f in party_files]
    assert [d["party"] for d in docs] == [0, 1]
    p0, p1 = (d["steps"] for d in docs)
    out = []
    for a, b in zip(p0, p1):
        assert a["step"] == b["step"] and a["warmup"] == b["warmup"] and a["sets"] == b["sets"]
        out.append({"warmup": a["warmup"], "online_seconds": max(a["online_seconds"], b["online_seconds"]),
                    "wall_seconds": max(a["wall_seconds"], b["wall_seconds"]),
                    "bytes_sent": a["bytes_sent"] + b["bytes_sent"], "rounds": max(a["rounds"], b["rounds"]),
                    "scopes": {sc: {m: _both(m, a["scopes"].get(sc, {}).get(m), b["scopes"].get(sc, {}).get(m))
                                    for m in set(a["scopes"].get(sc, {})) | set(b["scopes"].get(sc, {}))}
                               for sc in set(a["scopes"]) | set(b["scopes"])}})
    return out


def test_bench_end_to_end_on_the_cpu(bench_run):
    wd, doc, seconds = bench_run
    assert doc["fusec_bench"] == 1 and doc["command"].startswith("fusec bench --model")
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"]
    assert [r["config"]["gates"] for r in doc["results"]] == ["fused", "sigma"]
    for rec in doc["results"]:
        assert "skipped" not in rec, rec.get("skipped")
        c, on = rec["config"], rec["online"]
        assert (c["seq"], c["batch"], c["internal_batch"], c["gpus"], c["backend"]) == (8, 1, 2, None, "cpu")
        assert [s["warmup"] for s in on["steps"]] == [True, False, False]
        exp = _expected_steps(rec["party_files"])
        timed = [s for s in exp if not s["warmup"]]
        for key in ("online_seconds", "wall_seconds", "bytes_sent", "rounds"):
            assert on["per_step"][key] == pytest.approx(statistics.median(s[key] for s in timed)), key
            assert on["per_batch"][key] == pytest.approx(on["per_step"][key] / 2), key
        assert on["per_inference"]["online_seconds"] == pytest.approx(on["per_batch"]["online_seconds"])  # batch 1
        assert on["tokens_per_second"] == pytest.approx(1 * 2 * 8 / on["per_step"]["online_seconds"])
        assert set(on["scopes_per_batch"]) == {sc for s in timed for sc in s["scopes"]}
        for sc, metrics in on["scopes_per_batch"].items():
            for m, value in metrics.items():
                want = statistics.median(s["scopes"].get(sc, {}).get(m, 0) for s in timed) / 2
                assert value == pytest.approx(want), (sc, m)
        # bytes never depend on the inputs or the keys: every step sends the same
        assert len({s["bytes_sent"] for s in exp}) == 1
        assert sum(m.get("bytes_sent", 0) for m in on["scopes_per_batch"].values()) == on["per_batch"]["bytes_sent"]
        assert on["per_step"]["key_load_seconds"] > 0                          # claim + staging, not online
        assert on["per_step"]["wall_seconds"] > on["per_step"]["online_seconds"]
        assert on["per_batch"]["rounds"] == rec["compile"]["rounds_planned"]   # the executor ran the schedule
        layout = KeyLayout.from_json((Path(rec["compile"]["build"]) / "keys.layout.json").read_text())
        stored = [party_layout(layout, p).set_nbytes for p in (0, 1)]     # each party's file (seeded shares)
        assert rec["keygen"]["per_batch"]["key_bytes_per_party"] == sum(stored) / 2
        assert (sum(stored) < 2 * layout.set_nbytes) == (c["gates"] == "fused")    # sigma: both hold every share
        assert rec["keygen"]["sets"] == 6 and rec["keygen"]["per_batch"]["seconds"] > 0
        assert not Path(rec["keys"]["dir"]).exists()          # single-use keys are deleted afterwards
    md = (wd / "out.md").read_text()
    assert md == render_markdown(doc)
    assert "| model | seq | batch | gates |" in md and doc["command"] in md
    assert "Fused against SIGMA-style gates" in md and "By scope, bert_tiny_legacy" in md
    for rec in doc["results"]:          # key load per set: the parts, the total and the rate over the key bytes
        pb = rec["online"]["per_batch"]
        rate = rec["keygen"]["per_batch"]["key_bytes_per_party"] / pb["key_load_seconds"] / 1e9
        assert f"| {rec['config']['name']} | {pb['hello_seconds'] * 1e3:.0f} ms | {pb['claim_seconds'] * 1e3:.0f} ms |" \
            in md and f"| {rate:.2f} GB/s |" in md


@pytest.mark.slow   # a wall-clock bound: it fails on a loaded machine, so it is not part of CI (timings: BENCHMARKS.md)
def test_end_to_end_stays_fast(bench_run):
    assert bench_run[2] < 90, f"the CPU bench of bert-tiny took {bench_run[2]:.0f} s"


def test_plots_and_table_from_the_results(bench_run, tmp_path):
    pytest.importorskip("matplotlib")
    wd, doc, _ = bench_run
    plot = runpy.run_path(str(ROOT / "bench" / "plot.py"), run_name="plot")
    made = plot["plot_all"]([wd / "out.json"], tmp_path)
    # one batch size, one sequence length: the sweeps' plots are skipped (tests/test_bench_plots.py draws them)
    assert {p.name for p in made} == {"scopes_bert_tiny_legacy.png"}
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in made)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), str(wd / "out.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == render_markdown(doc).strip()


def test_padding_ablation_runs_and_says_insecure(tmp_path):
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    r = fusec("bench", "--model", DIGITS, "--seq", "1", "--batch", "2", "--internal-batch", "1", "--warmup", "0",
              "--repeat", "1", "--gates", "fused", "--padding-ablation", "--workdir", tmp_path, "--json", out,
              "--markdown", md)
    assert r.returncode == 0, r.stderr
    padded, ablation = json.loads(out.read_text())["results"]
    assert ablation["config"]["padded"] is False and "skipped" not in ablation, ablation.get("skipped")
    for rec in (padded, ablation):
        assert rec["online"]["per_batch"]["rounds"] >= 1 and rec["online"]["steps_timed"] == 1
    assert json.loads((Path(ablation["compile"]["build"]) / "manifest.json").read_text())["insecure"] is True
    assert ablation["keygen"]["per_set_parts"]["key_bytes_used"] <= ablation["keygen"]["per_batch"]["key_bytes_per_party"]
    assert "key_bytes_used" not in padded["keygen"]["per_set_parts"]
    text = md.read_text()
    assert "fused (no padding, INSECURE)" in text and "Padding ablation: the unpadded build is INSECURE" in text


@pytest.mark.parametrize("keys, files, sets", [
    (["--keys", "per-step"], 3, [0, 1]),                    # each step's 2 sets right before it
    (["--dealers", "2"], 3, [0, 1]),                        # all up front, one file pair per step, in parallel
    (["--keys", "per-step", "--dealers", "2"], 6, [0, 0]),  # each step's sets from 2 dealers at once
])
def test_keys_per_step_or_from_parallel_dealers(keys, files, sets, tmp_path):
    out = tmp_path / "out.json"
    r = fusec("bench", "--model", DIGITS, "--seq", "1", "--batch", "1", "--internal-batch", "2", "--warmup", "1",
              "--repeat", "2", "--gates", "sigma", "--workdir", tmp_path, "--json", out, *keys)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())["results"][0]
    assert rec["keys"]["files_per_party"] == files and rec["keygen"]["sets"] == 6 and rec["keygen"]["runs"] == files
    steps = json.loads(Path(rec["party_files"][0]).read_text())["steps"]
    assert len({f for s in steps for f in s["key_files"]}) == files and all(s["sets"] == sets for s in steps)
    # the parties took exactly the rounds the compiler planned (the program's schedule)
    assert rec["online"]["per_batch"]["rounds"] == rec["compile"]["rounds_planned"] > 0
    assert not Path(rec["keys"]["dir"]).exists()


def test_keys_streamed_by_a_dealer_process_need_no_disk(tmp_path):
    """--keys stream: one `fusec keygen --serve` process serves all 6 sets over loopback,
    the workers take them in order, no key file is written, the dealer's time is recorded,
    and the outputs go the planned rounds like file keys."""
    out = tmp_path / "out.json"
    r = fusec("bench", "--model", DIGITS, "--seq", "1", "--batch", "1", "--internal-batch", "2", "--warmup", "1",
              "--repeat", "2", "--gates", "fused", "--workdir", tmp_path, "--json", out, "--keys", "stream",
              "--markdown", tmp_path / "out.md")
    assert r.returncode == 0, r.stderr
    assert "--keys stream; no key files" in (tmp_path / "out.md").read_text()
    rec = json.loads(out.read_text())["results"][0]
    assert rec["keys"]["mode"] == "stream" and rec["keys"]["files_per_party"] == 0
    assert rec["keygen"]["sets"] == 6 and rec["keygen"]["runs"] == 1 and rec["keygen"]["per_batch"]["seconds"] > 0
    steps = json.loads(Path(rec["party_files"][0]).read_text())["steps"]
    assert [s["sets"] for s in steps] == [[0, 1], [2, 3], [4, 5]]
    assert all(s["key_files"] == [steps[0]["key_files"][0]] and s["key_files"][0].startswith("tcp://127.0.0.1:")
               for s in steps)
    assert rec["online"]["per_batch"]["rounds"] == rec["compile"]["rounds_planned"] > 0
    assert not list(tmp_path.rglob("*.key"))


def test_keygen_in_memory_times_whole_sets_without_files(digits_build, tmp_path):
    """`python -m fusec.bench keygen-in-memory`: every set made and packed (both parties'
    bytes counted), one time per set, nothing written."""
    r = subprocess.run([sys.executable, "-m", "fusec.bench", "keygen-in-memory", str(digits_build), "--count", "2",
                        "--backend", "cpu"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["bytes_made"] == 2 * sum(doc["stored_nbytes"]) and len(doc["set_seconds"]) == 2
    assert sum(doc["stored_nbytes"]) < 2 * doc["set_nbytes"]        # seeds in place of one party's shares
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- failures surface quickly
@pytest.fixture(scope="module")
def digits_build(tmp_path_factory):
    build = tmp_path_factory.mktemp("digits") / "build"
    r = fusec("compile", DIGITS, "-o", build, "--batch", "1")
    assert r.returncode == 0, r.stderr
    return build


def _pair(build, tmp_path, timeout=60.0):
    case = Case(ModelSpec("digits"), seq=1, batch=1, gates="fused", gpus=None)
    return case, PartyPair(case, build, "cpu", tmp_path / "run", timeout=timeout)


def test_a_bad_key_path_is_a_clear_error_quickly(digits_build, tmp_path):
    case, pair = _pair(digits_build, tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(BenchError) as e, pair:
        pair.start()
        pair.step(0, False, [tmp_path / "no-such-keys"], 1)
    assert time.perf_counter() - t0 < 30
    msg = str(e.value)
    assert msg.startswith(case.name) and "no-such-keys" in msg and "stderr (last lines)" in msg
    assert "full logs" in msg and e.value.kind == "error"
    assert all(p.poll() is not None for p in pair.procs)       # nobody is left running


def test_a_dead_worker_is_reported_not_waited_for(digits_build, tmp_path):
    case, pair = _pair(digits_build, tmp_path, timeout=600.0)
    t0 = time.perf_counter()
    with pytest.raises(BenchError, match="P1 exited") as e, pair:
        pair.start()
        pair.procs[1].kill()
        pair.procs[1].wait()
        pair.step(0, False, [tmp_path / "keys"], 1)
    assert time.perf_counter() - t0 < 30 and case.name in str(e.value)
    assert all(p.poll() is not None for p in pair.procs)


# ---------------------------------------------------------------------- GPU (skipped without one)
def _gpu_count() -> int:
    if importlib.util.find_spec("cupy") is None or shutil.which("nvidia-smi") is None:
        return 0
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return r.stdout.count("GPU ") if r.returncode == 0 else 0


@pytest.mark.gpu
@pytest.mark.parametrize("gpus", [1, 2])
def test_bench_on_gpus(gpus, tmp_path):
    if _gpu_count() < gpus:
        pytest.skip(f"needs {gpus} GPU(s) and CuPy")
    out = tmp_path / "out.json"
    r = fusec("bench", "--model", BERT_TINY, "--seq", "16", "--batch", "1,2", "--internal-batch", "2",
              "--warmup", "1", "--repeat", "2", "--gates", "fused,sigma", "--bits", "37", "--backend", "gpu",
              "--gpus", str(gpus), "--workdir", tmp_path, "--json", out, timeout=1800)
    assert r.returncode == 0, r.stderr
    for rec in json.loads(out.read_text())["results"]:
        assert "skipped" not in rec, rec.get("skipped")
        assert rec["config"]["gpus"] == gpus and rec["online"]["tokens_per_second"] > 0


def test_two_gpus_give_each_party_its_own_card(monkeypatch):
    """`--gpus 2`: party p sees only the p-th visible GPU; `--gpus 1`: both see the first,
    and each may take half its memory; too few visible GPUs is a machine error naming them;
    the CPU backend leaves CUDA alone."""
    from fusec.bench.pair import party_envs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    monkeypatch.delenv("FUSEC_GPU_SHARE", raising=False)
    e0, e1 = party_envs("gpu", 2)
    assert (e0["CUDA_VISIBLE_DEVICES"], e1["CUDA_VISIBLE_DEVICES"]) == ("3", "5")
    assert "FUSEC_GPU_SHARE" not in e0 and "FUSEC_GPU_SHARE" not in e1
    e0, e1 = party_envs("gpu", 1)
    assert (e0["CUDA_VISIBLE_DEVICES"], e1["CUDA_VISIBLE_DEVICES"]) == ("3", "3")
    assert e0["FUSEC_GPU_SHARE"] == e1["FUSEC_GPU_SHARE"] == "0.5"
    monkeypatch.setenv("FUSEC_GPU_SHARE", "0.4")                                  # the user's own split stays
    assert party_envs("gpu", 1)[1]["FUSEC_GPU_SHARE"] == "0.4"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with pytest.raises(BenchError, match=r"2 GPU\(s\) asked for, 1 visible here \(7\)") as e:
        party_envs("gpu", 2)
    assert e.value.kind == "machine"
    e0, e1 = party_envs("cpu", 2)
    assert e0["CUDA_VISIBLE_DEVICES"] == e1["CUDA_VISIBLE_DEVICES"] == "7"     # inherited, untouched


def test_a_run_under_cuda_mps_says_so_in_its_machine_line():
    from fusec.bench.markdown import _machine_line
    m = {"gpus": ["NVIDIA H100 80GB HBM3, 81559 MiB"], "cpu": "x", "cores": 16, "versions": {}}
    assert "MPS" not in _machine_line(m)
    assert "under CUDA MPS" in _machine_line({**m, "cuda_mps": True})


def test_mps_daemon_runs_for_the_bench_and_is_stopped(tmp_path, monkeypatch):
    """--mps: the daemon starts with its pipe under the workdir, the bench's processes inherit
    it, and it gets 'quit' at the end (a stand-in control program records both)."""
    import os
    import stat

    from fusec.bench import mps

    bindir = tmp_path / "bin"
    bindir.mkdir()
    control = bindir / mps.CONTROL
    control.write_text('#!/bin/sh\nif [ "$1" = "-d" ]; then echo "$CUDA_MPS_PIPE_DIRECTORY" > "$MPS_REC.start"; '
                       'else cat > "$MPS_REC.stdin"; fi\n')
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPS_REC", str(tmp_path / "rec"))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "cuda_mps", lambda: False)
    with mps.mps_daemon(tmp_path / "work"):
        pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
        assert pipe == str(tmp_path / "work" / "mps" / "pipe")
        assert (tmp_path / "rec.start").read_text().strip() == pipe
        assert not (tmp_path / "rec.stdin").exists()
    assert (tmp_path / "rec.stdin").read_text() == "quit\n"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def _fake_proc(root, procs):
    for pid, (comm, state) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "stat").write_text(f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1\n")


@pytest.mark.parametrize("procs, running", [
    ({7: ("nvidia-cuda-mps-control", "S")}, True),
    ({7: ("nvidia-cuda-mps-control", "Z"), 8: ("python3", "S")}, False),   # quit, not yet reaped
    ({7: ("nvidia-cuda-mps-server", "X")}, False),
    ({7: ("nvidia-cuda-mps-control", "Z"), 9: ("nvidia-cuda-mps-server", "R")}, True),
    ({8: ("python3", "R")}, False)])
def test_only_a_live_mps_daemon_counts_as_running(tmp_path, procs, running):
    """A daemon that has quit but is not yet reaped kept its name, and a bench started then ran
    without MPS while recording MPS (0.31-0.33 s against 0.20-0.23 s for BERT-base, H100)."""
    from fusec.bench.machine import cuda_mps

    _fake_proc(tmp_path, procs)
    assert cuda_mps(tmp_path) is running


def test_a_real_zombie_is_not_alive():
    """The state is read where /proc puts it, after the command's closing parenthesis."""
    import subprocess
    import time
    from pathlib import Path

    from fusec.bench.machine import _alive

    child = subprocess.Popen(["sleep", "0"])
    d = Path(f"/proc/{child.pid}")
    deadline = time.monotonic() + 10
    while _alive(d) and time.monotonic() < deadline:     # exits at once; not reaped until wait()
        time.sleep(0.01)
    try:
        assert not _alive(d)
    finally:
        child.wait()
    assert _alive(Path(f"/proc/{os.getpid()}"))


def test_mps_daemon_returns_once_its_daemon_is_gone(tmp_path, monkeypatch):
    """After 'quit' the daemon takes a moment to go: the bench waits for it, so the next bench
    starts a daemon of its own; a daemon that never goes is waited for a bounded time."""
    import stat as st

    from fusec.bench import mps

    bindir = tmp_path / "bin"
    bindir.mkdir()
    control = bindir / mps.CONTROL
    control.write_text("#!/bin/sh\ncat > /dev/null\n")
    control.chmod(control.stat().st_mode | st.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    answers = iter([False] + [True] * 3 + [False])      # before start; then going, going, going, gone
    seen: list[bool] = []
    monkeypatch.setattr(mps, "cuda_mps", lambda: seen.append(next(answers)) or seen[-1])
    with mps.mps_daemon(tmp_path / "work"):
        assert seen == [False]
    assert seen == [False, True, True, True, False]
    monkeypatch.setattr(mps, "cuda_mps", lambda: True)
    assert mps._wait_gone(timeout=0.3) is False


def test_mps_without_its_control_program_or_a_gpu_is_one_clear_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": str(tmp_path)}      # no nvidia-cuda-mps-control there
    for args, says in ((["--backend", "gpu"], "nvidia-cuda-mps-control"), ([], "needs --backend gpu")):
        r = subprocess.run([sys.executable, "-m", "fusec", "bench", "--model", "bert-tiny", "--mps",
                            "--workdir", str(tmp_path / "w"), *args], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("rc, says, kind", [(2, "error: the GPU ran out of memory: Out of memory allocating", "memory"),
                                            (1, "Traceback: a dealer bug", "error"), (0, "served 5 set(s)", "error")])
def test_a_worker_failure_names_the_key_stream_dealer_that_stopped(tmp_path, rc, says, kind):
    """Both workers only see their key stream close; the reason is in the dealer's log. A
    dealer that exited non-zero adds its status and last lines, and its kind (an allocation
    on the card is a skip); one that served every set (status 0) is not the reason."""
    from fusec.bench.stream_dealer import StreamDealer
    case = Case(ModelSpec("digits"), seq=1, batch=1, gates="fused", gpus=None)
    log = tmp_path / "keystream.log"
    log.write_text(f"serving 5 key set(s)\n{says}\n")
    dealer = StreamDealer(tmp_path, 5, "gpu", 10.0, case, log)
    dealer.proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({rc})"])
    worker = BenchError(f"{case.name}: P0 failed: peer closed the connection", "see its log", kind="error")
    got = dealer.explain(worker)
    assert got.kind == kind
    if rc:
        assert got.message.startswith(worker.message) and f"exit status {rc}" in got.message and says in got.message
    else:
        assert got is worker


def test_a_card_too_small_for_the_servers_key_sets_is_a_skip_with_the_sizes():
    """Both parties on one card hold two stored sets (each lane its own); on two cards one each."""
    from fusec.bench.keys import check_card
    gb = 10**9
    one = Case(resolve_model("bert-base", layers=1), seq=128, batch=2, gates="sigma", gpus=1)
    with pytest.raises(BenchError, match=r"both parties' key sets need at least 67.60 GB of GPU memory "
                                         r"\(2 x 33.80 GB stored per set\); the card has 64.00 GB") as e:
        check_card(int(33.8 * gb), one, card_bytes=64 * gb)
    assert e.value.kind == "memory"
    check_card(int(33.8 * gb), one, card_bytes=80 * gb)
    check_card(int(33.8 * gb), Case(resolve_model("bert-base", layers=1), seq=128, batch=2, gates="sigma", gpus=2),
               card_bytes=64 * gb)
    lanes = Case(resolve_model("bert-base", layers=1), seq=128, batch=8, gates="fused", gpus=1, lanes=2)
    with pytest.raises(BenchError, match=r"4 x 21.00 GB"):
        check_card(21 * gb, lanes, card_bytes=80 * gb)
    check_card(10**15, Case(resolve_model("bert-base", layers=1), seq=128, batch=8, gates="fused", gpus=None),
               card_bytes=gb)      # the CPU backend holds no card
    check_card(10**15, Case(resolve_model("bert-base", layers=1), seq=128, batch=8, gates="fused", gpus=1,
                            runtime="keys in clock"), card_bytes=gb)     # --stream-keys: a ring of small buffers


def test_a_skipped_configuration_is_told_by_the_line_that_says_why():
    """The GPT-2 batch-8 skip of 2026-12-07 (bench/results/h100_2026-12-07e): both parties only
    saw their peer close; the dealer's allocation failure is the reason the tables show."""
    from fusec.bench.failures import reason

    text = ("gpt2/seq128/b8/fused/1gpu/plans: P0 failed: peer 127.0.0.1:45755 closed the connection\n"
            "  hint: the other party stopped; see its log for the reason\n--- key-stream dealer (exit status 2) ---\n"
            "serving 5 key set(s)\nerror: the GPU ran out of memory: Out of memory allocating 553,648,128 bytes\n")
    assert reason(text) == "error: the GPU ran out of memory: Out of memory allocating 553,648,128 bytes"
    assert reason("first line\n  second") == "first line"
    assert reason("") == ""


def test_the_mps_audit_finds_a_run_no_daemon_started_with(tmp_path):
    """bench/mps_audit.py: a run ran under MPS only where a daemon started in its first seconds;
    the second run of a call, which found the first one's dying daemon, is flagged."""
    import io
    import tarfile

    audit = runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "mps_audit.py"))["audit"]
    call = tmp_path / "h100_x" / "call1"
    call.mkdir(parents=True)
    log = ("[2026-12-07 21:33:11.789 Control   614] Starting control daemon using socket /tmp/fusec/mps/pipe/control\n"
           "[2026-12-07 21:34:43.837 Control   614] Cmd:quit\n").encode()
    with tarfile.open(call / "mps_log.tgz", "w:gz") as t:
        info = tarfile.TarInfo("log/control.log")
        info.size = len(log)
        t.addfile(info, io.BytesIO(log))
    for name, date in (("first.json", "2026-12-07T21:33:11+00:00"), ("second.json", "2026-12-07T21:34:44+00:00")):
        (call / name).write_text(json.dumps({"date": date, "machine": {"cuda_mps": True},
                                             "results": [{"online": {"per_step": {"online_seconds": 0.2}}}]}))
    rows = {Path(r["run"]).name: r["under_mps"] for r in audit(tmp_path)}
    assert rows == {"first.json": True, "second.json": False}
