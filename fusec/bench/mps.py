"""``fusec bench --mps``: the bench under CUDA's Multi-Process Service.

With both parties on one card (``--gpus 1``) and no MPS, the card runs one process's
kernels at a time: every round the two parties' work takes turns, with a context switch
between them. Under MPS their kernels share the card at once, which is nearer what two
servers with a card each see (BERT-base s128 on an H100: 0.218 s instead of 0.333 s,
BENCHMARKS.md). The daemon is started for the bench's duration with its pipe and log
directories under the work directory, every process the bench starts inherits them, and
it is stopped at the end, the bench returning once it is gone; a daemon already running is
used as it is. Whether MPS ran is recorded in the JSON (``machine.cuda_mps``)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

from fusec.bench.failures import BenchError
from fusec.bench.machine import cuda_mps

CONTROL = "nvidia-cuda-mps-control"
ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")


#: Seconds :func:`mps_daemon` waits, after its ``quit``, for the daemon to be gone.
QUIT_WAIT_SECONDS = 30.0


def _wait_gone(timeout: float | None = None) -> bool:
    """Wait until no MPS daemon runs (a daemon told to quit takes a moment): the next bench
    then starts its own rather than taking a dying one for a running one. False on timeout."""
    deadline = time.monotonic() + (QUIT_WAIT_SECONDS if timeout is None else timeout)
    while cuda_mps():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def mps_daemon(workdir: Path) -> Iterator[None]:
    """CUDA MPS running (and this process's environment pointing at it) while inside."""
    if cuda_mps():
        yield
        return
    control = shutil.which(CONTROL)
    if control is None:
        raise BenchError(f"--mps needs CUDA's MPS control program ({CONTROL}), which is not on PATH",
                         "install the NVIDIA driver's MPS tools, or run the bench without --mps")
    dirs = [Path(workdir) / "mps" / name for name in ("pipe", "log")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update({k: str(d) for k, d in zip(ENV, dirs)})
    try:
        try:
            r = subprocess.run([control, "-d"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"{CONTROL} -d could not be started: {e}", "run the bench without --mps") from None
        if r.returncode != 0:
            raise BenchError(f"{CONTROL} -d failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[:200]}",
                             f"see {dirs[1]}, or run the bench without --mps")
        try:
            yield
        finally:
            subprocess.run([control], input="quit\n", capture_output=True, text=True, timeout=60)
            _wait_gone()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
