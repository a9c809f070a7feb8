"""Key sets on the GPU: host buffers, staging before the clock, streaming inside it, and
the device memory a party may use (its share when both parties share one card).

:class:`DeviceKeys` is the part of :class:`~fusec.runtime.gpu_backend.GpuBackend` that
moves key sets: read into a page-locked host buffer (:meth:`DeviceKeys.host_buffer`),
copied to the device a chunk at a time and unpacked there before the online clock
(:meth:`DeviceKeys.stage_set`), or, with ``--stream-keys``, copied a bounded window ahead
of the gates inside the clock (:meth:`DeviceKeys.stream_set`, runtime/key_prefetch.py).
Launch plans (``--cuda-graphs``) need every set at the same device addresses
(:meth:`DeviceKeys._stage_fixed`). A set arrives in its party's stored layout, its seeded
shares regenerated on the device as its slots are unpacked (runtime/device_inflate.py): every
path here works on a :class:`~fusec.runtime.device_inflate.StoredSet`. It expects the backend's
``xp``, ``kernels``, ``asarray``, ``synchronize``, ``cuda_graphs`` and ``_plans``.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fusec.errors import FusecError
from fusec.runtime.backend import StagedKeys, host_memory_bytes
from fusec.runtime.device_inflate import StoredSet, inflate_run, slot_bytes
from fusec.runtime.key_prefetch import (STREAM_AHEAD_BYTES, STREAM_CHUNK_BYTES, BouncedCopies, CopyQueue,
                                        CudaCopies, KeyPrefetcher, SyncCopies)
from fusec.runtime.layout import GateSlot, KeyLayout
from fusec.runtime.round_message import PEER, OpenSlot, RoundMessage
from fusec.runtime.seeded_shares import inflated

# Room the online phase needs next to a staged key set: unpacked gate keys (1-bit fields
# take 64x their packed size) and activations. Measured peak for BERT-base seq 128 is
# well under this; it is a guard against a certain failure, not a tuning knob.
ONLINE_HEADROOM_BYTES = 4 << 30
#: Key sets reach the device in chunks of this many bytes, each unpacked before the next: the
#: packed set never has to fit on the card beside its unpacked fields.
STAGE_CHUNK_BYTES = 1 << 30
#: Largest share of the host's memory a party keeps page-locked for reading key sets.
PINNED_SHARE = 1 / 8
#: What the online phase takes beside a set unpacked gate by gate, as a share of the set's full
#: bytes: activations and launch-plan pools took 9.4-11.4 GB per party beside BERT-base's
#: 29.4 GB batch-8 set (0.32-0.39) and 10.2 GB beside its 31.8 GB seq-512 set (0.32), on an H100.
ONLINE_ROOM_SHARE = 1 / 3


def check_fits(nbytes: int, free: int, total: int, what: str = "the key set", share: float = 1.0) -> None:
    """A clear error, with the sizes, when ``nbytes`` cannot be staged into device memory
    (``free``: what this party may still use, within its ``share`` of the card)."""
    if nbytes + ONLINE_HEADROOM_BYTES <= free:
        return
    gb = 1 << 30
    of = f"{total / gb:.2f} GiB" if share >= 1 else f"this party's {share:g} share ({GPU_SHARE_ENV}) of {total / gb:.2f} GiB"
    raise FusecError(
        f"{what} needs {nbytes / gb:.2f} GiB of GPU memory plus about {ONLINE_HEADROOM_BYTES / gb:.0f} GiB "
        f"for the online phase, but only {free / gb:.2f} GiB of {of} are free",
        "free the GPU (another process may hold it; both parties on one GPU share it), run each party on "
        "its own GPU (CUDA_VISIBLE_DEVICES), compile a smaller batch or sequence, or use --backend cpu")


#: Both parties on one card: the share of its memory this party may take (``0.5`` each), so
#: the first to stage does not leave the other too little. ``fusec bench --gpus 1`` sets it.
GPU_SHARE_ENV = "FUSEC_GPU_SHARE"


def gpu_share_from_env() -> float:
    """``FUSEC_GPU_SHARE`` as a fraction in (0, 1] (1 when unset), or one clear error."""
    raw = os.environ.get(GPU_SHARE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        share = float(raw)
    except ValueError:
        share = float("nan")
    if not 0 < share <= 1:
        raise FusecError(f"{GPU_SHARE_ENV}={raw!r} is not a fraction of the GPU's memory in (0, 1]",
                         f"set {GPU_SHARE_ENV}=0.5 on each party when both run on one GPU, or unset it")
    return share


def memory_error(e: BaseException) -> FusecError | None:
    """A FusecError for a CUDA out-of-memory error raised mid-run (else None)."""
    if type(e).__name__ != "OutOfMemoryError" and "cudaErrorMemoryAllocation" not in str(e):
        return None
    return FusecError(f"the GPU ran out of memory: {e}",
                      "run each party on its own GPU (CUDA_VISIBLE_DEVICES), free the GPU, compile a "
                      "smaller batch or sequence, or use --backend cpu")


@functools.cache
def _copy_pool() -> ThreadPoolExecutor:
    """The threads host copies run on, made once: a streamed batch-8 set goes through the
    bounce ring in some 500 chunks, and a pool per chunk would be set up as often."""
    return ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="fusec-copy")


def _parallel_copy(dst: np.ndarray, src: np.ndarray, part: int = 64 << 20) -> None:
    """``dst[:] = src`` for multi-GB byte arrays, in parts on a few threads (numpy releases
    the GIL for plain copies; one thread alone does not saturate host memory)."""
    starts = range(0, src.size, part)
    if len(starts) <= 1:
        np.copyto(dst, src)
        return
    list(_copy_pool().map(lambda s: np.copyto(dst[s:s + part], src[s:s + part]), starts))


def _parallel_copy_16m(dst: np.ndarray, src: np.ndarray) -> None:
    """A streamed chunk (64 MiB) into its page-locked ring buffer on four threads."""
    _parallel_copy(dst, src, part=16 << 20)


def unpack_key_set(kernels, layout: KeyLayout, buf, out=None, slots=None, base: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Every gate's fields from a staged key set's bytes, as views into one buffer (``out``
    when given: a launch plan's fixed one): the set read as one 'message' whose opens are the
    fields, so one unpack kernel does all. ``slots`` (default: all of ``layout``'s) with
    ``buf`` holding the set's bytes from offset ``base`` on: a run of consecutive slots, so a
    set can be unpacked a chunk at a time."""
    gate_slots = layout.slots if slots is None else list(slots)
    slots, names = [], []
    for s in gate_slots:
        pos = s.offset - base
        for f in s.fields:
            slots.append(OpenSlot(f.count, f.bits, tuple(f.shape), PEER, -1, pos))
            names.append((s.gate_id, f.name))
            pos += f.nbytes
    values = kernels.unpack_round(RoundMessage(tuple(slots), 0, int(buf.size)), [None] * len(slots), buf, out=out)
    keys: dict[str, dict[str, Any]] = {s.gate_id: {} for s in gate_slots}
    for (gate_id, name), v in zip(names, values):
        keys[gate_id][name] = v
    return keys


class DeviceKeys:
    """Key sets to the device (see the module's docstring); a mixin of GpuBackend."""

    #: Streamed keys (``--stream-keys``): bytes per copy, and bytes queued ahead of the gates.
    stream_chunk_bytes = STREAM_CHUNK_BYTES
    stream_ahead_bytes = STREAM_AHEAD_BYTES
    stage_chunk_bytes = STAGE_CHUNK_BYTES       # staging before the clock: bytes per copy + unpack
    _copy_stream = None     # the non-blocking stream streamed keys are copied on (made on first use)
    _bounce: BouncedCopies | None = None         # its ring of page-locked buffers for pageable sets
    last_prefetch: KeyPrefetcher | None = None   # the last streamed set's (its .stats: copies, evictions)
    _plan_keys = None                            # the device buffer every key set is copied into (cuda_graphs)
    _fixed_keys: StagedKeys | None = None        # the set staged there and not yet evaluated
    _plan_arena = None                           # every set unpacked here (cuda_graphs); False: does not fit
    _plan_stage = None                           # the packed chunk buffer those sets pass through (cuda_graphs)
    _plan_inflated = None                        # and the one their seeded chunks are inflated into
    device_share = 1.0                           # of the card's memory this party may use (GPU_SHARE_ENV)

    def host_buffer(self, nbytes: int) -> np.ndarray | None:
        """A page-locked buffer for key sets, reused set after set (stage_set copies it to
        the device before returning): no page faults on a fresh multi-GB array, and the
        copy runs at the link's speed instead of through a bounce buffer. Page-locked memory
        cannot be swapped or reclaimed, and both parties may share one host: a set larger
        than an eighth of the host's memory is read into ordinary memory instead (None).
        Copies a streamed set still has queued from the buffer finish first."""
        if self._copy_stream is not None:
            self._copy_stream.synchronize()
        if nbytes > PINNED_SHARE * host_memory_bytes():
            self._key_host = None
            return None
        if self._key_host is None or self._key_host.size < nbytes:
            import cupyx  # noqa: PLC0415

            self._key_host = None
            self._key_host = cupyx.empty_pinned(int(nbytes), np.uint8)
        return self._key_host[:nbytes]

    def stage_key(self, arrays: dict) -> dict:
        """Host arrays to the device; arrays already there (a staged set's) pass untouched."""
        return {k: v if isinstance(v, self.xp.ndarray) else self.asarray(v) for k, v in arrays.items()}

    def stream_set(self, sset: StoredSet, buf: np.ndarray) -> StagedKeys:
        """Keys streamed inside the clock (as SIGMA counts its key copies): the set stays in
        host memory and reaches the device while the gates run. Chunks of consecutive slots
        (``stream_chunk_bytes``) are copied on a copy stream of their own a bounded window
        (``stream_ahead_bytes``, less when device memory is short) ahead of the gates, in
        layout order, which is the order gates consume keys; a gate's first access waits on
        its chunk's event and unpacks its slot with one kernel (runtime/key_prefetch.py).

        The copies overlap the gates from page-locked memory: a set not read into
        :meth:`host_buffer` is copied there first (a host copy, timed as staging, outside the
        clock); a set too large for it stays in ordinary memory and goes through a small
        ring of page-locked buffers inside the clock (:class:`BouncedCopies`). Nothing
        reaches the device before the first gate asks for keys."""
        t0 = time.perf_counter()
        host = self._page_locked(np.ascontiguousarray(buf).view(np.uint8).reshape(-1))
        ahead = self._stream_ahead_bytes()
        chunk = max(1, min(self.stream_chunk_bytes, ahead // 2))
        prefetch = self.last_prefetch = KeyPrefetcher(sset.stored, host, self._copy_queue(host),
                                                      functools.partial(self._unpack_slot, sset), chunk, ahead)
        self.last_stage_seconds = time.perf_counter() - t0
        return StagedKeys(sset.layout.gate_ids, load=prefetch.load, shares_late=bool(sset.seeded))

    def release_keys(self) -> None:
        """The online phase is over: drop what a streamed set still holds (its host bytes)."""
        if self.last_prefetch is not None:
            self.last_prefetch.close()

    def _unpack_slot(self, sset: StoredSet, stored: GateSlot, dev) -> dict[str, Any]:
        """One gate's fields from its packed slot bytes on the device, as ``sset`` stores them
        (one kernel, after one per share field where the slot holds a seed)."""
        slot, dev = slot_bytes(self.kernels, self.xp, sset, stored, dev)
        if self.kernels.has("fusec_unpack_round"):
            one = KeyLayout([(slot.gate_id, slot.kind, slot.elements, slot.fields)])
            return unpack_key_set(self.kernels, one, dev)[slot.gate_id]
        fields, pos = {}, 0
        for f in slot.fields:
            fields[f.name] = (self.kernels.unpack_bits(dev[pos:pos + f.packed_nbytes], f.bits, f.count)
                              if f.count else self.xp.zeros(0, np.uint64)).reshape(f.shape)
            pos += f.nbytes
        return fields

    def _copy_queue(self, host: np.ndarray) -> CopyQueue:
        """Key copies on a non-blocking stream (one per backend, reused): straight from
        ``host`` when it is page-locked, else through the backend's ring of page-locked
        buffers (made once, kept for the next set); plain copies where the array module
        has no CUDA streams (the CPU test stand-ins)."""
        if not hasattr(self.xp, "cuda"):
            return SyncCopies(self.xp)
        if self._copy_stream is None:
            self._copy_stream = self.xp.cuda.Stream(non_blocking=True)
        if self._is_page_locked(host):
            return CudaCopies(self.xp, self._copy_stream)
        if self._bounce is None:
            import cupyx  # noqa: PLC0415

            self._bounce = BouncedCopies(self.xp, self._copy_stream, lambda n: cupyx.empty_pinned(n, np.uint8),
                                         self.stream_chunk_bytes, memcpy=_parallel_copy_16m)
        return self._bounce

    def _stream_ahead_bytes(self) -> int:
        """The prefetch window: ``stream_ahead_bytes``, or what device memory leaves next to
        the online phase's headroom (at least one chunk always goes: the gate needs it)."""
        if not hasattr(self.xp, "cuda"):
            return int(self.stream_ahead_bytes)
        return max(0, min(int(self.stream_ahead_bytes), self._free_bytes()[0] - ONLINE_HEADROOM_BYTES))

    def _page_locked(self, host: np.ndarray) -> np.ndarray:
        """``host``, or a page-locked copy of it (:meth:`host_buffer`) when it is not
        page-locked already and fits there; else ``host`` itself (copies stay synchronous)."""
        if not hasattr(self.xp, "cuda") or self._is_page_locked(host):
            return host
        pinned = self.host_buffer(host.nbytes)
        if pinned is None:
            return host
        _parallel_copy(pinned, host)
        return pinned

    def _is_page_locked(self, host: np.ndarray) -> bool:
        if not host.nbytes:
            return True
        ptr, kept = host.ctypes.data, self._key_host
        if kept is not None and kept.ctypes.data <= ptr and ptr + host.nbytes <= kept.ctypes.data + kept.nbytes:
            return True     # read into host_buffer by KeyFile.claim
        try:
            attrs = self.xp.cuda.runtime.pointerGetAttributes(ptr)
            return int(getattr(attrs, "type", getattr(attrs, "memoryType", -1))) == 1   # cudaMemoryTypeHost
        except Exception:  # noqa: BLE001 - an unknown pointer is treated as pageable
            return False

    @property
    def seeded_shares_on_device(self) -> bool:
        """Sets come in their stored layout: these kernels regenerate seeded shares (a build
        compiled by an older fusec lacks the kernel; its sets are inflated on the host)."""
        return self.kernels.has("fusec_seeded_stream")

    def stored_set(self, layout: KeyLayout, buf: np.ndarray, seeded_party: int | None
                   ) -> tuple[StoredSet, np.ndarray]:
        """(how ``buf`` lies, ``buf``): in ``seeded_party``'s stored layout, or inflated on the
        host first where these kernels cannot regenerate seeded shares."""
        host = np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
        if seeded_party is not None and not self.seeded_shares_on_device:
            return StoredSet(layout), inflated(layout, seeded_party, host)
        sset = StoredSet(layout, seeded_party)
        if host.size != sset.stored.set_nbytes:
            raise FusecError(f"a key set of {host.size} bytes, where party {seeded_party}'s layout holds "
                             f"{sset.stored.set_nbytes}", "the key file and the build must match")
        return sset, host

    def stage_set(self, layout: KeyLayout, buf: np.ndarray, stream: bool = False,
                  seeded_party: int | None = None):
        """One key set's bytes -> device memory in one copy, then every field of every gate
        unpacked there by one kernel, before the online clock starts. When the unpacked set
        (1-bit fields take 64x their packed room) does not fit next to the packed one, each
        gate's fields are unpacked when the gate starts instead (slower online).
        ``stream``: see :meth:`stream_set`. ``seeded_party``: ``buf`` lies in that party's
        stored layout; its seeded shares are written on the device where its slots are
        unpacked (runtime/device_inflate.py)."""
        sset, host = self.stored_set(layout, buf, seeded_party)
        if stream:
            return self.stream_set(sset, host)
        if self.cuda_graphs:
            return self._stage_fixed(sset, host)
        self._check_fits(host.nbytes)
        t0 = time.perf_counter()
        ready = self._unpack_up_front(sset, host)
        if ready is not None:
            self.last_stage_seconds = time.perf_counter() - t0
            return StagedKeys(layout.gate_ids, ready=ready)
        sset, dev = self._packed_on_device(sset, host, self._inflate_early(sset))
        self.synchronize()
        self.last_stage_seconds = time.perf_counter() - t0
        return StagedKeys(layout.gate_ids, load=self._late_unpack(sset, dev), shares_late=bool(sset.seeded))

    #: Where a set is unpacked gate by gate: inflate its seeded shares on the device before the
    #: clock (True), as each gate unpacks inside it (False), or by the memory free (None).
    inflate_early: bool | None = None

    def _inflate_early(self, sset: StoredSet) -> bool:
        """Whether a set to be unpacked gate by gate goes on the card inflated, its share
        fields' AES run before the clock: where the full set, the online phase's room
        (ONLINE_ROOM_SHARE of it) and a staging chunk fit in what this party may use. Else
        it stays in its stored layout, a quarter smaller, and each gate writes its shares as
        it starts (BERT-base batch 8 with launch plans on an H100: 1.18 s against 0.99 s
        inflated; seq 512 fits only so, both parties and the dealer on the card)."""
        if not sset.seeded:
            return False
        if self.inflate_early is not None:
            return self.inflate_early
        if not hasattr(self.xp, "cuda"):
            return True
        self.synchronize()
        need = sset.layout.set_nbytes * (1 + ONLINE_ROOM_SHARE) + self.stage_chunk_bytes
        return need <= self._free_bytes()[0]

    def _packed_on_device(self, sset: StoredSet, host: np.ndarray, early: bool, dst=None) -> tuple[StoredSet, Any]:
        """The set's packed bytes on the device (into ``dst`` when given: a launch plan's fixed
        buffer), and how they lie there: as stored, or (``early``) inflated into the full
        layout, a run of slots at a time through one staging chunk (a device copy cannot
        inflate in place as the host does: CuPy's copies of overlapping bytes race)."""
        if not early:
            dev = self.xp.empty(host.size, np.uint8) if dst is None else dst
            self._upload(dev, host)
            return sset, dev
        dev = self.xp.empty(sset.layout.set_nbytes, np.uint8) if dst is None else dst
        with self._transient_memory():
            stage = None
            for run in _slot_runs(sset, self.stage_chunk_bytes):
                if not run.seeded:
                    self._upload(dev[run.lo:run.hi], host[run.st_lo:run.st_hi])
                    continue
                if stage is None or stage.size < run.st_hi - run.st_lo:
                    stage = None
                    stage = self.xp.empty(max(run.st_hi - run.st_lo, min(self.stage_chunk_bytes, host.size)), np.uint8)
                self._upload(stage[:run.st_hi - run.st_lo], host[run.st_lo:run.st_hi])
                inflate_run(self.kernels, sset, run.pairs, stage[:run.st_hi - run.st_lo], dev[run.lo:run.hi])
            stage = None
        return StoredSet(sset.layout), dev

    @contextlib.contextmanager
    def _transient_memory(self):
        """Device allocations inside come from a memory pool of their own, given back to the
        card on leaving: a staging chunk (1.3 GB for a batch-8 GELU's slot) left cached in the
        party's pool starved the key-stream dealer that shares the card (it ran out of memory
        allocating 0.55 GB beside two parties holding a set each)."""
        if not hasattr(self.xp, "cuda"):
            yield
            return
        pool = self.xp.cuda.MemoryPool()
        try:
            with self.xp.cuda.using_allocator(pool.malloc):
                yield
        finally:
            self.synchronize()          # the kernels reading the chunk are done before it goes
            pool.free_all_blocks()

    def _late_unpack(self, sset: StoredSet, dev):
        """``load(gate_id)``: that gate's fields unpacked (and its seeded shares written) from
        the whole stored set on the device, when the gate starts."""
        slots = {s.gate_id: s for s in sset.stored.slots}

        def load(gate_id: str) -> dict[str, Any]:
            st = slots[gate_id]
            return self._unpack_slot(sset, st, dev[st.offset:st.end])
        return load

    def _stage_fixed(self, sset: StoredSet, buf: np.ndarray) -> StagedKeys:
        """--cuda-graphs: every set at the same device addresses, because a recorded plan
        reads its keys there. Each set is unpacked, before the clock, into one buffer that
        every later set of this build is unpacked into too. Where that does not fit (once it
        has not, from then on), the packed set is copied into one device buffer reused set
        after set, and each gate's fields are unpacked when the gate starts (inside the
        recorded graphs, inside the clock)."""
        t0 = time.perf_counter()
        host = self._page_locked(np.ascontiguousarray(buf).view(np.uint8).reshape(-1))
        layout = sset.layout
        arena = self._fixed_arena(sset, host.nbytes)
        if arena is not None:
            staged = StagedKeys(layout.gate_ids, ready=self._unpack_in_chunks(sset, host, arena, keep_stage=True))
        else:
            # inflated or stored: decided with the buffer, once (a recorded plan reads its addresses)
            kept = self._plan_keys
            if kept is not None and kept.size in (layout.set_nbytes, host.size):
                early = bool(sset.seeded) and kept.size == layout.set_nbytes
            else:
                early = self._inflate_early(sset)
            size = layout.set_nbytes if early else host.size
            if kept is None or kept.size != size:
                self._plan_keys = kept = None
                self._check_fits(size)
                self._plan_keys = self.xp.empty(size, np.uint8)
            sset, dev = self._packed_on_device(sset, host, early, self._plan_keys)
            staged = StagedKeys(layout.gate_ids, load=self._late_unpack(sset, dev), shares_late=bool(sset.seeded))
        self.synchronize()
        self.last_stage_seconds = time.perf_counter() - t0
        self._fixed_keys = staged
        return staged

    def _fixed_arena(self, sset: StoredSet, packed_nbytes: int):
        """The buffer every set of ``sset.layout`` is unpacked into (uint64, one value per field
        element), made on first use; None when it does not fit next to the staging chunks and
        the online phase's headroom (both parties may share the card), or the kernels cannot."""
        if self._plan_arena is False or not self.kernels.has("fusec_unpack_round"):
            return None
        count = sum(f.count for s in sset.layout.slots for f in s.fields)
        if self._plan_arena is not None and self._plan_arena.size == count:
            return self._plan_arena
        self._plan_arena = None
        if hasattr(self.xp, "cuda"):
            self.synchronize()
            if 8 * count + self._stage_room(sset, packed_nbytes) + ONLINE_HEADROOM_BYTES > self._free_bytes()[0]:
                self._plan_arena = False
                return None
        try:
            self._plan_arena = self.xp.empty(count, np.uint64)
        except Exception as e:  # noqa: BLE001 - only CUDA's out-of-memory is recovered
            if memory_error(e) is None:
                raise
            self._plan_arena = False
            return None
        return self._plan_arena

    def _stage_room(self, sset: StoredSet, packed_nbytes: int) -> int:
        """Device bytes :meth:`_unpack_in_chunks` stages through: one chunk, and a second for
        its inflated bytes where the set holds seeds."""
        return min(packed_nbytes, self.stage_chunk_bytes) * (2 if sset.seeded else 1)

    def _unpack_in_chunks(self, sset: StoredSet, host: np.ndarray, out,
                          keep_stage: bool = False) -> dict[str, dict[str, Any]]:
        """Every gate's fields unpacked into ``out`` (uint64, one value per field element),
        the packed bytes copied over a run of whole slots at a time (``stage_chunk_bytes``,
        or one slot when it is larger) into one device buffer: the packed set is never on
        the card whole, so a set whose unpacked fields just fit still stages (the faithful
        sigma build's 25.65 GB set beside a launch plan, both parties on one card). Copies
        and unpack kernels run in order on one stream, so a chunk is overwritten only after
        its unpack has read it. ``keep_stage``: that buffer is kept for the next set (launch
        plans): once a plan is recorded its memory pool may hold the room a fresh chunk
        would need (batch 4 on an H100 shared by both parties ran out exactly there).
        A run holding seeded slots is inflated into a second buffer of its full bytes first
        (runtime/device_inflate.py); runs are cut by their full bytes."""
        keys: dict[str, dict[str, Any]] = {}
        first, stage = 0, self._plan_stage if keep_stage else None
        inflated_stage = self._plan_inflated if keep_stage else None
        room = min(self.stage_chunk_bytes, host.size)
        for run in _slot_runs(sset, self.stage_chunk_bytes):
            group = [full for full, _ in run.pairs]
            lo, hi, st_lo, st_hi = run.lo, run.hi, run.st_lo, run.st_hi
            if stage is None or stage.size < st_hi - st_lo:
                stage = None
                stage = self.xp.empty(max(st_hi - st_lo, room), np.uint8)
                if keep_stage:
                    self._plan_stage = stage
            self._upload(stage[:st_hi - st_lo], host[st_lo:st_hi])
            packed = stage[:st_hi - st_lo]
            if run.seeded:
                if inflated_stage is None or inflated_stage.size < hi - lo:
                    inflated_stage = None
                    inflated_stage = self.xp.empty(max(hi - lo, room), np.uint8)
                    if keep_stage:
                        self._plan_inflated = inflated_stage
                inflate_run(self.kernels, sset, run.pairs, packed, inflated_stage[:hi - lo])
                packed = inflated_stage[:hi - lo]
            count = sum(f.count for s in group for f in s.fields)
            keys.update(unpack_key_set(self.kernels, sset.layout, packed, out=out[first:first + count],
                                       slots=group, base=lo))
            first += count
        return keys

    def _upload(self, dst, host: np.ndarray) -> None:
        """``host`` bytes into the device array ``dst``, in order on the current stream.
        Not ``cupy.asarray``: that copies the whole array into a page-locked bounce buffer
        first, which CuPy's pinned pool then keeps: a second host copy of every key set (at
        batch 8, 34 GB per party, enough for the host's OOM killer)."""
        if hasattr(dst, "set"):
            dst.set(host, stream=self.xp.cuda.get_current_stream())
        else:                                   # the host-kernel stand-in's arrays
            dst[...] = self.xp.asarray(host)

    def _check_fits(self, nbytes: int) -> None:
        if hasattr(self.xp, "cuda"):
            check_fits(int(nbytes), *self._free_bytes(), share=self.device_share)

    def _unpack_up_front(self, sset: StoredSet, host: np.ndarray) -> dict[str, dict[str, Any]] | None:
        """Every gate's fields unpacked now (chunk by chunk, :meth:`_unpack_in_chunks`), or
        None when they do not fit. An out-of-memory error falls back to unpacking per gate:
        both parties may share the card and stage at the same moment."""
        if not self.kernels.has("fusec_unpack_round"):
            return None
        count = sum(f.count for s in sset.layout.slots for f in s.fields)
        self.synchronize()
        if 8 * count + self._stage_room(sset, host.size) + ONLINE_HEADROOM_BYTES > self._free_bytes()[0]:
            return None
        try:
            ready = self._unpack_in_chunks(sset, host, self.xp.empty(count, np.uint64))
            self.synchronize()
            return ready
        except Exception as e:  # noqa: BLE001 - only CUDA's out-of-memory is recovered
            if memory_error(e) is None:
                raise
            self.xp.get_default_memory_pool().free_all_blocks()
            return None

    def _plan_pool_bytes(self) -> int:
        """What this process's launch plans' own memory pools hold."""
        return sum(int(p.pool.total_bytes()) for p in self._plans.values() if getattr(p, "pool", None))

    def _free_bytes(self) -> tuple[int, int]:
        """(bytes this party may still allocate, the card's total): the card's free memory
        plus what CuPy's pool holds unused, and no more than ``device_share`` of the card
        less what this process holds (its pool's used bytes and its launch plans' pools):
        both parties on one card, neither takes all."""
        free, total = (int(v) for v in self.xp.cuda.runtime.memGetInfo())
        pool = self.xp.get_default_memory_pool()
        used = int(pool.used_bytes())
        free += int(pool.total_bytes()) - used
        if self.device_share < 1:       # launch plans' own pools count against the share too
            held = used + self._plan_pool_bytes()
            free = min(free, int(self.device_share * total) - held)
        return max(0, free), total


@dataclass(frozen=True)
class _Run:
    """Consecutive slots staged together: their (full, stored) pairs, their bytes in the full
    layout (``lo``-``hi``) and as stored (``st_lo``-``st_hi``), and whether one holds a seed."""
    pairs: list
    seeded: bool

    @property
    def lo(self) -> int:
        return self.pairs[0][0].offset

    @property
    def hi(self) -> int:
        return self.pairs[-1][0].end

    @property
    def st_lo(self) -> int:
        return self.pairs[0][1].offset

    @property
    def st_hi(self) -> int:
        return self.pairs[-1][1].end


def _slot_runs(sset: StoredSet, chunk_bytes: int):
    """The set's slots grouped into runs of at most ``chunk_bytes`` full bytes (a larger slot
    alone)."""
    run, size = [], 0
    for full, st in sset.pairs():
        if run and size + full.nbytes > chunk_bytes:
            yield _Run(run, any(f.gate_id in sset.seeded for f, _ in run))
            run, size = [], 0
        run.append((full, st))
        size = full.end - run[0][0].offset
    if run:
        yield _Run(run, any(f.gate_id in sset.seeded for f, _ in run))
