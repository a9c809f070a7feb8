"""Streamed key sets (``--stream-keys``): gate keys copied to the device ahead of the gates.

With streamed keys a set stays in host memory and reaches the device inside the online
clock (SIGMA's way of counting). Copying each gate's slot when the gate asks for it puts
every copy on the critical path; this module instead copies *chunks* of consecutive slots
on a dedicated copy stream a bounded window ahead, so the link works while the gates
compute and a gate usually finds its bytes already on the device.

Why it can run ahead: the layout's slot order is the key-consumption order fixed at
compile time (runtime/layout.py), so "the next chunk" is known. Gates may still ask out of
order (ready gates start in dataflow order, a gate may read its keys twice): a slot
whose chunk is queued is served from it whatever the order; any other slot is copied on
its own when asked (never a wait on a copy that was not queued, so no deadlock).

Memory stays bounded: at most ``ahead_bytes`` of chunks (or one chunk, if larger) are
queued or resident at a time, and a chunk is dropped as soon as every gate in it has
unpacked its slot. Gates start in dataflow order, which may run a gate long after its
neighbours in the layout; a chunk left that far behind is dropped rather than let it
shrink the window, and the late gate's slot is copied on its own. Nothing is copied
before the first gate asks for keys, so no key byte reaches the device before the clock
starts.

The CUDA specifics (stream, events, the asynchronous copy) sit behind :class:`CopyQueue`,
so the same chunking runs in CI on fake device arrays (:class:`SyncCopies`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from fusec.runtime.layout import GateSlot, KeyLayout

#: Bytes of consecutive slots copied together (one copy, one buffer, one event). Large
#: enough that a copy runs at the link's speed, small next to a set of several GB.
STREAM_CHUNK_BYTES = 64 << 20
#: Bytes of chunks queued or resident ahead of the gates (bounded further by free memory).
STREAM_AHEAD_BYTES = 4 * STREAM_CHUNK_BYTES


@dataclass(frozen=True)
class Chunk:
    """Consecutive slots ``gate_ids`` occupying bytes ``[start, end)`` of the set."""

    start: int
    end: int
    gate_ids: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def plan_chunks(layout: KeyLayout, chunk_bytes: int) -> list[Chunk]:
    """The layout's slots grouped in order into chunks of at most ``chunk_bytes`` (a slot
    larger than that is a chunk of its own)."""
    chunks: list[Chunk] = []
    ids: list[str] = []
    start = end = 0
    for s in layout.slots:
        if ids and s.end - start > chunk_bytes:
            chunks.append(Chunk(start, end, tuple(ids)))
            ids = []
        if not ids:
            start = s.offset
        ids.append(s.gate_id)
        end = s.end
    if ids:
        chunks.append(Chunk(start, end, tuple(ids)))
    return chunks


class CopyQueue(Protocol):
    """Host-to-device copies on their own queue, ordered against the compute stream."""

    def copy(self, host: np.ndarray) -> tuple[Any, Any]:
        """Enqueue a copy of ``host`` (uint8) into a new device buffer: (buffer, token)."""

    def wait(self, token: Any) -> None:
        """Make work enqueued from now on the compute stream wait for the copy ``token``."""

    def fence(self) -> None:
        """Make later copies wait for the compute work enqueued so far: a dropped buffer's
        memory may be reused by the next copy only after the kernels reading it ran."""


class SyncCopies:
    """Plain ``xp.asarray`` copies on the compute stream (no CUDA streams: the CPU test
    stand-ins, or a CuPy without them); waits and fences are no-ops."""

    def __init__(self, xp) -> None:
        self.xp = xp

    def copy(self, host: np.ndarray) -> tuple[Any, Any]:
        return self.xp.asarray(host), None

    def wait(self, token: Any) -> None:
        pass

    def fence(self) -> None:
        pass


class CudaCopies:
    """Copies on a non-blocking CuPy stream, one event per copy.

    The buffers are allocated while the copy stream is current, so CuPy's pool hands
    their memory back to that stream's arena when dropped; :meth:`fence` then orders the
    next copy (which may reuse it) after the unpack kernels that read it. A copy from
    page-locked memory is asynchronous; from ordinary (pageable) memory CUDA stages it
    through a bounce buffer and the host waits for it: correct, but nothing overlaps
    (:class:`BouncedCopies` is the queue for such a set)."""

    def __init__(self, cupy, stream) -> None:
        self.cupy = cupy
        self.stream = stream

    def copy(self, host: np.ndarray) -> tuple[Any, Any]:
        with self.stream:
            dev = self.cupy.empty(host.size, np.uint8)
            if host.size:
                dev.set(host, stream=self.stream)
            return dev, self._event(self.stream)

    def wait(self, token: Any) -> None:
        self.cupy.cuda.get_current_stream().wait_event(token)

    def fence(self) -> None:
        self.stream.wait_event(self._event(self.cupy.cuda.get_current_stream()))

    def _event(self, stream) -> Any:
        ev = self.cupy.cuda.Event(disable_timing=True)     # for ordering only: no timestamps
        ev.record(stream)
        return ev


class BouncedCopies(CudaCopies):
    """Copies from ordinary (pageable) host memory that still overlap the gates: each
    piece of at most ``slot_bytes`` is copied by the host into one of a small ring of
    page-locked buffers, and from there to the device asynchronously on the copy stream.

    A set too large to keep page-locked whole (a batch-8 BERT-base set is 34 GB per party,
    more than a party may pin) would otherwise be copied by CUDA synchronously, so the
    gate thread waited for every byte (6.8 s online for batch 8 on an H100, where the
    gates themselves need about a second). A ring buffer is reused only after the host
    has seen its previous copy finish (its event), so the ring bounds the pinned memory
    at ``slots * slot_bytes`` whatever the set's size. ``pinned(n)`` allocates a
    page-locked host array; ``memcpy(dst, src)`` is the host copy (several threads)."""

    def __init__(self, cupy, stream, pinned: Callable[[int], np.ndarray], slot_bytes: int = STREAM_CHUNK_BYTES,
                 slots: int = 3, memcpy: Callable[[np.ndarray, np.ndarray], None] = np.copyto) -> None:
        super().__init__(cupy, stream)
        self.slot_bytes = max(1, int(slot_bytes))
        self._pinned, self._memcpy = pinned, memcpy
        self._ring: list[tuple[np.ndarray, Any] | None] = [None] * max(1, int(slots))
        self._turn = 0

    def copy(self, host: np.ndarray) -> tuple[Any, Any]:
        with self.stream:
            dev = self.cupy.empty(host.size, np.uint8)
        for start in range(0, host.size, self.slot_bytes):
            piece = host[start:start + self.slot_bytes]
            i, buf = self._free_slot()
            self._memcpy(buf[:piece.size], piece)
            dev[start:start + piece.size].set(buf[:piece.size], stream=self.stream)
            self._ring[i] = (buf, self._event(self.stream))
        return dev, self._event(self.stream)

    def _free_slot(self) -> tuple[int, np.ndarray]:
        """The next ring buffer, once the copy out of it has finished (the host waits)."""
        i = self._turn
        self._turn = (i + 1) % len(self._ring)
        held = self._ring[i]
        if held is None:
            return i, self._pinned(self.slot_bytes)
        buf, done = held
        done.synchronize()
        return i, buf


@dataclass
class PrefetchStats:
    """What a streamed set did (for tests and profiles)."""

    copied_bytes: int = 0       # host-to-device bytes, chunks and lone slots
    chunk_copies: int = 0
    lone_copies: int = 0        # slots copied on their own (their chunk was not queued)
    peak_ahead_bytes: int = 0   # most chunk bytes queued or resident at once
    evicted: int = 0            # chunks dropped with gates still to start (see KeyPrefetcher._refill)


class KeyPrefetcher:
    """``load(gate_id)``: that gate's fields on the device, unpacked by ``unpack(slot, raw)``
    from its packed bytes ``raw`` (a device view), with the following chunks queued.

    ``host`` is the whole set (uint8, left untouched until the run ends); ``ahead_bytes``
    bounds the chunk bytes queued or resident (one chunk is always allowed: the slot asked
    for must reach the device)."""

    def __init__(self, layout: KeyLayout, host: np.ndarray, copies: CopyQueue,
                 unpack: Callable[[GateSlot, Any], dict], chunk_bytes: int = STREAM_CHUNK_BYTES,
                 ahead_bytes: int = STREAM_AHEAD_BYTES) -> None:
        self.host = host
        self.copies = copies
        self.unpack = unpack
        self.ahead_bytes = int(ahead_bytes)
        self.chunks = plan_chunks(layout, max(int(chunk_bytes), 1))
        self.stale_after = 2 * max(1, self.ahead_bytes // max(int(chunk_bytes), 1))
        self._slots = {s.gate_id: s for s in layout.slots}
        self._chunk_of = {g: i for i, c in enumerate(self.chunks) for g in c.gate_ids}
        self._unread = [set(c.gate_ids) for c in self.chunks]   # gates yet to unpack, per chunk
        self._queued: dict[int, tuple[Any, Any]] = {}            # chunk -> (device buffer, event)
        self._next = 0                                           # first chunk never queued
        self._ahead = 0                                          # bytes of the queued chunks
        self._empty: Any = None                                  # a device buffer of no bytes
        self.stats = PrefetchStats()

    @property
    def resident_chunks(self) -> list[int]:
        """Chunks queued or on the device now (their buffers still referenced)."""
        return sorted(self._queued)

    def load(self, gate_id: str) -> dict:
        slot, i = self._slots[gate_id], self._chunk_of[gate_id]
        self._refill()                                   # the copies ahead run while this gate unpacks
        held = self._queued.get(i)
        lone = held is None and slot.nbytes > 0          # outside the window, or its chunk is gone
        if not slot.nbytes:                              # no key bytes (an input): nothing to copy or wait for
            if self._empty is None:
                self._empty = self.copies.copy(self.host[:0])[0]
            keys = self.unpack(slot, self._empty)
        else:
            if lone:
                raw, token = self.copies.copy(self.host[slot.offset:slot.end])
                self.stats.copied_bytes += slot.nbytes
                self.stats.lone_copies += 1
            else:
                buf, token = held
                base = self.chunks[i].start
                raw = buf[slot.offset - base:slot.end - base]
                del buf
            self.copies.wait(token)
            keys = self.unpack(slot, raw)
            del raw
        del held
        self._unread[i].discard(gate_id)
        if lone:
            self.copies.fence()                          # the lone slot's buffer is dropped
        elif i in self._queued and not self._unread[i]:
            self._release(i)
        self._refill()
        return keys

    def close(self) -> None:
        """Let go of the host set and the chunks still queued, once the run is over: a
        streamed batch-8 set is 34 GB, and the next set is received before a new stream
        replaces this one."""
        self.copies.fence()
        self._queued.clear()
        self._ahead = 0
        self.host = np.empty(0, np.uint8)   # not host[:0]: a view keeps its base alive

    def _enqueue(self, i: int) -> None:
        c = self.chunks[i]
        self._queued[i] = self.copies.copy(self.host[c.start:c.end])
        self._next = i + 1
        self._ahead += c.nbytes
        self.stats.copied_bytes += c.nbytes
        self.stats.chunk_copies += 1
        self.stats.peak_ahead_bytes = max(self.stats.peak_ahead_bytes, self._ahead)

    def _release(self, i: int) -> None:
        self.copies.fence()
        del self._queued[i]
        self._ahead -= self.chunks[i].nbytes

    def _refill(self) -> None:
        """Queue the next chunks while they fit the budget. When they do not, a chunk left
        far behind (``stale_after`` chunks were queued since; a gate of it starts late) is
        dropped rather than let it shrink the window: its gates are copied on their own."""
        while self._next < len(self.chunks):
            if not self._unread[self._next]:             # every gate in it was served on its own
                self._next += 1
                continue
            if self._queued and self._ahead + self.chunks[self._next].nbytes > self.ahead_bytes:
                oldest = min(self._queued)
                if oldest >= self._next - self.stale_after:
                    return
                self._release(oldest)
                self.stats.evicted += 1
                continue
            self._enqueue(self._next)
