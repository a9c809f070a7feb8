"""How a configuration fails, and which failures are a skip rather than a stop.

A stage's exit status and output are classified (:func:`classify_failure`): an
out-of-memory kill or a full disk means "this machine is too small", recorded as
skipped; anything else stops the bench (or is recorded, with ``--keep-going``)."""
from __future__ import annotations

import re

from fusec.errors import FusecError

#: failure kinds that mean "not on this machine" (recorded as skipped, the bench goes on)
SKIPPABLE = ("memory", "disk", "machine", "refused")


class BenchError(FusecError):
    """A configuration failed. ``kind``: ``memory`` / ``disk`` / ``machine`` (this machine
    is too small or has too few GPUs: recorded as skipped), ``refused`` (the compiler
    declines the configuration: recorded),
    ``timeout`` or ``error`` (stops the bench unless ``--keep-going``)."""

    def __init__(self, message: str, hint: str | None = None, kind: str = "error", status: int | None = None):
        super().__init__(message, hint)
        self.kind = kind
        self.status = status        # the failed process's exit status, where there is one


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


def reason(text: str) -> str:
    """The one line of a failure's output that says why: the first line naming a shortage of
    memory or disk (a party's "peer closed the connection" is only the echo of the process
    that ran out), else the first line."""
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    for line in lines:
        if _MEMORY.search(line) or _DISK.search(line):
            return line
    return lines[0] if lines else ""
