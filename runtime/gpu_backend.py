"""The GPU backend: CuPy arrays for the gates, generated CUDA kernels for the FSS work.

Gates do not change between backends (runtime/xp.py): on the GPU their array code runs
on CuPy and the hot FSS evaluations — DCF and DPF tree walks, the fixed-key AES, the
dealer's AES-CTR stream, bit packing — run in the kernels of ``kernels.cu``
(codegen/cuda.py renders it from templates/*.cu.j2; :mod:`fusec.runtime.gpu_kernels`
compiles it with ``cupy.RawModule``). Every kernel computes exactly what its CPU
reference does, so for the same key files and inputs the two backends put the same
bytes on the wire (tests/test_device_path.py with FUSEC_TEST_BACKEND=gpu, and
tests/test_gpu_kernels.py, on a GPU machine).

Data stays on the device between gates; only the bytes of an open cross to the host.
A key set is staged into device memory once (:meth:`GpuBackend.stage_set`, timed
separately from the online phase) and unpacked there; with ``--stream-keys`` it stays in
page-locked host memory and chunks of it are copied a bounded window ahead of the gates
inside the clock (:meth:`GpuBackend.stream_set`, runtime/key_prefetch.py).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

import numpy as np

from fusec.errors import FusecError, GpuKernelError
from fusec.runtime import dcf, dpf, dpf_arith, ring
from fusec.runtime.backend import Backend, StagedKeys, host_memory_bytes
from fusec.runtime.key_prefetch import (STREAM_AHEAD_BYTES, STREAM_CHUNK_BYTES, CopyQueue, CudaCopies,
                                        KeyPrefetcher, SyncCopies)
from fusec.runtime.launch_plan import LaunchPlan
from fusec.runtime.layout import GateSlot, KeyLayout
from fusec.runtime.rng import DealerRng
from fusec.runtime.round_message import PEER, OpenSlot, RoundMessage
from fusec.runtime.xp import const


def _import_cupy():
    """CuPy and a usable device, or a FusecError that says what is missing and what to do."""
    try:
        import cupy
    except ImportError as e:
        raise FusecError(f"the GPU backend needs CuPy, which is not installed here ({e})",
                         "install fusec[gpu] (CUDA 13) or fusec[gpu-cuda12], or run with --backend cpu") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        raise FusecError(f"no usable CUDA GPU: {e}",
                         "check `nvidia-smi` and that the CuPy build matches the driver's CUDA version, "
                         "or run with --backend cpu") from None
    if count == 0:
        raise FusecError("no CUDA GPU is visible", "check CUDA_VISIBLE_DEVICES, or run with --backend cpu")
    return cupy


# Room the online phase needs next to a staged key set: unpacked gate keys (1-bit fields
# take 64x their packed size) and activations. Measured peak for BERT-base seq 128 is
# well under this; it is a guard against a certain failure, not a tuning knob.
ONLINE_HEADROOM_BYTES = 4 << 30
#: Key sets reach the device in chunks of this many bytes, each unpacked before the next: the
#: packed set never has to fit on the card beside its unpacked fields.
STAGE_CHUNK_BYTES = 1 << 30
#: Largest share of the host's memory a party keeps page-locked for reading key sets.
PINNED_SHARE = 1 / 8


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


def _parallel_copy(dst: np.ndarray, src: np.ndarray, part: int = 64 << 20) -> None:
    """``dst[:] = src`` for multi-GB byte arrays, in parts on a few threads (numpy releases
    the GIL for plain copies; one thread alone does not saturate host memory)."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    starts = range(0, src.size, part)
    if len(starts) <= 1:
        np.copyto(dst, src)
        return
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1, len(starts))) as pool:
        list(pool.map(lambda s: np.copyto(dst[s:s + part], src[s:s + part]), starts))


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


class GpuPrg:
    """The fixed-key MMO hashes of prg.CpuPrg, on device arrays (same interface)."""

    def __init__(self, kernels) -> None:
        self.k = kernels

    def children(self, seeds):
        return self.k.children(seeds)

    def child(self, seeds, right):
        return self.k.child(seeds, right)

    def value_blocks(self, blocks, nblocks: int, tweak):
        return self.k.value_blocks(blocks, nblocks, tweak)

    def dcf_keygen(self, root0, root1, alpha, beta, n: int, w: int):
        """The dealer's DCF key pairs in one kernel (dcf.keygen's loop), payloads up to
        GpuKernels.DCF_GEN_MAX_M words; None for wider ones (the loop runs instead)."""
        if beta.shape[1] > self.k.DCF_GEN_MAX_M or not self.k.has("fusec_dcf_keygen"):
            return None
        return self.k.dcf_keygen(root0, root1, alpha, beta, n, w)

    def keygen_tree(self, root0, root1, path, depth: int):
        """The dealer's DPF trees in one kernel (tree.keygen_tree's loop, one thread per key)."""
        if not self.k.has("fusec_dpf_keygen_tree"):
            return None
        return self.k.dpf_keygen_tree(root0, root1, path, depth)

    @property
    def aes_calls(self) -> int:
        """Every AES block the kernels encrypted (PRG calls and fused tree walks alike)."""
        return self.k.aes_blocks


class GpuDealerRng(DealerRng):
    """The dealer's AES-128-CTR stream computed on the device.

    Same key, nonce and counter as :class:`DealerRng` (the ``cryptography`` CTR mode: a
    128-bit big-endian counter starting at the nonce), so for a test seed the GPU dealer
    writes byte-identical key files; without a seed the key comes from ``os.urandom``.
    """

    def __init__(self, kernels, seed: bytes | None = None) -> None:
        super().__init__(seed)
        self.k = kernels
        self._pos = 0  # words of the stream consumed so far

    def words(self, count: int):
        first = self._pos // 2
        skip = self._pos % 2
        blocks = (skip + count + 1) // 2
        out = self.k.ctr_keystream(self.key, self.nonce, first, 2 * blocks)[skip:skip + count]
        self._pos += count
        return out


class GpuBackend(Backend):
    """CuPy arrays + the generated kernels. ``source``: a build's kernels.cu (else the default)."""

    name = "gpu"
    #: Streamed keys (``--stream-keys``): bytes per copy, and bytes queued ahead of the gates.
    stream_chunk_bytes = STREAM_CHUNK_BYTES
    stream_ahead_bytes = STREAM_AHEAD_BYTES
    stage_chunk_bytes = STAGE_CHUNK_BYTES       # staging before the clock: bytes per copy + unpack
    _copy_stream = None     # the non-blocking stream streamed keys are copied on (made on first use)
    last_prefetch: KeyPrefetcher | None = None   # the last streamed set's (its .stats: copies, evictions)
    #: --cuda-graphs: record each build's second inference as a launch plan, replay it after
    cuda_graphs = False
    _recording: LaunchPlan | None = None        # the plan being recorded now
    _plan_keys = None                            # the device buffer every key set is copied into (cuda_graphs)
    _fixed_keys: StagedKeys | None = None        # the set staged there and not yet evaluated
    _plan_arena = None                           # every set unpacked here (cuda_graphs); False: does not fit
    device_share = 1.0                           # of the card's memory this party may use (GPU_SHARE_ENV)

    def __init__(self, source: str | None = None, device: int | None = None) -> None:
        cupy = _import_cupy()
        from fusec.runtime.gpu_kernels import GpuKernels

        if device is not None:
            cupy.cuda.Device(device).use()
        self.device_share = gpu_share_from_env()
        self.xp = cupy
        self.kernels = GpuKernels(source)
        self.prg = GpuPrg(self.kernels)
        self.last_stage_seconds: float | None = None
        self._outbox = None     # page-locked buffer of the round's outgoing message
        self._key_host = None   # page-locked buffer key sets are read into
        self._plans: dict[int, LaunchPlan] = {}
        self._plan_runs: dict[int, int] = {}

    # -- data movement
    def asarray(self, a):
        return const(a) if isinstance(a, np.ndarray) and not a.flags.writeable else self.xp.asarray(a)

    def asnumpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def pack_open(self, share, bits: int):
        return self.kernels.pack_bits(share & ring.mask(bits), bits)

    def unpack_open(self, buf, bits: int, count: int):
        return self.kernels.unpack_bits(buf, bits, count)

    def pack_round(self, layout, shares: list):
        """One kernel packs the round, one copy brings it into page-locked host memory
        (reused round after round: the channel has sent it before the next round starts)."""
        if not layout.our_bytes:
            return b""
        if not self.kernels.has("fusec_pack_round"):
            return super().pack_round(layout, shares)
        msg = self.kernels.pack_round(layout, shares)
        if self._recording is not None:
            return self._recording.send(msg)
        if self._outbox is None or self._outbox.size < layout.our_bytes:
            import cupyx  # noqa: PLC0415

            self._outbox = cupyx.empty_pinned(max(layout.our_bytes, 2 * (0 if self._outbox is None
                                                                         else self._outbox.size)), np.uint8)
        host = self._outbox[:layout.our_bytes]
        msg.get(out=host)
        return host

    def unpack_round(self, layout, shares: list, peer) -> list:
        if not self.kernels.has("fusec_unpack_round"):
            return super().unpack_round(layout, shares, peer)
        if self._recording is not None:
            peer = self._recording.receive(peer)
        return self.kernels.unpack_round(layout, shares, peer)

    # -- launch plans (--cuda-graphs; runtime/launch_plan.py)
    def launch_plan(self, graph, keys=None) -> LaunchPlan | None:
        """None: interpret this evaluation of ``graph`` (its first: kernels compile, pools
        grow); else the plan to record (the second) or to replay (``.ready``, the rest).

        A plan reads its keys from the device buffer :meth:`stage_set` fills, not from
        ``keys``: it runs only on the set staged there for this very evaluation, and that set
        serves one evaluation (a replay on keys already used would reuse them)."""
        if not self.cuda_graphs or not hasattr(self.xp, "cuda"):
            return None
        if getattr(graph, "insecure", False):   # mask-dependent shapes: every set launches other work
            return None
        fresh = keys is not None and keys is self._fixed_keys
        self._fixed_keys = None
        key = id(graph)
        plan = self._plans.get(key)
        replay = plan is not None and plan.owner is graph and plan.ready
        if not replay:
            runs = self._plan_runs[key] = self._plan_runs.get(key, 0) + 1
            if runs < 2:
                return None
        if not fresh:
            raise FusecError("a launch plan reads the key set staged into its device buffer, and no unused set "
                             "was staged there for this inference",
                             "stage each key set with stage_set right before its inference (not --stream-keys)")
        if not replay:
            plan = self._plans[key] = LaunchPlan(self.xp, graph)
        return plan

    @contextlib.contextmanager
    def recording(self, plan: LaunchPlan) -> Iterator[LaunchPlan]:
        """Evaluate once while ``plan`` captures the work between exchanges: the plan's
        stream, its memory pool, and its array module for gate and kernel code."""
        cupy, kernels = self.xp, self.kernels
        plan.reserve()
        self.synchronize()
        cupy.get_default_memory_pool().free_all_blocks()    # the interpreted run's cache: the plan has a pool of its own
        saved = (self.xp, kernels.xp, kernels.launcher.xp)
        self.xp = kernels.xp = kernels.launcher.xp = plan.module
        self._recording = plan
        try:
            with plan.stream, cupy.cuda.using_allocator(plan.pool.malloc):
                yield plan
            plan.ready = True
        except FusecError:
            plan.abort()
            raise
        except Exception as e:  # noqa: BLE001 - CUDA refused the capture (e.g. a value read back mid-round)
            plan.abort()
            mem = memory_error(e)
            if mem is not None:
                raise mem from e
            raise GpuKernelError(f"recording the launch plan failed in round {len(plan.segments) + 1}: {e}",
                                 "rerun without --cuda-graphs (a gate that reads a device value back mid-round "
                                 "cannot be captured)") from e
        except BaseException:
            plan.abort()
            raise
        finally:
            self.xp, kernels.xp, kernels.launcher.xp = saved
            self._recording = None

    def segment_start(self) -> None:
        if self._recording is not None:
            self._recording.begin()

    def segment_finish(self, send: int, expect: int, scope: str) -> None:
        if self._recording is not None:
            self._recording.finish(send, expect, scope)

    def input_array(self, x):
        """An input's values on the device (a recording's input arrives there already)."""
        if isinstance(x, self.xp.ndarray):
            return x
        return super().input_array(x)

    def pack_key(self, slot, arrays: dict) -> np.ndarray:
        """The slot's fields bit-packed on the device (layout order), one copy to the host."""
        dev = self.pack_key_device(slot, arrays)
        return self._to_pinned_host(dev) if dev.size else np.zeros(0, np.uint8)

    def pack_key_device(self, slot, arrays: dict):
        """The slot's bytes as a device array (no copy to the host)."""
        parts = []
        for f in slot.fields:
            a = arrays[f.name]
            if tuple(a.shape) != tuple(f.shape):
                raise FusecError(f"dealer bug: gate {slot.gate_id!r} field {f.name!r} has shape {a.shape}, "
                                 f"the layout says {f.shape}")
            packed = self.kernels.pack_bits(self.xp.asarray(a, dtype=np.uint64).reshape(-1), f.bits) if f.count \
                else self.xp.zeros(0, np.uint8)
            pad = f.nbytes - f.packed_nbytes
            parts.append(packed if not pad else self.xp.concatenate([packed, self.xp.zeros(pad, np.uint8)]))
        return self.xp.concatenate(parts) if parts else self.xp.zeros(0, np.uint8)

    def _to_pinned_host(self, dev) -> np.ndarray:
        """A device array copied into page-locked host memory (several times faster than a
        pageable copy; CuPy's pinned pool recycles the buffer once the key writer drops it)."""
        import cupyx  # noqa: PLC0415

        out = cupyx.empty_pinned(dev.shape, dev.dtype)
        dev.get(out=out)
        return out

    def matmul(self, a, b):
        return self.kernels.matmul_mod(a, b, 64)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

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

    def stream_set(self, layout: KeyLayout, buf: np.ndarray) -> StagedKeys:
        """Keys streamed inside the clock (as SIGMA counts its key copies): the set stays in
        host memory and reaches the device while the gates run. Chunks of consecutive slots
        (``stream_chunk_bytes``) are copied on a copy stream of their own a bounded window
        (``stream_ahead_bytes``, less when device memory is short) ahead of the gates, in
        layout order, which is the order gates consume keys; a gate's first access waits on
        its chunk's event and unpacks its slot with one kernel (runtime/key_prefetch.py).

        The copies overlap the gates only from page-locked memory: a set not read into
        :meth:`host_buffer` is copied there first (a host copy, timed as staging, outside the
        clock); a set too large for it stays in ordinary memory, from which CUDA copies
        synchronously (correct, no overlap). Nothing reaches the device before the first
        gate asks for keys."""
        t0 = time.perf_counter()
        host = self._page_locked(np.ascontiguousarray(buf).view(np.uint8).reshape(-1))
        ahead = self._stream_ahead_bytes()
        chunk = max(1, min(self.stream_chunk_bytes, ahead // 2))
        prefetch = self.last_prefetch = KeyPrefetcher(layout, host, self._copy_queue(), self._unpack_slot,
                                                      chunk, ahead)
        self.last_stage_seconds = time.perf_counter() - t0
        return StagedKeys(layout.gate_ids, load=prefetch.load)

    def release_keys(self) -> None:
        """The online phase is over: drop what a streamed set still holds (its host bytes)."""
        if self.last_prefetch is not None:
            self.last_prefetch.close()

    def _unpack_slot(self, slot: GateSlot, dev) -> dict[str, Any]:
        """One gate's fields from its packed slot bytes on the device (one kernel)."""
        if self.kernels.has("fusec_unpack_round"):
            one = KeyLayout([(slot.gate_id, slot.kind, slot.elements, slot.fields)])
            return unpack_key_set(self.kernels, one, dev)[slot.gate_id]
        fields, pos = {}, 0
        for f in slot.fields:
            fields[f.name] = (self.kernels.unpack_bits(dev[pos:pos + f.packed_nbytes], f.bits, f.count)
                              if f.count else self.xp.zeros(0, np.uint64)).reshape(f.shape)
            pos += f.nbytes
        return fields

    def _copy_queue(self) -> CopyQueue:
        """Key copies on a non-blocking stream (one per backend, reused), or plain copies
        where the array module has no CUDA streams (the CPU test stand-ins)."""
        if not hasattr(self.xp, "cuda"):
            return SyncCopies(self.xp)
        if self._copy_stream is None:
            self._copy_stream = self.xp.cuda.Stream(non_blocking=True)
        return CudaCopies(self.xp, self._copy_stream)

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

    def stage_set(self, layout: KeyLayout, buf: np.ndarray, stream: bool = False):
        """One key set's bytes -> device memory in one copy, then every field of every gate
        unpacked there by one kernel, before the online clock starts. When the unpacked set
        (1-bit fields take 64x their packed room) does not fit next to the packed one, each
        gate's fields are unpacked when the gate starts instead (slower online).
        ``stream``: see :meth:`stream_set`."""
        if stream:
            return self.stream_set(layout, buf)
        if self.cuda_graphs:
            return self._stage_fixed(layout, buf)
        host = np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
        self._check_fits(host.nbytes)
        t0 = time.perf_counter()
        ready = self._unpack_up_front(layout, host)
        if ready is not None:
            self.last_stage_seconds = time.perf_counter() - t0
            return StagedKeys(layout.gate_ids, ready=ready)
        dev = self.xp.empty(host.size, np.uint8)
        self._upload(dev, host)
        slots = {s.gate_id: s for s in layout.slots}
        self.synchronize()
        self.last_stage_seconds = time.perf_counter() - t0

        def unpack(gate_id: str) -> dict[str, Any]:
            slot, fields, pos = slots[gate_id], {}, slots[gate_id].offset
            for f in slot.fields:
                raw = dev[pos:pos + f.packed_nbytes]
                fields[f.name] = (self.kernels.unpack_bits(raw, f.bits, f.count) if f.count
                                  else self.xp.zeros(0, np.uint64)).reshape(f.shape)
                pos += f.nbytes
            return fields

        return StagedKeys(layout.gate_ids, load=unpack)

    def _stage_fixed(self, layout: KeyLayout, buf: np.ndarray) -> StagedKeys:
        """--cuda-graphs: every set at the same device addresses, because a recorded plan
        reads its keys there. Each set is unpacked, before the clock, into one buffer that
        every later set of this build is unpacked into too. Where that does not fit (once it
        has not, from then on), the packed set is copied into one device buffer reused set
        after set, and each gate's fields are unpacked when the gate starts (inside the
        recorded graphs, inside the clock)."""
        t0 = time.perf_counter()
        host = self._page_locked(np.ascontiguousarray(buf).view(np.uint8).reshape(-1))
        arena = self._fixed_arena(layout, host.nbytes)
        if arena is not None:
            staged = StagedKeys(layout.gate_ids, ready=self._unpack_in_chunks(layout, host, arena))
        else:
            if self._plan_keys is None or self._plan_keys.size != host.size:
                self._plan_keys = None
                self._check_fits(host.nbytes)
                self._plan_keys = self.xp.empty(host.size, np.uint8)
            self._upload(self._plan_keys, host)
            slots, dev = {s.gate_id: s for s in layout.slots}, self._plan_keys
            staged = StagedKeys(layout.gate_ids, load=lambda g: self._unpack_slot(
                slots[g], dev[slots[g].offset:slots[g].end]))
        self.synchronize()
        self.last_stage_seconds = time.perf_counter() - t0
        self._fixed_keys = staged
        return staged

    def _fixed_arena(self, layout: KeyLayout, packed_nbytes: int):
        """The buffer every set of ``layout`` is unpacked into (uint64, one value per field
        element), made on first use; None when it does not fit next to one staging chunk and
        the online phase's headroom (both parties may share the card), or the kernels cannot."""
        if self._plan_arena is False or not self.kernels.has("fusec_unpack_round"):
            return None
        count = sum(f.count for s in layout.slots for f in s.fields)
        if self._plan_arena is not None and self._plan_arena.size == count:
            return self._plan_arena
        self._plan_arena = None
        if hasattr(self.xp, "cuda"):
            self.synchronize()
            if 8 * count + min(packed_nbytes, self.stage_chunk_bytes) + ONLINE_HEADROOM_BYTES > self._free_bytes()[0]:
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

    def _unpack_in_chunks(self, layout: KeyLayout, host: np.ndarray, out) -> dict[str, dict[str, Any]]:
        """Every gate's fields unpacked into ``out`` (uint64, one value per field element),
        the packed bytes copied over a run of whole slots at a time (``stage_chunk_bytes``,
        or one slot when it is larger) into one device buffer: the packed set is never on
        the card whole, so a set whose unpacked fields just fit still stages (the faithful
        sigma build's 25.65 GB set beside a launch plan, both parties on one card). Copies
        and unpack kernels run in order on one stream, so a chunk is overwritten only after
        its unpack has read it."""
        keys: dict[str, dict[str, Any]] = {}
        first, stage = 0, None
        for group in _slot_runs(layout.slots, self.stage_chunk_bytes):
            lo, hi = group[0].offset, group[-1].end
            if stage is None or stage.size < hi - lo:
                stage = None
                stage = self.xp.empty(max(hi - lo, min(self.stage_chunk_bytes, host.size)), np.uint8)
            self._upload(stage[:hi - lo], host[lo:hi])
            count = sum(f.count for s in group for f in s.fields)
            keys.update(unpack_key_set(self.kernels, layout, stage[:hi - lo], out=out[first:first + count],
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

    def _unpack_up_front(self, layout: KeyLayout, host: np.ndarray) -> dict[str, dict[str, Any]] | None:
        """Every gate's fields unpacked now (chunk by chunk, :meth:`_unpack_in_chunks`), or
        None when they do not fit. An out-of-memory error falls back to unpacking per gate:
        both parties may share the card and stage at the same moment."""
        if not self.kernels.has("fusec_unpack_round"):
            return None
        count = sum(f.count for s in layout.slots for f in s.fields)
        self.synchronize()
        if 8 * count + min(host.size, self.stage_chunk_bytes) + ONLINE_HEADROOM_BYTES > self._free_bytes()[0]:
            return None
        try:
            ready = self._unpack_in_chunks(layout, host, self.xp.empty(count, np.uint64))
            self.synchronize()
            return ready
        except Exception as e:  # noqa: BLE001 - only CUDA's out-of-memory is recovered
            if memory_error(e) is None:
                raise
            self.xp.get_default_memory_pool().free_all_blocks()
            return None

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
            held = used + sum(int(p.pool.total_bytes()) for p in self._plans.values() if getattr(p, "pool", None))
            free = min(free, int(self.device_share * total) - held)
        return max(0, free), total

    def dealer_rng(self, seed: bytes | None = None) -> DealerRng:
        return GpuDealerRng(self.kernels, seed)

    def mul_narrow(self, ua, ub, key: dict, views: tuple, square: bool, n: int, party: int):
        """A product read through narrow views in one kernel (mul_narrow.MulNarrow); None
        (the array code) with a build's kernels from before the kernel existed."""
        if not self.kernels.has("fusec_mul_narrow"):
            return None
        return self.kernels.mul_narrow(ua, ub, key, views, square, n, party)

    def truncate_narrow(self, u, msb_q, offset, bits: int, k: int, s: int, m: int, w: int, party: int):
        """The free narrow truncation and its widening in one kernel (truncation.TruncateNarrow)."""
        if not self.kernels.has("fusec_truncate_narrow"):
            return None
        return self.kernels.truncate_narrow(u, msb_q, offset, bits, k, s, m, w, party)

    def packed_lookup(self, c_hat, u, rpow, rho_a, rho_rpow, r_out, table, d: int, bits: int, party: int):
        """The packed lookup's local second round in one kernel (scalar.PackedLookup)."""
        if d > self.kernels.LOOKUP_MAX_DEGREE or not self.kernels.has("fusec_packed_lookup"):
            return None
        return self.kernels.packed_lookup(c_hat, u, rpow, rho_a, rho_rpow, r_out, table, d, bits, party)

    def spline_lookup(self, D, u, a, rpow, r_out, table, d: int, bits: int, party: int):
        """The shifted lookup's local work after its DCF in one kernel (scalar.SplineLookup)."""
        if d > self.kernels.LOOKUP_MAX_DEGREE or not self.kernels.has("fusec_spline_lookup"):
            return None
        return self.kernels.spline_lookup(D, u, a, rpow, r_out, table, d, bits, party)

    # -- FSS evaluations: one fused kernel per tree walk
    def dcf_eval(self, party: int, key: dcf.DcfKey, x):
        return self.kernels.dcf_eval(party, key.root, key.cw_seed, key.cw_tr, key.cw_v, key.cw_final,
                                     x, key.n, key.m, key.w)

    def dpf_lt_eval(self, party: int, key: dpf.DpfKey, x):
        return self.kernels.dpf_lt_eval(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, x, key.n)

    def dpf_eval(self, party: int, key: dpf.DpfKey, x):
        return self.kernels.dpf_eval(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, x, key.n)

    def dpf_eval_full(self, party: int, key: dpf.DpfKey):
        return dpf.eval_full(party, key, self.prg)

    def dpf_arith_eval_full(self, party: int, key: dpf_arith.DpfArithKey):
        return dpf_arith.eval_full(party, key, self.prg)


def _slot_runs(slots, chunk_bytes: int):
    """Consecutive slots grouped into runs of at most ``chunk_bytes`` (a larger slot alone)."""
    run, size = [], 0
    for s in slots:
        if run and size + (s.end - s.offset) > chunk_bytes:
            yield run
            run, size = [], 0
        run.append(s)
        size = s.end - run[0].offset
    if run:
        yield run
