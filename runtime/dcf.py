"""Distributed comparison function with vector payloads (Boyle et al., Eurocrypt'21).

``Eval(0, k0, x) + Eval(1, k1, x) = beta * [x < alpha]`` in ``Z_{2^w}^m`` for an n-bit
domain. The tree is the DPF tree (tree.py) plus one value correction word ``VCW`` per
level; the value of a child is hashed out of the *uncorrected* child block with ``H_V``
(never out of a seed with its control bit cleared) and the leaf's conversion uses a
separate tweak so the two streams never coincide. Key per element:
``128 + n * (129 + m*w) + m*w`` bits; evaluation: ``n * (1 + ceil(m*w/128)) + ceil(m*w/128)``
AES blocks. ``x`` may carry several points per key (shape ``(N, P)``): the public-threshold
identities evaluate one key at many shifted points.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.prg import TWEAK_LEAF_VALUE, TWEAK_LEVEL_VALUE, CpuPrg, default_prg, blocks_needed, words_to_fields
from fusec.runtime.rng import DealerRng
from fusec.runtime.tree import (ONE, clear_t, control_bit, neg_if, path_bit, select_pair,
                                times_bit, with_low_bit)


@dataclass
class DcfKey:
    """One party's DCF keys for N elements, structure of arrays (level-major)."""

    n: int            # domain bits
    m: int            # payload length
    w: int            # payload word width (ring bits of the output group)
    root: np.ndarray  # (N, 2) state block, low bit = t (= party id)
    cw_seed: np.ndarray  # (n, N, 2), low bit of word 0 = tCW_L
    cw_tr: np.ndarray    # (n, N) tCW_R
    cw_v: np.ndarray     # (n, N, m)
    cw_final: np.ndarray  # (N, m)

    @property
    def elements(self) -> int:
        return self.root.shape[0]

    @staticmethod
    def field_specs(n: int, m: int, w: int, elements: int) -> list[tuple[str, tuple[int, ...], int]]:
        """(name, shape, bits) of each array, in key-file order."""
        return [
            ("root", (elements, 2), 64),
            ("cw_seed", (n, elements, 2), 64),
            ("cw_tr", (n, elements), 1),
            ("cw_v", (n, elements, m), w),
            ("cw_final", (elements, m), w),
        ]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name, _, _ in self.field_specs(self.n, self.m, self.w, 0)}

    @classmethod
    def from_arrays(cls, n: int, m: int, w: int, arrays: dict[str, np.ndarray]) -> "DcfKey":
        return cls(n, m, w, **{k: arrays[k] for k in ("root", "cw_seed", "cw_tr", "cw_v", "cw_final")})

    @staticmethod
    def key_bits(n: int, m: int, w: int) -> int:
        return 128 + n * (129 + m * w) + m * w

    @staticmethod
    def aes_per_eval(n: int, m: int, w: int) -> int:
        nb = blocks_needed(m, w)
        return n * (1 + nb) + nb


def _check(n: int, w: int, m: int) -> None:
    ring.check_bits(n, "DCF domain width")
    ring.check_bits(w, "DCF payload width")
    if m < 1:
        raise ParameterError(f"DCF payload length must be >= 1, got {m}")


def _convert(prg: CpuPrg, blocks: np.ndarray, m: int, w: int, tweak) -> np.ndarray:
    return words_to_fields(prg.value_blocks(blocks, blocks_needed(m, w), tweak), m, w)


def keygen(rng: DealerRng, alpha: np.ndarray, beta: np.ndarray, n: int, w: int,
           prg: CpuPrg | None = None) -> tuple[DcfKey, DcfKey]:
    """Keys for ``beta * [x < alpha]``; alpha (N,) in [0, 2^n), beta (N, m) in Z_{2^w}."""
    alpha = np.asarray(alpha, dtype=np.uint64).reshape(-1)
    beta = np.asarray(beta, dtype=np.uint64)
    if beta.ndim == 1:
        beta = beta[:, None]
    N, m = beta.shape
    _check(n, w, m)
    if alpha.shape[0] != N:
        raise ParameterError(f"DCF keygen: {alpha.shape[0]} alphas but {N} payloads")
    prg = prg or default_prg()
    wm = ring.mask(w)
    alpha = alpha & ring.mask(n)
    beta = beta & wm
    st = [with_low_bit(rng.blocks(N), np.zeros(N, np.uint64)), with_low_bit(rng.blocks(N), np.ones(N, np.uint64))]
    roots = [s.copy() for s in st]
    fused = getattr(prg, "dcf_keygen", None)      # the GPU's: the whole loop below in one kernel
    done = fused(st[0], st[1], alpha, beta, n, w) if fused is not None else None
    if done is not None:
        return tuple(DcfKey(n, m, w, roots[b], *done) for b in (0, 1))  # type: ignore
    cw_seed = np.empty((n, N, 2), np.uint64)
    cw_tr = np.empty((n, N), np.uint64)
    cw_v = np.empty((n, N, m), np.uint64)
    V = np.zeros((N, m), np.uint64)
    for i in range(n):
        a = path_bit(alpha, i, n)
        raw, vals = [], []
        for b in (0, 1):
            L, R = prg.children(clear_t(st[b]))
            raw.append((L, R))
            vals.append((_convert(prg, L, m, w, TWEAK_LEVEL_VALUE), _convert(prg, R, m, w, TWEAK_LEVEL_VALUE)))
        lose_raw, keep_raw = zip(*(select_pair(a, raw[b][0], raw[b][1]) for b in (0, 1)))
        v_lose, v_keep = zip(*(select_pair(a, vals[b][0], vals[b][1]) for b in (0, 1)))
        t1 = control_bit(st[1])
        s_cw = clear_t(lose_raw[0] ^ lose_raw[1])
        vcw = neg_if(t1, (v_lose[1] - v_lose[0] - V + beta * a[:, None]) & wm, wm)
        V = (V - v_keep[1] + v_keep[0] + neg_if(t1, vcw, wm)) & wm
        tl = [control_bit(raw[b][0]) for b in (0, 1)]
        tr = [control_bit(raw[b][1]) for b in (0, 1)]
        tcw_l = tl[0] ^ tl[1] ^ a ^ ONE
        tcw_r = tr[0] ^ tr[1] ^ a
        cw_seed[i] = with_low_bit(s_cw, tcw_l)
        cw_tr[i] = tcw_r
        cw_v[i] = vcw
        cw_keep = with_low_bit(s_cw, np.where(a.astype(bool), tcw_r, tcw_l))
        st = [keep_raw[b] ^ times_bit(control_bit(st[b]), cw_keep) for b in (0, 1)]
    conv = [_convert(prg, st[b], m, w, TWEAK_LEAF_VALUE) for b in (0, 1)]
    cw_final = neg_if(control_bit(st[1]), (conv[1] - conv[0] - V) & wm, wm)
    return tuple(DcfKey(n, m, w, roots[b], cw_seed, cw_tr, cw_v, cw_final) for b in (0, 1))  # type: ignore


def eval(party: int, key: DcfKey, x: np.ndarray, prg: CpuPrg | None = None) -> np.ndarray:  # noqa: A001
    """This party's share of ``beta * [x < alpha]``.

    ``x`` is (N,) or (N, P) (P points per key). Returns (N, m) or (N, P, m) uint64 in
    Z_{2^w}. Loops only over the n tree levels.
    """
    prg = prg or default_prg()
    x = np.asarray(x, dtype=np.uint64) & ring.mask(key.n)
    N = key.elements
    if x.ndim not in (1, 2) or x.shape[0] != N:
        raise ParameterError(f"DCF eval: inputs of shape {x.shape} for {N} keys",
                             "pass x as (N,) or (N, P) with N = number of keys")
    multi = x.ndim == 2
    exp = (lambda a: a[:, None]) if multi else (lambda a: a)
    wm = ring.mask(key.w)
    m, w, n = key.m, key.w, key.n
    st = np.broadcast_to(exp(key.root), x.shape + (2,)).copy()
    V = np.zeros(x.shape + (m,), np.uint64)
    for i in range(n):
        xi = path_bit(x, i, n)
        t = control_bit(st)
        raw = prg.child(clear_t(st), xi)
        V += _convert(prg, raw, m, w, TWEAK_LEVEL_VALUE) + t[..., None] * exp(key.cw_v[i])
        cws = exp(key.cw_seed[i])
        cw_dir = with_low_bit(np.broadcast_to(cws, st.shape), np.where(xi.astype(bool), exp(key.cw_tr[i]), cws[..., 0] & ONE))
        st = raw ^ times_bit(t, cw_dir)
    t = control_bit(st)
    V += _convert(prg, st, m, w, TWEAK_LEAF_VALUE) + t[..., None] * exp(key.cw_final)
    V &= wm
    return neg_if(np.full(x.shape, party, np.uint64), V, wm) if party == 1 else V
