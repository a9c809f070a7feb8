"""One configuration end to end, and the whole run over the grid.

For every configuration the bench does what a user would do, each stage in its own
process: export the model (cached), ``fusec compile``, the dealer (``(warm-up + repeat) x
internal batch`` key sets), then P0 and P1 as two long-lived workers over loopback TCP.
A *step* is ``internal batch`` consecutive key sets evaluated back to back over the one
connection; the first ``warmup`` steps are discarded and the median of the others is
reported. Keys are always deleted when their configuration is done (each set is usable
once anyway). The JSON is rewritten after each configuration, so a long run that stops
keeps what it measured."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fusec.bench.compile import CompileInfo, compile_case
from fusec.bench.dealers import KeygenInfo, generate_keys, keygen_summary
from fusec.bench.export import export_model
from fusec.bench.failures import SKIPPABLE, BenchError, reason
from fusec.bench.keys import KeyPlan, check_card, check_memory, free_space, plan_keys
from fusec.bench.lanes import merge_lanes
from fusec.bench.machine import machine_info
from fusec.bench.markdown import render_markdown
from fusec.bench.merge import merge_parties, summarize
from fusec.bench.mps import mps_daemon
from fusec.bench.pair import PartyPair, party_envs
from fusec.bench.plan import BenchOptions, Case, plan_cases
from fusec.bench.stream_dealer import StreamDealer
from fusec.bench.util import gb

FORMAT = 1
Echo = Callable[[str], None]


def run_case(case: Case, opts: BenchOptions, echo: Echo = print) -> dict:
    """Export, compile, keygen, run one configuration; a dict for the JSON's ``results``."""
    record: dict[str, Any] = {"config": case.as_dict(opts)}
    key_root = opts.key_root / case.slug
    try:
        envs = party_envs(opts.backend, case.gpus, case.lanes)     # enough GPUs? (before anything slow)
        positions = max([case.model.positions or 0, *opts.seqs, *opts.seq_sweep])
        model = export_model(case.model, Path(opts.workdir), positions, opts.timeout, case)
        record["config"]["model_file"] = str(model)
        comp = compile_case(case, model, Path(opts.workdir), opts.timeout)
        record["compile"] = comp.as_dict()
        free = free_space(opts.key_root) // case.lanes       # each lane its own key sets (fusec/bench/lanes.py)
        plans = [plan_keys(opts.keys_mode, max(comp.stored_nbytes), opts.steps, opts.internal_batch, free,
                           key_root / f"lane{lane}" if case.lanes > 1 else key_root, opts.dealers)
                 for lane in range(case.lanes)]
        record["keys"] = {"mode": plans[0].mode, "files_per_party": sum(p.file_pairs for p in plans),
                          "dir": str(key_root)}
        check_memory(comp.set_nbytes * case.lanes, plans[0], case)
        check_card(max(comp.stored_nbytes), case)
        merged, kg, files = _run_steps(case, opts, comp, plans, envs, echo)
        record["keygen"] = keygen_summary(kg, comp.stored_key_nbytes, case.batch, sets_per_batch=case.lanes)
        record["online"] = summarize(merged, case.batch, opts.internal_batch, case.seq)
        record["online"]["steps"] = merged
        record["online"]["rounds_planned"] = comp.rounds_planned
        record["party_files"] = [str(f) for f in files]
    except BenchError as e:
        if e.kind in SKIPPABLE or opts.keep_going:
            record["skipped"] = e.message
            record["skip_kind"] = e.kind
        else:
            raise
    finally:
        shutil.rmtree(key_root, ignore_errors=True)
    return record


KeySource = Callable[[int], list]
"""A lane's key sets for a step: key-file directories, or a key-stream dealer's address."""


def _run_steps(case: Case, opts: BenchOptions, comp: CompileInfo, plans: list[KeyPlan], envs: tuple[dict, dict],
               echo: Echo) -> tuple[list[dict], KeygenInfo, list[Path]]:
    """Keys, the workers (a pair per lane), every step; returns the merged steps, the
    dealers' times and the parties' own JSON files."""
    kg = KeygenInfo()
    logs = Path(opts.workdir) / "logs"
    if plans[0].mode == "stream":
        return _run_streamed(case, opts, comp, envs, echo, kg, logs)

    def files_of(plan: KeyPlan) -> KeySource:
        def keys_for(step: int) -> list[Path]:
            """The key-file directories of ``step``, generating them first where the plan says."""
            stale = plan.stale(step)
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)               # used up: free the space first
            outs = plan.generated_before(step)
            if outs:
                sets = sum(n for _, n in outs)
                echo(f"  keygen: {sets} key set(s) of {gb(comp.stored_key_nbytes)} per party in {len(outs)} "
                     f"file pair(s), {min(opts.dealers, len(outs))} dealer(s) -> {plan.root}")
                t0 = time.perf_counter()
                docs = generate_keys(comp.build, plan.root, outs, opts.dealers,
                                     opts.timeout * max(1, max(n for _, n in outs) // opts.internal_batch), case,
                                     logs, opts.backend)
                kg.add(docs, time.perf_counter() - t0)
            return [d for d, _ in plan.files(step)]
        first = keys_for(0)             # before the workers start: the dealer has the machine to itself
        return lambda step: first if step == 0 else keys_for(step)

    merged = _steps(case, opts, comp, envs, echo, [files_of(plan) for plan in plans])
    files = merged.pop()
    return merged, kg, files


def _run_streamed(case: Case, opts: BenchOptions, comp: CompileInfo, envs: tuple[dict, dict], echo: Echo,
                  kg: KeygenInfo, logs: Path) -> tuple[list[dict], KeygenInfo, list[Path]]:
    """``--keys stream``: a dealer process per lane serves every set of the case over
    loopback when both workers ask (inside a step's wall time, outside its online clock)."""
    sets = opts.steps * opts.internal_batch
    dealers = "one dealer" if case.lanes == 1 else f"a dealer per lane ({case.lanes})"
    echo(f"  keygen: {sets} key set(s) of {gb(comp.stored_key_nbytes)} per party and lane streamed by {dealers}, "
         "no files")
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        ds = [stack.enter_context(StreamDealer(comp.build, sets, opts.backend, opts.timeout, case,
                                               logs / f"keystream_{case.slug}{_lane_suffix(case, lane)}.log"))
              for lane in range(case.lanes)]
        try:
            merged = _steps(case, opts, comp, envs, echo, [lambda step, d=d: [d.address] for d in ds])
        except BenchError as e:
            for d in ds:
                e = d.explain(e)
            raise e from None
        files = merged.pop()
        kg.add([d.finish() for d in ds], time.perf_counter() - t0)
    return merged, kg, files


def _lane_suffix(case: Case, lane: int) -> str:
    return f"_lane{lane}" if case.lanes > 1 else ""


def _steps(case: Case, opts: BenchOptions, comp: CompileInfo, envs: tuple[dict, dict], echo: Echo,
           sources: list[KeySource]) -> list:
    """The workers (a pair per lane) through every step; the merged steps, then the workers'
    JSON files last. Lanes start each step together and are awaited together."""
    merged: list = []
    said: set[str] = set()      # a worker's note on its launch plan, echoed once
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(PartyPair(
            case, comp.build, opts.backend, Path(opts.workdir) / "runs" / (case.slug + _lane_suffix(case, lane)),
            opts.timeout, party_argv=opts.party_argv + (["--net", case.net.spec] if case.net else [])))
            for lane in range(case.lanes)]
        for pair in pairs:
            pair.start(envs)
        for step in range(opts.steps):
            key_dirs = [source(step) for source in sources]         # every lane's keys before any lane starts
            for pair, dirs in zip(pairs, key_dirs):
                pair.send_step(step, step < opts.warmup, dirs, opts.internal_batch)
            records = [pair.await_step() for pair in pairs]
            merged.append(merge_lanes(records) if case.lanes > 1 else merge_parties(*records[0]))
            echo(f"  step {step}{' (warm-up)' if step < opts.warmup else ''}: "
                 f"{merged[-1]['online_seconds']:.3f} s online, {merged[-1]['rounds']} rounds, "
                 f"{gb(merged[-1]['bytes_sent'])} sent")
            for note in sorted({rec.get("memory", {}).get("plan_refused") for pair in records for rec in pair} - {None}):
                if note not in said:
                    said.add(note)
                    echo(f"  {note}")
        merged.append([f for pair in pairs for f in pair.finish()])
    return merged


def _save(doc: dict, path: Path | None) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _one_line(rec: dict) -> str:
    if "skipped" in rec:
        return f"  skipped ({rec.get('skip_kind')}): {reason(rec['skipped'])}"
    on, kg = rec["online"]["per_batch"], rec["keygen"]["per_batch"]
    return (f"  median {on['online_seconds']:.3f} s per batch, {rec['online']['tokens_per_second']:.1f} tokens/s, "
            f"{gb(on['bytes_sent'])} per batch, {on['rounds']:.0f} rounds; keygen "
            f"{kg['seconds']:.2f} s and {gb(kg['key_bytes_per_party'])} per batch and party"
            + ("; interpreted: the launch plan did not fit" if rec["online"].get("plan_refused") else ""))


def _exit_on_sigterm() -> None:
    """SIGTERM (a job scheduler, ``kill``) unwinds like Ctrl-C, so the ``with`` blocks kill
    the workers and dealers instead of leaving them orphaned on a shared GPU."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_bench(opts: BenchOptions, echo: Echo = print) -> dict:
    """Run every configuration; the JSON is rewritten after each one, so a long run that
    stops keeps what it measured."""
    opts.validate()
    _exit_on_sigterm()
    cases = plan_cases(opts)
    with mps_daemon(opts.workdir) if opts.mps else contextlib.nullcontext():
        return _run_cases(opts, cases, echo)


def _run_cases(opts: BenchOptions, cases: list, echo: Echo) -> dict:
    doc = {"fusec_bench": FORMAT, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine_info(), "command": opts.command, "settings": opts.settings(), "results": []}
    if opts.gate_microbench:
        doc["gate_microbench"] = opts.gate_microbench      # for the Amdahl table (fusec/bench/amdahl.py)
    for i, case in enumerate(cases, 1):
        echo(f"[{i}/{len(cases)}] {case.name}")
        rec = run_case(case, opts, echo)
        doc["results"].append(rec)
        _save(doc, opts.json_path)
        echo(_one_line(rec))
    if opts.markdown_path:
        Path(opts.markdown_path).write_text(render_markdown(doc))
    return doc
