"""The dealer processes: ``--dealers N`` of them at a time, each timed from inside."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fusec.bench.failures import BenchError, classify_failure
from fusec.bench.plan import Case
from fusec.bench.stage import module_argv
from fusec.bench.util import tail


@dataclass
class KeygenInfo:
    seconds: float = 0.0
    load_seconds: float = 0.0
    sets: int = 0
    runs: int = 0

    wall_seconds: float = 0.0
    backend: str | None = None
    parts: dict = field(default_factory=dict)   # generate / pack / write seconds (runtime/dealer.py)
    device_cache_bytes: int = 0     # the most device memory a streaming GPU dealer gave back after one set

    def add(self, docs: list[dict], wall: float) -> None:
        """Dealer runs (each timed from inside) and the wall time they took together."""
        for doc in docs:
            self.backend = doc.get("backend", self.backend)
            self.seconds += doc["seconds"]
            self.load_seconds += doc["load_seconds"]
            self.sets += doc["count"]
            self.runs += 1
            for k in ("generate_seconds", "pack_seconds", "write_seconds", "key_bytes_used"):  # bytes: INSECURE only
                if k in doc:
                    self.parts[k] = self.parts.get(k, 0.0) + doc[k]
            self.device_cache_bytes = max(self.device_cache_bytes, int(doc.get("device_cache_released_bytes", 0)))
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
                argv = module_argv("fusec.bench", "keygen", str(build), "-o", str(out), "--count", str(count),
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
        raise BenchError(f"{case.name}: keygen into {out} failed (exit status {proc.returncode}):\n{tail(text)}",
                         f"full log: {log}", kind=classify_failure(proc.returncode, text))


def keygen_summary(kg: KeygenInfo, set_nbytes: int, batch: int, sets_per_batch: int = 1) -> dict:
    """The dealers' times and key bytes per set, per batch (``sets_per_batch`` sets: one per
    lane, fusec/bench/lanes.py) and per inference."""
    per_set = kg.seconds / kg.sets if kg.sets else None
    per_batch = per_set * sets_per_batch if per_set is not None else None
    batch_bytes = set_nbytes * sets_per_batch
    return {"sets": kg.sets, "runs": kg.runs, "backend": kg.backend, "seconds_total": kg.seconds,
            "load_seconds": kg.load_seconds,
            "wall_seconds": kg.wall_seconds, "device_cache_released_bytes": kg.device_cache_bytes,
            "per_batch": {"seconds": per_batch, "key_bytes_per_party": batch_bytes},
            "per_set_parts": {k: v / kg.sets for k, v in kg.parts.items()} if kg.sets else {},
            "per_inference": {"seconds": per_batch / batch if per_batch is not None else None,
                              "key_bytes_per_party": batch_bytes / batch}}
