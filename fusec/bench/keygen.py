"""The dealer process of ``fusec bench``, timed from inside.

``python -m fusec.bench keygen BUILD -o DIR --count K [--backend gpu] --json OUT`` writes
key sets as ``fusec keygen`` does (on the CPU or the GPU), but times itself, so the
per-set keygen time excludes interpreter start-up and rebuilding the gate graph, which a
long-running dealer pays once."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fusec.errors import FusecError


def keygen(build: str, out: str, count: int, backend: str = "cpu", json_path: str | None = None,
           durable: bool = True) -> int:
    """Write ``count`` key sets into ``out``, timing build loading separately from writing
    the key sets; prints the timings as JSON (and writes them to ``json_path``). Returns
    the exit status (2: a user error)."""
    from fusec.runtime.dealer import write_keys

    t0 = time.perf_counter()
    loaded = _load(build, backend)
    if loaded is None:
        return 2
    b, be = loaded
    t1 = time.perf_counter()
    marks = [t1]
    parts: dict[str, float] = {}
    try:
        write_keys(b.gates, out, count, progress=lambda i, k: marks.append(time.perf_counter()), backend=be,
                   durable=durable, timings=parts)
    except FusecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t2 = time.perf_counter()
    doc = {"load_seconds": t1 - t0, "seconds": t2 - t1, "count": count, "backend": be.name,
           "durable": durable, "finish_seconds": t2 - marks[-1],
           **_set_sizes(b.gates.layout()),
           "set_seconds": [b - a for a, b in zip(marks, marks[1:])], **parts}
    text = json.dumps(doc)
    if json_path:
        Path(json_path).write_text(text)
    print(text)
    return 0


def _load(build: str, backend: str):
    """(build, backend), or None after printing the user error in one line."""
    from fusec.build import load_build
    from fusec.runtime.backend import get_backend

    try:
        b = load_build(build)
        return b, get_backend(backend, b.kernels_source)
    except FusecError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _set_sizes(layout) -> dict:
    """A set's bytes in a server's memory (``set_nbytes``) and in each party's file or stream."""
    from fusec.runtime.seeded_shares import party_layout

    return {"set_nbytes": layout.set_nbytes, "stored_nbytes": [party_layout(layout, p).set_nbytes for p in (0, 1)]}


class _Dropped:
    """A sink that keeps nothing: each gate's packed bytes are dropped once made."""

    nbytes = 0

    def begin_set(self, index: int) -> None:
        pass

    def write_gate_packed(self, gate_id: str, buf) -> None:
        self.nbytes += int(buf.size)

    def end_set(self) -> None:
        pass


def keygen_in_memory(build: str, count: int, backend: str = "gpu") -> int:
    """Time the dealer making ``count`` sets where it computes, packed into the layout's bytes
    and left there (no copy to the host, no file): the "in memory" keygen time of issue 11.
    Each set ends with a synchronize, so the time includes all its device work; the bytes
    of a gate are dropped after packing (memory stays bounded). Prints JSON."""
    from fusec.runtime.dealer import SetGenerator

    loaded = _load(build, backend)
    if loaded is None:
        return 2
    b, be = loaded
    sinks = (_Dropped(), _Dropped())
    times = []
    with be.activate():
        gen = SetGenerator(b.gates, be, be.dealer_rng(), to_host=False)
        for i in range(count):
            t0 = time.perf_counter()
            gen.write_set(i, sinks)
            be.synchronize()
            times.append(time.perf_counter() - t0)
    print(json.dumps({"backend": be.name, "count": count, **_set_sizes(b.gates.layout()),
                      "set_seconds": times, "bytes_made": sinks[0].nbytes + sinks[1].nbytes, **gen.timings()}))
    return 0
