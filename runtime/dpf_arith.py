"""Distributed point function with arithmetic output (BGI, CCS'16, no early termination).

``Eval(0, k0, x) + Eval(1, k1, x) = beta * [x == alpha]`` in ``Z_{2^w}`` for an n-bit
domain. The tree is the DPF tree of tree.py walked to full depth n (no early
termination: the leaves carry a ring element, not a bit); the leaf value is converted
out of the *whole* leaf state (control bit included) with the value hash ``H_V`` under
``TWEAK_LEAF_VALUE``, and one final correction word

    CW = (-1)^{t1} * (beta - Convert(s0_leaf) + Convert(s1_leaf))

makes the two parties' values differ by ``beta`` on alpha's path. Off the path both
parties hold the same state, so their (party-1-negated) values cancel.

Party b outputs ``(-1)^b * (Convert(s_b) + t_b * CW)``. Key per element:
``128 + 129 n + w`` bits. Evaluation at one point: ``n + ceil(w/128)`` AES blocks
(one hash per level, one value block); full-domain evaluation expands both children of
every node level by level: ``2^(n+1) - 2 + 2^n * ceil(w/128)`` blocks per key.

This is the SIGMA-style LUT's primitive: the one-hot arithmetic shares of ``[j == r]``
over the whole k-bit domain.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.prg import TWEAK_LEAF_VALUE, CpuPrg, default_prg, blocks_needed, words_to_fields
from fusec.runtime.rng import DealerRng
from fusec.runtime.tree import control_bit, expand_full, keygen_tree, neg_if, walk

#: Largest domain :func:`eval_full` expands (2^24 outputs per key).
MAX_FULL_DOMAIN_BITS = 24


@dataclass
class DpfArithKey:
    """One party's arithmetic-output DPF keys for N elements (structure of arrays)."""

    n: int               # domain bits
    w: int               # output ring bits
    root: np.ndarray     # (N, 2) state block, low bit = t (= party id)
    cw_seed: np.ndarray  # (n, N, 2), low bit of word 0 = tCW_L
    cw_tr: np.ndarray    # (n, N) tCW_R
    cw_final: np.ndarray  # (N,) in Z_{2^w}

    @property
    def elements(self) -> int:
        return self.root.shape[0]

    @staticmethod
    def field_specs(n: int, w: int, elements: int) -> list[tuple[str, tuple[int, ...], int]]:
        """(name, shape, bits) of each array, in key-file order."""
        return [
            ("root", (elements, 2), 64),
            ("cw_seed", (n, elements, 2), 64),
            ("cw_tr", (n, elements), 1),
            ("cw_final", (elements,), w),
        ]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name, _, _ in self.field_specs(self.n, self.w, 0)}

    @classmethod
    def from_arrays(cls, n: int, w: int, arrays: dict[str, np.ndarray]) -> "DpfArithKey":
        return cls(n, w, **{k: arrays[k] for k in ("root", "cw_seed", "cw_tr", "cw_final")})

    @staticmethod
    def key_bits(n: int, w: int) -> int:
        return 128 + 129 * n + w

    @staticmethod
    def aes_per_eval(n: int, w: int) -> int:
        """AES blocks for one point evaluation."""
        return n + blocks_needed(1, w)

    @staticmethod
    def aes_full_domain(n: int, w: int) -> int:
        """AES blocks for one full-domain evaluation (both children of every inner node)."""
        return (1 << (n + 1)) - 2 + (1 << n) * blocks_needed(1, w)


def _check(n: int, w: int) -> None:
    ring.check_bits(n, "arithmetic DPF domain width")
    ring.check_bits(w, "arithmetic DPF output width")


def _convert(prg: CpuPrg, states: np.ndarray, w: int) -> np.ndarray:
    """Convert(s): a pseudorandom element of Z_{2^w} hashed out of the full leaf state."""
    return words_to_fields(prg.value_blocks(states, blocks_needed(1, w), TWEAK_LEAF_VALUE), 1, w)[..., 0]


def keygen(rng: DealerRng, alpha: np.ndarray, beta, n: int, w: int,
           prg: CpuPrg | None = None) -> tuple[DpfArithKey, DpfArithKey]:
    """Keys for ``beta * [x == alpha]``; alpha (N,) in [0, 2^n), beta scalar or (N,) in Z_{2^w}."""
    _check(n, w)
    prg = prg or default_prg()
    alpha = np.asarray(alpha, dtype=np.uint64).reshape(-1) & ring.mask(n)
    N = alpha.shape[0]
    wm = ring.mask(w)
    beta = np.asarray(beta)
    if beta.size not in (1, N):
        raise ParameterError(f"arithmetic DPF keygen: {N} alphas but {beta.size} betas")
    beta = np.broadcast_to(ring.from_signed(beta.reshape(-1), w), (N,))
    roots, cw_seed, cw_tr, st = keygen_tree(rng, alpha, n, prg)
    conv = [_convert(prg, st[b], w) for b in (0, 1)]
    cw_final = neg_if(control_bit(st[1]), (beta - conv[0] + conv[1]) & wm, wm)
    return tuple(DpfArithKey(n, w, roots[b], cw_seed, cw_tr, cw_final) for b in (0, 1))  # type: ignore


def _finish(party: int, key: DpfArithKey, st: np.ndarray, cw_final: np.ndarray, prg: CpuPrg) -> np.ndarray:
    wm = ring.mask(key.w)
    v = (_convert(prg, st, key.w) + control_bit(st) * cw_final) & wm
    return ((np.uint64(0) - v) & wm) if party == 1 else v


def eval(party: int, key: DpfArithKey, x: np.ndarray, prg: CpuPrg | None = None) -> np.ndarray:  # noqa: A001
    """This party's additive share of ``beta * [x == alpha]``.

    ``x`` is (N,) or (N, P) (P points per key); returns uint64 of x's shape in Z_{2^w}.
    Loops only over the n tree levels.
    """
    prg = prg or default_prg()
    x = np.asarray(x, dtype=np.uint64) & ring.mask(key.n)
    if x.ndim not in (1, 2) or x.shape[0] != key.elements:
        raise ParameterError(f"arithmetic DPF eval: inputs of shape {x.shape} for {key.elements} keys",
                             "pass x as (N,) or (N, P) with N = number of keys")
    exp = (lambda a: a[:, None]) if x.ndim == 2 else (lambda a: a)
    st = walk(key.root, key.cw_seed, key.cw_tr, x, key.n, prg)
    return _finish(party, key, st, np.broadcast_to(exp(key.cw_final), x.shape), prg)


def eval_full(party: int, key: DpfArithKey, prg: CpuPrg | None = None) -> np.ndarray:
    """Full-domain evaluation: (N, 2^n) additive shares, expanding the tree level by level.

    Column j is this party's share of ``beta * [j == alpha]``. Cost:
    :meth:`DpfArithKey.aes_full_domain` AES blocks per key. Meant for small domains (LUTs).
    """
    if key.n > MAX_FULL_DOMAIN_BITS:
        raise ParameterError(f"full-domain arithmetic DPF evaluation over {key.n} bits would need 2^{key.n} outputs per key",
                             f"use eval() at chosen points, or a domain of at most {MAX_FULL_DOMAIN_BITS} bits")
    prg = prg or default_prg()
    st = expand_full(key.root, key.cw_seed, key.cw_tr, key.n, prg)
    return _finish(party, key, st, key.cw_final[:, None], prg)
