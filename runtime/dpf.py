"""Distributed point function with 1-bit output and early termination (BGI, CCS'16).

``Eval(0,k0,x) XOR Eval(1,k1,x) = [x == alpha]``. The tree stops ``nu = min(7, n)`` levels
early: a leaf is one 128-bit block holding the outputs of ``2^nu`` consecutive points,
corrected by one final block. Key per element: ``128 + 129*(n - nu) + 128`` bits
(``129n - 647`` for n >= 7).

The same key answers *less-than* by prefix parity (as SIGMA does): the control bit ``t``
of a node is an XOR share of ``[alpha in subtree(node)]``, so
``[alpha < x] = XOR over levels where x goes right of (t_parent XOR t_child)`` (the left
sibling's share, obtained without expanding it) ``XOR parity(leaf & ((1 << x_low) - 1))``.
One AES per level plus one for the leaf. :func:`lt_keygen`/:func:`lt_eval` wrap this as
``[x < alpha]`` by complementing both sides (``[~alpha < ~x] = [x < alpha]``).
"""
from __future__ import annotations

from dataclasses import dataclass

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.prg import TWEAK_LEAF_VALUE, CpuPrg, default_prg
from fusec.runtime.rng import DealerRng
from fusec.runtime.tree import ONE, control_bit, expand_full, keygen_tree, times_bit, walk

LEAF_BITS = 7


def leaf_bits(n: int) -> int:
    return min(LEAF_BITS, n)


@dataclass
class DpfKey:
    """One party's 1-bit DPF keys for N elements (structure of arrays)."""

    n: int
    root: np.ndarray     # (N, 2)
    cw_seed: np.ndarray  # (n - nu, N, 2), low bit of word 0 = tCW_L
    cw_tr: np.ndarray    # (n - nu, N)
    cw_leaf: np.ndarray  # (N, 2) 128-bit leaf correction

    @property
    def nu(self) -> int:
        return leaf_bits(self.n)

    @property
    def elements(self) -> int:
        return self.root.shape[0]

    @staticmethod
    def field_specs(n: int, elements: int) -> list[tuple[str, tuple[int, ...], int]]:
        depth = n - leaf_bits(n)
        return [
            ("root", (elements, 2), 64),
            ("cw_seed", (depth, elements, 2), 64),
            ("cw_tr", (depth, elements), 1),
            ("cw_leaf", (elements, 2), 64),
        ]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"root": self.root, "cw_seed": self.cw_seed, "cw_tr": self.cw_tr, "cw_leaf": self.cw_leaf}

    @classmethod
    def from_arrays(cls, n: int, arrays: dict[str, np.ndarray]) -> "DpfKey":
        return cls(n, arrays["root"], arrays["cw_seed"], arrays["cw_tr"], arrays["cw_leaf"])

    @staticmethod
    def key_bits(n: int) -> int:
        return 256 + 129 * (n - leaf_bits(n))

    @staticmethod
    def aes_per_eval(n: int) -> int:
        return n - leaf_bits(n) + 1


def _unit_block(pos: np.ndarray) -> np.ndarray:
    """128-bit blocks with only bit ``pos`` set (pos in [0, 128))."""
    out = np.zeros(pos.shape + (2,), np.uint64)
    low = pos < 64
    out[..., 0] = np.where(low, ONE << (pos & np.uint64(63)), 0)
    out[..., 1] = np.where(low, 0, ONE << (pos & np.uint64(63)))
    return out


def keygen(rng: DealerRng, alpha: np.ndarray, n: int, prg: CpuPrg | None = None) -> tuple[DpfKey, DpfKey]:
    """Keys for the point function ``[x == alpha]`` on n bits, XOR-shared output."""
    ring.check_bits(n, "DPF domain width")
    prg = prg or default_prg()
    alpha = np.asarray(alpha, dtype=np.uint64).reshape(-1) & ring.mask(n)
    N = alpha.shape[0]
    nu = leaf_bits(n)
    depth = n - nu
    roots, cw_seed, cw_tr, st = keygen_tree(rng, alpha >> np.uint64(nu), depth, prg)
    conv = [prg.value_blocks(st[b], 1, TWEAK_LEAF_VALUE)[..., 0, :] for b in (0, 1)]
    cw_leaf = conv[0] ^ conv[1] ^ _unit_block(alpha & ring.mask(nu) if nu else np.zeros(N, np.uint64))
    return tuple(DpfKey(n, roots[b], cw_seed, cw_tr, cw_leaf) for b in (0, 1))  # type: ignore


def _walk(key: DpfKey, x: np.ndarray, prg: CpuPrg, prefix_parity: bool):
    """Walk x's path; returns (leaf block, accumulated prefix parity)."""
    depth = key.n - key.nu
    exp = (lambda a: a[:, None]) if x.ndim == 2 else (lambda a: a)
    acc = np.zeros(x.shape, np.uint64)

    def parity(xi, t_parent, t_child):
        # going right: the left sibling's share of [alpha in subtree] is t_parent ^ t_child
        acc[...] ^= xi & (t_parent ^ t_child)

    st = walk(key.root, key.cw_seed, key.cw_tr, x >> np.uint64(key.nu), depth, prg,
              parity if prefix_parity else None)
    t = control_bit(st)
    leaf = prg.value_blocks(st, 1, TWEAK_LEAF_VALUE)[..., 0, :] ^ times_bit(t, np.broadcast_to(exp(key.cw_leaf), st.shape))
    return leaf, acc


def eval(party: int, key: DpfKey, x: np.ndarray, prg: CpuPrg | None = None) -> np.ndarray:  # noqa: A001
    """XOR share of ``[x == alpha]``; x is (N,) or (N, P)."""
    prg = prg or default_prg()
    x = _check_x(key, x)
    leaf, _ = _walk(key, x, prg, False)
    pos = x & ring.mask(key.nu) if key.nu else np.zeros_like(x)
    word = np.where(pos < 64, leaf[..., 0], leaf[..., 1])
    return (word >> (pos & np.uint64(63))) & ONE


def _check_x(key: DpfKey, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64) & ring.mask(key.n)
    if x.ndim not in (1, 2) or x.shape[0] != key.elements:
        raise ParameterError(f"DPF eval: inputs of shape {x.shape} for {key.elements} keys",
                             "pass x as (N,) or (N, P) with N = number of keys")
    return x


def prefix_parity(party: int, key: DpfKey, x: np.ndarray, prg: CpuPrg | None = None) -> np.ndarray:
    """XOR share of ``[alpha < x]`` (XOR of the point function over [0, x))."""
    prg = prg or default_prg()
    x = _check_x(key, x)
    leaf, acc = _walk(key, x, prg, True)
    return acc ^ leaf_prefix_parity(leaf, x, key.nu)


def leaf_prefix_parity(leaf: np.ndarray, x: np.ndarray, nu: int) -> np.ndarray:
    """The parity of the 128-bit leaf blocks' bits below each point's position ``x mod 2^nu``
    (the last ``nu`` levels of a prefix parity, read from the leaf)."""
    pos = x & ring.mask(nu) if nu else np.zeros_like(x)
    lo_mask = np.where(pos >= 64, ~np.uint64(0), (ONE << (pos & np.uint64(63))) - ONE)
    hi_mask = np.where(pos >= 64, (ONE << (pos & np.uint64(63))) - ONE, 0).astype(np.uint64)
    par = np.bitwise_count(leaf[..., 0] & lo_mask) + np.bitwise_count(leaf[..., 1] & hi_mask)
    return par.astype(np.uint64) & ONE


def lt_keygen(rng: DealerRng, alpha: np.ndarray, n: int, prg: CpuPrg | None = None) -> tuple[DpfKey, DpfKey]:
    """Keys whose :func:`lt_eval` gives XOR shares of ``[x < alpha]`` on n bits."""
    alpha = np.asarray(alpha, dtype=np.uint64) & ring.mask(n)
    return keygen(rng, (~alpha) & ring.mask(n), n, prg)


def lt_eval(party: int, key: DpfKey, x: np.ndarray, prg: CpuPrg | None = None) -> np.ndarray:
    """XOR share of ``[x < alpha]`` for keys from :func:`lt_keygen`."""
    x = np.asarray(x, dtype=np.uint64)
    return prefix_parity(party, key, (~x) & ring.mask(key.n), prg)


def eval_full(party: int, key: DpfKey, prg: CpuPrg | None = None) -> np.ndarray:
    """Full-domain evaluation: (N, 2^n) XOR shares, expanding the tree level by level.

    Cost: 2^(n-nu+1) - 2 + 2^(n-nu) AES blocks per key. Meant for small domains (LUTs).
    """
    if key.n > 24:
        raise ParameterError(f"full-domain DPF evaluation over {key.n} bits would need 2^{key.n} outputs per key",
                             "use eval() at chosen points, or a domain of at most 24 bits")
    prg = prg or default_prg()
    N = key.elements
    st = expand_full(key.root, key.cw_seed, key.cw_tr, key.n - key.nu, prg)
    t = control_bit(st)
    leaf = prg.value_blocks(st, 1, TWEAK_LEAF_VALUE)[..., 0, :] ^ times_bit(t, np.broadcast_to(key.cw_leaf[:, None, :], st.shape))
    bits = np.arange(2 ** key.nu, dtype=np.uint64)
    word = np.where(bits < 64, leaf[..., 0:1], leaf[..., 1:2])
    out = (word >> (bits & np.uint64(63))) & ONE
    return out.reshape(N, -1)
