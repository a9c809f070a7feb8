"""Thin CuPy wrapper over the generated FSS kernels (codegen/cuda.py, templates/*.cu.j2).

Every method takes and returns arrays with exactly the layouts and semantics of the CPU
reference (runtime/prg.py, dcf.py, dpf.py, ring.py, rng.py): everything is uint64, a
128-bit block is a ``(..., 2)`` pair with index 0 the low word, DPF/DCF keys are the
structure-of-arrays fields of :class:`~fusec.runtime.dcf.DcfKey` / ``DpfKey``. The wrapper
only validates shapes, picks a kernel (a specialization of the build's ``kernels.cu`` when
one exists, the generic kernel otherwise) and launches it: no per-element Python.

Kernels are launched through a *launcher*. :class:`CupyLauncher` compiles the source with
``cupy.RawModule`` (lazily, on first use) and runs on the GPU; :class:`HostLauncher` runs
the host build of the same source (``-DFUSEC_HOST_TEST``, built by
:func:`fusec.codegen.cuda.compile_host_library`) on numpy arrays, so CI and machines
without a GPU exercise this wrapper and the kernels' per-element code bit for bit.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Protocol, Sequence

import numpy as np

from fusec.codegen import cuda as codegen
from fusec.errors import GpuKernelError, ParameterError
from fusec.runtime import ring
from fusec.runtime.prg import FIXED_KEYS, blocks_needed
from fusec.runtime.round_message import PEER

#: Order of the fixed keys in the kernels' round-key table (FUSEC_KEY_L/R/V).
KEY_INDEX = {"L": 0, "R": 1, "V": 2}
MATMUL_METHODS = ("auto", "tiled", "limb")
#: ``auto`` multiplies by fp64 limbs from this many multiply-adds on (to be calibrated with
#: bench/bench_gpu_kernels.py; below it the launch overhead of several GEMMs dominates).
LIMB_MIN_MACS = 1 << 40  # measured on an H200: the tiled kernel beat the fp64-limb path (1.65 vs 1.12 T MAC/s at 128x768x3072)


def fixed_round_keys() -> np.ndarray:
    """Round keys of the PRG's fixed keys L, R, V: (3 * 44,) uint32, expanded once here."""
    return np.array([w for k in ("L", "R", "V") for w in codegen.expand_key(FIXED_KEYS[k])], dtype=np.uint32)


def limb_plan(K: int, bits: int) -> tuple[int, int] | None:
    """(limb bits L, limb count) so that fp64 limb products over K terms are exact integers.

    Each output of a limb GEMM is at most K * (2^L - 1)^2, which must stay <= 2^53. The
    count is the fewest limbs covering ``bits``, then L is balanced down to ceil(bits/count).
    None when not even 1-bit limbs are exact (K > 2^53).
    """
    best = 0
    for L in range(1, 33):
        if K * ((1 << L) - 1) ** 2 <= 1 << 53:
            best = L
    if best == 0:
        return None
    count = -(-bits // best)
    return -(-bits // count), count


class Launcher(Protocol):
    """Runs one generated kernel; ``xp`` is the array module its arrays live in."""

    xp: Any
    on_device: bool  # False: a host build, where the device-only kernels (tiled matmul) are missing

    def run(self, name: str, step: str, total: int, args: Sequence, *, aes: bool, persistent: bool,
            rk_extra=None) -> None:
        """Run a grid-stride entry point over ``total`` items with ``args`` (then ``total`` and
        ``rk_extra``). ``aes``: the kernel uses the fixed round keys (the host build takes them
        as a first argument); ``step`` names the work in error messages."""

    def launch_grid(self, name: str, step: str, grid: tuple[int, int, int], block: int, args: Sequence) -> None: ...

    def device_keys(self, words: Sequence[int]) -> Any: ...

    def address(self, a) -> int:
        """Where array ``a`` starts in the memory the kernels read (for descriptor tables)."""


def kernel_names(src: str) -> set[str]:
    """Entry points defined in a generated source (each name starts its own line)."""
    return set(re.findall(r"^(fusec_\w+)\(", src, re.M))


# ------------------------------------------------------------------------------ launchers
class CupyLauncher:
    """Compiles the source with NVRTC (``cupy.RawModule``) on first use and launches on the GPU.

    ``sync=True`` (or FUSEC_GPU_SYNC=1) synchronizes after each launch so an asynchronous
    fault is reported with the kernel that caused it.
    """

    def __init__(self, src: str, block_size: int = codegen.BLOCK_SIZE, sync: bool | None = None):
        import cupy  # noqa: PLC0415 - optional dependency, imported only for the GPU

        self.xp = cupy
        self.on_device = True
        self._src = src
        self.block = block_size
        self.sync = os.environ.get("FUSEC_GPU_SYNC") == "1" if sync is None else sync
        self._module = None
        self._functions: dict[str, Any] = {}
        self._waves: dict[str, int] = {}
        self._sms = 0

    @property
    def module(self):
        """The compiled module; the fixed round keys are uploaded to constant memory once here."""
        if self._module is None:
            cupy = self.xp
            try:
                module = cupy.RawModule(code=self._src, options=("-std=c++17",))
                rk = module.get_global("fusec_fixed_rk")
            except Exception as e:  # CompileException, CUDADriverError
                raise GpuKernelError(f"compiling the generated kernels failed: {e}",
                                     "check the CUDA toolkit / driver; codegen.cuda.compile_check reproduces it") from e
            keys = fixed_round_keys()
            cupy.ndarray(keys.shape, cupy.uint32, rk).set(keys)
            self._sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
            self._module = module
        return self._module

    def _function(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = self.module.get_function(name)
        return fn

    def _call(self, name: str, step: str, grid, block, args) -> None:
        cupy = self.xp
        try:
            self._function(name)(grid, block, tuple(args))
            if self.sync:
                cupy.cuda.get_current_stream().synchronize()
        except Exception as e:
            raise GpuKernelError(f"CUDA kernel {name} failed ({step}): {e}",
                                 "rerun with FUSEC_GPU_SYNC=1 to attribute asynchronous errors") from e

    def _one_wave(self, name: str) -> int:
        """Blocks of ``name`` that fit on the GPU at once (occupancy x SMs)."""
        wave = self._waves.get(name)
        if wave is None:
            try:
                per_sm = self.xp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    self._function(name).kernel.ptr, self.block, 0)
            except Exception:  # older CuPy without the occupancy API: a safe guess
                per_sm = 4
            wave = self._waves[name] = max(1, per_sm) * self._sms
        return wave

    def run(self, name: str, step: str, total: int, args: Sequence, *, aes: bool, persistent: bool,
            rk_extra=None) -> None:
        """One thread per item, or (``persistent``) one wave of blocks striding over the items:
        light AES kernels then load their shared T-table once per block, not once per 256 items."""
        if total == 0:
            return
        self.module  # noqa: B018 - compile before sizing the grid
        blocks = -(-total // self.block)
        grid = min(blocks, self._one_wave(name)) if persistent else min(blocks, (1 << 31) - 1)
        extra = () if rk_extra is None else (rk_extra,)
        self._call(name, step, (grid,), (self.block,), (*args, np.uint64(total), *extra))

    def launch_grid(self, name: str, step: str, grid: tuple[int, int, int], block: int, args: Sequence) -> None:
        self._call(name, step, grid, (block,), args)

    def device_keys(self, words: Sequence[int]):
        return self.xp.asarray(np.asarray(words, dtype=np.uint32))

    def address(self, a) -> int:
        return int(a.data.ptr)


class HostLauncher:
    """Runs the host build of the kernels (``extern "C"`` loops) on numpy arrays via ctypes."""

    def __init__(self, library: str | os.PathLike):
        import ctypes  # noqa: PLC0415

        self._ctypes = ctypes
        self._lib = ctypes.CDLL(str(library))
        self.xp = np
        self.on_device = False
        self._rk = fixed_round_keys()

    def _arg(self, a):
        c = self._ctypes
        if isinstance(a, np.ndarray):
            return c.c_void_p(a.ctypes.data)
        for kind, ctype in ((np.uint64, c.c_uint64), (np.int32, c.c_int), (np.float64, c.c_double)):
            if isinstance(a, kind):
                return ctype(a)
        raise TypeError(f"unsupported kernel argument {a!r}")

    def run(self, name: str, step: str, total: int, args: Sequence, *, aes: bool, persistent: bool = False,
            rk_extra=None) -> None:
        fn = getattr(self._lib, name)
        fn.restype = None
        full = ((self._rk,) if aes else ()) + tuple(args) + (np.uint64(total),)
        full += () if rk_extra is None else (rk_extra,)
        fn(*(self._arg(a) for a in full))

    def launch_grid(self, name: str, step: str, grid, block, args) -> None:
        raise GpuKernelError(f"kernel {name} ({step}) exists on the device only")

    def device_keys(self, words: Sequence[int]):
        return np.asarray(words, dtype=np.uint32)

    def address(self, a) -> int:
        return int(a.ctypes.data)


# ------------------------------------------------------------------------------ the wrapper
class GpuKernels:
    """The FSS kernels of one ``kernels.cu`` as numpy-compatible functions on device arrays.

    ``source``: a build's kernels.cu (default: rendered from ``config`` or the default
    config); the kernels it defines decide which specializations are used, the others run
    generic. One instance per device (the fixed round keys live in its constant memory). ``launcher``: where to run (default: CuPy on the current GPU). ``poison``: fill
    every output with 0xA5 bytes before the launch, so a kernel that skips an output is
    caught by the tests (costs one memset per call). ``aes_blocks`` counts AES block
    encryptions launched, like ``CpuPrg.aes_calls``.
    """

    def __init__(self, source: str | None = None, *, config: codegen.KernelConfig | None = None,
                 launcher: Launcher | None = None, sync: bool | None = None, poison: bool = False):
        src = source if source is not None else codegen.render(config or codegen.default_config())
        block = re.search(r"^#define FUSEC_BLOCK (\d+)", src, re.M)
        self.launcher = launcher or CupyLauncher(src, int(block.group(1)) if block else codegen.BLOCK_SIZE, sync)
        self.xp = self.launcher.xp
        self._available = kernel_names(src)
        if not self.launcher.on_device:
            self._available.discard("fusec_matmul_mod_tiled")
        self._ctr_keys: dict[bytes, Any] = {}
        self._trie_tables: dict[Any, tuple[Any, Any]] = {}     # DpfTrie -> (sorted offsets, columns) on the device
        self.poison = poison
        self.aes_blocks = 0

    def compile(self) -> None:
        """Compile and load the module now (NVRTC takes seconds the first time; CuPy caches it
        on disk), e.g. before a timed run, instead of at the first kernel call."""
        if self.launcher.on_device:
            self.launcher.module  # noqa: B018

    # -- helpers
    def _u64(self, a) -> Any:
        """A C-contiguous uint64 array of this launcher's module (copies only if needed)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=np.uint64))

    def _empty(self, shape, dtype=np.uint64) -> Any:
        """An output buffer (poisoned when asked: see the class docstring)."""
        if not self.poison:
            return self.xp.empty(shape, dtype)
        out = self.xp.empty(shape, dtype)
        out.view(np.uint8)[...] = 0xA5
        return out

    def has(self, name: str) -> bool:
        """Whether this source defines kernel ``name`` (a build compiled by an older fusec
        lacks the newer ones; the backend then takes the array-code path)."""
        return name in self._available

    def _pick(self, specialized: str, generic: str) -> str:
        return specialized if specialized in self._available else generic

    def _run(self, name: str, step: str, total: int, args: Sequence, *, aes: bool = True, persistent: bool = False,
             rk_extra=None) -> None:
        self.launcher.run(name, step, int(total), args, aes=aes, persistent=persistent, rk_extra=rk_extra)

    @staticmethod
    def _check_blocks(blocks, what: str) -> None:
        if blocks.ndim < 1 or blocks.shape[-1] != 2:
            raise ParameterError(f"{what}: expected 128-bit blocks of shape (..., 2), got {blocks.shape}")

    # -- PRG (prg.AesMmo / CpuPrg)
    def aes_mmo(self, which: str, blocks) -> Any:
        """H_k(blocks) for the fixed key ``which`` in {'L', 'R', 'V'} == prg.AesMmo(FIXED_KEYS[which])."""
        if which not in KEY_INDEX:
            raise ParameterError(f"unknown fixed key {which!r}", "choose 'L', 'R' or 'V'")
        b = self._u64(blocks)
        self._check_blocks(b, "aes_mmo")
        out = self._empty(b.shape)
        n = b.size // 2
        self._run("fusec_aes_mmo", f"AES-MMO with key {which}", n, (b, out, np.int32(KEY_INDEX[which])),
                  persistent=True)
        self.aes_blocks += n
        return out

    def child(self, seeds, right) -> Any:
        """The child each element walks to: H_R(s) where right != 0 else H_L(s) == CpuPrg.child."""
        s = self._u64(seeds)
        self._check_blocks(s, "child")
        r = self.xp.ascontiguousarray(self.xp.asarray(right) != 0, dtype=np.uint8)
        if r.shape != s.shape[:-1]:
            raise ParameterError(f"child: {r.shape} direction bits for seeds of shape {s.shape}")
        out = self._empty(s.shape)
        self._run("fusec_prg_child", "PRG child", s.size // 2, (s, r, out), persistent=True)
        self.aes_blocks += s.size // 2
        return out

    def children(self, seeds) -> tuple[Any, Any]:
        """(H_L(s), H_R(s)) == CpuPrg.children."""
        s = self._u64(seeds)
        self._check_blocks(s, "children")
        left, right = self._empty(s.shape), self._empty(s.shape)
        self._run("fusec_prg_children", "PRG children", s.size // 2, (s, left, right), persistent=True)
        self.aes_blocks += s.size
        return left, right

    def value_blocks(self, blocks, nblocks: int, tweak) -> Any:
        """H_V(b ^ (i, tweak)) for i < nblocks: shape blocks.shape[:-1] + (nblocks, 2) == CpuPrg.value_blocks."""
        b = self._u64(blocks)
        self._check_blocks(b, "value_blocks")
        nblocks = int(nblocks)
        out = self._empty(b.shape[:-1] + (nblocks, 2), np.uint64)
        total = (b.size // 2) * nblocks
        if nblocks > 0:
            self._run("fusec_value_blocks", "PRG value blocks", total, (b, out, np.uint64(nblocks), np.uint64(tweak)),
                      persistent=True)
        self.aes_blocks += total
        return out

    def seeded_stream(self, seed, out, valid_bits: int, tweak) -> None:
        """A seeded share field's packed bytes written into ``out`` (the field's room as uint64
        words, on the device) from ``seed`` ((2,) uint64, on the device: read there, so a
        launch plan replays it for the next set): the field's value stream with every bit past
        ``valid_bits`` cleared, == runtime/seeded_shares.py's ``inflate`` of that room."""
        nwords = int(out.size)
        if out.dtype != np.uint64 or out.ndim != 1 or seed.dtype != np.uint64 or seed.size != 2:
            raise ParameterError(f"seeded_stream: a (2,) uint64 seed and a 1-D uint64 room, got "
                                 f"{seed.shape} {seed.dtype} and {out.shape} {out.dtype}")
        blocks = (nwords + 1) // 2
        if blocks:
            self._run("fusec_seeded_stream", "seeded share stream", blocks,
                      (seed, out, np.uint64(nwords), np.uint64(valid_bits), np.uint64(tweak)), persistent=True)
        self.aes_blocks += blocks

    # -- DCF (dcf.eval)
    def dcf_eval(self, party: int, root, cw_seed, cw_tr, cw_v, cw_final, x, n: int, m: int, w: int) -> Any:
        """This party's share of beta * [x < alpha] == dcf.eval(party, DcfKey(n, m, w, ...), x).

        x is (N,) or (N, P); returns (N, m) or (N, P, m) uint64 in Z_{2^w}.
        """
        n, m, w = ring.check_bits(n, "DCF domain width"), int(m), ring.check_bits(w, "DCF payload width")
        if m < 1:
            raise ParameterError(f"DCF payload length must be >= 1, got {m}")
        keys = [self._u64(a) for a in (root, cw_seed, cw_tr, cw_v, cw_final)]
        N = keys[0].shape[0]
        expect = [(N, 2), (n, N, 2), (n, N), (n, N, m), (N, m)]
        self._check_key("DCF", ("root", "cw_seed", "cw_tr", "cw_v", "cw_final"), keys, expect)
        xs, P = self._points("DCF", x, N)
        out = self._empty(xs.shape + (m,), np.uint64)
        name = self._pick(codegen.dcf_kernel_name(n, m, w), codegen.DCF_GENERIC)
        self._run(name, f"DCF eval n={n} m={m} w={w}", N * P,
                  (*keys, xs, out, np.uint64(N), np.uint64(P), np.int32(n), np.int32(m), np.int32(w), np.int32(party)))
        nb = blocks_needed(m, w)
        self.aes_blocks += N * P * (n * (1 + nb) + nb)
        return out

    # -- DPF (dpf.eval / prefix_parity / lt_eval)
    def _dpf(self, mode: str, root, cw_seed, cw_tr, cw_leaf, x, n: int) -> Any:
        n = ring.check_bits(n, "DPF domain width")
        depth = n - min(7, n)
        keys = [self._u64(a) for a in (root, cw_seed, cw_tr, cw_leaf)]
        N = keys[0].shape[0]
        self._check_key("DPF", ("root", "cw_seed", "cw_tr", "cw_leaf"), keys,
                        [(N, 2), (depth, N, 2), (depth, N), (N, 2)])
        xs, P = self._points("DPF", x, N)
        out = self._empty(xs.shape, np.uint64)
        name = self._pick(codegen.dpf_kernel_name(mode, n), codegen.dpf_kernel_name(mode, None))
        self._run(name, f"DPF {mode} n={n}", N * P, (*keys, xs, out, np.uint64(N), np.uint64(P), np.int32(n)))
        self.aes_blocks += N * P * (depth + 1)
        return out

    def dpf_eval(self, party: int, root, cw_seed, cw_tr, cw_leaf, x, n: int) -> Any:
        """XOR share of [x == alpha] == dpf.eval (the party does not enter: XOR shares)."""
        return self._dpf("eval", root, cw_seed, cw_tr, cw_leaf, x, n)

    def dpf_prefix_parity(self, party: int, root, cw_seed, cw_tr, cw_leaf, x, n: int) -> Any:
        """XOR share of [alpha < x] == dpf.prefix_parity."""
        return self._dpf("prefix", root, cw_seed, cw_tr, cw_leaf, x, n)

    def dpf_lt_eval(self, party: int, root, cw_seed, cw_tr, cw_leaf, x, n: int) -> Any:
        """XOR share of [x < alpha] for dpf.lt_keygen keys == dpf.lt_eval."""
        return self._dpf("lt", root, cw_seed, cw_tr, cw_leaf, x, n)

    def dpf_lt_arc(self, party: int, root, cw_seed, cw_tr, cw_leaf, u, arc) -> Any:
        """``dpf_lt_eval`` at ``u - a_j`` for the arc's offsets == dpf_arc.lt_eval_arc, with the
        build's generated walk (a build without one walks every point from the root)."""
        name = codegen.dpf_arc_kernel_name(arc)
        us = self._u64(u).reshape(-1)
        if name not in self._available:
            return self._each_point_from_the_root(party, root, cw_seed, cw_tr, cw_leaf, us, arc)
        keys, N = self._walk_keys("arc", arc, root, cw_seed, cw_tr, cw_leaf, us)
        out = self._empty((N, arc.points), np.uint64)
        self._run(name, f"DPF arc n={arc.n} M={arc.points}", N, (*keys, us, out, np.uint64(N)))
        self.aes_blocks += N * arc.aes_per_eval()
        return out

    def dpf_lt_trie(self, party: int, root, cw_seed, cw_tr, cw_leaf, u, trie) -> Any:
        """``dpf_lt_eval`` at ``u - a_j`` for many spread-out offsets == dpf_trie.lt_eval_trie: a
        block per element, a thread per point, each node of their paths once (at most the plan's
        AES, which is what is counted; a build without the kernel walks every point from the root)."""
        us = self._u64(u).reshape(-1)
        if not self.has("fusec_dpf_lt_trie") or trie.points > codegen.MAX_TRIE_POINTS:
            return self._each_point_from_the_root(party, root, cw_seed, cw_tr, cw_leaf, us, trie)
        keys, N = self._walk_keys("trie", trie, root, cw_seed, cw_tr, cw_leaf, us)
        tables = self._trie_tables.get(trie)
        if tables is None:      # kept: a recorded launch plan reads them at these addresses
            order = np.asarray(trie.order, np.uint64)
            tables = self._trie_tables[trie] = (self.xp.asarray(np.asarray(trie.offsets, np.uint64)[order.astype(np.int64)]),
                                                self.xp.asarray(order))
        out = self._empty((N, trie.points), np.uint64)
        step, args = f"DPF trie n={trie.n} M={trie.points}", (*keys, us, *tables, out, np.uint64(N),
                                                              np.uint64(trie.points), np.int32(trie.n))
        if self.launcher.on_device:     # one block per element, one thread per point
            self.launcher.launch_grid("fusec_dpf_lt_trie", step, (min(N, (1 << 31) - 1), 1, 1),
                                      -(-trie.points // 32) * 32, args)
        else:
            self._run("fusec_dpf_lt_trie", step, N, args)
        self.aes_blocks += N * trie.aes_per_eval()
        return out

    def _each_point_from_the_root(self, party: int, root, cw_seed, cw_tr, cw_leaf, us, plan) -> Any:
        """The plain walks at ``u - a_j`` for a plan's offsets (no kernel for its shared walk)."""
        a = self.xp.asarray(np.asarray(plan.offsets, np.uint64))
        return self.dpf_lt_eval(party, root, cw_seed, cw_tr, cw_leaf, (us[:, None] - a[None, :]) & ring.mask(plan.n), plan.n)

    def _walk_keys(self, what: str, plan, root, cw_seed, cw_tr, cw_leaf, us) -> tuple[list, int]:
        """A DPF key's fields checked against the plan's depth and one input per key; (fields, N)."""
        keys = [self._u64(x) for x in (root, cw_seed, cw_tr, cw_leaf)]
        N = keys[0].shape[0]
        self._check_key("DPF", ("root", "cw_seed", "cw_tr", "cw_leaf"), keys,
                        [(N, 2), (plan.depth, N, 2), (plan.depth, N), (N, 2)])
        if us.shape[0] != N:
            raise ParameterError(f"DPF {what} eval: {us.shape[0]} inputs for {N} keys")
        return keys, N

    def _check_key(self, what: str, names, arrays, shapes) -> None:
        for name, a, shape in zip(names, arrays, shapes):
            if tuple(a.shape) != tuple(shape):
                raise ParameterError(f"{what} key field {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")

    def _points(self, what: str, x, N: int) -> tuple[Any, int]:
        xs = self._u64(x)
        if xs.ndim not in (1, 2) or xs.shape[0] != N:
            raise ParameterError(f"{what} eval: inputs of shape {xs.shape} for {N} keys",
                                 "pass x as (N,) or (N, P) with N = number of keys")
        return xs, (xs.shape[1] if xs.ndim == 2 else 1)

    # -- the free narrow truncation (truncation.TruncateNarrow)
    def truncate_narrow(self, u, msb_q, offset, bits: int, k: int, s: int, m: int, w: int, party: int) -> Any:
        """This party's share of the widened truncation == TruncateNarrow's numpy eval
        (hi_s(lo_k(u mod 2^bits)), then widen_share to w bits); one thread per element."""
        uu, mq, off = self._u64(u).reshape(-1), self._u64(msb_q).reshape(-1), self._u64(offset).reshape(-1)
        if not (mq.size == off.size == uu.size) or not 3 <= m < 64 or not 0 <= s < k <= bits:
            raise ParameterError(f"narrow truncation kernel: {uu.size} values, {mq.size} / {off.size} key words, "
                                 f"k={k} s={s} m={m}")
        out = self._empty(uu.size, np.uint64)
        self._run("fusec_truncate_narrow", f"narrow truncation of {uu.size} values", uu.size,
                  (uu, mq, off, out, ring.mask(bits), np.int32(k), np.int32(s), np.int32(m), ring.mask(w),
                   np.int32(party)), aes=False)
        return out

    # -- a product read through narrow views (mul_narrow.MulNarrow)
    #: MulNarrow's optional key fields in the kernel's order (bit i of ``strides``: present)
    MUL_FIELDS = ("ub", "q_b", "b_a", "b_b", "qb", "qa_bb", "ba_qb", "ba_bb")

    def mul_narrow(self, ua, ub, key: dict, views: tuple, square: bool, n: int, party: int) -> Any:
        """This party's share of the product == MulNarrow's numpy eval; ``views`` are the two
        inputs' (bits, shift) or None; key fields the gate does not have are absent."""
        a = self._u64(ua).reshape(-1)
        N = a.size
        dummy = self.xp.zeros(1, np.uint64)
        given = {"ub": None if square else ub, **{k: key.get(k) for k in self.MUL_FIELDS[1:]}}
        args, strides = [], 0
        for i, name in enumerate(self.MUL_FIELDS):
            v = given[name]
            if v is None:
                args.append(dummy)
                continue
            v = self._u64(v).reshape(-1)
            if v.size != N:
                raise ParameterError(f"narrow product kernel: {name} has {v.size} values for {N} elements")
            args.append(v)
            strides |= 1 << i
        va, vb = views
        flags = (1 if square else 0) | (2 if va else 0) | (4 if vb and not square else 0) | \
            (8 if key.get("ba_bb") is not None else 0)
        qq_z, q_a = self._u64(key["qq_z"]).reshape(-1), self._u64(key["q_a"]).reshape(-1)
        out = self._empty(N, np.uint64)
        self._run("fusec_mul_narrow", f"narrow product of {N} values", N,
                  (a, args[0], qq_z, q_a, *args[1:], out, np.uint64(strides), np.int32(flags),
                   np.int32(va.bits if va else 0), np.int32(va.shift if va else 0),
                   np.int32(vb.bits if vb else 0), np.int32(vb.shift if vb else 0), ring.mask(n), np.int32(n),
                   np.int32(party)), aes=False)
        return out

    # -- the packed lookup's second round (scalar.PackedLookup)
    LOOKUP_MAX_DEGREE = 15   # FUSEC_LOOKUP_MAX_D1 - 1

    def packed_lookup(self, c_hat, u, rpow, rho_a, rho_rpow, r_out, table, d: int, bits: int, party: int) -> Any:
        """This party's share of the lookup's open == scalar.PackedLookup's numpy round 2:
        ``table`` is the spec's public (M (d+1), d+1) combine table; one thread per element."""
        ch, uu, ra, ro = (self._u64(a) for a in (c_hat, u, rho_a, r_out))
        N, P = ra.shape
        rp = self._u64(rpow) if d else self.xp.zeros((N, 1), np.uint64)
        rr = self._u64(rho_rpow) if d else self.xp.zeros((N, P, 1), np.uint64)
        T = self._u64(table)
        if not 0 <= d <= self.LOOKUP_MAX_DEGREE or T.shape != ((P + 1) * (d + 1), d + 1) or ch.size != N * P \
                or uu.size != N or ro.size != N:
            raise ParameterError(f"packed lookup kernel: {N} elements, {P} predicates, degree {d}, "
                                 f"table {tuple(T.shape)}, bits {tuple(ch.shape)}, u {tuple(uu.shape)}")
        out = self._empty(N, np.uint64)
        self._run("fusec_packed_lookup", f"packed lookup ({N} x {P + 1} pieces, degree {d})", N,
                  (ch, uu, rp, ra, rr, ro, T, out, np.uint64(P), np.int32(d), ring.mask(bits), np.int32(party)),
                  aes=False)
        return out

    def spline_lookup(self, D, u, a, rpow, r_out, table, d: int, bits: int, party: int) -> Any:
        """This party's share of the shifted lookup's open == scalar.SplineLookup's numpy
        code after its DCF: ``D`` (N, P + 1, d + 1) are the DCF's shares at u and u - a_i."""
        Dd, uu, aa, ro = self._u64(D), self._u64(u).reshape(-1), self._u64(a).reshape(-1), self._u64(r_out)
        N, P = uu.size, aa.size
        rp = self._u64(rpow) if d else self.xp.zeros((N, 1), np.uint64)
        T = self._u64(table)
        if not 0 <= d <= self.LOOKUP_MAX_DEGREE or Dd.shape != (N, P + 1, d + 1) \
                or T.shape != ((P + 1) * (d + 1), d + 1) or ro.size != N:
            raise ParameterError(f"shifted lookup kernel: {N} elements, {P} breakpoints, degree {d}, "
                                 f"DCF shares {tuple(Dd.shape)}, table {tuple(T.shape)}")
        out = self._empty(N, np.uint64)
        self._run("fusec_spline_lookup", f"shifted lookup ({N} x {P + 1} pieces, degree {d})", N,
                  (Dd, uu, aa, rp, ro, T, out, np.uint64(P), np.int32(d), ring.mask(bits), np.int32(party)),
                  aes=False)
        return out

    # -- the dealer's trees (tree.keygen_tree)
    def dpf_keygen_tree(self, root0, root1, path, depth: int) -> tuple[Any, Any, Any, Any]:
        """(cw_seed, cw_tr, leaf0, leaf1) of the GGM trees from both parties' root states
        along ``path`` (the depth-bit prefix of alpha) == the loop of tree.keygen_tree."""
        r0, r1, p = self._u64(root0), self._u64(root1), self._u64(path).reshape(-1)
        N, depth = p.shape[0], int(depth)
        self._check_blocks(r0, "DPF keygen root")
        if r0.shape != (N, 2) or r1.shape != (N, 2):
            raise ParameterError(f"DPF keygen: roots {r0.shape} and {r1.shape} for {N} paths")
        cw_seed, cw_tr = self._empty((depth, N, 2)), self._empty((depth, N))
        leaf0, leaf1 = self._empty((N, 2)), self._empty((N, 2))
        self._run("fusec_dpf_keygen_tree", f"DPF keygen tree depth={depth}", N,
                  (r0, r1, p, cw_seed, cw_tr, leaf0, leaf1, np.uint64(N), np.int32(depth)), persistent=True)
        self.aes_blocks += 4 * N * depth
        return cw_seed, cw_tr, leaf0, leaf1

    #: Largest DCF payload (words) the keygen kernel holds per thread (FUSEC_DCF_GEN_MAX_M).
    DCF_GEN_MAX_M = 32

    def dcf_keygen(self, root0, root1, alpha, beta, n: int, w: int) -> tuple[Any, Any, Any, Any]:
        """(cw_seed, cw_tr, cw_v, cw_final) of DCF key pairs for beta * [x < alpha] from both
        parties' root states == the loop of dcf.keygen (alpha, beta already reduced)."""
        r0, r1, a, b = self._u64(root0), self._u64(root1), self._u64(alpha).reshape(-1), self._u64(beta)
        N, m = b.shape
        if not 1 <= m <= self.DCF_GEN_MAX_M or a.shape[0] != N or r0.shape != (N, 2) or r1.shape != (N, 2):
            raise ParameterError(f"DCF keygen kernel: roots {r0.shape}, {r1.shape}, {a.shape[0]} alphas, "
                                 f"payload {b.shape} (at most {self.DCF_GEN_MAX_M} words)")
        cw_seed, cw_tr = self._empty((n, N, 2)), self._empty((n, N))
        cw_v, cw_final = self._empty((n, N, m)), self._empty((N, m))
        self._run("fusec_dcf_keygen", f"DCF keygen n={n} m={m} w={w}", N,
                  (r0, r1, a, b, cw_seed, cw_tr, cw_v, cw_final, np.uint64(N), np.int32(n), np.int32(m), np.int32(w)),
                  persistent=True)
        nb = blocks_needed(m, w)
        self.aes_blocks += N * (n * (4 + 4 * nb) + 2 * nb)
        return cw_seed, cw_tr, cw_v, cw_final

    # -- dealer randomness (rng.DealerRng)
    def ctr_keystream(self, key16: bytes, nonce16: bytes, start_block: int, nwords: int) -> Any:
        """``nwords`` uint64 words of AES-128-CTR keystream from block ``start_block`` on.

        The counter is the 128-bit big-endian integer ``nonce16 + start_block + i`` (mod
        2^128), as ``Cipher(AES(key), CTR(nonce))`` of ``cryptography`` counts, so word k here
        is word ``2 * start_block + k`` of DealerRng's stream for the same key and nonce.
        (A stream position that is not block aligned: start one block earlier, drop a word.)
        """
        if len(nonce16) != 16:
            raise ParameterError(f"a CTR nonce has 16 bytes, got {len(nonce16)}")
        rk = self._ctr_keys.get(bytes(key16))
        if rk is None:
            rk = self._ctr_keys[bytes(key16)] = self.launcher.device_keys(codegen.expand_key(bytes(key16)))
        ctr = (int.from_bytes(nonce16, "big") + int(start_block)) % (1 << 128)
        nwords = int(nwords)
        out = self._empty(nwords, np.uint64)
        nblk = -(-nwords // 2)
        self._run("fusec_ctr_keystream", "AES-CTR keystream", nblk,
                  (out, np.uint64(ctr >> 64), np.uint64(ctr & ((1 << 64) - 1)), np.uint64(nwords)), persistent=True,
                  rk_extra=rk)
        self.aes_blocks += nblk
        return out

    # -- bit packing (ring.pack_bits / unpack_bits)
    def pack_bits(self, values, bits: int) -> Any:
        """Values (any shape, C order) packed to ``bits`` bits each, little endian == ring.pack_bits (uint8)."""
        bits = ring.check_bits(bits, "packing width")
        v = self._u64(values).reshape(-1)
        nwords = -(-(v.size * bits) // 64)
        words = self._empty(nwords, np.uint64)
        pack, _ = self._pick_pack(bits)
        self._run(pack, f"pack {bits}-bit values", nwords, (v, words, np.uint64(v.size), np.int32(bits)), aes=False)
        return words.view(np.uint8)[: ring.packed_size(v.size, bits)]

    def unpack_bits(self, buf, bits: int, count: int) -> Any:
        """``count`` values of ``bits`` bits from a packed byte buffer == ring.unpack_bits (uint64)."""
        bits = ring.check_bits(bits, "packing width")
        b = self.xp.asarray(buf, dtype=np.uint8) if not isinstance(buf, (bytes, bytearray, memoryview)) else \
            self.xp.asarray(np.frombuffer(buf, dtype=np.uint8))
        b = self.xp.ascontiguousarray(b.reshape(-1))
        need = ring.packed_size(int(count), bits)
        if b.size < need:
            raise ParameterError(f"buffer holds {b.size} bytes, {need} needed for {count}x{bits}-bit values")
        out = self._empty(int(count), np.uint64)
        _, unpack = self._pick_pack(bits)
        self._run(unpack, f"unpack {bits}-bit values", int(count),
                  (b, np.uint64(need), out, np.uint64(count), np.int32(bits)), aes=False)
        return out

    # -- one round's opens (runtime/round_message.py): one launch to pack, one to rebuild
    def pack_round(self, layout, shares: Sequence) -> Any:
        """Our message of a round (uint8, ``layout.our_bytes``) == every sent share's
        ring.pack_bits, concatenated; one kernel over the message's bytes."""
        kept, rows = [], []
        for slot, share in zip(layout.slots, shares):
            if slot.ours < 0 or not slot.count:
                continue
            v = self._u64(share).reshape(-1)
            kept.append(v)
            rows.append((self.launcher.address(v), 0, slot.count, slot.bits, slot.ours, 0, 0, 0))
        msg = self._empty(layout.our_bytes, np.uint8)
        if rows:
            desc = self.xp.asarray(np.array(rows, dtype=np.uint64))
            self._run("fusec_pack_round", f"pack a round of {len(rows)} opens", layout.our_bytes,
                      (desc, np.int32(len(rows)), msg), aes=False)
        return msg

    def unpack_round(self, layout, shares: Sequence, peer, out=None) -> list:
        """Every open's value (``(ours + theirs) mod 2^bits``, or either alone) from our
        shares and the peer's message on the device; one kernel over all values. The values
        are views into one buffer (``out``, uint64, when given), shaped as the shares."""
        starts = np.cumsum([0] + [slot.count for slot in layout.slots])
        if out is None:
            out = self._empty(int(starts[-1]), np.uint64)
        elif out.dtype != np.uint64 or out.size < int(starts[-1]):
            raise ParameterError(f"unpack buffer holds {out.size} {out.dtype} values, {int(starts[-1])} uint64 needed")
        base = self.launcher.address(out) if out.size else 0
        if isinstance(peer, (bytes, bytearray, memoryview)):
            peer = np.frombuffer(peer, np.uint8)
        if isinstance(peer, np.ndarray) and hasattr(self.xp, "cuda"):
            # one copy on the current stream, a DMA where the bytes were received into page-locked
            # memory (Backend.receive_buffer; CuPy's asarray would first copy them on the CPU into
            # its own staging buffer), waited for, so the buffer may take the next round's bytes
            msg = self._empty(peer.size, np.uint8)
            if peer.size:
                stream = self.xp.cuda.get_current_stream()
                msg.set(np.ascontiguousarray(peer).reshape(-1), stream=stream)
                stream.synchronize()
        else:
            msg = self.xp.ascontiguousarray(self.xp.asarray(peer, dtype=np.uint8).reshape(-1))
        kept, rows = [], []
        for slot, share, first in zip(layout.slots, shares, starts[:-1]):
            if not slot.count:
                continue
            src = 0
            if slot.mode != PEER:   # our share takes part
                v = self._u64(share).reshape(-1)
                kept.append(v)
                src = self.launcher.address(v)
            rows.append((src, base + 8 * int(first), slot.count, slot.bits, max(slot.theirs, 0), int(first),
                         slot.mode, 0))
        if rows:
            desc = self.xp.asarray(np.array(rows, dtype=np.uint64))
            self._run("fusec_unpack_round", f"rebuild a round of {len(rows)} opens", int(starts[-1]),
                      (desc, np.int32(len(rows)), msg, np.uint64(msg.size)), aes=False)
        return [out[a:b].reshape(slot.shape) for slot, a, b in zip(layout.slots, starts[:-1], starts[1:])]

    def _pick_pack(self, bits: int) -> tuple[str, str]:
        pack, unpack = codegen.pack_kernel_names(bits)
        return self._pick(pack, codegen.PACK_GENERIC[0]), self._pick(unpack, codegen.PACK_GENERIC[1])

    # -- matmul mod 2^bits
    def matmul_mod(self, A, B, bits: int, method: str = "auto") -> Any:
        """(A @ B) mod 2^bits for uint64 matrices, numpy matmul broadcasting (1-D operands too).

        ``method``: 'tiled' (shared-memory uint64 kernel), 'limb' (exact fp64 limb GEMMs on
        cuBLAS: operands split into L-bit limbs with K * 2^(2L) <= 2^53, one GEMM per limb
        pair whose shifts stay below 2^bits) or 'auto' (limbs for large products when they
        can be exact, else tiled). Every method gives identical results.
        """
        bits = ring.check_bits(bits, "matmul ring width")
        if method not in MATMUL_METHODS:
            raise ParameterError(f"unknown matmul method {method!r}", f"choose one of {MATMUL_METHODS}")
        a, b = self._u64(A), self._u64(B)
        if a.ndim == 0 or b.ndim == 0:
            raise ParameterError("matmul_mod needs operands of at least one dimension")
        a_vec, b_vec = a.ndim == 1, b.ndim == 1
        a = a.reshape(1, -1) if a.ndim == 1 else a
        b = b.reshape(-1, 1) if b.ndim == 1 else b
        (M, K), (K2, N) = a.shape[-2:], b.shape[-2:]
        if K != K2:
            raise ParameterError(f"matmul_mod: shapes {tuple(a.shape)} and {tuple(b.shape)} do not align")
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        final = batch + (() if a_vec else (M,)) + (() if b_vec else (N,))
        if 0 in (M, N, K) or math.prod(batch) == 0:  # empty sums are 0
            return self.xp.zeros(final, np.uint64)
        if b.ndim == 2:  # one right operand for every batch: fold the batch into the rows
            a2, b2 = a.reshape(-1, K), b
        else:
            a2 = self.xp.ascontiguousarray(self.xp.broadcast_to(a, batch + (M, K))).reshape(-1, M, K)
            b2 = self.xp.ascontiguousarray(self.xp.broadcast_to(b, batch + (K, N))).reshape(-1, K, N)
        plan = limb_plan(K, bits)
        if method == "auto":
            tiled_ok = "fusec_matmul_mod_tiled" in self._available
            big = a2.size // max(K, 1) * N * K >= LIMB_MIN_MACS
            method = "limb" if plan is not None and (big or not tiled_ok) else "tiled"
        if method == "limb" and plan is None:
            raise ParameterError(f"matmul_mod: K = {K} is too long for exact fp64 limbs", "use method='tiled'")
        out = self._matmul_limb(a2, b2, bits, *plan) if method == "limb" else self._matmul_tiled(a2, b2, bits)
        return out.reshape(final)

    def _matmul_tiled(self, a, b, bits: int) -> Any:
        """a (M, K) or (B, M, K) @ b (K, N) or (B, K, N) with the shared-memory kernel."""
        batched = b.ndim == 3
        M, K = a.shape[-2:]
        N = b.shape[-1]
        nb = a.shape[0] if batched else 1
        out = self._empty((nb, M, N) if batched else (M, N), np.uint64)
        strides = [np.uint64(s if batched else 0) for s in (M * K, K * N, M * N)]
        tile = 64  # FUSEC_MM_TILE; the kernel runs 256 threads per 64 x 64 tile
        for z0 in range(0, nb, 65535):  # gridDim.z limit
            z = min(65535, nb - z0)
            sa, sb, so = (a[z0:], b[z0:], out[z0:]) if batched else (a, b, out)
            self.launcher.launch_grid(
                "fusec_matmul_mod_tiled", f"matmul {M}x{K} @ {K}x{N} mod 2^{bits}",
                (-(-N // tile), -(-M // tile), z), 256,
                (sa, sb, so, np.int32(M), np.int32(N), np.int32(K), ring.mask(bits), *strides))
        return out

    def _matmul_limb(self, a, b, bits: int, limb_bits: int, nlimbs: int) -> Any:
        """Exact fp64 limb products: A_i @ B_j for i + j < nlimbs, recombined mod 2^bits."""
        xp = self.xp
        la, lb = self._split_limbs(a, bits, limb_bits, nlimbs), self._split_limbs(b, bits, limb_bits, nlimbs)
        out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        npairs = nlimbs * (nlimbs + 1) // 2
        prods = self._empty((npairs,) + out_shape, np.float64)
        p = 0
        for i in range(nlimbs):
            for j in range(nlimbs - i):
                xp.matmul(la[i], lb[j], out=prods[p])
                p += 1
        out = self._empty(out_shape)
        count = math.prod(out_shape)
        self._run("fusec_combine_limbs", "matmul: recombine limb products", count,
                  (prods, out, np.uint64(count), np.int32(limb_bits), np.int32(nlimbs), ring.mask(bits)), aes=False)
        return out

    def _split_limbs(self, a, bits: int, limb_bits: int, nlimbs: int) -> Any:
        out = self._empty((nlimbs,) + a.shape, np.float64)
        self._run("fusec_split_limbs", "matmul: split into limbs", a.size,
                  (a, out, np.uint64(a.size), np.int32(limb_bits), np.int32(nlimbs), ring.mask(bits)), aes=False)
        return out


def make_host_kernels(library: str | os.PathLike, source: str) -> GpuKernels:
    """GpuKernels running the host build ``library`` of ``source`` (tests, debugging)."""
    return GpuKernels(source, launcher=HostLauncher(library))


__all__ = ["GpuKernels", "GpuKernelError", "CupyLauncher", "HostLauncher", "limb_plan",
           "fixed_round_keys", "make_host_kernels", "kernel_names"]
