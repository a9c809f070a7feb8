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
from fusec.runtime.keygen_chunks import HostArrays, KeySink, PackedParts, chunk_elements, chunked, element_axes
from fusec.runtime.seeded_shares import draw_seed, party_layout, seeded_parties, split_key, split_part


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
    also ``key_bytes_used``: the bytes the sets actually key per party (the two parties' mean,
    as their files hold them), summed over the sets (the layout reserves each mask-dependent
    field at its padded size).
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
        gen = SetGenerator(graph, be, be.dealer_rng(seed), share_seed_rng(be, seed))
        for i in range(count):
            gen.write_set(i, (w0, w1))
            if progress:
                progress(i + 1, count)
    timings.update(gen.timings())
    return paths


def share_seed_rng(be: Backend, seed: bytes | None):
    """The CSPRNG the seeded shares' seeds come from: a stream of its own, so the gates' keys
    are the draws they were before seeds existed; a test seed derives its own, so one dealer
    seed still gives the same files on every backend."""
    return be.dealer_rng(None if seed is None else bytes(seed) + b"/share-seeds")


class SetGenerator:
    """Key sets gate by gate into two sinks (a key file writer per party, or a channel to
    each server: runtime/keystream.py), each in its party's layout (a seed in place of the
    shares of the gates seeded to it: runtime/seeded_shares.py), with the time split into
    generating, packing (the seeds' streams and the other party's differences included; on
    a GPU, the copy to the host too) and handing the bytes over. A gate packed chunk by chunk
    where it is keyed (``packed_in_keygen``) counts its split and packing as generating."""

    def __init__(self, graph: GateGraph, be: Backend, rng, seed_rng=None, to_host: bool = True) -> None:
        self.graph, self.rng, self.be = graph, rng, be
        self.seed_rng = seed_rng if seed_rng is not None else be.dealer_rng()    # OS entropy
        self.pack = be.pack_key if to_host else be.pack_key_device   # device: in-memory timing only
        layout = graph.layout()
        self.slots = {s.gate_id: s for s in layout.slots}
        self.seeded = seeded_parties(layout)        # whose shares of each gate come from a seed
        self.party_slots = [{s.gate_id: s for s in party_layout(layout, p).slots} for p in (0, 1)]
        self.by_id = {n.id: n.gate for n in graph.nodes}
        self.insecure = graph.insecure      # INSECURE (unpadded): the bytes each set really keys are counted
        # gates keyed in chunks (runtime/keygen_chunks.py): their seeded shares are split a chunk at a
        # time where the keys are made (the others' after keygen), and each chunk is packed at once
        # into the party's slot bytes where it can be (PackedParts.fits; else packed whole on the host)
        self.in_chunks = {n.id for n in graph.nodes if chunked(n.gate)}
        self.split_in_keygen = self.in_chunks & set(self.seeded)
        self.packed_in_keygen = {g for g in self.in_chunks if to_host and PackedParts.fits(
            self.by_id[g], element_axes(self.by_id[g]), self._party_slots(g), chunk_elements(self.by_id[g]))}
        self.spent = dict.fromkeys(("generate_seconds", "pack_seconds", "write_seconds"), 0.0)
        self.used = 0

    def write_set(self, index: int, sinks) -> None:
        """Set ``index``: each sink gets ``begin_set``, every gate's packed bytes in layout
        order (``write_gate_packed``) and ``end_set``."""
        clock, spent = time.perf_counter, self.spent
        for w in sinks:
            w.begin_set(index)
        stream = self.graph.keygen_stream(self.rng, sink=self._sink)
        while True:
            t0 = clock()
            item = next(stream, None)
            t1 = clock()
            if item is None:
                break
            gate_id, k0, k1 = item
            slot = self.slots[gate_id]
            if self.insecure:               # per party, as the files hold it (the unkeyed room is DCF keys')
                stored = sum(self.party_slots[p][gate_id].nbytes for p in (0, 1)) / 2
                # a gate packed where keyed has no unpadded piece table (not elementwise: never chunked)
                unused = 0 if gate_id in self.packed_in_keygen else unused_key_nbytes(self.by_id[gate_id], k0)
                self.used += stored - unused
            if gate_id in self.packed_in_keygen:
                keys = packed = (k0, k1)                # packed chunk by chunk (PackedParts)
            else:
                keys = (k0, k1) if gate_id in self.split_in_keygen else \
                    split_key(slot, self.seeded.get(gate_id), k0, k1, self.seed_rng, self.be)
                packed = tuple(self.pack(self.party_slots[p][gate_id], keys[p]) for p in (0, 1))
            t2 = clock()
            for w, b in zip(sinks, packed):
                w.write_gate_packed(gate_id, b)
            spent["generate_seconds"] += t1 - t0
            spent["pack_seconds"] += t2 - t1
            spent["write_seconds"] += clock() - t2
            del item, k0, k1, keys, packed      # not held through the next gate's keygen (a GPU dealer's peak)
        t0 = clock()
        for w in sinks:
            w.end_set()
        spent["write_seconds"] += clock() - t0

    def _party_slots(self, gate_id: str) -> tuple:
        return self.party_slots[0][gate_id], self.party_slots[1][gate_id]

    def _sink(self, gate_id: str) -> KeySink | None:
        """Where a gate keyed in chunks puts them: split a chunk at a time where it is keyed (one
        seed for the gate), then packed into the parties' slot bytes or joined as host arrays."""
        if gate_id not in self.in_chunks:
            return None
        split = None
        if gate_id in self.split_in_keygen:
            slot, party, seed = self.slots[gate_id], self.seeded[gate_id], draw_seed(self.seed_rng)
            split = lambda first, k0, k1: split_part(slot, party, k0, k1, seed, self.be, first)  # noqa: E731
        gate = self.by_id[gate_id]
        if gate_id in self.packed_in_keygen:
            return PackedParts(gate, element_axes(gate), self._party_slots(gate_id), self.be, split)
        return HostArrays(gate, element_axes(gate), split)

    def release_cache(self) -> int:
        """After a set: the device memory its keygen cached, given back (Backend.release_cache)."""
        return self.be.release_cache()

    def timings(self) -> dict[str, float]:
        """Seconds per part, summed over the sets; for an INSECURE (unpadded) graph also
        ``key_bytes_used`` (see :func:`write_keys`)."""
        return {**self.spent, **({"key_bytes_used": float(self.used)} if self.insecure else {})}

