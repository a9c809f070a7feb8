"""Shared pieces of the GGM-tree FSS schemes (DPF and DCF, DESIGN §5.3).

A tree node is a 128-bit *state* block whose lowest bit is the control bit ``t`` and
whose other 127 bits are the seed. Expanding a node clears ``t`` and hashes the seed with
``H_L``/``H_R``; the child is the hash output XOR ``t_parent * CW`` where the correction
block ``CW_dir`` is ``sCW`` with its low bit replaced by ``tCW_dir``. A level's key
material is therefore 129 bits: ``cw_seed`` (128 bits whose low bit stores ``tCW_L``) and
``cw_tr`` (1 bit, ``tCW_R``).
"""
from __future__ import annotations

import numpy as np

ONE = np.uint64(1)
NOT_ONE = np.uint64(0xFFFFFFFFFFFFFFFE)


def control_bit(state: np.ndarray) -> np.ndarray:
    """t = low bit of the state block, as uint64 0/1 (shape = state.shape[:-1])."""
    return state[..., 0] & ONE


def clear_t(state: np.ndarray) -> np.ndarray:
    """The seed half of a state: the block with its low bit cleared."""
    out = state.copy()
    out[..., 0] &= NOT_ONE
    return out


def with_low_bit(block: np.ndarray, bit: np.ndarray) -> np.ndarray:
    """``block`` with its low bit replaced by ``bit`` (0/1 uint64)."""
    out = block.copy()
    out[..., 0] = (out[..., 0] & NOT_ONE) | bit
    return out


def select_block(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per element: ``a`` where cond == 1 else ``b`` (blocks [..., 2])."""
    return np.where(cond.astype(bool)[..., None], a, b)


def times_bit(bit: np.ndarray, block: np.ndarray) -> np.ndarray:
    """bit * block for 128-bit blocks (bit is 0/1 uint64)."""
    return block & (np.uint64(0) - bit)[..., None]


def path_bit(x: np.ndarray, level: int, n: int) -> np.ndarray:
    """Bit of x taken at tree depth ``level`` (MSB first) for an n-bit domain."""
    return (x >> np.uint64(n - 1 - level)) & ONE


def neg_if(bit: np.ndarray, v: np.ndarray, m: np.uint64) -> np.ndarray:
    """(-1)^bit * v mod 2^w (bit broadcast over trailing payload axes)."""
    neg = (np.uint64(0) - v) & m
    b = bit.astype(bool)
    b = b.reshape(b.shape + (1,) * (v.ndim - b.ndim))
    return np.where(b, neg, v)
