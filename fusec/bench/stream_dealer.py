"""The dealer of ``fusec bench --keys stream``: ``fusec keygen --serve`` as a process next
to the two workers, streaming every key set over loopback TCP when both ask for it
(runtime/keystream.py). No key file is written, so a configuration whose sets do not fit
the disk (BERT-base at batch 8: 2 x 34 GB per set) still runs; each party holds one set
in memory, the dealer one gate."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from fusec.bench.failures import BenchError, classify_failure
from fusec.bench.plan import Case
from fusec.bench.stage import module_argv
from fusec.bench.util import tail
from fusec.run3 import free_port

PARTS = ("generate_seconds", "pack_seconds", "write_seconds")


class StreamDealer:
    """Start with ``with``; ``address`` is what the workers get as their key path;
    :meth:`finish` waits for it (it exits once every set is served) and returns its
    timings in the form :class:`~fusec.bench.dealers.KeygenInfo` adds up."""

    def __init__(self, build: Path, count: int, backend: str, timeout: float, case: Case, log: Path) -> None:
        self.build, self.count, self.backend, self.timeout, self.case, self.log = \
            build, count, backend, timeout, case, log
        self.address = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "StreamDealer":
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = module_argv("fusec", "keygen", str(self.build), "--serve", f"127.0.0.1:{port}", "--count",
                           str(self.count), "--backend", self.backend, "--timeout", str(self.timeout))
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def finish(self) -> dict:
        """The dealer's own account: the sets it served and the seconds it spent generating,
        packing and sending them (``seconds``: their sum, not the time it waited for the
        servers to ask)."""
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.case.name}: the key-stream dealer did not exit after its last set",
                             f"log: {self.log}", kind="timeout") from None
        text = self.log.read_text(errors="replace")
        if self.proc.returncode:
            raise BenchError(f"{self.case.name}: the key-stream dealer failed (exit status {self.proc.returncode}):"
                             f"\n{tail(text)}", f"full log: {self.log}",
                             kind=classify_failure(self.proc.returncode, text))
        doc = json.loads(next(line for line in reversed(text.splitlines()) if line.startswith("{")))
        return {"seconds": sum(doc[k] for k in PARTS), "load_seconds": 0.0, "count": doc["served_sets"],
                "backend": self.backend, **{k: doc[k] for k in PARTS},
                "device_cache_released_bytes": doc.get("device_cache_released_bytes", 0)}

    def explain(self, error: BenchError) -> BenchError:
        """``error`` (a worker's failure) with this dealer's exit status and last lines added
        where the dealer has exited: a worker whose key stream closed only says "peer closed
        the connection", and the reason (an allocation on the card, say) is in this log. The
        kind becomes the dealer's (``memory`` is a skip) when the worker's says nothing more."""
        if self.proc is None:
            return error
        try:
            rc = self.proc.wait(timeout=5)      # a worker saw its stream close: the dealer is exiting
        except subprocess.TimeoutExpired:
            return error
        if rc == 0:
            return error                        # it served every set: not the reason
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        message = f"{error.message}\n--- key-stream dealer (exit status {rc}, last lines) ---\n{tail(text)}"
        kind = classify_failure(rc, text) if error.kind == "error" else error.kind
        return BenchError(message, error.hint, kind=kind, status=error.status)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
