"""Key files, the format: what the bytes of a dealer's key file mean.

This module defines the format and parses/packs the header; reading and writing the sets
is :mod:`fusec.runtime.keyio`, and the record of consumed sets is
:mod:`fusec.runtime.ledger`.

File format (version 5, all integers little-endian)
===================================================

::

    offset  size   field
    0       8      magic            b"FUSECKEY"
    8       2      version          u16 = 5
    10      1      party            u8, 0 or 1
    11      32     layout digest    raw sha256 of this party's stored layout (KeyLayout.digest of
                                    seeded_shares.party_layout of keys.layout.json)
    43      16     key-set id       random, chosen by the dealer once per keygen run; the SAME
                                    id is written into both parties' files
    59      32     pairing secret   random (OS CSPRNG), once per keygen run, the SAME in both
                                    files: the servers prove to each other that they hold the
                                    matching file (HMAC challenge-response, runtime/hello.py)
    91      4      K                u32, number of key sets (inferences) in the file
    95      8      set bytes        u64, bytes per stored key set (= the party layout's set_nbytes)
    103     32*K   set checksums    chunked BLAKE3-256 of each key set's bytes, in set order
    103+32K 32     header checksum  BLAKE3-256 of bytes [0, 103+32K)
    ...            zero padding up to ``data_offset = round_up(135 + 32K, 4096)``
    data_offset + i*set_bytes       key set i (i = 0..K-1), laid out by the KeyLayout

A set checksum is BLAKE3-256 over the concatenated BLAKE3-256 digests of the set's
consecutive ``CHUNK_BYTES`` (64 MiB) chunks (the last one shorter). Chunks are hashed in
parallel threads (keyio): a BERT-base key set is tens of GB, and hashing bounds loading
a set. Version 3 used BLAKE2b (libsodium's: 9.3 GB/s on the 16-core H100 host), which
held two servers sharing that host to 4.3-4.9 GB/s each; BLAKE3 hashes about 3x as fast
per core (2.8 against 0.9 GB/s on this project's 2-core sandbox) and, like BLAKE2b, is a
cryptographic hash, so a corrupted or substituted set is still caught.

A key set holds the keys of one inference: the gate slots of the party's layout back to back
in key-consumption order, each slot structure-of-arrays (see :mod:`fusec.runtime.layout`).
The party's layout is the build's with a 16-byte seed in place of this party's shares of the
gates seeded to it (:mod:`fusec.runtime.seeded_shares`; version 5): the two parties' files
differ in size by at most one gate's saving, and a server inflates each set it reads into
the build's layout before anything else sees it.
Key sets start page aligned (set bytes are a multiple of 8), so a set can be mapped or
staged to the device without realignment. A batch of B inferences uses B key sets.

The key-set id names the keygen run: the reuse ledger is keyed by it (and the party), so
a copy of a key file is the same key set wherever it lies. The pairing secret binds the
two servers to their dealer: a peer without the matching file cannot pass the hello.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import numpy as np

from fusec.errors import KeyFileError, ParameterError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "KEY_SET_ID_BYTES",
    "PAIRING_SECRET_BYTES",
    "CHUNK_BYTES",
    "KeyFileHeader",
    "new_key_set_id",
    "new_pairing_secret",
    "parse_header",
]

MAGIC = b"FUSECKEY"
FORMAT_VERSION = 5     # 5: sets in the party's layout, a seed in place of its shares of some gates
KEY_SET_ID_BYTES = 16
PAIRING_SECRET_BYTES = 32
DATA_ALIGN = 4096
CHECKSUM_BYTES = 32
CHUNK_BYTES = 1 << 26  # unit of the set checksum, and of parallel hashing/writing/reading
MAX_COUNT = 2**32 - 1

# magic, version, party, layout digest, key-set id, pairing secret, K, bytes per set
_FIXED = struct.Struct("<8sHB32s16s32sIQ")
_PREFIX = struct.Struct("<8sH")  # enough to tell "not a key file" / "other version"


def hasher() -> Any:
    """A new incremental BLAKE3-256 (``update``, ``digest``). Its ``update`` releases the
    GIL and reads the caller's buffer in place, so chunks hash in parallel threads."""
    return blake3.blake3()


def checksum(data: Any) -> bytes:
    """BLAKE3-256: the header checksum, and the digest of one chunk of a set."""
    h = hasher()
    h.update(data)
    return h.digest()


def combine(chunk_digests: list[bytes]) -> bytes:
    """A set checksum from its chunks' digests, in order."""
    return checksum(b"".join(chunk_digests))


def header_nbytes(count: int) -> int:
    """Bytes of the header proper: fixed part, K set checksums, header checksum."""
    return _FIXED.size + CHECKSUM_BYTES * count + CHECKSUM_BYTES


def data_offset(count: int) -> int:
    return (header_nbytes(count) + DATA_ALIGN - 1) // DATA_ALIGN * DATA_ALIGN


def new_key_set_id() -> bytes:
    """A fresh random key-set id (16 bytes from the OS CSPRNG) for one keygen run."""
    return os.urandom(KEY_SET_ID_BYTES)


def new_pairing_secret() -> bytes:
    """A fresh pairing secret (32 bytes from the OS CSPRNG) for one keygen run."""
    return os.urandom(PAIRING_SECRET_BYTES)


def check_party(party: Any) -> int:
    if not isinstance(party, (int, np.integer)) or isinstance(party, bool) or int(party) not in (0, 1):
        raise ParameterError(f"party must be 0 or 1, got {party!r}")
    return int(party)


def check_identity(key_set_id: Any, pairing_secret: Any) -> tuple[bytes, bytes]:
    """Both per-run random fields, with a hint when a caller passes something else."""
    if not isinstance(key_set_id, (bytes, bytearray)) or len(key_set_id) != KEY_SET_ID_BYTES:
        raise ParameterError(
            f"key-set id must be {KEY_SET_ID_BYTES} bytes, got {key_set_id!r}",
            "use fusec.runtime.keyfile.new_key_set_id() once per keygen run, for both parties",
        )
    if not isinstance(pairing_secret, (bytes, bytearray)) or len(pairing_secret) != PAIRING_SECRET_BYTES:
        raise ParameterError(
            f"pairing secret must be {PAIRING_SECRET_BYTES} bytes",
            "use fusec.runtime.keyfile.new_pairing_secret() once per keygen run, for both parties",
        )
    return bytes(key_set_id), bytes(pairing_secret)


# --------------------------------------------------------------------------- header
@dataclass(frozen=True)
class KeyFileHeader:
    """The parsed, checksum-verified header of a key file."""

    path: Path
    version: int
    party: int
    layout_digest: bytes
    key_set_id_bytes: bytes
    pairing_secret: bytes = field(repr=False)
    count: int = 0
    set_nbytes: int = 0
    set_checksums: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def key_set_id(self) -> str:
        return self.key_set_id_bytes.hex()

    @property
    def data_offset(self) -> int:
        return data_offset(self.count)

    @property
    def file_nbytes(self) -> int:
        """Size the file must have."""
        return self.data_offset + self.count * self.set_nbytes

    def set_offset(self, index: int) -> int:
        return self.data_offset + index * self.set_nbytes

    def pack(self) -> bytes:
        """Header bytes including checksum and padding (``data_offset`` bytes)."""
        fixed = _FIXED.pack(
            MAGIC, self.version, self.party, self.layout_digest, self.key_set_id_bytes,
            self.pairing_secret, self.count, self.set_nbytes,
        )
        body = fixed + b"".join(self.set_checksums)
        head = body + checksum(body)
        return head + bytes(self.data_offset - len(head))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    while n > 0:
        c = f.read(n)
        if not c:
            break
        chunks.append(c)
        n -= len(c)
    return b"".join(chunks)


def _truncated(path: Path, size: int) -> KeyFileError:
    return KeyFileError(
        f"key file {path} is truncated: {size} bytes, shorter than its header",
        "the copy or the keygen run was interrupted; copy it again or re-run fusec keygen",
    )


def parse_header(f: BinaryIO, path: Path) -> KeyFileHeader:
    """Read and verify the header from an open binary file positioned anywhere."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    prefix = _read_exact(f, _PREFIX.size)
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise KeyFileError(
            f"{path} is not a fusec key file (bad magic)",
            "pass the key file written by `fusec keygen` (keys/p0.key or keys/p1.key)",
        )
    if len(prefix) < _PREFIX.size:
        raise _truncated(path, size)
    _, version = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise KeyFileError(
            f"key file {path} has format version {version}; this fusec reads version {FORMAT_VERSION}",
            "re-run fusec keygen with this version of fusec",
        )
    f.seek(0)
    fixed = _read_exact(f, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise _truncated(path, size)
    _, version, party, digest, ksid, secret, count, set_nbytes = _FIXED.unpack(fixed)
    hlen = header_nbytes(count)
    if size < hlen:
        raise KeyFileError(
            f"key file {path} is truncated or its header is corrupted: {size} bytes, "
            f"but its header alone claims {hlen} bytes ({count} key sets)",
            "copy the key file again or re-run fusec keygen",
        )
    rest = _read_exact(f, hlen - _FIXED.size)
    sums = rest[: CHECKSUM_BYTES * count]
    stored = rest[CHECKSUM_BYTES * count :]
    if checksum(fixed + sums) != stored:
        raise KeyFileError(
            f"the header of key file {path} is corrupted (header checksum mismatch)",
            "copy the key file again or re-run fusec keygen",
        )
    pad_len = min(data_offset(count), size) - hlen
    if pad_len > 0 and any(_read_exact(f, pad_len)):
        raise KeyFileError(
            f"the header of key file {path} is corrupted (non-zero header padding)",
            "copy the key file again or re-run fusec keygen",
        )
    return KeyFileHeader(
        path=path,
        version=version,
        party=party,
        layout_digest=digest,
        key_set_id_bytes=ksid,
        pairing_secret=secret,
        count=count,
        set_nbytes=set_nbytes,
        set_checksums=tuple(sums[i * CHECKSUM_BYTES : (i + 1) * CHECKSUM_BYTES] for i in range(count)),
    )
