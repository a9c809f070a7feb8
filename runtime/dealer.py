"""The dealer: samples masks with a CSPRNG and writes one key file per server."""
from __future__ import annotations

import os
import time
from pathlib import Path

from fusec.runtime.backend import Backend, get_backend
from fusec.runtime.gates.scalar import unused_key_nbytes
from fusec.runtime.graph import GateGraph
from fusec.runtime.keyfile import new_key_set_id, new_pairing_secret
from fusec.runtime.keyio import KeyFileWriter
from fusec.runtime.party import PROFILE_ENV, python_profiler


def write_keys(graph: GateGraph, out_dir: str | os.PathLike, count: int = 1,
               seed: bytes | None = None, progress=None, backend: Backend | None = None,
               durable: bool = True, timings: dict[str, float] | None = None) -> tuple[Path, Path]:
    """Generate ``count`` key sets (one per inference) into ``p0.key`` and ``p1.key``.

    ``seed`` is for reproducible tests only; without it the CSPRNG is seeded from the OS.
    Both files carry the same fresh key-set id (what the servers' reuse ledgers are keyed
    by) and the same fresh pairing secret (what each server's hello proves to the other).
    ``backend`` picks where the dealer computes (the GPU dealer draws the same CSPRNG
    stream, so for a test seed both dealers write identical files). ``durable=False``
    skips the fsync of the finished files: for keys a benchmark deletes right after use,
    where flushing tens of GB to disk would be most of the dealer's time. A file that did
    not reach the disk before a crash fails its checksum; it is never silently used.
    ``timings`` (if given) receives the seconds spent generating keys, packing them into
    the layout's bytes (on a GPU: including the copy to the host) and handing them to the
    writers (hashing and writing), summed over the sets; for an INSECURE (unpadded) graph
    also ``key_bytes_used``: the bytes the sets actually key, summed over the sets (the
    layout reserves each mask-dependent field at its padded size, ``set_nbytes`` per set).
    """
    be = backend or get_backend("cpu")
    profile = python_profiler()
    try:
        return _write_keys(graph, out_dir, count, seed, progress, be, durable, timings if timings is not None else {})
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(os.path.join(os.environ[PROFILE_ENV], f"dealer_{os.getpid()}.prof"))


def _write_keys(graph: GateGraph, out_dir, count: int, seed: bytes | None, progress, be: Backend,
                durable: bool, timings: dict[str, float]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = graph.layout()
    ksid, secret = new_key_set_id(), new_pairing_secret()  # OS CSPRNG, even with a test seed
    paths = (out / "p0.key", out / "p1.key")
    with KeyFileWriter(paths[0], layout, 0, ksid, count, durable, pairing_secret=secret) as w0, \
            KeyFileWriter(paths[1], layout, 1, ksid, count, durable, pairing_secret=secret) as w1, \
            be.activate():
        rng = be.dealer_rng(seed)
        slots = {s.gate_id: s for s in layout.slots}
        clock = time.perf_counter
        spent = dict.fromkeys(("generate_seconds", "pack_seconds", "write_seconds"), 0.0)
        gates = {n.id: n.gate for n in graph.nodes} if graph.insecure else None
        used = 0
        for i in range(count):
            w0.begin_set(i)
            w1.begin_set(i)
            stream = graph.keygen_stream(rng)
            while True:
                t0 = clock()
                item = next(stream, None)
                t1 = clock()
                if item is None:
                    break
                gate_id, k0, k1 = item
                b0, b1 = be.pack_key(slots[gate_id], k0), be.pack_key(slots[gate_id], k1)
                if gates is not None:
                    used += slots[gate_id].nbytes - unused_key_nbytes(gates[gate_id], k0)
                t2 = clock()
                w0.write_gate_packed(gate_id, b0)
                w1.write_gate_packed(gate_id, b1)
                spent["generate_seconds"] += t1 - t0
                spent["pack_seconds"] += t2 - t1
                spent["write_seconds"] += clock() - t2
            t0 = clock()
            w0.end_set()
            w1.end_set()
            spent["write_seconds"] += clock() - t0
            if progress:
                progress(i + 1, count)
    if gates is not None:
        spent["key_bytes_used"] = float(used)
    timings.update(spent)
    return paths

