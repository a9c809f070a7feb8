"""The numeric kernels of ``ir.spec.fit``, fast and bit-identical to the plain numpy calls.

A BERT-base compile fits tens of thousands of polynomial pieces (every candidate shape of
every distinct rsqrt / reciprocal / exp / GELU domain) and measures each candidate's error
by exact integer evaluation. Done with ``Chebyshev.fit(...).convert(...)`` and Python-int
object arrays that took minutes; these kernels give the same numbers in a fraction of it:

* :func:`chebyshev_power_coeffs` is ``Chebyshev.fit(t, y, deg, domain=[-1, 1])`` followed
  by ``.convert(kind=Polynomial)``: the same least-squares call on the same matrix, and the
  conversion's Clenshaw recurrence on padded coefficient arrays (its products are by 0, 1
  or 2, so only its sums round, and they are done in the same order);
* :func:`floor_values` is ``floor(p_i(x) / 2^s)`` as ``OperatorSpec.reference`` computes it
  with Python integers, in int64 wherever a bound shows no intermediate can overflow.

``tests/test_fit_numeric.py`` compares both against the plain calls.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from numpy.polynomial import chebyshev as C
from numpy.polynomial import polyutils as pu

#: int64 Horner is used where every intermediate is provably below this (2 bits of margin
#: for the float estimate of the bound)
_SAFE = 2.0 ** 60


def _lstsq_chebyshev(t: np.ndarray, y: np.ndarray, deg: int) -> np.ndarray:
    """``numpy.polynomial.chebyshev.chebfit(t, y, deg)`` without its argument checking:
    the same Vandermonde matrix, column scaling, rcond and ``lstsq`` call, so the same bits."""
    x = np.asarray(t) + 0.0
    y = np.asarray(y) + 0.0
    lhs = C.chebvander(x, deg).T
    rcond = len(x) * np.finfo(x.dtype).eps
    scl = np.sqrt(np.square(lhs).sum(1))
    scl[scl == 0] = 1
    c, _, rank, _ = np.linalg.lstsq(lhs.T / scl, y.T, rcond)
    c = (c.T / scl).T
    if rank != deg + 1:
        warnings.warn("The fit may be poorly conditioned", pu.RankWarning, stacklevel=3)
    return c


def _power_from_chebyshev(c: np.ndarray) -> np.ndarray:
    """``Chebyshev(c).convert(kind=Polynomial).coef``, padded to ``len(c)``: chebval's
    Clenshaw recurrence run on coefficient arrays instead of Polynomial objects (numpy's
    convert evaluates the series at the identity polynomial). Finite coefficients only: a
    product by 0 there is an exact zero, here it is skipped."""
    n = len(c)
    if n <= 2:
        return np.array(c, np.float64)

    def const(v: float) -> np.ndarray:
        p = np.zeros(n)
        p[0] = v
        return p

    def times_x(p: np.ndarray, k: float) -> np.ndarray:
        out = np.zeros(n)
        out[1:] = p[:-1] * k
        return out

    c0, c1 = const(c[-2]), const(c[-1])
    for i in range(3, n + 1):
        tmp = c0
        c0 = const(c[-i]) - c1
        c1 = tmp + times_x(c1, 2.0)
    return c0 + times_x(c1, 1.0)


def chebyshev_power_coeffs(t: np.ndarray, y: np.ndarray, deg: int) -> np.ndarray:
    """Power-basis coefficients (length ``deg + 1``) of the least-squares Chebyshev fit of
    ``y`` at ``t`` in [-1, 1], bit-identical to numpy's ``Chebyshev.fit`` + ``convert``."""
    c = _lstsq_chebyshev(t, y, deg)
    if not np.all(np.isfinite(c)):      # the plain path: its 0 * inf products make NaNs
        poly = C.Chebyshev(c, domain=[-1, 1]).convert(kind=np.polynomial.Polynomial).coef
        return np.pad(poly, (0, deg + 1 - len(poly)))
    return _power_from_chebyshev(c)


def floor_values(coeffs: Sequence[Sequence[int]], centers: Sequence[int], out_shift: int,
                 piece: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``float(floor(p_piece[j](xs[j]) / 2^out_shift))`` for every j, where
    ``p_i(x) = sum_k coeffs[i][k] (x - centers[i])^k``: exact integers (as Python ints
    would give them), rounded once to float64.

    A piece whose bound ``sum_k |c_k| max|x - m|^k`` is under 2^60 is evaluated in int64
    (Horner's intermediates never exceed that bound); any other in Python integers."""
    xs = np.asarray(xs, np.int64).reshape(-1)
    piece = np.asarray(piece, np.int64).reshape(-1)
    out = np.empty(xs.shape, np.float64)
    if xs.size == 0:
        return out
    P, D = len(coeffs), max(len(c) for c in coeffs)
    cen = np.array([int(m) for m in centers], dtype=object)
    magn = np.array([[abs(float(v)) for v in c] + [0.0] * (D - len(c)) for c in coeffs])       # (P, D)
    small_c = np.all(magn < _SAFE, axis=1) & np.array([abs(int(m)) < 2 ** 62 for m in centers])
    cen64 = np.array([int(m) if ok else 0 for m, ok in zip(centers, small_c)], np.int64)
    dx = xs - cen64[piece]
    reach = np.zeros(P)
    np.maximum.at(reach, piece, np.abs(dx).astype(np.float64))
    bound = (magn * reach[:, None] ** np.arange(D)).sum(axis=1)
    safe = small_c & (bound < _SAFE) & (reach < _SAFE)
    fast = safe[piece]
    if fast.any():
        cf = np.array([[int(v) for v in c] + [0] * (D - len(c)) if ok else [0] * D
                       for c, ok in zip(coeffs, safe)], np.int64)
        p, d = piece[fast], dx[fast]
        acc = cf[p, D - 1].copy()
        for k in range(D - 2, -1, -1):
            acc = acc * d + cf[p, k]
        out[fast] = (acc >> out_shift).astype(np.float64)
    for i in np.unique(piece[~fast]):
        sel = piece == i
        x = xs[sel].astype(object) - cen[i]
        acc = np.zeros(x.shape, dtype=object)
        for ck in reversed(coeffs[i]):
            acc = acc * x + int(ck)
        vals = acc // (1 << out_shift) if out_shift else acc
        out[sel] = np.array([int(v) for v in vals], dtype=np.float64)
    return out
