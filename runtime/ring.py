"""Arithmetic in Z_{2^n} for any width 1..64, stored in uint64 arrays.

All functions take an array module ``xp`` implicitly through the array they are given
(numpy on the CPU, CuPy on the GPU share this code): they only use operators and
``astype``/``view`` that both libraries provide. Values are always kept reduced to
``[0, 2^n)``; arithmetic on uint64 wraps mod 2^64, so reducing mod 2^n is one AND.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from fusec.errors import ParameterError

U64 = np.uint64


def check_bits(bits: int, what: str = "ring width") -> int:
    """Validate a bit width (1..64) and return it as int."""
    if not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 64:
        raise ParameterError(
            f"{what} must be between 1 and 64 bits, got {bits!r}",
            "values live in uint64; pick n <= 64 (the baselines use n=50, f=12 or n=37)",
        )
    return int(bits)


def mask(bits: int) -> np.uint64:
    """2^bits - 1 as uint64 (all ones for bits == 64)."""
    bits = check_bits(bits)
    return U64((1 << bits) - 1)


def reduce(x, bits: int):
    """x mod 2^bits, as uint64 (works on numpy and CuPy arrays)."""
    return x & mask(bits)


def lo(x, k: int):
    """lo_k(x) = x mod 2^k (k may be 0)."""
    if k == 0:
        return x & U64(0)
    return x & mask(k)


def hi(x, s: int):
    """hi_s(x) = floor(x / 2^s) for x already reduced (logical shift)."""
    if s == 0:
        return x.copy()
    if s >= 64:
        return x & U64(0)
    return x >> U64(s)


def msb(x, bits: int):
    """Most significant bit of the bits-wide value, as uint64 0/1."""
    return (x >> U64(bits - 1)) & U64(1)


def to_signed(x, bits: int):
    """Two's-complement reading of an n-bit value, as int64."""
    bits = check_bits(bits)
    if bits == 64:
        return x.view(np.int64) if hasattr(x, "view") else np.int64(x)
    xs = (x & mask(bits)).astype(np.int64)
    half = np.int64(1 << (bits - 1))
    return xs - ((xs >= half).astype(np.int64) << np.int64(bits))


def from_signed(x, bits: int):
    """int64 (or int) values -> n-bit ring elements in uint64."""
    arr = np.asarray(x) if not hasattr(x, "astype") else x
    return arr.astype(np.int64).view(np.uint64) & mask(bits) if arr.dtype != np.uint64 else arr & mask(bits)


#: float64 holds every integer of magnitude below 2^53 exactly, and so does every partial sum
#: a BLAS product of such integers forms (fused multiply-adds included).
_FLOAT_EXACT_BITS = 53
#: below this many bits per limb the integer product is as fast
_MIN_LIMB_BITS = 8


def matmul_small(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w`` mod 2^64 for uint64 ``a`` (..., m, k) and a matrix ``w`` (k, n) of small signed
    integers (int64), exact, on the host.

    numpy multiplies integer matrices without BLAS (0.38 s for one BERT-base FFN product on
    two cores, a quarter of a CPU dealer's time). Here ``a`` is cut into limbs of L bits, each
    limb times ``w`` is one float64 BLAS product, and the limbs are put back together mod
    2^64. Exact because every product and partial sum is an integer below 2^53 in magnitude:
    |limb x w| < 2^(L + b) with ``b`` the bit length of max |w|, and k terms add at most
    bitlength(k) bits, so L = 53 - b - bitlength(k). Where that leaves fewer than 8 bits per
    limb, numpy's integer product runs instead (the same result)."""
    k = a.shape[-1]
    big = max(int(w.max(initial=0)), -int(w.min(initial=0)))
    limb = _FLOAT_EXACT_BITS - big.bit_length() - int(k).bit_length()
    if limb < _MIN_LIMB_BITS or a.size == 0:
        return np.matmul(a, w.astype(np.uint64))
    wf = w.astype(np.float64)
    out = None
    with _blas().limit(limits=1, user_api="blas"):
        for shift in range(0, 64, limb):
            part = ((a >> U64(shift)) & mask(min(limb, 64 - shift))).astype(np.float64)
            term = np.matmul(part, wf).astype(np.int64).view(np.uint64) << U64(shift)
            out = term if out is None else out + term
    return out


@functools.cache
def _blas():
    """BLAS on one thread for these products: the two parties (and a dealer) often share a
    host, and a BLAS pool's threads spin after each call, taking the cores the other process
    needs (MiniLM's online phase on two cores: 3.7 s with the default pool, 1.9 s on one
    thread, 2.3 s with numpy's integer product)."""
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415

    return ThreadpoolController()


def encode_fixed(values, frac_bits: int, bits: int) -> np.ndarray:
    """Round real numbers to fixed point with ``frac_bits`` fractional bits in Z_{2^bits}."""
    v = np.rint(np.asarray(values, dtype=np.float64) * float(2 ** frac_bits))
    if v.size and not np.all(np.isfinite(v)):
        raise ParameterError(f"{int(np.sum(~np.isfinite(v)))} value(s) are NaN or infinite",
                             "fixed point holds finite numbers only; check the input")
    limit = 2.0 ** (bits - 1)
    if v.size and (np.max(v) >= limit or np.min(v) < -limit):
        raise ParameterError(
            f"value {float(np.max(np.abs(v))) / 2 ** frac_bits:g} does not fit fixed point "
            f"with n={bits}, f={frac_bits}",
            "use a wider ring (n) or fewer fractional bits (f)",
        )
    return from_signed(v.astype(np.int64), bits)


def decode_fixed(x, frac_bits: int, bits: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed`."""
    return to_signed(np.asarray(x, dtype=np.uint64), bits).astype(np.float64) / float(2 ** frac_bits)


# ---------------------------------------------------------------- bit packing
def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits each (rounded up to a byte)."""
    return (count * bits + 7) // 8


def pack_bits(values, bits: int) -> np.ndarray:
    """Pack n-bit values (any shape, flattened C-order) into a dense little-endian byte string.

    Value i occupies bits [i*bits, (i+1)*bits) of the stream, least significant bit first.
    Widths 8/16/32/64 are byte views, 1 is numpy's ``packbits``; other widths go a block of
    values at a time (:func:`_pack_blocks`). Returns uint8.
    """
    bits = check_bits(bits, "packing width")
    v = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=np.uint64)
    if v.dtype.kind != "u":         # bools, signed integers: as uint64 (negatives wrap, as numpy casts)
        v = v.astype(np.uint64)
    v = np.ascontiguousarray(v).reshape(-1)     # any unsigned width: narrower ones are not widened first
    if bits in (8, 16, 32, 64):
        return v.astype(np.dtype(f"<u{bits // 8}")).view(np.uint8)     # (astype copies: a fresh array)
    if bits == 1:
        return np.packbits((v & v.dtype.type(1)).astype(np.uint8, copy=False), bitorder="little")
    return _pack_blocks(v, bits)


def _block_geometry(bits: int) -> tuple[int, int]:
    """A block of ``64/g`` values of ``bits`` bits fills exactly ``bits/g`` words (g = gcd)."""
    g = math.gcd(bits, 64)
    return 64 // g, bits // g


#: Blocks :func:`_pack_blocks` and :func:`unpack_bits` handle per pass: a pass's columns (a
#: value position, or a word, of every block) stay in the CPU's cache, and each shift and OR
#: runs over a contiguous column (5-13x the old strided columns for 13 to 50 bits).
BLOCKS_PER_PASS = 1 << 12


def _pack_blocks(v: np.ndarray, bits: int) -> np.ndarray:
    """Values of ``bits`` bits, a block of ``64/g`` values (``bits/g`` words, g = gcd(bits, 64)) at
    a time: the blocks of one pass transposed so value j of every block is one contiguous
    column, each column shifted into its word(s), the words transposed back. ``v``: 1-D, of any
    unsigned dtype (cast to uint64 a pass at a time)."""
    per, words = _block_geometry(bits)
    n = v.size
    nblk = (n + per - 1) // per
    m, chunk = U64(mask(bits)), BLOCKS_PER_PASS
    out = np.empty((nblk, words), np.uint64)
    cols = np.empty((per, min(chunk, nblk)), np.uint64)
    acc = np.empty((words + 1, cols.shape[1]), np.uint64)
    tmp = np.empty(cols.shape[1], np.uint64)
    for b0 in range(0, nblk, chunk):
        k = min(chunk, nblk - b0)
        lo, hi = b0 * per, min(n, (b0 + k) * per)
        c, a, t = cols[:, :k], acc[:, :k], tmp[:k]
        if hi - lo == k * per:
            c[...] = v[lo:hi].reshape(k, per).T
        else:                                       # the last, partial block
            last = np.zeros(k * per, np.uint64)
            last[:hi - lo] = v[lo:hi]
            c[...] = last.reshape(k, per).T
        c &= m
        a[...] = 0
        for j in range(per):
            w, sh = divmod(j * bits, 64)
            np.left_shift(c[j], U64(sh), out=t)
            a[w] |= t
            if sh + bits > 64:
                np.right_shift(c[j], U64(64 - sh), out=t)
                a[w + 1] |= t
        out[b0:b0 + k] = a[:words].T
    return out.astype("<u8", copy=False).reshape(-1).view(np.uint8)[: packed_size(n, bits)]    # (a view of out: fresh)


def unpack_bits(buf, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values of ``bits`` bits from a byte buffer."""
    bits = check_bits(bits, "packing width")
    b = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1)
    need = packed_size(count, bits)
    if b.size < need:
        raise ParameterError(f"buffer holds {b.size} bytes, {need} needed for {count}x{bits}-bit values")
    if bits in (8, 16, 32, 64):
        return b[: count * bits // 8].view(np.dtype(f"<u{bits // 8}")).astype(np.uint64)
    if 64 % bits == 0:
        per = 64 // bits
        nwords = (count + per - 1) // per
        raw = np.zeros(nwords * 8, dtype=np.uint8)
        raw[:need] = b[:need]
        words = raw.view("<u8").astype(np.uint64)
        shifts = (np.arange(per, dtype=np.uint64) * U64(bits))
        return ((words[:, None] >> shifts) & mask(bits)).reshape(-1)[:count]
    return _unpack_blocks(b, bits, count)


def _unpack_blocks(b: np.ndarray, bits: int, count: int) -> np.ndarray:
    """:func:`_pack_blocks` undone, a pass of blocks at a time: the pass's words transposed so
    word w of every block is one contiguous column, each value position shifted out of its
    word(s) as a column, the values transposed back."""
    per, words = _block_geometry(bits)
    need = packed_size(count, bits)
    nblk = (count + per - 1) // per
    whole = need // (words * 8)                     # blocks wholly inside the buffer
    m, chunk = U64(mask(bits)), BLOCKS_PER_PASS
    out = np.empty((nblk, per), np.uint64)
    width = min(chunk, nblk)
    wt, col, tmp = np.empty((words, width), np.uint64), np.empty(width, np.uint64), np.empty(width, np.uint64)
    for b0 in range(0, nblk, chunk):
        k = min(chunk, nblk - b0)
        if b0 + k <= whole:
            src = b[b0 * words * 8:(b0 + k) * words * 8].view("<u8").reshape(k, words)
        else:                                       # the last block, cut short by the buffer
            raw = np.zeros(k * words * 8, np.uint8)
            part = b[b0 * words * 8:need]
            raw[:part.size] = part
            src = raw.view("<u8").reshape(k, words)
        w_, c, t = wt[:, :k], col[:k], tmp[:k]
        w_[...] = src.T
        dst = out[b0:b0 + k]
        for j in range(per):
            w, sh = divmod(j * bits, 64)
            np.right_shift(w_[w], U64(sh), out=c)
            if sh + bits > 64:
                np.left_shift(w_[w + 1], U64(64 - sh), out=t)
                c |= t
            c &= m
            dst[:, j] = c
    return out.reshape(-1)[:count]
