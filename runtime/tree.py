"""Shared pieces of the GGM-tree FSS schemes (DPF and DCF, DESIGN §5.3).

A tree node is a 128-bit *state* block whose lowest bit is the control bit ``t`` and
whose other 127 bits are the seed. Expanding a node clears ``t`` and hashes the seed with
``H_L``/``H_R``; the child is the hash output XOR ``t_parent * CW`` where the correction
block ``CW_dir`` is ``sCW`` with its low bit replaced by ``tCW_dir``. A level's key
material is therefore 129 bits: ``cw_seed`` (128 bits whose low bit stores ``tCW_L``) and
``cw_tr`` (1 bit, ``tCW_R``).
"""
from __future__ import annotations

from fusec.runtime.xp import np

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


def select_pair(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``a`` where cond == 1 else ``b``, the other one) per element, for arrays whose trailing
    axes follow cond's (blocks [..., 2], payloads [..., m]): a keygen level's lose and keep
    branches from one XOR of the two and one mask, not two ``where`` passes."""
    diff = a ^ b
    diff &= (np.uint64(0) - cond.astype(np.uint64)).reshape(cond.shape + (1,) * (a.ndim - cond.ndim))
    return b ^ diff, a ^ diff


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


# ---------------------------------------------------------------------------- shared tree code
def keygen_tree(rng, path: np.ndarray, depth: int, prg):
    """Dealer side of the GGM tree shared by every DPF: roots, per-level corrections.

    ``path`` holds the ``depth``-bit prefix of alpha (N,). Root control bits are the party
    ids (t0 XOR t1 = 1). Returns ``(roots, cw_seed, cw_tr, leaves)`` with ``roots`` and
    ``leaves`` per party; corrections use the *parent's* t (a classic pitfall).
    """
    N = path.shape[0]
    st = [with_low_bit(rng.blocks(N), np.zeros(N, np.uint64)), with_low_bit(rng.blocks(N), np.ones(N, np.uint64))]
    roots = [s.copy() for s in st]
    fused = getattr(prg, "keygen_tree", None)     # the GPU's: the whole loop below in one kernel
    done = fused(st[0], st[1], path, depth) if fused is not None else None
    if done is not None:
        cw_seed, cw_tr, leaf0, leaf1 = done
        return roots, cw_seed, cw_tr, [leaf0, leaf1]
    cw_seed = np.empty((depth, N, 2), np.uint64)
    cw_tr = np.empty((depth, N), np.uint64)
    for i in range(depth):
        a = path_bit(path, i, depth)
        raw = [prg.children(clear_t(st[b])) for b in (0, 1)]
        lose, keep = zip(*(select_pair(a, raw[b][0], raw[b][1]) for b in (0, 1)))
        s_cw = clear_t(lose[0] ^ lose[1])
        tcw_l = control_bit(raw[0][0]) ^ control_bit(raw[1][0]) ^ a ^ ONE
        tcw_r = control_bit(raw[0][1]) ^ control_bit(raw[1][1]) ^ a
        cw_seed[i] = with_low_bit(s_cw, tcw_l)
        cw_tr[i] = tcw_r
        cw_keep = with_low_bit(s_cw, np.where(a.astype(bool), tcw_r, tcw_l))
        st = [keep[b] ^ times_bit(control_bit(st[b]), cw_keep) for b in (0, 1)]
    return roots, cw_seed, cw_tr, st


def walk(root: np.ndarray, cw_seed: np.ndarray, cw_tr: np.ndarray, path: np.ndarray, depth: int, prg,
         on_step=None) -> np.ndarray:
    """Follow ``path`` (N,) or (N, P) down ``depth`` levels, one AES per level.

    ``on_step(bit, t_parent, t_child)`` is called after each level (prefix parity uses it).
    Returns the leaf states, shape ``path.shape + (2,)``.
    """
    exp = (lambda a: a[:, None]) if path.ndim == 2 else (lambda a: a)
    st = np.broadcast_to(exp(root), path.shape + (2,)).copy()
    for i in range(depth):
        xi = path_bit(path, i, depth)
        t = control_bit(st)
        raw = prg.child(clear_t(st), xi)
        cws = np.broadcast_to(exp(cw_seed[i]), st.shape)
        cw_dir = with_low_bit(cws, np.where(xi.astype(bool), exp(cw_tr[i]), cws[..., 0] & ONE))
        st = raw ^ times_bit(t, cw_dir)
        if on_step is not None:
            on_step(xi, t, control_bit(st))
    return st


def expand_full(root: np.ndarray, cw_seed: np.ndarray, cw_tr: np.ndarray, depth: int, prg) -> np.ndarray:
    """All 2^depth leaf states per key, level by level: (N, 2^depth, 2)."""
    N = root.shape[0]
    st = root[:, None, :].copy()
    for i in range(depth):
        t = control_bit(st)
        L, R = prg.children(clear_t(st))
        cw = cw_seed[i][:, None, :]
        cwl = with_low_bit(np.broadcast_to(cw, L.shape), np.broadcast_to(cw[..., 0] & ONE, L.shape[:-1]))
        cwr = with_low_bit(np.broadcast_to(cw, R.shape), np.broadcast_to(cw_tr[i][:, None], R.shape[:-1]))
        L ^= times_bit(t, cwl)
        R ^= times_bit(t, cwr)
        st = np.stack([L, R], axis=2).reshape(N, -1, 2)
    return st
