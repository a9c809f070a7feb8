"""Key files: the dealer's output, one file per server, K key sets each.

File format (version 2, all integers little-endian)
===================================================

::

    offset  size   field
    0       8      magic            b"FUSECKEY"
    8       2      version          u16 = 2
    10      1      party            u8, 0 or 1
    11      32     layout digest    raw sha256 of the canonical keys.layout.json (KeyLayout.digest)
    43      16     key-set id       random, chosen by the dealer once per keygen run; the SAME
                                    id is written into both parties' files
    59      4      K                u32, number of key sets (inferences) in the file
    63      8      set bytes        u64, bytes per key set (= layout.set_nbytes)
    71      32*K   set checksums    chunked blake2b-256 of each key set's bytes, in set order
    71+32K  32     header checksum  blake2b-256 of bytes [0, 71+32K)
    ...            zero padding up to ``data_offset = round_up(103 + 32K, 4096)``
    data_offset + i*set_bytes       key set i (i = 0..K-1), laid out by the KeyLayout

A set checksum is blake2b-256 over the concatenated blake2b-256 digests of the set's
consecutive 64 MiB chunks (the last one shorter). Chunks are hashed — and written or read
— in parallel threads: a BERT-base key set is tens of GB, and one blake2b stream (about
1 GB/s) would make hashing the slowest part of keygen and of loading a set.

A key set holds the keys of one inference: the gate slots of the layout back to back in
key-consumption order, each slot structure-of-arrays (see :mod:`fusec.runtime.layout`).
Key sets start page aligned (set bytes are a multiple of 8), so a set can be mapped or
staged to the device without realignment. A batch of B inferences uses B key sets.

Writing (:class:`KeyFileWriter`) goes to a temporary file in the same directory; the
header — with every checksum — is written last and the file is renamed into place by
``close()``, so an interrupted keygen never leaves a file that looks complete.

Reading (:class:`KeyFile`) validates, before anything else happens: the file exists, the
magic, the version, the header checksum, the party id, the layout digest and the file
size. The per-set checksum is checked when a set is claimed (or by ``verify_set``).

Reuse refusal
-------------
Evaluating the same key set on two inputs leaks their difference, so every key set is
used at most once. Consumed set indices are recorded in a sidecar ``<key file>.used``
(JSON: ``{"key_set_id": hex, "party": b, "count": K, "used": [indices]}``). ``claim(i)``
checks the sidecar, verifies set i's checksum, records i and fsyncs the sidecar (atomic
replace) *before* returning the set: mark-then-use, so a crash after a claim never lets
that set be evaluated again. A sidecar whose key-set id differs from the file's belongs
to an earlier keygen run at the same path and is ignored (the new keys are fresh); an
unreadable sidecar is an error (we cannot know which sets were used). Claims are
serialized between processes with ``flock`` on the key file where available.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fusec.errors import KeyFileError, KeyReuseError, ParameterError
from fusec.runtime.layout import GateSlot, KeyLayout, pack_gate_array, unpack_gate_key

try:  # POSIX only; on other platforms claims are not serialized between processes
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "KEY_SET_ID_BYTES",
    "KeyFileHeader",
    "KeyFileWriter",
    "KeyFile",
    "KeySetReader",
    "new_key_set_id",
    "read_header",
    "used_path",
]

MAGIC = b"FUSECKEY"
FORMAT_VERSION = 2
KEY_SET_ID_BYTES = 16
DATA_ALIGN = 4096
CHECKSUM_BYTES = 32
CHUNK_BYTES = 1 << 26  # unit of the set checksum, and of parallel hashing/writing/reading

# magic, version, party, layout digest, key-set id, K, bytes per set
_FIXED = struct.Struct("<8sHB32s16sIQ")
_PREFIX = struct.Struct("<8sH")  # enough to tell "not a key file" / "other version"
_MAX_COUNT = 2**32 - 1


def _checksum(data: Any) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_BYTES).digest()


_IO_THREADS = max(2, min(16, os.cpu_count() or 1))
_POOL: ThreadPoolExecutor | None = None


def _io_pool() -> ThreadPoolExecutor:
    """Threads for hashing and file I/O of chunks (both release the GIL on large buffers)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="fusec-keyio")
    return _POOL


def _combine(chunk_digests: list[bytes]) -> bytes:
    """A set checksum from its chunks' digests, in order."""
    return _checksum(b"".join(chunk_digests))


def _pwrite_all(fd: int, parts: list[memoryview], offset: int) -> bytes:
    """Write ``parts`` back to back at ``offset``; their blake2b digest (one chunk's)."""
    h = hashlib.blake2b(digest_size=CHECKSUM_BYTES)
    for part in parts:
        h.update(part)
        done = 0
        while done < len(part):
            done += os.pwrite(fd, part[done:], offset + done)
        offset += len(part)
    return h.digest()


def _pread_chunk(fd: int, out: memoryview, offset: int) -> tuple[int, bytes]:
    """Fill ``out`` from ``offset`` (stops early at end of file): bytes read and their digest."""
    got = 0
    while got < len(out):
        k = os.preadv(fd, [out[got:]], offset + got)
        if not k:
            break
        got += k
    return got, _checksum(out[:got])


class _ChunkedSetWriter:
    """Streams one key set into a file at ``offset``: gate buffers are cut into
    CHUNK_BYTES chunks, each written (pwrite) and hashed in a pool thread, with at most
    ``2 x threads`` chunks in flight so memory stays bounded. Buffers handed to
    :meth:`add` must not change afterwards (the dealer packs fresh arrays per gate)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset = fd, offset
        self.parts: list[memoryview] = []
        self.fill = 0
        self.futures: list[Future] = []
        self.inflight: deque[Future] = deque()
        self.limit = 2 * _IO_THREADS

    def add(self, buf: np.ndarray) -> None:
        mv = memoryview(np.ascontiguousarray(buf)).cast("B")
        pos = 0
        while pos < len(mv):
            take = min(CHUNK_BYTES - self.fill, len(mv) - pos)
            self.parts.append(mv[pos:pos + take])
            self.fill += take
            pos += take
            if self.fill == CHUNK_BYTES:
                self._submit()

    def _submit(self) -> None:
        fut = _io_pool().submit(_pwrite_all, self.fd, self.parts, self.offset)
        self.futures.append(fut)
        self.inflight.append(fut)
        self.offset += self.fill
        self.parts, self.fill = [], 0
        while len(self.inflight) > self.limit:
            self.inflight.popleft().result()

    def finish(self) -> bytes:
        """Wait for every chunk; the set checksum."""
        if self.fill:
            self._submit()
        return _combine([f.result() for f in self.futures])

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()
        for f in self.futures:
            if not f.cancelled():
                f.exception()  # wait; errors are moot once the file is discarded


def _header_nbytes(count: int) -> int:
    """Bytes of the header proper: fixed part, K set checksums, header checksum."""
    return _FIXED.size + CHECKSUM_BYTES * count + CHECKSUM_BYTES


def _data_offset(count: int) -> int:
    return (_header_nbytes(count) + DATA_ALIGN - 1) // DATA_ALIGN * DATA_ALIGN


def new_key_set_id() -> bytes:
    """A fresh random key-set id (16 bytes from the OS CSPRNG) for one keygen run."""
    return os.urandom(KEY_SET_ID_BYTES)


def used_path(path: str | os.PathLike) -> Path:
    """The sidecar that records consumed key sets of ``path``."""
    p = Path(path)
    return p.with_name(p.name + ".used")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _check_party(party: Any) -> int:
    if not isinstance(party, (int, np.integer)) or isinstance(party, bool) or int(party) not in (0, 1):
        raise ParameterError(f"party must be 0 or 1, got {party!r}")
    return int(party)


# --------------------------------------------------------------------------- header
@dataclass(frozen=True)
class KeyFileHeader:
    """The parsed, checksum-verified header of a key file."""

    path: Path
    version: int
    party: int
    layout_digest: bytes
    key_set_id_bytes: bytes
    count: int
    set_nbytes: int
    set_checksums: tuple[bytes, ...]

    @property
    def key_set_id(self) -> str:
        return self.key_set_id_bytes.hex()

    @property
    def data_offset(self) -> int:
        return _data_offset(self.count)

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
            self.count, self.set_nbytes,
        )
        body = fixed + b"".join(self.set_checksums)
        head = body + _checksum(body)
        return head + bytes(self.data_offset - len(head))


def _read_exact(f, n: int) -> bytes:
    chunks = []
    while n > 0:
        c = f.read(n)
        if not c:
            break
        chunks.append(c)
        n -= len(c)
    return b"".join(chunks)


def _parse_header(f, path: Path) -> KeyFileHeader:
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
        raise KeyFileError(
            f"key file {path} is truncated: {size} bytes, shorter than its header",
            "the copy or the keygen run was interrupted; copy it again or re-run fusec keygen",
        )
    _, version = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise KeyFileError(
            f"key file {path} has format version {version}; this fusec reads version {FORMAT_VERSION}",
            "re-run fusec keygen with this version of fusec",
        )
    f.seek(0)
    fixed = _read_exact(f, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise KeyFileError(
            f"key file {path} is truncated: {size} bytes, shorter than its header",
            "the copy or the keygen run was interrupted; copy it again or re-run fusec keygen",
        )
    _, version, party, digest, ksid, count, set_nbytes = _FIXED.unpack(fixed)
    hlen = _header_nbytes(count)
    if size < hlen:
        raise KeyFileError(
            f"key file {path} is truncated or its header is corrupted: {size} bytes, "
            f"but its header alone claims {hlen} bytes ({count} key sets)",
            "copy the key file again or re-run fusec keygen",
        )
    rest = _read_exact(f, hlen - _FIXED.size)
    sums = rest[: CHECKSUM_BYTES * count]
    stored = rest[CHECKSUM_BYTES * count :]
    if _checksum(fixed + sums) != stored:
        raise KeyFileError(
            f"the header of key file {path} is corrupted (header checksum mismatch)",
            "copy the key file again or re-run fusec keygen",
        )
    pad_len = min(_data_offset(count), size) - hlen
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
        count=count,
        set_nbytes=set_nbytes,
        set_checksums=tuple(sums[i * CHECKSUM_BYTES : (i + 1) * CHECKSUM_BYTES] for i in range(count)),
    )


def _missing(path: Path) -> KeyFileError:
    return KeyFileError(
        f"key file {path} does not exist",
        "run `fusec keygen` for this build to generate the key files (one per party)",
    )


def read_header(path: str | os.PathLike) -> KeyFileHeader:
    """Read and verify (magic, version, checksum) the header of a key file, no layout needed."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return _parse_header(f, p)
    except FileNotFoundError:
        raise _missing(p) from None
    except IsADirectoryError:
        raise KeyFileError(f"{p} is a directory, not a key file") from None


# --------------------------------------------------------------------------- writer
class KeyFileWriter:
    """Writes one party's key file: ``count`` key sets laid out by ``layout``.

    Either ``write_set(index, {gate_id: {field: array}})`` or, streaming,
    ``begin_set(index)``, ``write_gate(gate_id, arrays)`` for every slot in layout order,
    ``end_set()``. Sets may be written in any index order, each exactly once. ``close()``
    writes the header and renames the temporary file to ``path``; leaving the context
    manager with an exception (or calling ``abort()``) discards everything.
    """

    def __init__(self, path: str | os.PathLike, layout: KeyLayout, party: int, key_set_id: bytes, count: int,
                 durable: bool = True):
        if not isinstance(layout, KeyLayout):
            raise ParameterError(f"layout must be a KeyLayout, got {type(layout).__name__}")
        self.party = _check_party(party)
        if not isinstance(key_set_id, (bytes, bytearray)) or len(key_set_id) != KEY_SET_ID_BYTES:
            raise ParameterError(
                f"key-set id must be {KEY_SET_ID_BYTES} bytes, got {key_set_id!r}",
                "use fusec.runtime.keyfile.new_key_set_id() once per keygen run, for both parties",
            )
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 1 <= int(count) <= _MAX_COUNT:
            raise ParameterError(f"number of key sets must be between 1 and {_MAX_COUNT}, got {count!r}")
        self.path = Path(path)
        self.layout = layout
        self.key_set_id = bytes(key_set_id)
        self.count = int(count)
        self.durable = durable  # fsync before the rename; off only for throwaway keys (benchmarks)
        self._slots = layout.slots
        self._data_offset = _data_offset(self.count)
        self._checksums: list[bytes | None] = [None] * self.count
        self._cur: int | None = None  # index of the open set
        self._pos = 0  # next slot of the open set
        self._sink: _ChunkedSetWriter | None = None
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        self._tmp = Path(tmp)
        self._fd = fd
        os.pwrite(fd, bytes(self._data_offset), 0)  # header placeholder (zeros: no valid magic)

    # ------------------------------------------------------------------ streaming
    def _check_open(self) -> None:
        if self._closed:
            raise KeyFileError(f"key file writer for {self.path} is already closed")

    def begin_set(self, index: int) -> None:
        self._check_open()
        if self._cur is not None:
            raise KeyFileError(f"key set {self._cur} of {self.path} is still open; call end_set() first")
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < self.count:
            raise KeyFileError(f"key set index {index!r} out of range: the file holds {self.count} key sets")
        index = int(index)
        if self._checksums[index] is not None:
            raise KeyFileError(f"key set {index} of {self.path} was already written")
        self._cur = index
        self._pos = 0
        self._sink = _ChunkedSetWriter(self._fd, self._data_offset + index * self.layout.set_nbytes)

    def write_gate(self, gate_id: str, arrays: Mapping[str, Any]) -> None:
        """Write the next gate of the open set; it must be the next slot in layout order."""
        slot = self._expect(gate_id)
        self._write_slot(slot, pack_gate_array(slot, arrays))

    def write_gate_packed(self, gate_id: str, buf: np.ndarray) -> None:
        """Like :meth:`write_gate` for a slot the dealer already packed (e.g. on a GPU).

        The bytes are written and hashed in background threads: ``buf`` must not be
        modified after the call."""
        slot = self._expect(gate_id)
        if buf.dtype != np.uint8 or buf.size != slot.nbytes:
            raise KeyFileError(f"gate {gate_id!r}: packed key holds {buf.size} bytes, the layout says {slot.nbytes}",
                               "dealer bug: pack every field of the slot in layout order")
        self._write_slot(slot, buf)

    def _expect(self, gate_id: str) -> GateSlot:
        self._check_open()
        if self._cur is None:
            raise KeyFileError("write_gate() outside a key set; call begin_set(index) first")
        if self._pos >= len(self._slots):
            raise KeyFileError(
                f"key set {self._cur}: got gate {gate_id!r} but all {len(self._slots)} gates are written"
            )
        slot = self._slots[self._pos]
        if gate_id != slot.gate_id:
            raise KeyFileError(
                f"key set {self._cur}: gates written out of order: expected gate {slot.gate_id!r} "
                f"(slot {self._pos}), got {gate_id!r}",
                "the dealer must emit keys in the layout's key-consumption order",
            )
        return slot

    def _write_slot(self, slot: GateSlot, buf: np.ndarray) -> None:
        self._sink.add(buf)
        self._pos += 1

    def end_set(self) -> None:
        self._check_open()
        if self._cur is None:
            raise KeyFileError("end_set() without begin_set()")
        if self._pos != len(self._slots):
            missing = [s.gate_id for s in self._slots[self._pos : self._pos + 3]]
            raise KeyFileError(
                f"key set {self._cur} is incomplete: {len(self._slots) - self._pos} gate(s) not written, "
                f"next expected {missing[0]!r}"
            )
        try:
            self._checksums[self._cur] = self._sink.finish()
        except OSError as e:
            raise KeyFileError(f"writing key file {self.path} failed: {e}",
                               "check free space and permissions of the output directory") from None
        self._cur = None
        self._sink = None

    def write_set(self, index: int, keys: Mapping[str, Mapping[str, Any]]) -> None:
        """Write a whole key set: ``keys[gate_id][field] = array`` for every gate of the layout."""
        self._check_open()
        missing = [g for g in self.layout.gate_ids if g not in keys]
        extra = sorted(str(g) for g in keys if g not in self.layout)
        if missing or extra:
            raise KeyFileError(
                f"key set {index}: "
                + " and ".join(
                    p for p in (
                        f"missing keys for gate(s) {missing}" if missing else "",
                        f"keys for gate(s) {extra} that are not in the layout" if extra else "",
                    ) if p
                ),
                "the dealer and the compiled layout disagree; re-run fusec compile and keygen",
            )
        self.begin_set(index)
        try:
            for s in self._slots:
                self.write_gate(s.gate_id, keys[s.gate_id])
        except BaseException:
            self._cur = None  # the set stays unwritten; it may be written again
            if self._sink is not None:
                self._sink.cancel()
            self._sink = None
            raise
        self.end_set()

    # ------------------------------------------------------------------ finishing
    def close(self) -> Path:
        """Write the header and atomically move the file into place. Returns the path."""
        if self._closed:
            return self.path
        try:
            if self._cur is not None:
                raise KeyFileError(f"key set {self._cur} of {self.path} was begun but not ended")
            unwritten = [i for i, c in enumerate(self._checksums) if c is None]
            if unwritten:
                raise KeyFileError(
                    f"cannot finish {self.path}: {len(unwritten)} of {self.count} key sets not written "
                    f"(first: {unwritten[0]})"
                )
            header = KeyFileHeader(
                path=self.path,
                version=FORMAT_VERSION,
                party=self.party,
                layout_digest=self.layout.digest_bytes(),
                key_set_id_bytes=self.key_set_id,
                count=self.count,
                set_nbytes=self.layout.set_nbytes,
                set_checksums=tuple(self._checksums),
            )
            size = os.fstat(self._fd).st_size
            if size != header.file_nbytes:  # pragma: no cover - internal invariant
                raise KeyFileError(f"internal error: wrote {size} bytes, expected {header.file_nbytes}")
            os.pwrite(self._fd, header.pack(), 0)
            if self.durable:
                os.fsync(self._fd)
            fd, self._fd = self._fd, -1
            os.close(fd)
            os.replace(self._tmp, self.path)
            if self.durable:
                _fsync_dir(self.path.parent)
            self._closed = True
            return self.path
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the partial file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._sink is not None:
                self._sink.cancel()
                self._sink = None
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)
        finally:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "KeyFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- reader
class KeyFile:
    """An opened, validated key file of one party. Use :meth:`KeyFile.open`.

    Holds the file open, so a key file replaced on disk (e.g. by a new keygen run) does
    not change what this object reads.
    """

    def __init__(self, path: Path, layout: KeyLayout, header: KeyFileHeader, f):
        self.path = path
        self._layout = layout
        self.header = header
        self._f = f
        self._verified: tuple[int, np.ndarray] | None = None  # last set verify_set read, for claim

    @classmethod
    def open(cls, path: str | os.PathLike, layout: KeyLayout, party: int) -> "KeyFile":
        """Open and validate ``path`` as ``party``'s key file for ``layout``."""
        party = _check_party(party)
        if not isinstance(layout, KeyLayout):
            raise ParameterError(f"layout must be a KeyLayout, got {type(layout).__name__}")
        p = Path(path)
        try:
            f = open(p, "rb", buffering=0)
        except FileNotFoundError:
            raise _missing(p) from None
        except IsADirectoryError:
            raise KeyFileError(f"{p} is a directory, not a key file") from None
        try:
            h = _parse_header(f, p)
            if h.party != party:
                raise KeyFileError(
                    f"{p} is party {h.party}'s key file but you are running as party {party}",
                    f"use party {party}'s key file: {_suggest(p, h.party, party)}",
                )
            if h.layout_digest != layout.digest_bytes():
                raise KeyFileError(
                    f"key file {p} was generated for another build/layout "
                    f"(its layout hash {h.layout_digest.hex()[:16]}, this build's {layout.digest()[:16]})",
                    "re-run fusec keygen for this build",
                )
            if h.set_nbytes != layout.set_nbytes:  # implied by the digest; belt and braces
                raise KeyFileError(
                    f"key file {p} has {h.set_nbytes} bytes per key set, the layout {layout.set_nbytes}",
                    "re-run fusec keygen for this build",
                )
            size = os.fstat(f.fileno()).st_size
            if size < h.file_nbytes:
                raise KeyFileError(
                    f"key file {p} is truncated: {size} bytes, its header says {h.file_nbytes} "
                    f"({h.count} key sets of {h.set_nbytes} bytes)",
                    "the copy or the keygen run was interrupted; copy it again or re-run fusec keygen",
                )
            if size > h.file_nbytes:
                raise KeyFileError(
                    f"key file {p} has {size - h.file_nbytes} unexpected trailing bytes "
                    f"(header says {h.file_nbytes} bytes)",
                    "copy the key file again or re-run fusec keygen",
                )
        except BaseException:
            f.close()
            raise
        return cls(p, layout, h, f)

    # ------------------------------------------------------------------ properties
    @property
    def party(self) -> int:
        return self.header.party

    @property
    def key_set_id(self) -> str:
        """The dealer's key-set id (hex); equal in both parties' files of one keygen run."""
        return self.header.key_set_id

    @property
    def count(self) -> int:
        """Number of key sets K."""
        return self.header.count

    @property
    def layout(self) -> KeyLayout:
        return self._layout

    @property
    def set_nbytes(self) -> int:
        return self.header.set_nbytes

    @property
    def used_path(self) -> Path:
        return used_path(self.path)

    def close(self) -> None:
        self._verified = None
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "KeyFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyFile({str(self.path)!r}, party={self.party}, count={self.count}, key_set_id={self.key_set_id})"

    # ------------------------------------------------------------------ set access
    def _check_index(self, index: Any) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or int(index) < 0:
            raise KeyFileError(f"key set index must be a non-negative integer, got {index!r}")
        index = int(index)
        if index >= self.count:
            used = self._read_used()
            if len(used) >= self.count:
                msg = f"all {self.count} key sets of {self.path} used (asked for set {index})"
            else:
                msg = f"key set {index} does not exist: {self.path} holds {self.count} key sets (0..{self.count - 1})"
            raise KeyFileError(msg, "generate more with `fusec keygen --count N` (one key set per inference)")
        return index

    def _read_set(self, index: int) -> np.ndarray:
        """One read of set ``index`` into a fresh uint8 array, checksum-verified (chunks
        read and hashed in parallel threads)."""
        if self._f is None:
            raise KeyFileError(f"key file {self.path} is closed")
        n = self.set_nbytes
        buf = np.empty(n, dtype=np.uint8)
        mv = memoryview(buf)
        base, fd = self.header.set_offset(index), self._f.fileno()
        starts = range(0, n, CHUNK_BYTES)
        chunks = list(_io_pool().map(lambda s: _pread_chunk(fd, mv[s:s + CHUNK_BYTES], base + s), starts))
        for s, (got, _) in zip(starts, chunks):
            if got < min(CHUNK_BYTES, n - s):
                raise KeyFileError(
                    f"key file {self.path} is truncated: key set {index} ends after {s + got} of {n} bytes",
                    "copy the key file again or re-run fusec keygen",
                )
        if _combine([d for _, d in chunks]) != self.header.set_checksums[index]:
            raise KeyFileError(
                f"key set {index} of {self.path} is corrupted (checksum mismatch)",
                "copy the key file again or re-run fusec keygen; do not use this set",
            )
        return buf

    def verify_set(self, index: int) -> None:
        """Check set ``index`` against its checksum; raises KeyFileError if it is corrupted.

        The bytes are kept for a following :meth:`claim` of the same set (a server
        verifies before it connects, then claims: one read of a multi-GB set, not two)."""
        index = self._check_index(index)
        self._verified = None
        self._verified = (index, self._read_set(index))

    def verify_all(self) -> None:
        for i in range(self.count):
            self._read_set(i)

    # ------------------------------------------------------------------ reuse tracking
    def _read_used(self) -> set[int]:
        sp = self.used_path
        try:
            text = sp.read_text()
        except FileNotFoundError:
            return set()
        try:
            d = json.loads(text)
            ksid = d["key_set_id"]
            used = d["used"]
            if not isinstance(used, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in used):
                raise ValueError("'used' is not a list of integers")
        except (ValueError, KeyError, TypeError) as e:
            raise KeyFileError(
                f"the record of used key sets {sp} is unreadable ({e}); refusing to guess which sets were used",
                "generate fresh keys with fusec keygen (this also starts a new record)",
            ) from None
        if ksid != self.key_set_id:
            return set()  # a record of an earlier keygen run at this path: these keys are fresh
        if d.get("party", self.party) != self.party:
            raise KeyFileError(
                f"the record of used key sets {sp} belongs to party {d.get('party')}'s key file, not party {self.party}'s",
                "each party keeps its own key file and record; generate fresh keys with fusec keygen",
            )
        bad = [i for i in used if not 0 <= i < self.count]
        if bad:
            raise KeyFileError(
                f"the record of used key sets {sp} lists sets {bad[:5]} outside 0..{self.count - 1}",
                "generate fresh keys with fusec keygen",
            )
        return set(used)

    def _write_used(self, used: set[int]) -> None:
        sp = self.used_path
        data = json.dumps(
            {"key_set_id": self.key_set_id, "party": self.party, "count": self.count, "used": sorted(used)},
            sort_keys=True,
        )
        fd, tmp = tempfile.mkstemp(dir=sp.parent, prefix=f".{sp.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, sp)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(sp.parent)

    def used_sets(self) -> list[int]:
        """Indices of key sets recorded as consumed, sorted."""
        return sorted(self._read_used())

    def next_unused(self) -> int | None:
        """The smallest key-set index not yet consumed, or None when all are used."""
        used = self._read_used()
        for i in range(self.count):
            if i not in used:
                return i
        return None

    def claim(self, index: int) -> "KeySetReader":
        """Verify set ``index``, record it as consumed (fsynced), and return its reader.

        Raises KeyReuseError if the set was already consumed (by any process that used
        this path), KeyFileError if it is out of range or corrupted.
        """
        index = self._check_index(index)
        if self._f is None:
            raise KeyFileError(f"key file {self.path} is closed")
        locked = False
        if _fcntl is not None:
            _fcntl.flock(self._f.fileno(), _fcntl.LOCK_EX)
            locked = True
        try:
            used = self._read_used()
            if index in used:
                raise KeyReuseError(
                    f"key set {index} of {self.path} was already used; evaluating it again would leak "
                    f"the difference of two inputs",
                    "generate fresh keys with fusec keygen"
                    + (f" (next unused set: {min(set(range(self.count)) - used)})" if len(used) < self.count else ""),
                )
            kept, self._verified = self._verified, None
            buf = kept[1] if kept is not None and kept[0] == index else self._read_set(index)
            used.add(index)
            self._write_used(used)  # mark, then use
        finally:
            if locked:
                _fcntl.flock(self._f.fileno(), _fcntl.LOCK_UN)
        return KeySetReader(self._layout, buf, index=index, key_set_id=self.key_set_id, path=self.path)


class KeySetReader:
    """Sequential access to one claimed key set, in the layout's key-consumption order."""

    def __init__(self, layout: KeyLayout, buf: np.ndarray, *, index: int = 0, key_set_id: str = "", path: Path | None = None):
        if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size != layout.set_nbytes:
            raise KeyFileError(
                f"key set buffer holds {buf.size} bytes, the layout says {layout.set_nbytes}"
            )
        self.layout = layout
        self.index = index
        self.key_set_id = key_set_id
        self.path = path
        self._slots = layout.slots
        self._buf: np.ndarray | None = buf
        self._pos = 0  # next slot
        self._consumed = 0
        self._finished = False

    def _where(self) -> str:
        return f"key set {self.index}" + (f" of {self.path}" if self.path else "")

    def _next_slot(self, gate_id: str) -> GateSlot:
        if self._finished:
            raise KeyFileError(f"{self._where()} is finished; claim a new key set for the next inference")
        if self._pos >= len(self._slots):
            raise KeyFileError(
                f"{self._where()}: got gate {gate_id!r} but all {len(self._slots)} gates were already read: "
                f"program and layout disagree"
            )
        slot = self._slots[self._pos]
        if slot.gate_id != gate_id:
            raise KeyFileError(
                f"{self._where()}: keys read out of order: expected gate {slot.gate_id!r} (slot {self._pos}), "
                f"got {gate_id!r}",
                "the program must consume keys in the layout's order; recompile so program and layout match",
            )
        self._pos += 1
        self._consumed += slot.nbytes
        return slot

    def read_gate_raw(self, gate_id: str) -> np.ndarray:
        """The next gate's packed slot bytes (a read-only uint8 view, no copy), e.g. to stage to a GPU."""
        slot = self._next_slot(gate_id)
        v = self._buf[slot.offset : slot.end]
        v.flags.writeable = False
        return v

    def read_all_raw(self) -> np.ndarray:
        """Every remaining gate's slot, in the layout's order, as the set's packed bytes
        (read-only, no copy): what a GPU stages to device memory in one transfer."""
        while self._pos < len(self._slots):
            self._next_slot(self._slots[self._pos].gate_id)
        v = self._buf.view()
        v.flags.writeable = False
        return v

    def read_gate(self, gate_id: str) -> dict[str, np.ndarray]:
        """The next gate's keys, unpacked: ``{field: uint64 array of the field's shape}``."""
        slot = self._next_slot(gate_id)
        return unpack_gate_key(slot, self._buf[slot.offset : slot.end])

    @property
    def next_gate(self) -> str | None:
        return self._slots[self._pos].gate_id if self._pos < len(self._slots) else None

    @property
    def consumed_bytes(self) -> int:
        return self._consumed

    @property
    def remaining_bytes(self) -> int:
        return self.layout.set_nbytes - self._consumed

    def finish(self) -> None:
        """Check that exactly the layout's bytes were consumed, then release the set."""
        if self._finished:
            return
        if self._consumed != self.layout.set_nbytes:
            raise KeyFileError(
                f"{self._where()}: consumed {self._consumed} of {self.layout.set_nbytes} bytes: "
                f"program and layout disagree (next unread gate {self.next_gate!r})",
                "recompile so that program.json and keys.layout.json come from the same build",
            )
        self._finished = True
        self._buf = None

    def __enter__(self) -> "KeySetReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()


def _suggest(path: Path, have: int, want: int) -> str:
    name = path.name
    tag = f"p{have}"
    if tag in name:
        return str(path.with_name(name.replace(tag, f"p{want}")))
    return f"keys/p{want}.key"
