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
How key sets reach the device (staged before the clock, or streamed inside it) is
:mod:`fusec.runtime.device_keys`, a mixin of the backend.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import numpy as np

from fusec.errors import FusecError, GpuKernelError
from fusec.runtime import dcf, dpf, dpf_arith, ring
from fusec.runtime.backend import Backend
from fusec.runtime.device_keys import DeviceKeys, gpu_share_from_env, memory_error
from fusec.runtime.launch_plan import LaunchPlan
from fusec.runtime.rng import DealerRng
from fusec.runtime.xp import const


#: a launch plan is recorded only where the interpreted inference's working set, times this, fits
PLAN_FIT_MARGIN = 1.10


def _pinned_at_least(buf, nbytes: int):
    """``buf`` where it holds ``nbytes``, else a page-locked buffer of at least twice its size
    (a round's message grows a few times, not every round)."""
    if buf is not None and buf.size >= nbytes:
        return buf
    import cupyx  # noqa: PLC0415

    return cupyx.empty_pinned(max(nbytes, 2 * (0 if buf is None else buf.size)), np.uint8)


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

    def value_stream(self, seed, nblocks: int, tweak, start: int = 0):
        """CpuPrg.value_stream on the device: block i is H_V(seed ^ (i, tweak)), i.e. one value
        block of ``seed ^ (i, 0)``, so the kernel hashes a block per counter."""
        xp = self.k.xp
        seeds = xp.empty((int(nblocks), 2), np.uint64)
        seeds[:, 0] = xp.arange(int(start), int(start) + int(nblocks), dtype=np.uint64) ^ np.uint64(int(seed[0]))
        seeds[:, 1] = np.uint64(int(seed[1]))
        return self.k.value_blocks(seeds, 1, tweak).reshape(int(nblocks), 2)

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


class GpuBackend(DeviceKeys, Backend):
    """CuPy arrays + the generated kernels. ``source``: a build's kernels.cu (else the default)."""

    name = "gpu"
    #: --cuda-graphs: record each build's second inference as a launch plan, replay it after
    cuda_graphs = False
    _recording: LaunchPlan | None = None        # the plan being recorded now

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
        self._inbox = None      # page-locked buffer the peer's bytes are received into (interpreted rounds)
        self._key_host = None   # page-locked buffer key sets are read into
        self._plans: dict[int, LaunchPlan] = {}
        self._plan_runs: dict[int, int] = {}
        self._plan_refused: dict[int, str] = {}    # graph -> why its plan was not recorded (memory)

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
        self._outbox = _pinned_at_least(self._outbox, layout.our_bytes)
        host = self._outbox[:layout.our_bytes]
        msg.get(out=host)
        return host

    def receive_buffer(self, nbytes: int):
        """Page-locked, reused round after round and grown by doubling: the peer's bytes go
        to the device in one DMA (``GpuKernels.unpack_round`` waits for the copy, so the next
        round may overwrite it)."""
        self._inbox = _pinned_at_least(getattr(self, "_inbox", None), nbytes)
        return self._inbox[:nbytes]

    def unpack_round(self, layout, shares: list, peer) -> list:
        if not self.kernels.has("fusec_unpack_round"):
            return super().unpack_round(layout, shares, peer)
        if self._recording is not None:
            peer = self._recording.receive(peer)
        return self.kernels.unpack_round(layout, shares, peer)

    # -- device memory
    def release_cache(self) -> int:
        self.synchronize()
        pool = self.xp.get_default_memory_pool()
        cached = int(pool.total_bytes()) - int(pool.used_bytes())
        pool.free_all_blocks()
        return cached

    def memory_report(self) -> dict:
        """The card's free and total bytes, this process's pool (held and in use), its launch
        plans' pools, and why no plan was recorded where none was (the bench's step records)."""
        free, total = (int(v) for v in self.xp.cuda.runtime.memGetInfo())
        pool = self.xp.get_default_memory_pool()
        return {"card_free": free, "card_total": total, "pool_held": int(pool.total_bytes()),
                "pool_used": int(pool.used_bytes()),
                "plan_pools": self._plan_pool_bytes(),
                **({"plan_refused": next(iter(self._plan_refused.values()))} if self._plan_refused else {})}

    def _plan_does_not_fit(self) -> str | None:
        """Why recording a launch plan now would run out of memory, or None.

        A recording allocates what the interpreted evaluation before it allocated, in the same
        order, from a pool of its own that keeps every block (runtime/launch_plan.py): its
        peak is that evaluation's working set, which CuPy's pool still caches when the plan is
        about to be recorded. An out-of-memory error mid-recording cannot be recovered (the
        peer has seen the rounds before it), so a plan that would not fit is not tried: every
        inference is interpreted, with the same bytes on the wire."""
        self.synchronize()
        pool = self.xp.get_default_memory_pool()
        need = int(pool.total_bytes()) - int(pool.used_bytes())
        have = self._free_bytes()[0]
        if need * PLAN_FIT_MARGIN <= have:
            return None
        gb = 1e9
        return (f"the launch plan was not recorded: the first inference's working set ({need / gb:.2f} GB, "
                f"x{PLAN_FIT_MARGIN:g}) does not fit the {have / gb:.2f} GB this party may still allocate "
                "on the card; every inference is interpreted")

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
            if runs < 2 or key in self._plan_refused:
                return None
        if not fresh:
            raise FusecError("a launch plan reads the key set staged into its device buffer, and no unused set "
                             "was staged there for this inference",
                             "stage each key set with stage_set right before its inference (not --stream-keys)")
        if not replay:
            refused = self._plan_does_not_fit()
            if refused is not None:
                self._plan_refused[key] = refused
                warnings.warn(refused, stacklevel=2)
                return None
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
        """The slot's fields bit-packed on the device (layout order), each copied into its
        place in one page-locked host buffer as soon as it is packed: the card holds one
        field's packed bytes at a time, not every field's and then their concatenation (at
        batch 8 a GELU slot is 1.32 GB, and that allocation was the one a dealer sharing an
        H100 with both parties could not make)."""
        if not slot.nbytes:
            return np.zeros(0, np.uint8)
        out = self._pinned(slot.nbytes)
        pos = 0
        for f in slot.fields:
            if f.count:
                self._get_into(self._pack_field(slot, f, arrays[f.name]), out[pos:pos + f.packed_nbytes])
            out[pos + f.packed_nbytes:pos + f.nbytes] = 0
            pos += f.nbytes
        return out

    def pack_key_device(self, slot, arrays: dict):
        """The slot's bytes as a device array (no copy to the host)."""
        parts = []
        for f in slot.fields:
            packed = self._pack_field(slot, f, arrays[f.name]) if f.count else self.xp.zeros(0, np.uint8)
            pad = f.nbytes - f.packed_nbytes
            parts.append(packed if not pad else self.xp.concatenate([packed, self.xp.zeros(pad, np.uint8)]))
        return self.xp.concatenate(parts) if parts else self.xp.zeros(0, np.uint8)

    def pack_key_field(self, slot, f, values, out: np.ndarray | None = None) -> np.ndarray:
        """Packed on the card; only the packed bytes are copied to the host (page-locked, or
        ``out``: one copy straight into a gate's slot bytes)."""
        out = self._pinned(f.packed_nbytes) if out is None else out
        if f.count:
            self._get_into(self._pack_field(slot, f, values), out)
        return out

    def key_bytes(self, nbytes: int) -> np.ndarray:
        return self._pinned(nbytes)

    def _pack_field(self, slot, f, a):
        if tuple(a.shape) != tuple(f.shape):
            raise FusecError(f"dealer bug: gate {slot.gate_id!r} field {f.name!r} has shape {a.shape}, "
                             f"the layout says {f.shape}")
        return self.kernels.pack_bits(self.xp.asarray(a, dtype=np.uint64).reshape(-1), f.bits)

    def _pinned(self, nbytes: int) -> np.ndarray:
        """Page-locked host bytes (several times faster to copy into than pageable memory;
        CuPy's pinned pool recycles the buffer once the key writer drops it)."""
        import cupyx  # noqa: PLC0415

        return cupyx.empty_pinned((int(nbytes),), np.uint8)

    def _get_into(self, dev, out: np.ndarray) -> None:
        dev.get(out=out)

    def matmul(self, a, b):
        return self.kernels.matmul_mod(a, b, 64)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

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

    def dpf_lt_arc(self, party: int, key: dpf.DpfKey, u, arc):
        return self.kernels.dpf_lt_arc(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, u, arc)

    def dpf_lt_trie(self, party: int, key: dpf.DpfKey, u, trie):
        return self.kernels.dpf_lt_trie(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, u, trie)

    def dpf_eval(self, party: int, key: dpf.DpfKey, x):
        return self.kernels.dpf_eval(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, x, key.n)

    def dpf_eval_full(self, party: int, key: dpf.DpfKey):
        return dpf.eval_full(party, key, self.prg)

    def dpf_arith_eval_full(self, party: int, key: dpf_arith.DpfArithKey):
        return dpf_arith.eval_full(party, key, self.prg)
