"""Fixed-key AES-128 PRG in Matyas-Meyer-Oseas form (DESIGN §5.2).

``H_k(s) = AES_k(sigma(s)) XOR sigma(s)`` with the orthomorphism
``sigma(hi, lo) = (hi XOR lo, hi)``. Three public fixed keys give three independent
hashes: ``L`` and ``R`` expand a tree node into its children, ``V`` expands values.

A 128-bit block is a pair of uint64 words stored as ``[..., 2]`` arrays with index 0 the
low word (bytes 0-7, little endian) and index 1 the high word (bytes 8-15), so a
C-contiguous ``(N, 2)`` uint64 array *is* the byte string AES sees. The round keys are
expanded once per process (one ``cryptography`` encryptor per fixed key, reused for every
call); a whole tree level goes through one ``update_into`` call.
"""
from __future__ import annotations

import contextvars
import hashlib
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fusec.runtime.xp import np as xnp


def _fixed_key(label: str) -> bytes:
    """Public, nothing-up-my-sleeve AES keys: SHA-256 of a label, first 16 bytes."""
    return hashlib.sha256(f"fusec/prg/v1/{label}".encode()).digest()[:16]


FIXED_KEYS: dict[str, bytes] = {name: _fixed_key(name) for name in ("L", "R", "V")}

#: Domain-separation tweaks XORed into the high word before hashing values, so the value
#: stream of a tree level and the leaf conversion never hash the same block.
TWEAK_LEVEL_VALUE = np.uint64(0)
TWEAK_LEAF_VALUE = np.uint64(1 << 62)


def sigma(blocks: np.ndarray) -> np.ndarray:
    """sigma(hi, lo) = (hi ^ lo, hi) on [..., 2] uint64 blocks (index 0 = lo)."""
    out = np.empty_like(blocks)  # dispatches on the array type (numpy or CuPy)
    out[..., 0] = blocks[..., 1]
    out[..., 1] = blocks[..., 1] ^ blocks[..., 0]
    return out


class AesMmo:
    """H_k for one fixed key; keeps a single ECB encryptor so the key schedule runs once."""

    def __init__(self, key: bytes):
        self.key = key
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self.calls = 0  # AES block encryptions, for cost accounting in tests/bench (CpuPrg.child: the protocol's)

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        return self.of_sigma(np.ascontiguousarray(sigma(blocks).reshape(-1, 2))).reshape(blocks.shape)

    def of_sigma(self, flat: np.ndarray) -> np.ndarray:
        """H_k of blocks given as sigma(block): ``AES_k(flat) ^ flat`` ((N, 2), C-contiguous)."""
        nbytes = flat.size * 8
        out = bytearray(nbytes + 15)
        n = self._enc.update_into(memoryview(flat).cast("B"), out)
        assert n == nbytes
        enc = np.frombuffer(out, dtype=np.uint64, count=flat.size).reshape(flat.shape)
        self.calls += flat.shape[0]
        np.bitwise_xor(enc, flat, out=enc)
        return enc


class CpuPrg:
    """The three hashes plus the value-stream expansion, on numpy arrays."""

    def __init__(self) -> None:
        self.h = {name: AesMmo(key) for name, key in FIXED_KEYS.items()}

    def children(self, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uncorrected child blocks (H_L(s), H_R(s)); callers clear t from s first."""
        return self.h["L"](seeds), self.h["R"](seeds)

    def child(self, seeds: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Only the child each element walks to (one AES per element in the protocol's count):
        ``right`` is 0/1. Both hashes are computed and the walked one kept: numpy's masked
        gathers and scatters of the two halves cost 3-4x a second AES-NI pass (a DCF level of
        30,000 elements: 1.9 against 0.4 ms). The counters count only the walked hash, as a
        GPU thread computes it (the gates' stated AES costs are checked against them)."""
        left, rgt = self.h["L"](seeds), self.h["R"](seeds)
        r = right.astype(bool)
        walked_right = int(np.count_nonzero(r))
        self.h["L"].calls -= walked_right
        self.h["R"].calls -= r.size - walked_right
        return np.where(r[..., None], rgt, left)

    def value_blocks(self, blocks: np.ndarray, nblocks: int, tweak: np.uint64) -> np.ndarray:
        """``nblocks`` pseudorandom 128-bit blocks per input: H_V(b ^ (i, tweak)), i < nblocks.

        Returns shape ``blocks.shape[:-1] + (nblocks, 2)``.
        """
        tw = np.repeat(blocks[..., None, :], nblocks, axis=-2)
        tw[..., 0] ^= np.arange(nblocks, dtype=np.uint64)
        tw[..., 1] ^= tweak
        return self.h["V"](tw)

    def value_stream(self, seed: np.ndarray, nblocks: int, tweak: np.uint64, start: int = 0) -> np.ndarray:
        """``value_blocks`` of one 128-bit ``seed`` ((2,) words), blocks ``start`` to ``start +
        nblocks`` as ``(nblocks, 2)``, with sigma written straight: of ``(lo ^ i, hi ^ tweak)``
        it is ``(hi ^ tweak, hi ^ tweak ^ lo ^ i)``, so the AES input is a constant word and a
        counter (a server regenerating gigabytes of seeded shares, runtime/seeded_shares.py,
        spends its time in numpy's passes, not AES; ``start``: a piece of a long stream)."""
        lo, hi = np.uint64(seed[0]), np.uint64(seed[1]) ^ np.uint64(tweak)
        flat = np.empty((int(nblocks), 2), np.uint64)
        flat[:, 0] = hi
        np.bitwise_xor(np.arange(int(start), int(start) + int(nblocks), dtype=np.uint64), hi ^ lo, out=flat[:, 1])
        return self.h["V"].of_sigma(flat)

    @property
    def aes_calls(self) -> int:
        return sum(h.calls for h in self.h.values())


def words_to_fields(blocks: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Cut ``count`` consecutive ``bits``-wide fields out of a stream of 128-bit blocks.

    ``blocks`` has shape ``(..., nblocks, 2)``; the stream is the little-endian
    concatenation of the blocks. Returns ``(..., count)`` uint64. Needs
    ``nblocks * 128 >= count * bits``.
    """
    words = blocks.reshape(blocks.shape[:-2] + (-1,))
    if bits == 64:
        return words[..., :count].copy()
    m = np.uint64((1 << bits) - 1)
    starts = np.arange(count) * bits            # field geometry: host integers
    w0 = starts // 64
    sh = starts % 64
    spill = sh + bits > 64
    first = words[..., xnp.asarray(w0)] >> xnp.asarray(sh.astype(np.uint64))
    if spill.any():
        nxt = np.minimum(w0 + 1, words.shape[-1] - 1)
        up = np.where(spill, (np.uint64(64) - sh.astype(np.uint64)) & np.uint64(63), 0).astype(np.uint64)
        keep = np.where(spill, ~np.uint64(0), np.uint64(0)).astype(np.uint64)
        first = first | ((words[..., xnp.asarray(nxt)] << xnp.asarray(up)) & xnp.asarray(keep))
    return first & m


def blocks_needed(count: int, bits: int) -> int:
    """128-bit blocks needed to hold ``count`` fields of ``bits`` bits."""
    return max(1, (count * bits + 127) // 128)


_local = threading.local()
#: The PRG of the backend that is running (set by ``Backend.activate``); None: the CPU one.
active_prg: contextvars.ContextVar = contextvars.ContextVar("fusec_prg", default=None)


def default_prg() -> CpuPrg:
    """The running backend's PRG, else this thread's CPU PRG (keys expanded once per thread).

    (A ``cryptography`` encryptor must not be shared between threads, hence per thread.)
    """
    prg = active_prg.get()
    if prg is not None:
        return prg
    prg = getattr(_local, "prg", None)
    if prg is None:
        prg = _local.prg = CpuPrg()
    return prg
