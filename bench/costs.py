#!/usr/bin/env python
"""Cost table from compile alone: ``--gates fused`` against ``--gates sigma``, no keys, no run.

    python bench/costs.py /work/models/bert-base.onnx /work/models/gpt2.onnx --seq 128 --batch 1,8
    python bench/costs.py build_fused/ build_sigma/          # existing build directories
    python bench/costs.py --render bench/results/costs_<date>/costs.json   # the markdown again

For every ONNX file, true batch and gate set, the script runs ``fusec compile`` (one at a
time: BERT-base takes ~80 s and a few GB), then ``fusec inspect BUILD --json`` and keeps
what it prints -- the numbers are the compiler's own (``fusec.report.summary``: the gates'
``cost()`` summed over elements, key bytes from the key layout, rounds from the schedule),
nothing is recomputed here. A build directory is inspected as it is. Writes, under
``--out`` (default ``bench/results/costs_<date>/``):

- ``costs.json``: date, machine (``lscpu`` model, cores, memory), git commit (and the code
  files modified in the working tree, per compile), the command, and per configuration the
  compile command, its wall time and the ``inspect --json`` summary (per-tensor ranges
  dropped unless ``--with-tensors``; the ranges summary is kept). Written after every
  configuration, so an interrupted run keeps what it measured; ``--append`` adds to an
  existing file (a configuration measured again replaces the old one).
- ``costs.md``: per model and batch, fused vs sigma and the ratio sigma/fused: key per
  party, online bytes (both parties), rounds, AES calls, in total (per inference), per gate
  class (the profiler scopes), and per element of each class.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("fusec/", "ir/", "passes/", "runtime/", "codegen/", "templates/")
CLASSES = ("linear", "rescale", "gelu", "softmax", "layernorm", "other")


# ---------------------------------------------------------------------- provenance
def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in _sh(["lscpu"]).splitlines()
                  if ln.lower().startswith("model name")), platform.processor())
    mem = ""
    try:
        kb = next(ln.split(":", 1)[1].split()[0] for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
        mem = f"{int(kb) / 2**20:.1f} GiB RAM"
    except Exception:  # noqa: BLE001
        pass
    return {"cpu": model, "cores": os.cpu_count(), "nproc": _sh(["nproc"]), "memory": mem,
            "platform": platform.platform(), "python": platform.python_version(), "host": platform.node()}


def git_state() -> dict:
    """HEAD, and the tracked code files that differ from it (others may be editing the tree)."""
    dirty = [ln[3:] for ln in _sh(["git", "status", "--porcelain", "--untracked-files=all"]).splitlines()
             if ln[3:].startswith(CODE_DIRS)]
    return {"commit": _sh(["git", "rev-parse", "HEAD"]), "modified_code_files": dirty}


# ---------------------------------------------------------------------- measuring
def _fusec(*args) -> list[str]:
    return [sys.executable, "-m", "fusec", *map(str, args)]


def inspect_json(build: Path) -> dict:
    r = subprocess.run(_fusec("inspect", build, "--json"), capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"fusec inspect {build} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def _label(path: Path) -> str:
    return path.stem if path.suffix == ".onnx" else path.name


def _slim(summary: dict, with_tensors: bool) -> dict:
    if not with_tensors:
        summary = dict(summary)
        summary["ranges"] = {"summary": summary["ranges"]["summary"]}
    return summary


def worker(build: Path, compile_args: list[str]) -> int:
    """One configuration in one fresh process: ``fusec compile`` then what ``fusec inspect --json``
    prints, both with the code imported once -- so an edit to the tree between the two (others
    work on it) cannot make the inspection disagree with the compile."""
    import click  # noqa: PLC0415

    from fusec.build import load_build  # noqa: PLC0415
    from fusec.cli import cli  # noqa: PLC0415
    from fusec.errors import FusecError  # noqa: PLC0415
    from fusec.report import summary  # noqa: PLC0415

    try:
        cli.main(["compile", *compile_args], standalone_mode=False)
    except (FusecError, click.ClickException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (build.parent / f"{build.name}.summary.json").write_text(json.dumps(summary(load_build(build)), allow_nan=False))
    return 0


def measure_onnx(model: Path, gates: str, batch: int, seq: int | None, extra: list[str], workdir: Path,
                 keep: bool, with_tensors: bool, log, retries: int = 1) -> dict:
    build = workdir / f"{_label(model)}_b{batch}_s{seq}_{gates}"
    out = build.parent / f"{build.name}.summary.json"
    args = [str(model), "-o", str(build), *(["--seq", str(seq)] if seq is not None else []), "--batch", str(batch),
            "--gates", gates, *extra]
    rec = {"label": _label(model), "source": str(model), "kind": "onnx", "gates": gates, "batch": batch, "seq": seq,
           "extra_args": extra, "compile_command": "fusec compile " + " ".join(args),
           "inspect_command": f"fusec inspect {build} --json (in the compiling process: fusec.report.summary)"}
    for attempt in range(retries + 1):
        for stale in (build, out):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        rec["git_before"] = git_state()
        log(f"compile {model.name} --gates {gates} --batch {batch}" + (f" --seq {seq}" if seq else "")
            + (f" (retry {attempt})" if attempt else ""))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(build), "--", *args],
                           capture_output=True, text=True, cwd=ROOT)
        rec["compile_wall_seconds"] = round(time.perf_counter() - t0, 1)
        rec["git_after"] = git_state()
        if r.returncode == 0 and out.is_file():
            rec.pop("error", None)
            break
        rec["error"] = (r.stderr.strip() or r.stdout.strip())[-3000:]
        log(f"  FAILED ({rec['compile_wall_seconds']} s): {rec['error'].splitlines()[-1] if rec['error'] else '?'}")
    if "error" in rec:
        return rec
    rec["compile_stdout"] = r.stdout.strip()
    rec["summary"] = _slim(json.loads(out.read_text()), with_tensors)
    rec["build"] = str(build) if keep else None
    out.unlink()
    if not keep:
        shutil.rmtree(build, ignore_errors=True)
    log(f"  {rec['compile_wall_seconds']} s: {r.stdout.strip()}")
    return rec


def measure_build(build: Path, with_tensors: bool, log) -> dict:
    log(f"inspect {build}")
    s = inspect_json(build)
    src = Path(str(s.get("model") or build))
    return {"label": _label(src) if s.get("model") else build.name, "source": str(build), "kind": "build",
            "gates": s["flags"]["gates"], "batch": s["batch"], "seq": s.get("seq"),
            "inspect_command": f"fusec inspect {build} --json", "git_before": git_state(),
            "summary": _slim(s, with_tensors)}


def _key(c: dict) -> tuple:
    return (c["label"], c.get("seq"), c["batch"], c["gates"], tuple(c.get("extra_args") or ()))


# ---------------------------------------------------------------------- markdown
def _si(v, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "-"
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.{digits}f} {p}{unit}"
    return f"{v:.{digits if v != int(v) else 0}f} {unit}".rstrip()


def _x(a, b) -> str:
    """Ratio sigma / fused."""
    if a is None or b is None or not a:
        return "-"
    return f"{b / a:.2f}×"


def _num(v, digits=1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _commit(c: dict) -> str:
    """The commit a configuration was compiled at; ``+`` when code files were modified in the tree."""
    g = c.get("git_before") or {}
    after = c.get("git_after") or g
    dirty = g.get("modified_code_files") or after.get("modified_code_files")
    same = g.get("commit") == after.get("commit")
    return f"{(g.get('commit') or '?')[:8]}{'+' if dirty else ''}{'' if same else ' (moved)'}"


def render(doc: dict) -> str:
    cfgs = [c for c in doc["configs"] if "summary" in c]
    failed = [c for c in doc["configs"] if "error" in c]
    commits = sorted({c["git_before"]["commit"][:10] for c in doc["configs"] if c.get("git_before")})
    dirty = sorted({f for c in doc["configs"] for g in ("git_before", "git_after") if c.get(g)
                    for f in c[g]["modified_code_files"]})
    m = doc["machine"]
    out = [f"## Costs from compile alone: fused vs SIGMA-style ({doc['date'][:10]})", "",
           "; ".join(f"`{c}`" for c in [*doc.get("earlier_commands", []), doc["command"]] if c) + f" on {m['cpu']} ({m['cores']} cores, {m['memory']}); git {', '.join(commits) or '?'}"
           + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "") + ". "
           "Numbers are the compiler's (`fusec inspect --json`): the gates' `cost()` summed over elements, "
           "key bytes from the key layout, rounds from the schedule; no keys generated, nothing run. "
           "Online bytes are both parties' sends. GB/MB = 10^9/10^6 bytes, G/M AES = 10^9/10^6 blocks. "
           "git: the commit each configuration was compiled at (+: with uncommitted code changes in the tree).", ""]
    groups: dict = {}
    for c in cfgs:
        groups.setdefault((c["label"], c.get("seq"), c["batch"], tuple(c.get("extra_args") or ())), {})[c["gates"]] = c

    out += ["### Totals (per inference; rounds per forward of the true batch)", "",
            "| model | seq | batch | gates | key / party | online (both parties) | rounds | AES calls / party | "
            "gates in program | compile s | git |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for (label, seq, batch, _), by in groups.items():
        for g in ("fused", "sigma"):
            if g in by:
                s = by[g]["summary"]
                p, t = s["per_inference"], s["totals"]
                out.append(f"| {label} | {seq or '-'} | {batch} | {g} | {_si(p['key_bytes'], 'B')} | "
                           f"{_si(p['bytes_sent_both'], 'B')} | {t['rounds']} | {_si(p['aes_calls'])} | {t['gates']} | "
                           f"{by[g].get('compile_wall_seconds', '-')} | {_commit(by[g])} |")
        if "fused" in by and "sigma" in by:
            f, s = by["fused"]["summary"], by["sigma"]["summary"]
            out.append(f"| {label} | {seq or '-'} | {batch} | **sigma / fused** | "
                       f"{_x(f['per_inference']['key_bytes'], s['per_inference']['key_bytes'])} | "
                       f"{_x(f['per_inference']['bytes_sent_both'], s['per_inference']['bytes_sent_both'])} | "
                       f"{_x(f['totals']['rounds'], s['totals']['rounds'])} | "
                       f"{_x(f['per_inference']['aes_calls'], s['per_inference']['aes_calls'])} | | | |")
    out.append("")
    for (label, seq, batch, _), by in groups.items():
        if "sigma" in by:
            kept = sorted({sp["name"] for sp in by["sigma"]["summary"]["specs"] if sp["impl"] != "sigma"})
            if kept:
                out.append(f"- {label} batch {batch}, `--gates sigma`: no SIGMA construction for "
                           f"{', '.join(kept)}; that build keeps the fused spec there.")
    trees = sorted({r["kind"] for c in cfgs for r in c["summary"].get("by_kind", [])
                    if r["class"] == "other" and "max_tree" in r["kind"] and r["key_bytes"]})
    if trees:
        out.append(f"- Class `other` holds the softmax row maxima ({', '.join(trees)}: the profiler scope of a "
                   f"max tree is `other`); their elements are the rows, so `other`'s per-element figures are per row.")
    if out[-1] != "":
        out.append("")

    seen: dict = {}
    for (label, seq, batch, extra), by in groups.items():
        gs = [g for g in ("fused", "sigma") if g in by]
        rows = {g: {r["class"]: r for r in by[g]["summary"]["by_class"]} for g in gs}
        B = batch or 1
        both = len(gs) == 2
        # a true batch whose per-inference class rows equal an earlier batch's: say so, not the tables again
        sig = (label, seq, extra, tuple(gs), tuple((g, cl, r["key_bytes"] / B, r["bytes_sent_both"] / B,
                                                    r["aes_calls"] / B, r["elements"] / B, r["rounds_critical_path"],
                                                    r["rounds_per_gate"]) for g in gs for cl, r in rows[g].items()))
        if sig in seen:
            out += [f"### {label}, seq {seq or '-'}, batch {batch}: per gate class and per element", "",
                    f"Per inference identical to batch {seen[sig]} (every element has its own key material; "
                    f"rounds do not grow with the batch).", ""]
            continue
        seen[sig] = batch

        def cols(get, fmt):
            vals = [get(rows[g][cl]) if cl in rows[g] else None for g in gs]
            return [fmt(v) for v in vals] + ([_x(vals[0], vals[1])] if both else [])

        head = lambda name: " | ".join(f"{name} {g}" for g in gs) + (" | ×" if both else "")  # noqa: E731
        sep = " | ".join("---:" for _ in range(len(gs) + (1 if both else 0)))
        out += [f"### {label}, seq {seq or '-'}, batch {batch}: per gate class (per inference; "
                f"{' vs '.join(gs)}{', × = sigma / fused' if both else ''})", "",
                f"| class | {head('key / party')} | {head('online (both)')} | {head('AES')} | "
                f"{' | '.join(f'rounds on critical path {g}' for g in gs)} |",
                f"| --- | {sep} | {sep} | {sep} | {' | '.join('---:' for _ in gs)} |"]
        for cl in CLASSES:
            if not any(cl in rows[g] and rows[g][cl]["gates"] for g in gs):
                continue
            out.append(" | ".join([f"| {cl}", *cols(lambda r: r["key_bytes"] / B, lambda v: _si(v, "B")),
                                   *cols(lambda r: r["bytes_sent_both"] / B, lambda v: _si(v, "B")),
                                   *cols(lambda r: r["aes_calls"] / B, _si),
                                   *[str(rows[g][cl]["rounds_critical_path"]) if cl in rows[g] else "-"
                                     for g in gs]]) + " |")
        out.append("")
        out += [f"### {label}, seq {seq or '-'}, batch {batch}: per element of each class "
                f"(elements of the class's gates that cost something)", "",
                f"| class | {' | '.join(f'elements {g}' for g in gs)} | {head('key B/elem')} | "
                f"{head('online B/elem (both)')} | {head('AES/elem')} | {' | '.join(f'rounds/gate {g}' for g in gs)} |",
                f"| --- | {' | '.join('---:' for _ in gs)} | {sep} | {sep} | {sep} | {' | '.join('---:' for _ in gs)} |"]

        def per(key):
            return lambda r: r[key] / r["elements"] if r["elements"] else None

        for cl in CLASSES:
            if not any(cl in rows[g] and rows[g][cl]["elements"] for g in gs):
                continue
            out.append(" | ".join([f"| {cl}", *[f"{rows[g][cl]['elements'] // B:,}" if cl in rows[g] else "-"
                                                 for g in gs],
                                   *cols(per("key_bytes"), _num), *cols(per("bytes_sent_both"), lambda v: _num(v, 2)),
                                   *cols(per("aes_calls"), _num),
                                   *[str(rows[g][cl]["rounds_per_gate"]) if cl in rows[g] else "-" for g in gs]])
                       + " |")
        out.append("")
    if failed:
        out += ["### Did not compile", ""]
        for c in failed:
            last = c["error"].strip().splitlines()[-1] if c["error"].strip() else "?"
            out.append(f"- {c['label']} seq {c.get('seq')} batch {c['batch']} --gates {c['gates']}: `{last}`")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("inputs", nargs="*", type=Path, help="ONNX files and/or fusec build directories")
    p.add_argument("--gates", default="fused,sigma", help="gate sets to compile (comma-separated)")
    p.add_argument("--batch", default="1", help="true batch sizes to compile (comma-separated)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (0: leave to the model)")
    p.add_argument("--compile-arg", action="append", default=[],
                   help="extra argument for fusec compile (repeat; e.g. --compile-arg=--bits --compile-arg=37)")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fusec-costs",
                   help="where the build directories go")
    p.add_argument("--keep-builds", action="store_true", help="keep the build directories (BERT-base: ~420 MB each)")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/costs_<date>)")
    p.add_argument("--append", action="store_true", help="add to an existing costs.json in --out")
    p.add_argument("--with-tensors", action="store_true", help="keep every tensor's ranges in the JSON")
    p.add_argument("--render", type=Path, help="print the markdown of an existing costs.json and exit")
    p.add_argument("--retries", type=int, default=1, help="compile again after a failure (the tree may be mid-edit)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:          # internal: one compile + summary, see worker()
        i = argv.index("--worker")
        return worker(Path(argv[i + 1]), argv[argv.index("--") + 1:])
    a = p.parse_args(argv)

    if a.render:
        print(render(json.loads(a.render.read_text())))
        return 0
    if not a.inputs:
        p.error("give ONNX files or build directories (or --render costs.json)")
    now = dt.datetime.now(dt.timezone.utc)
    out = a.out or ROOT / "bench" / "results" / f"costs_{now:%Y-%m-%d}"
    out.mkdir(parents=True, exist_ok=True)
    a.workdir.mkdir(parents=True, exist_ok=True)
    jpath = out / "costs.json"
    doc = {"date": now.isoformat(timespec="seconds"), "machine": machine(), "git": git_state(),
           "command": "python bench/costs.py " + " ".join(argv), "configs": []}
    if a.append and jpath.is_file():
        old = json.loads(jpath.read_text())
        doc["configs"] = old.get("configs", [])
        doc["earlier_commands"] = old.get("earlier_commands", []) + [old.get("command")]

    def log(msg: str) -> None:
        print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)

    def save(rec: dict) -> None:
        doc["configs"] = [c for c in doc["configs"] if _key(c) != _key(rec)] + [rec]
        jpath.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        (out / "costs.md").write_text(render(doc) + "\n")

    gates = [g.strip() for g in a.gates.split(",") if g.strip()]
    batches = [int(b) for b in a.batch.split(",") if b.strip()]
    for inp in a.inputs:
        if inp.is_dir():
            save(measure_build(inp, a.with_tensors, log))
            continue
        if not inp.is_file():
            p.error(f"{inp}: neither an ONNX file nor a build directory")
        for b in batches:
            for g in gates:
                save(measure_onnx(inp, g, b, a.seq or None, a.compile_arg, a.workdir, a.keep_builds, a.with_tensors,
                                  log, a.retries))
    log(f"wrote {jpath} and {out / 'costs.md'}")
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
