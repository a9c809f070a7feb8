"""Secret-shared truth tables for tiny domains (<= 8 bits, DESIGN §5.3).

For a k-bit domain a whole table is cheaper than a tree: the dealer writes the function
*already shifted by the mask*, ``T'(u) = f(u - r mod 2^k)``, as additive shares (XOR
shares for 1-bit outputs, which is the same thing mod 2). Evaluation is a gather at the
public ``u``: no AES at all. Key per element: ``2^k * w`` bits (a 1-bit comparison on 8
bits is 256 bits, against 385 for the smallest DPF).
"""
from __future__ import annotations

from dataclasses import dataclass

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.rng import DealerRng

MAX_TABLE_BITS = 8


@dataclass
class TableKey:
    k: int            # domain bits
    w: int            # output bits
    table: np.ndarray  # (N, 2^k) this party's share of the shifted table

    @staticmethod
    def field_specs(k: int, w: int, elements: int) -> list[tuple[str, tuple[int, ...], int]]:
        return [("table", (elements, 1 << k), w)]

    @staticmethod
    def key_bits(k: int, w: int) -> int:
        return (1 << k) * w


def _check(k: int, w: int) -> None:
    if not 1 <= k <= MAX_TABLE_BITS:
        raise ParameterError(f"truth tables cover domains of 1..{MAX_TABLE_BITS} bits, got {k}",
                             "use a DPF/DCF for larger domains")
    ring.check_bits(w, "truth-table output width")


def keygen(rng: DealerRng, values: np.ndarray, r: np.ndarray, k: int, w: int) -> tuple[TableKey, TableKey]:
    """Shares of ``values[e, (u - r_e) mod 2^k]`` for every u; values is (N, 2^k) or (2^k,)."""
    _check(k, w)
    r = np.asarray(r, np.uint64).reshape(-1) & ring.mask(k)
    N = r.shape[0]
    vals = np.asarray(values, np.uint64)
    if vals.shape[-1] != 1 << k:
        raise ParameterError(f"a {k}-bit truth table needs {1 << k} entries, got {vals.shape[-1]}")
    vals = np.broadcast_to(vals, (N, 1 << k))
    u = np.arange(1 << k, dtype=np.uint64)
    idx = ((u[None, :] - r[:, None]) & ring.mask(k)).astype(np.int64)
    shifted = np.take_along_axis(vals, idx, axis=1) & ring.mask(w)
    s0, s1 = rng.share(shifted, w)
    return TableKey(k, w, s0), TableKey(k, w, s1)


def eval(party: int, key: TableKey, u: np.ndarray) -> np.ndarray:  # noqa: A001
    """This party's share of ``f(x)`` at the public ``u`` (any trailing points axis)."""
    u = np.asarray(u, np.uint64) & ring.mask(key.k)
    if u.shape[0] != key.table.shape[0]:
        raise ParameterError(f"truth table eval: {u.shape[0]} inputs for {key.table.shape[0]} keys")
    idx = u.astype(np.int64).reshape(u.shape[0], -1)
    return np.take_along_axis(key.table, idx, axis=1).reshape(u.shape)
