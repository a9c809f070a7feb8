"""``fusec bench``: end-to-end measurements of compiled models (DESIGN §8).

For every configuration ``(model, seq, true batch, gates, GPUs)`` the bench does what a
user would do, each stage in its own process so that a crash or an out-of-memory kill
is contained and reported: export the model (random weights, cached in the work dir),
``fusec compile``, the dealer (``count = (warm-up + repeat) x internal batch`` key sets),
then P0 and P1 as two long-lived workers (:mod:`fusec.bench_party`) over loopback TCP.
A *step* is ``internal batch`` consecutive key sets evaluated back to back over the one
connection; the first ``warmup`` steps are discarded and the median of the others is
reported.

Merging the parties (DESIGN §7): per step, a latency is the slower party's
(``max``), bytes are both parties' sends added (``sum``), rounds the larger count
(``max``); then each metric's median over the timed steps. The same rules apply to
every per-scope metric (any key with ``bytes`` in its name is summed, anything else is
a max), so metrics the runtime adds later are merged without touching this file.
Reported per step (B key sets), per batch (one true-batch forward = one key set) and per
inference (per batch / true batch); ``tokens/s = batch x internal batch x seq / step time``.

A configuration that cannot run on this machine (keys larger than the free space where
they go, less memory than one key set per party, an out-of-memory death, the compiler
refusing the insecure padding ablation) is recorded as ``{"skipped": reason}`` and the
bench goes on; any other failure stops it with the configuration's name and the
failing party's stderr tail (or is recorded, with ``--keep-going``). No wait is
unbounded: every stage has ``--timeout``, after which both workers are killed.

Key files hold tens of GB for BERT-base: ``--keys-dir`` puts them where told (e.g.
/dev/shm). When all sets of a configuration do not fit, keys are generated per step
(``B`` sets, deleted after the step) instead of up front; keys are always deleted when
their configuration is done (each set is usable once anyway). The dealer is the slow
part on big models, so ``--dealers N`` runs N dealer processes at once (then each step,
or each part of a step, gets its own key-file pair; the workers take the sets in order).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from fusec.errors import FusecError

FORMAT = 1
GATE_SETS = ("fused", "sigma")
SKIPPABLE = ("memory", "disk", "machine", "refused")
Echo = Callable[[str], None]


class BenchError(FusecError):
    """A configuration failed. ``kind``: ``memory`` / ``disk`` / ``machine`` (this machine
    is too small or has too few GPUs: recorded as skipped), ``refused`` (the compiler
    declines the configuration: recorded),
    ``timeout`` or ``error`` (stops the bench unless ``--keep-going``)."""

    def __init__(self, message: str, hint: str | None = None, kind: str = "error", status: int | None = None):
        super().__init__(message, hint)
        self.kind = kind
        self.status = status        # the failed process's exit status, where there is one


# ---------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a preset exported with random weights, or a given ONNX file."""

    name: str
    kind: str | None = None          # "bert" | "gpt2" (exported by fusec.models); None: ``path``
    path: str | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    positions: int | None = None     # at least this; raised to the longest sequence benchmarked
    bits: int = 50                   # ring width n (DESIGN §4)

    @property
    def label(self) -> str:
        base = PRESETS.get(self.name)
        return f"{self.name}-L{self.layers}" if base and base.layers != self.layers else self.name

    def export_argv(self, out: Path, positions: int) -> list[str]:
        argv = [self.kind, str(out), "--layers", str(self.layers), "--hidden", str(self.hidden), "--heads",
                str(self.heads), "--vocab", str(self.vocab), "--positions", str(positions)]
        if self.kind == "bert":
            argv += ["--intermediate", str(self.intermediate)]
        return argv

    def cache_name(self, positions: int) -> str:
        return (f"{self.kind}-L{self.layers}-H{self.hidden}-A{self.heads}-I{self.intermediate}-V{self.vocab}"
                f"-P{positions}")


PRESETS: dict[str, ModelSpec] = {
    "bert-base": ModelSpec("bert-base", "bert", None, 12, 768, 12, 3072, 30522, 512, 50),
    "gpt2": ModelSpec("gpt2", "gpt2", None, 12, 768, 12, 3072, 50257, 1024, 50),
    # small enough for the CPU backend and tests (DESIGN §4: n = 37 for bert-tiny)
    "bert-tiny": ModelSpec("bert-tiny", "bert", None, 2, 128, 2, 512, 1000, 512, 37),
    "gpt2-tiny": ModelSpec("gpt2-tiny", "gpt2", None, 2, 128, 2, 512, 1000, 64, 37),
}


def resolve_model(text: str, layers: int | None = None, bits: int | None = None) -> ModelSpec:
    """A preset name or an ONNX file -> ModelSpec, with ``--layers``/``--bits`` applied."""
    if text in PRESETS:
        spec = PRESETS[text]
        if layers is not None:
            spec = replace(spec, layers=layers)
    elif text.endswith(".onnx") or Path(text).is_file():
        if not Path(text).is_file():
            raise FusecError(f"model file {text} does not exist")
        if layers is not None:
            raise FusecError(f"--layers applies to the presets, not to a given ONNX file ({text})",
                             "export the model with the layers you want (python -m fusec.models ...)")
        spec = ModelSpec(Path(text).stem, path=str(Path(text).resolve()))
    else:
        raise FusecError(f"unknown model {text!r}", f"use a preset ({', '.join(PRESETS)}) or a path to an .onnx file")
    return replace(spec, bits=bits) if bits is not None else spec


# ---------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Case:
    """One configuration: what is compiled (model, seq, batch, gates, padding) and where
    the parties run (GPUs; None on the CPU backend)."""

    model: ModelSpec
    seq: int
    batch: int
    gates: str
    gpus: int | None
    padded: bool = True

    @property
    def gate_label(self) -> str:
        return self.gates if self.padded else f"{self.gates}-unpadded"

    @property
    def name(self) -> str:
        where = "cpu" if self.gpus is None else f"{self.gpus}gpu"
        return f"{self.model.label}/seq{self.seq}/b{self.batch}/{self.gate_label}/{where}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_")

    @property
    def build_slug(self) -> str:
        """Builds do not depend on where the parties run: one compile serves every GPU count."""
        return f"{self.model.label}_n{self.model.bits}_seq{self.seq}_b{self.batch}_{self.gate_label}"

    def as_dict(self, opts: "BenchOptions") -> dict:
        return {"name": self.name, "model": self.model.name, "label": self.model.label, "model_file": self.model.path,
                "layers": self.model.layers, "seq": self.seq, "batch": self.batch,
                "internal_batch": opts.internal_batch, "gates": self.gates, "padded": self.padded,
                "gpus": self.gpus, "backend": opts.backend, "bits": self.model.bits,
                "warmup": opts.warmup, "repeat": opts.repeat}


@dataclass
class BenchOptions:
    """Everything ``fusec bench`` was asked to do (also recorded in the JSON)."""

    models: list[ModelSpec]
    seqs: list[int] = field(default_factory=lambda: [128])
    batches: list[int] = field(default_factory=lambda: [1])
    seq_sweep: list[int] = field(default_factory=list)
    internal_batch: int = 4
    gates: list[str] = field(default_factory=lambda: list(GATE_SETS))
    gpus: list[int] = field(default_factory=lambda: [1])
    backend: str = "cpu"
    warmup: int = 1
    repeat: int = 5
    workdir: Path = Path("bench-work")
    keys_dir: Path | None = None
    keys_mode: str = "auto"
    dealers: int = 1
    padding_ablation: bool = False
    timeout: float = 1800.0
    keep_going: bool = False
    json_path: Path | None = None
    markdown_path: Path | None = None
    command: str = ""

    @property
    def steps(self) -> int:
        return self.warmup + self.repeat

    @property
    def key_root(self) -> Path:
        return Path(self.keys_dir) if self.keys_dir else Path(self.workdir) / "keys"

    def validate(self) -> None:
        if not self.models:
            raise FusecError("no model to benchmark", "pass --model bert-base,gpt2 (or a path to an .onnx file)")
        bad = [g for g in self.gates if g not in GATE_SETS]
        if bad:
            raise FusecError(f"unknown gate set(s) {', '.join(bad)}", f"choose from {', '.join(GATE_SETS)}")
        if self.backend not in ("cpu", "gpu"):
            raise FusecError(f"unknown backend {self.backend!r}", "choose cpu or gpu")
        if any(g not in (1, 2) for g in self.gpus):
            raise FusecError(f"--gpus takes 1 (both parties on GPU 0) or 2 (one GPU each), got {self.gpus}")
        if self.keys_mode not in ("auto", "upfront", "per-step"):
            raise FusecError(f"--keys {self.keys_mode!r}: choose auto, upfront or per-step")
        for what, values in (("--seq", self.seqs + self.seq_sweep), ("--batch", self.batches),
                             ("--internal-batch", [self.internal_batch]), ("--repeat", [self.repeat])):
            if not values or min(values) < 1:
                raise FusecError(f"{what} needs positive integers, got {values}")
        if self.dealers < 1:
            raise FusecError(f"--dealers must be >= 1, got {self.dealers}")
        if self.warmup < 0:
            raise FusecError(f"--warmup must be >= 0, got {self.warmup}")

    def settings(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("models", "command")}
        d["models"] = [asdict(m) for m in self.models]
        return json.loads(json.dumps(d, default=str))


def _unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))


def plan_cases(opts: BenchOptions) -> list[Case]:
    """The grid ``seq x batch`` (plus ``--seq-sweep`` at the smallest batch) for every model,
    gate set and GPU count, then the padding ablation (fused without mask-independent
    padding, first seq, smallest batch). Ordered so that one build serves consecutive cases."""
    small = min(opts.batches)
    shapes = _unique([(s, b) for s in opts.seqs for b in opts.batches] + [(s, small) for s in opts.seq_sweep])
    where = list(opts.gpus) if opts.backend == "gpu" else [None]
    cases = [Case(m, s, b, g, w) for m in opts.models for s, b in shapes for g in opts.gates for w in where]
    if opts.padding_ablation:
        cases += [Case(m, opts.seqs[0], small, "fused", w, padded=False) for m in opts.models for w in where]
    return cases


# ---------------------------------------------------------------------- subprocesses
def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


_MEMORY = re.compile(r"MemoryError|OutOfMemory|out of memory|cudaErrorMemoryAllocation|Cannot allocate memory|"
                     r"std::bad_alloc|CUBLAS_STATUS_ALLOC_FAILED", re.I)
_DISK = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I)


def classify_failure(returncode: int | None, text: str) -> str:
    """``memory`` for an OOM kill (SIGKILL) or an allocation error, ``disk`` for a full
    file system, else ``error``."""
    if returncode in (-9, 137) or _MEMORY.search(text):
        return "memory"
    if _DISK.search(text):
        return "disk"
    return "error"


def _run_stage(argv: list[str], what: str, case: Case, timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run one stage to completion; its output goes to ``log``; failures name the case."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as e:
        log.write_text(f"$ {' '.join(argv)}\n{e.stdout or ''}{e.stderr or ''}")
        raise BenchError(f"{case.name}: {what} did not finish within {timeout:g} s", f"raise --timeout; log: {log}",
                         kind="timeout") from None
    log.write_text(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}")
    if r.returncode:
        kind = classify_failure(r.returncode, r.stdout + r.stderr)
        raise BenchError(f"{case.name}: {what} failed (exit status {r.returncode}):\n{_tail(r.stderr or r.stdout)}",
                         f"full log: {log}", kind=kind, status=r.returncode)
    return r


# ---------------------------------------------------------------------- export and compile
def export_model(spec: ModelSpec, workdir: Path, positions: int, timeout: float, case: Case) -> Path:
    """The ONNX file of ``spec``: given, or exported once with random weights and cached
    (by every parameter) under ``workdir/models``. Runs ``python -m fusec.models`` in a
    subprocess: torch is needed there only, never by the bench itself."""
    if spec.path:
        return Path(spec.path)
    out = Path(workdir) / "models" / f"{spec.cache_name(positions)}.onnx"
    done = out.with_suffix(".done")
    if not done.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _run_stage(_module("fusec.models", *spec.export_argv(out, positions)), "model export", case, timeout,
                   out.with_suffix(".log"))
        done.write_text(json.dumps(asdict(spec)))
    return out


@dataclass
class CompileInfo:
    build: Path
    seconds: float
    cached: bool
    set_nbytes: int          # key bytes per key set (one true-batch forward), per party
    rounds_planned: int

    def as_dict(self) -> dict:
        return {"build": str(self.build), "seconds": self.seconds, "cached": self.cached,
                "rounds_planned": self.rounds_planned, "key_bytes_per_set": self.set_nbytes}


def compile_case(case: Case, model_path: Path, workdir: Path, timeout: float) -> CompileInfo:
    """``fusec compile`` for the case, cached per build and model file (path, size, mtime).
    A refusal of the insecure ablation build is remembered too, so that a long compile
    is not repeated for every GPU count only to be refused again."""
    build = Path(workdir) / "builds" / case.build_slug
    ok, refused = build / ".bench-ok", build / ".bench-refused"
    st = Path(model_path).stat()
    source = json.dumps({"model": str(Path(model_path).resolve()), "size": st.st_size, "mtime": st.st_mtime})
    if refused.exists() and (build / ".bench-source").read_text() == source:
        raise BenchError(refused.read_text(), kind="refused")
    cached = ok.exists() and ok.read_text() == source
    if not cached:
        shutil.rmtree(build, ignore_errors=True)
        argv = _module("fusec", "compile", str(model_path), "-o", str(build), "--batch", str(case.batch),
                       "--seq", str(case.seq), "--bits", str(case.model.bits), "--gates", case.gates)
        if not case.padded:
            argv.append("--insecure-mask-dependent-shapes")
        try:
            _run_stage(argv, "compile", case, timeout, Path(workdir) / "logs" / f"compile_{case.build_slug}.log")
        except BenchError as e:
            if case.padded or e.status != 2:         # 2: the compiler's own error message, not a crash
                raise
            reason = _compiler_refusal(e.message)
            build.mkdir(parents=True, exist_ok=True)
            (build / ".bench-source").write_text(source)
            refused.write_text(reason)
            raise BenchError(reason, kind="refused") from None
        ok.write_text(source)
    manifest = json.loads((build / "manifest.json").read_text())
    layout = json.loads((build / "keys.layout.json").read_text())
    program = json.loads((build / "program.json").read_text())
    return CompileInfo(build, float(manifest.get("compile_seconds", 0.0)), cached, int(layout["set_nbytes"]),
                       int(program.get("rounds", 0)))


def _compiler_refusal(message: str) -> str:
    """The compiler's own ``error: ...`` lines out of a failed compile's output."""
    lines = message.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), 1)
    text = " ".join(line.strip() for line in lines[start:]).removeprefix("error: ")
    reason, _, hint = text.partition(" hint: ")
    return f"compiler refused: {reason}" + (f" (hint: {hint})" if hint else "")


# ---------------------------------------------------------------------- keys
@dataclass
class KeyPlan:
    """Where a case's key sets go, as key-file directories (each: p0.key, p1.key).

    ``upfront``: all sets before the first step -- one directory with every set (one
    dealer, what ``fusec keygen --count`` writes) or, with several dealers, one directory
    per step so that they run in parallel. ``per-step``: a step's ``per_step`` sets right
    before it (the previous step's deleted first), split over up to ``dealers``
    directories; used when all sets do not fit."""

    mode: str
    root: Path
    per_step: int
    steps: int
    dealers: int = 1

    def files(self, step: int) -> list[tuple[Path, int]]:
        """The (directory, key sets) a step reads, in order."""
        if self.mode == "per-step":
            parts = min(self.dealers, self.per_step)
            sizes = [self.per_step // parts + (j < self.per_step % parts) for j in range(parts)]
            return [(self.root / f"step{step}" / f"part{j}", n) for j, n in enumerate(sizes)]
        if self.dealers > 1 and self.steps > 1:
            return [(self.root / f"step{step}", self.per_step)]
        return [(self.root, self.per_step * self.steps)]

    def generated_before(self, step: int) -> list[tuple[Path, int]]:
        """What the dealers write right before ``step`` (nothing when it was written earlier)."""
        if self.mode == "per-step":
            return self.files(step)
        return _unique(f for i in range(self.steps) for f in self.files(i)) if step == 0 else []

    def stale(self, step: int) -> Path | None:
        """The directory used up by the step before ``step`` (per-step mode), to delete."""
        return self.root / f"step{step - 1}" if self.mode == "per-step" and step > 0 else None

    @property
    def file_pairs(self) -> int:
        """Key-file pairs over the whole case."""
        return len(_unique(f for i in range(self.steps) for f in self.files(i)))

    @property
    def resident(self) -> int:
        """Key sets on disk at once."""
        return self.per_step * (self.steps if self.mode == "upfront" else 1)


def plan_keys(mode: str, set_nbytes: int, steps: int, per_step: int, free_bytes: int, root: Path,
              dealers: int = 1) -> KeyPlan:
    """Pick up-front or per-step key generation from the free space (both parties' files)."""
    need_all, need_step = 2 * set_nbytes * steps * per_step, 2 * set_nbytes * per_step
    room = 0.95 * free_bytes
    if mode == "upfront" or (mode == "auto" and need_all <= room):
        if need_all > room:
            raise BenchError(f"all key sets need {_gb(need_all)} (2 parties x {steps * per_step} sets x "
                             f"{_gb(set_nbytes)}), {_gb(free_bytes)} free in {root}",
                             "use --keys per-step, another --keys-dir, or fewer --repeat / --internal-batch",
                             kind="disk")
        return KeyPlan("upfront", root, per_step, steps, dealers)
    if need_step > room:
        raise BenchError(f"one step's key sets need {_gb(need_step)} (2 parties x {per_step} sets x "
                         f"{_gb(set_nbytes)}), {_gb(free_bytes)} free in {root}",
                         "put keys on a larger file system (--keys-dir) or lower --internal-batch", kind="disk")
    return KeyPlan("per-step", root, per_step, steps, dealers)


def _free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def available_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo (bytes), None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def in_memory_fs(path: Path) -> bool:
    """Whether ``path`` lies on tmpfs/ramfs (e.g. /dev/shm), where key files take RAM."""
    target, best, fstype = str(Path(path).resolve()), "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fs = line.split()[:3]
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, fs
    except (OSError, ValueError):
        return False
    return fstype in ("tmpfs", "ramfs")


def check_memory(set_nbytes: int, plan: KeyPlan, case: Case) -> None:
    """Each party reads a whole key set into memory, and key files on tmpfs take memory
    too: less RAM than that is a sure failure, so it is a skip rather than an
    out-of-memory kill an hour later. (A lower bound: unpacked keys need more.)"""
    avail = available_memory()
    files = 2 * set_nbytes * plan.resident if in_memory_fs(plan.root) else 0
    if avail is not None and 2 * set_nbytes + files > avail:
        raise BenchError(f"{case.name}: needs at least {_gb(2 * set_nbytes + files)} of memory (a key set of "
                         f"{_gb(set_nbytes)} per party" + (f", plus {_gb(files)} of key files in {plan.root}"
                                                           if files else "") + f"); {_gb(avail)} is available",
                         "use a machine with more memory, fewer --layers, or a smaller --batch / --internal-batch",
                         kind="memory")


@dataclass
class KeygenInfo:
    seconds: float = 0.0
    load_seconds: float = 0.0
    sets: int = 0
    runs: int = 0

    wall_seconds: float = 0.0
    backend: str | None = None

    def add(self, docs: list[dict], wall: float) -> None:
        """Dealer runs (each timed from inside) and the wall time they took together."""
        for doc in docs:
            self.backend = doc.get("backend", self.backend)
            self.seconds += doc["seconds"]
            self.load_seconds += doc["load_seconds"]
            self.sets += doc["count"]
            self.runs += 1
        self.wall_seconds += wall


def generate_keys(build: Path, root: Path, outs: list[tuple[Path, int]], dealers: int, timeout: float, case: Case,
                  log_dir: Path, backend: str = "cpu") -> list[dict]:
    """The dealer: ``(directory, count)`` for each of ``outs``, at most ``dealers``
    processes at a time (each timed from inside). The first failure kills the others;
    each dealer gets ``timeout`` seconds."""
    log_dir.mkdir(parents=True, exist_ok=True)
    todo, running, done = list(outs), [], []
    try:
        while todo or running:
            while todo and len(running) < dealers:
                out, count = todo.pop(0)
                shutil.rmtree(out, ignore_errors=True)
                log = log_dir / f"keygen_{'_'.join((case.slug, *out.relative_to(root).parts))}.log"
                argv = _module("fusec.bench_party", "keygen", str(build), "-o", str(out), "--count", str(count),
                               "--backend", backend, "--json", str(out / "keygen.json"),
                               "--no-fsync")  # deleted after its step: flushing it to disk measures the disk
                with open(log, "w") as f:
                    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
                running.append((proc, out, log, time.monotonic() + timeout))
            for item in list(running):
                proc, out, log, deadline = item
                if proc.poll() is None and time.monotonic() < deadline:
                    continue
                running.remove(item)
                _check_dealer(proc, out, log, case, timeout)
                done.append(json.loads((out / "keygen.json").read_text()))
            time.sleep(0.1)
    finally:
        for proc, *_ in running:
            proc.kill()
            proc.wait()
    return done


def _check_dealer(proc: subprocess.Popen, out: Path, log: Path, case: Case, timeout: float) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise BenchError(f"{case.name}: keygen into {out} did not finish within {timeout:g} s",
                         f"raise --timeout; log: {log}", kind="timeout")
    if proc.returncode:
        text = log.read_text(errors="replace")
        raise BenchError(f"{case.name}: keygen into {out} failed (exit status {proc.returncode}):\n{_tail(text)}",
                         f"full log: {log}", kind=classify_failure(proc.returncode, text))


# ---------------------------------------------------------------------- the two workers
def party_envs(backend: str, gpus: int | None) -> tuple[dict, dict]:
    """Environment per party: with 2 GPUs party p sees only GPU p; with 1 both see GPU 0
    (of whatever CUDA_VISIBLE_DEVICES already selects)."""
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if backend != "gpu":
        return base, dict(base)
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] \
        or [str(i) for i in range(len(_gpu_names()))]
    if len(visible) < (gpus or 1):
        raise BenchError(f"{gpus} GPU(s) asked for, {len(visible)} visible here ({', '.join(visible) or 'none'})",
                         "run on a machine with more GPUs or set CUDA_VISIBLE_DEVICES", kind="machine")
    pick = (visible[0], visible[1] if gpus == 2 else visible[0])
    return {**base, "CUDA_VISIBLE_DEVICES": pick[0]}, {**base, "CUDA_VISIBLE_DEVICES": pick[1]}


class PartyPair:
    """P0 and P1 of one configuration as two long-lived ``fusec.bench_party serve``
    processes. Every wait is bounded; on any failure both are killed and a BenchError
    names the configuration and carries the failing party's stderr tail."""

    def __init__(self, case: Case, build: Path, backend: str, run_dir: Path, timeout: float, seed: int = 0):
        self.case, self.build, self.backend, self.timeout, self.seed = case, build, backend, timeout, seed
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.outs = [run_dir / "p0.json", run_dir / "p1.json"]
        self.logs = [run_dir / "p0.log", run_dir / "p1.log"]
        self.procs: list[subprocess.Popen] = []
        self._q: queue.Queue = queue.Queue()

    # -- process management
    def _spawn(self, party: int, endpoint: list[str], env: dict) -> None:
        argv = _module("fusec.bench_party", "serve", str(self.build), "--party", str(party), *endpoint,
                       "--backend", self.backend, "--timeout", str(self.timeout), "--seed", str(self.seed),
                       "--out", str(self.outs[party]))
        with open(self.logs[party], "w") as err:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                 env=env, bufsize=1)
        self.procs.append(p)
        threading.Thread(target=self._read, args=(party, p), daemon=True).start()

    def _read(self, party: int, p: subprocess.Popen) -> None:
        with p.stdout:
            for line in p.stdout:
                try:
                    self._q.put((party, json.loads(line)))
                except ValueError:
                    continue                        # not an answer: ignore
        self._q.put((party, None))                  # end of output: the process is gone

    def start(self, envs: tuple[dict, dict] | None = None) -> None:
        """P0 listens on a port of its choosing and says which; P1 connects; both load the
        build and answer 'ready'. ``envs``: each party's environment (its GPU)."""
        env0, env1 = envs or party_envs(self.backend, None)
        self._spawn(0, ["--listen", "127.0.0.1:0"], env0)
        port = self._await("listening", (0,))[0]["port"]
        self._spawn(1, ["--peer", f"127.0.0.1:{port}"], env1)
        self._await("ready", (0, 1))

    def kill(self) -> None:
        """Kill whichever worker still runs (only these two processes) and reap both."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                p.stdin.close()
            except OSError:
                pass

    def __enter__(self) -> "PartyPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- talking to them
    def _send(self, msg: Callable[[int], dict]) -> None:
        for party, p in enumerate(self.procs):
            try:
                p.stdin.write(json.dumps(msg(party)) + "\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                self._fail(party, "exited before it got its next command", rc=p.poll())

    def _fail(self, party: int, what: str, kind: str | None = None, rc: int | None = None) -> None:
        """Kill both, raise with both stderr tails. ``rc``: the failing party's own exit
        status (never one our kill caused), which tells an OOM kill from a bug."""
        if party < len(self.procs) and kind is None:
            try:
                self.procs[party].wait(timeout=5)       # it is exiting: let it finish its log
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        texts = [log.read_text(errors="replace") if log.exists() else "" for log in self.logs]
        kind = kind or classify_failure(rc, texts[party])
        parts = [f"{self.case.name}: P{party} {what}"]
        for q, text in enumerate(texts[:len(self.procs)]):
            if text.strip():
                parts.append(f"--- P{q} stderr (last lines) ---\n{_tail(text)}")
        raise BenchError("\n".join(parts), f"full logs: {self.logs[0].parent}", kind=kind)

    def _await(self, event: str, parties: tuple[int, ...]) -> dict[int, dict]:
        got: dict[int, dict] = {}
        deadline = time.monotonic() + self.timeout
        while len(got) < len(parties):
            left = deadline - time.monotonic()
            if left <= 0:
                late = [p for p in parties if p not in got][0]
                self._fail(late, f"sent no '{event}' within {self.timeout:g} s (killed both workers)", "timeout")
            try:
                party, msg = self._q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg is None and (party in got or party not in parties):
                continue                            # a worker that answered may exit (after 'bye')
            if msg is None:
                rc = self.procs[party].wait(timeout=30)
                self._fail(party, f"exited (status {rc}) while the bench waited for '{event}'", rc=rc)
            elif msg.get("event") == "error":
                self._fail(party, f"failed: {msg.get('message')}")
            elif msg.get("event") == event and party in parties:
                got[party] = msg
        return got

    def step(self, step: int, warmup: bool, key_dirs: list[Path], sets: int) -> tuple[dict, dict]:
        """One step on both parties (``sets`` key sets from the files in ``key_dirs``, in
        order); returns their records."""
        self._send(lambda party: {"cmd": "step", "step": step, "warmup": warmup, "sets": sets,
                                  "keys": [str(Path(d) / f"p{party}.key") for d in key_dirs]})
        got = self._await("done", (0, 1))
        return got[0]["record"], got[1]["record"]

    def finish(self) -> list[Path]:
        """Ask both to write their JSON and exit; returns the files."""
        self._send(lambda party: {"cmd": "quit"})
        self._await("bye", (0, 1))
        for party, p in enumerate(self.procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._fail(party, "did not exit after writing its results", "timeout")
        return self.outs


# ---------------------------------------------------------------------- merging
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def merge_value(key: str, a: Any, b: Any) -> Any:
    """Both parties' values of one metric: bytes add up, everything else (latencies,
    rounds) is the larger. A metric one party lacks (None) is the other's."""
    if a is None or b is None:
        return b if a is None else a
    return a + b if "bytes" in key else max(a, b)


def merge_parties(p0: dict, p1: dict) -> dict:
    """One step as both parties saw it -> one step of the protocol (see the module doc)."""
    out: dict[str, Any] = {"step": p0.get("step"), "warmup": bool(p0.get("warmup"))}
    for key in _unique([*p0, *p1]):
        a, b = p0.get(key), p1.get(key)
        if key == "scopes":
            out[key] = {scope: {m: merge_value(m, (a or {}).get(scope, {}).get(m), (b or {}).get(scope, {}).get(m))
                                for m in _unique([*(a or {}).get(scope, {}), *(b or {}).get(scope, {})])}
                        for scope in _unique([*(a or {}), *(b or {})])}
        elif key not in out and (_is_number(a) or _is_number(b)):
            out[key] = merge_value(key, a, b)
    return out


def _median(values: list) -> Any:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _scaled(metrics: dict, by: float, keep: tuple[str, ...] = ()) -> dict:
    return {k: (v if k in keep or v is None else v / by) for k, v in metrics.items()}


def summarize(steps: list[dict], batch: int, internal_batch: int, seq: int) -> dict:
    """Median over the timed (non-warm-up) merged steps, per step, per batch (one key set)
    and per inference; tokens/s; per-scope medians per batch."""
    timed = [s for s in steps if not s.get("warmup")]
    if not timed:
        raise BenchError("no timed step to summarize", "use --repeat >= 1")
    keys = _unique(k for s in timed for k, v in s.items() if _is_number(v) and k != "step")
    per_step = {k: _median([s.get(k) for s in timed]) for k in keys}
    scope_names = _unique(sc for s in timed for sc in s.get("scopes", {}))
    scopes = {}
    for sc in scope_names:
        metrics = _unique(m for s in timed for m in s.get("scopes", {}).get(sc, {}))
        med = {m: _median([s.get("scopes", {}).get(sc, {}).get(m, 0) for s in timed]) for m in metrics}
        scopes[sc] = _scaled(med, internal_batch)
    per_batch = _scaled(per_step, internal_batch)
    per_inference = _scaled(per_batch, batch, keep=("rounds",))
    secs = per_step.get("online_seconds")
    return {"steps_timed": len(timed), "per_step": per_step, "per_batch": per_batch, "per_inference": per_inference,
            "tokens_per_second": batch * internal_batch * seq / secs if secs else None,
            "scopes_per_batch": scopes}


# ---------------------------------------------------------------------- one configuration
def run_case(case: Case, opts: BenchOptions, echo: Echo = print) -> dict:
    """Export, compile, keygen, run one configuration; a dict for the JSON's ``results``."""
    record: dict[str, Any] = {"config": case.as_dict(opts)}
    key_root = opts.key_root / case.slug
    try:
        envs = party_envs(opts.backend, case.gpus)            # enough GPUs? (before anything slow)
        positions = max([case.model.positions or 0, *opts.seqs, *opts.seq_sweep])
        model = export_model(case.model, Path(opts.workdir), positions, opts.timeout, case)
        record["config"]["model_file"] = str(model)
        comp = compile_case(case, model, Path(opts.workdir), opts.timeout)
        record["compile"] = comp.as_dict()
        plan = plan_keys(opts.keys_mode, comp.set_nbytes, opts.steps, opts.internal_batch,
                         _free_bytes(opts.key_root), key_root, opts.dealers)
        record["keys"] = {"mode": plan.mode, "files_per_party": plan.file_pairs, "dir": str(key_root)}
        check_memory(comp.set_nbytes, plan, case)
        merged, kg, files = _run_steps(case, opts, comp, plan, envs, echo)
        record["keygen"] = _keygen_summary(kg, comp.set_nbytes, case.batch)
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


def _run_steps(case: Case, opts: BenchOptions, comp: CompileInfo, plan: KeyPlan, envs: tuple[dict, dict],
               echo: Echo) -> tuple[list[dict], KeygenInfo, list[Path]]:
    """Keys, both workers, every step; returns the merged steps, the dealer's times and
    the two parties' own JSON files."""
    kg = KeygenInfo()
    logs = Path(opts.workdir) / "logs"

    def keys_for(step: int) -> list[Path]:
        """The key-file directories of ``step``, generating them first where the plan says."""
        stale = plan.stale(step)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)               # used up: free the space first
        outs = plan.generated_before(step)
        if outs:
            sets = sum(n for _, n in outs)
            echo(f"  keygen: {sets} key set(s) of {_gb(comp.set_nbytes)} per party in {len(outs)} file pair(s), "
                 f"{min(opts.dealers, len(outs))} dealer(s) -> {plan.root}")
            t0 = time.perf_counter()
            docs = generate_keys(comp.build, plan.root, outs, opts.dealers,
                                 opts.timeout * max(1, max(n for _, n in outs) // opts.internal_batch), case, logs,
                                 opts.backend)
            kg.add(docs, time.perf_counter() - t0)
        return [d for d, _ in plan.files(step)]

    first = keys_for(0)
    merged = []
    with PartyPair(case, comp.build, opts.backend, Path(opts.workdir) / "runs" / case.slug, opts.timeout) as pair:
        pair.start(envs)
        for step in range(opts.steps):
            key_dirs = first if step == 0 else keys_for(step)
            r0, r1 = pair.step(step, step < opts.warmup, key_dirs, opts.internal_batch)
            merged.append(merge_parties(r0, r1))
            echo(f"  step {step}{' (warm-up)' if step < opts.warmup else ''}: "
                 f"{merged[-1]['online_seconds']:.3f} s online, {merged[-1]['rounds']} rounds, "
                 f"{_gb(merged[-1]['bytes_sent'])} sent")
        files = pair.finish()
    return merged, kg, files


def _keygen_summary(kg: KeygenInfo, set_nbytes: int, batch: int) -> dict:
    per_set = kg.seconds / kg.sets if kg.sets else None
    return {"sets": kg.sets, "runs": kg.runs, "backend": kg.backend, "seconds_total": kg.seconds,
            "load_seconds": kg.load_seconds,
            "wall_seconds": kg.wall_seconds,
            "per_batch": {"seconds": per_set, "key_bytes_per_party": set_nbytes},
            "per_inference": {"seconds": per_set / batch if per_set is not None else None,
                              "key_bytes_per_party": set_nbytes / batch}}


# ---------------------------------------------------------------------- the whole run
def _gb(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_names() -> list[str]:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("fusec", "numpy", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine_info() -> dict:
    """Where the numbers come from: GPUs (nvidia-smi), CPU model, cores, memory, versions."""
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {"host": platform.node(), "gpus": _gpu_names(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "memory_bytes": mem, "os": platform.platform(), "versions": _versions()}


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
        return f"  skipped ({rec.get('skip_kind')}): {rec['skipped'].splitlines()[0]}"
    on, kg = rec["online"]["per_batch"], rec["keygen"]["per_batch"]
    return (f"  median {on['online_seconds']:.3f} s per batch, {rec['online']['tokens_per_second']:.1f} tokens/s, "
            f"{_gb(on['bytes_sent'])} per batch, {on['rounds']:.0f} rounds; keygen "
            f"{kg['seconds']:.2f} s and {_gb(kg['key_bytes_per_party'])} per batch and party")


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
    doc = {"fusec_bench": FORMAT, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine_info(), "command": opts.command, "settings": opts.settings(), "results": []}
    for i, case in enumerate(cases, 1):
        echo(f"[{i}/{len(cases)}] {case.name}")
        rec = run_case(case, opts, echo)
        doc["results"].append(rec)
        _save(doc, opts.json_path)
        echo(_one_line(rec))
    if opts.markdown_path:
        Path(opts.markdown_path).write_text(render_markdown(doc))
    return doc


# ---------------------------------------------------------------------- markdown
def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f} s" if v < 100 else f"{v:,.0f} s"


def _machine_line(m: dict) -> str:
    gpus = m.get("gpus") or []
    where = (f"{len(gpus)} x {gpus[0]}" if gpus and len(set(gpus)) == 1 else ", ".join(gpus)) if gpus else "no GPU"
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    vers = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    return f"{where}; CPU {m.get('cpu')}, {m.get('cores')} cores{mem}; {vers}"


def _ran(doc: dict) -> list[dict]:
    return [r for r in doc["results"] if "online" in r]


def _row(rec: dict) -> list[str]:
    c = rec["config"]
    gates = c["gates"] if c.get("padded", True) else f"{c['gates']} (no padding, INSECURE)"
    head = [c.get("label", c["model"]), str(c["seq"]), str(c["batch"]),
            gates, "-" if c["gpus"] is None else str(c["gpus"])]
    if "skipped" in rec:
        return head + [f"skipped ({rec.get('skip_kind')})"] + ["-"] * 7
    on, kg = rec["online"], rec["keygen"]
    return head + [_secs(on["per_batch"]["online_seconds"]), _spread(on), _secs(on["per_inference"]["online_seconds"]),
                   _gb(on["per_inference"]["bytes_sent"]), f"{on['per_batch']['rounds']:.0f}",
                   _secs(kg["per_inference"]["seconds"]), _gb(kg["per_inference"]["key_bytes_per_party"]),
                   f"{on['tokens_per_second']:,.1f}"]


def _spread(online: dict) -> str:
    """Range of the timed steps' online times around their median, e.g. "-3% / +5%":
    how much to trust a row (other load on the machine shows up here)."""
    times = [s["online_seconds"] for s in online["steps"] if not s.get("warmup")]
    med = online["per_step"]["online_seconds"]
    if not times or not med:
        return "-"
    return f"{(min(times) / med - 1) * 100:+.0f}% / {(max(times) / med - 1) * 100:+.0f}%"


def _table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _pairs(doc: dict) -> dict[tuple, dict[str, dict]]:
    """(model label, seq, batch, gpus) -> {gate label: record} over the measured records."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in _ran(doc):
        c = r["config"]
        label = c["gates"] if c.get("padded", True) else f"{c['gates']}-unpadded"
        out.setdefault((c.get("label", c["model"]), c["seq"], c["batch"], c["gpus"]), {})[label] = r
    return out


def _speedups(doc: dict) -> list[str]:
    rows = []
    for (model, seq, batch, gpus), by in _pairs(doc).items():
        if "fused" in by and "sigma" in by:
            f, s = by["fused"], by["sigma"]
            ratio = lambda get: f"{get(s) / get(f):.2f}x" if get(f) else "-"  # noqa: E731
            rows.append([model, str(seq), str(batch), "-" if gpus is None else str(gpus),
                         _secs(f["online"]["per_batch"]["online_seconds"]),
                         _secs(s["online"]["per_batch"]["online_seconds"]),
                         ratio(lambda r: r["online"]["per_batch"]["online_seconds"]),
                         ratio(lambda r: r["online"]["per_batch"]["bytes_sent"]),
                         ratio(lambda r: r["online"]["per_batch"]["rounds"]),
                         ratio(lambda r: r["keygen"]["per_batch"]["key_bytes_per_party"])])
    if not rows:
        return []
    return ["", "Fused against SIGMA-style gates (ratio = sigma / fused; above 1 means fused is better):", "",
            *_table(["model", "seq", "batch", "GPUs", "online fused", "online sigma", "time", "bytes", "rounds",
                     "key"], "lrrrrrrrrr", rows)]


def scope_metric(metrics: dict, kind: str) -> float:
    """A scope's seconds (``kind='seconds'``) or bytes (``'bytes'``) under whatever key the
    runtime used (``seconds``, ``bytes_sent``, ...); 0 when it reports none."""
    return sum(v for k, v in metrics.items() if kind in k and v is not None)


def _scope_rows(by: dict[str, dict], times: list[str]) -> list[list[str]]:
    """Rows of a per-scope table: every time metric and the bytes, per gate set; then what
    no scope accounts for, and the totals."""
    labels = list(by)
    sc_of = {lab: by[lab]["online"]["scopes_per_batch"] for lab in labels}
    scopes = _unique(sc for lab in labels for sc in sc_of[lab])
    rows = [[sc] + [cell for lab in labels for cell in (
        *(_secs(sc_of[lab].get(sc, {}).get(t)) for t in times), _gb(scope_metric(sc_of[lab].get(sc, {}), "bytes")))]
        for sc in scopes]
    rest = {lab: by[lab]["online"]["per_batch"]["online_seconds"] - sum(
        scope_metric(m, "seconds") for m in sc_of[lab].values()) for lab in labels}
    rows.append(["rest (in no scope)"] + [cell for lab in labels
                                          for cell in (_secs(max(0.0, rest[lab])), *[""] * len(times))])
    rows.append(["**online (total)**"] + [cell for lab in labels for cell in (
        _secs(by[lab]["online"]["per_batch"]["online_seconds"]), *[""] * (len(times) - 1),
        _gb(by[lab]["online"]["per_batch"]["bytes_sent"]))])
    return rows


def _scope_tables(doc: dict) -> list[str]:
    """Per model and GPU count, one table at the smallest batch and the most common
    sequence length (the configuration the per-scope plot shows). Time columns are
    whatever per-scope seconds the runtime reports (compute, wire, ...)."""
    out = []
    pairs = _pairs(doc)
    seqs = [seq for (_, seq, _, _) in pairs]
    for (model, seq, batch, gpus), by in pairs.items():
        smallest = min(b for (m, s, b, g) in pairs if (m, s, g) == (model, seq, gpus))
        if len(by) < 2 or batch != smallest or seq != max(set(seqs), key=seqs.count):
            continue
        times = sorted({k for r in by.values() for m in r["online"]["scopes_per_batch"].values()
                        for k in m if "seconds" in k})
        names = [t.removesuffix("_seconds") for t in times] + ["bytes"]
        where = "CPU" if gpus is None else f"{gpus} GPU(s)"
        out += ["", f"By scope, {model}, seq {seq}, batch {batch}, {where} (per batch; each time is the slower "
                    f"party's, so they may add up to a little more than the online time; bytes: both parties):", "",
                *_table(["scope"] + [f"{lab} {n}" for lab in by for n in names],
                        "l" + "r" * len(names) * len(by), _scope_rows(by, times))]
    return out


def render_markdown(doc: dict) -> str:
    """The JSON as markdown for BENCHMARKS.md: date, machine, exact command, method, one
    row per configuration (skips with their reasons), fused/sigma ratios, per-scope tables."""
    st = doc["settings"]
    rows = [_row(r) for r in doc["results"]]
    lines = [f"## End to end: `fusec bench` ({doc['date'][:10]})", "",
             f"- Date: {doc['date']}",
             f"- Machine: {_machine_line(doc['machine'])}; backend `{st['backend']}`",
             f"- Command: `{doc['command']}`",
             f"- Method: random weights; per configuration {st['warmup']} untimed warm-up step(s), then the median "
             f"of {st['repeat']} timed steps; a step evaluates {st['internal_batch']} key set(s) (internal batch) "
             f"back to back over one TCP connection. Online time is the slower party's, bytes are "
             f"both parties' sends, rounds per key set. Per batch = one forward of the true batch (one key set); per "
             f"inference = per batch / true batch; tokens/s = batch x internal batch x seq / step time. Keygen is "
             f"the dealer's time per key set; key bytes are per party.", "",
             *_table(["model", "seq", "batch", "gates", "GPUs", "online / batch", "steps min / max",
                      "online / inference", "bytes / inference", "rounds", "keygen / inference",
                      "key / inference / party", "tokens/s"], "lrrlrrrrrrrrr", rows)]
    skipped = [r for r in doc["results"] if "skipped" in r]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {r['config']['name']}: {' '.join(r['skipped'].split())}" for r in skipped]
    return "\n".join(lines + _speedups(doc) + _scope_tables(doc)) + "\n"
