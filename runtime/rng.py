"""The dealer's randomness: a CSPRNG (DESIGN §1).

Seeds come from ``os.urandom``; they are expanded with AES-128-CTR (``cryptography``), so
generating gigabytes of masks and tree seeds is fast. Tests may pass a fixed 16-byte seed
to make key generation reproducible; production code never does (``fusec keygen`` always
draws a fresh seed from the OS).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fusec.runtime import ring


class DealerRng:
    """AES-CTR keystream as a source of uniform uint64 words."""

    def __init__(self, seed: bytes | None = None):
        # OS entropy goes straight in; a test seed of any length is hashed so every byte counts
        material = os.urandom(32) if seed is None else hashlib.sha256(b"fusec/dealer-seed/v1" + bytes(seed)).digest()
        self.key, self.nonce = material[:16], material[16:32]
        self._enc = Cipher(algorithms.AES(self.key), modes.CTR(self.nonce)).encryptor()

    def words(self, count: int) -> np.ndarray:
        """``count`` uniform uint64 words: the keystream encrypted straight into the array
        (``update_into`` wants 15 bytes of room past the data: two spare words), not into a
        bytes object copied once more (4.6 of a CPU dealer's 72 s per BERT-base set)."""
        count = int(count)
        if count == 0:
            return np.zeros(0, np.uint64)
        out = np.empty(count + 2, np.uint64)
        self._enc.update_into(memoryview(np.zeros(count, np.uint64)).cast("B"), memoryview(out).cast("B"))
        return out[:count]

    def ring(self, shape, bits: int) -> np.ndarray:
        """Uniform elements of Z_{2^bits} with the given shape."""
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = int(np.prod(shape, dtype=np.int64))
        w = self.words(n)
        if bits < 64:
            w &= ring.mask(bits)        # in place (numpy's or, on a GPU dealer, CuPy's array): one pass fewer
        return w.reshape(shape)

    def bits(self, shape) -> np.ndarray:
        """Uniform 0/1 values as uint64."""
        return self.ring(shape, 1)

    def blocks(self, shape) -> np.ndarray:
        """Uniform 128-bit blocks, shape + (2,)."""
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        return self.ring(shape + (2,), 64)

    def share(self, value: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Additive shares of ``value`` in Z_{2^bits}: s0 + s1 = value."""
        s0 = self.ring(value.shape, bits)
        s1 = value - s0
        s1 &= ring.mask(bits)
        return s0, s1
