"""Running one stage (model export, compile) as a subprocess with a time limit and a log.

Each stage runs in its own process so that a crash or an out-of-memory kill is contained
and reported with the configuration's name and the tail of the stage's output."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fusec.bench.failures import BenchError, classify_failure
from fusec.bench.plan import Case
from fusec.bench.util import tail


def module_argv(*args: str) -> list[str]:
    """``python -m ARGS...`` with this interpreter."""
    return [sys.executable, "-m", *args]


def run_stage(argv: list[str], what: str, case: Case, timeout: float, log: Path) -> subprocess.CompletedProcess:
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
        raise BenchError(f"{case.name}: {what} failed (exit status {r.returncode}):\n{tail(r.stderr or r.stdout)}",
                         f"full log: {log}", kind=kind, status=r.returncode)
    return r
