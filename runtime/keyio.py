"""Key files, the I/O: writing a dealer's file, opening and checking a server's, claiming sets.

The byte format is :mod:`fusec.runtime.keyfile`; the record of consumed sets is
:mod:`fusec.runtime.ledger`.

Writing (:class:`KeyFileWriter`) goes to a temporary file in the same directory; the
header — with every checksum — is written last and the file is renamed into place by
``close()``, so an interrupted keygen never leaves a file that looks complete. Chunks of
a set are written and hashed in parallel threads, with bounded memory in flight.

Reading (:class:`KeyFile`) validates, before anything else happens: the path is a
regular file (a FIFO, a device or a symlink loop is refused without blocking on it), the
magic, the version, the header checksum, the party id, the layout digest and the file
size. The per-set checksum is checked when a set is claimed (or by ``verify_set``).

Reuse refusal: ``claim(i)`` verifies set i's checksum, then records i in the server's
ledger (keyed by the key-set id, durable, atomic) *before* returning the set: mark, then
use. A set already in the ledger is refused with :class:`KeyReuseError`, whichever path
or copy of the file it is claimed through.
"""
from __future__ import annotations

import errno
import itertools
import os
import stat
import tempfile
from collections import deque
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Any, BinaryIO, Mapping

import numpy as np

from fusec.errors import KeyFileError, KeyReuseError, ParameterError
from fusec.runtime import keyfile as fmt
from fusec.runtime.keyfile import KeyFileHeader
from fusec.runtime.layout import GateSlot, KeyLayout, pack_gate_array, unpack_gate_key
from fusec.runtime.ledger import Ledger, default_state_dir, fsync_dir
from fusec.runtime.seeded_shares import InflateBehind, party_layout

__all__ = ["KeyFile", "KeyFileWriter", "KeySetReader", "open_regular", "read_header"]


# --------------------------------------------------------------------------- opening safely
def open_regular(path: str | os.PathLike, what: str = "key file") -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (after symlinks).

    Opened non-blocking first, so a FIFO cannot hang us waiting for a writer, then checked
    with fstat on the open descriptor (no window between check and use)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _missing(p) if what == "key file" else KeyFileError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{p} is a directory, not a {what}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KeyFileError(f"{what} {p} is a symbolic link loop", "point the path at the real file") from None
        raise KeyFileError(f"cannot open {what} {p}: {e.strerror or e}",
                           "check the path and its permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                    or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise KeyFileError(f"{what} {p} is {kind}, not a regular file",
                               f"pass the {what} itself (as written by fusec keygen)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _missing(path: Path) -> KeyFileError:
    return KeyFileError(
        f"key file {path} does not exist",
        "run `fusec keygen` for this build to generate the key files (one per party)",
    )


def read_header(path: str | os.PathLike) -> KeyFileHeader:
    """Read and verify (magic, version, checksum) the header of a key file, no layout needed."""
    p = Path(path)
    with open_regular(p) as f:
        return fmt.parse_header(f, p)


# --------------------------------------------------------------------------- chunked I/O
IO_THREADS_ENV = "FUSEC_IO_THREADS"
_IO_THREADS = max(2, min(16, os.cpu_count() or 1))
_POOL: ThreadPoolExecutor | None = None
_POOL_THREADS = 0


def _io_threads() -> int:
    """Threads for a process's chunk I/O and hashing: ``$FUSEC_IO_THREADS``, else the CPU
    count (2 to 16). Hashing bounds loading a set, so two servers sharing one host do best
    with half its CPUs each (16-CPU H100 host, two 4.29 GB sets at once: 8 threads each
    4.9 GB/s per party, 16 each 4.4)."""
    env = os.environ.get(IO_THREADS_ENV, "").strip()
    if not env:
        return _IO_THREADS
    if not env.isdigit() or not 1 <= int(env) <= 256:
        raise ParameterError(f"{IO_THREADS_ENV}={env!r} is not a thread count",
                             f"set {IO_THREADS_ENV} to a number from 1 to 256, or unset it")
    return int(env)


def _io_pool() -> ThreadPoolExecutor:
    """Threads for hashing and file I/O of chunks (both release the GIL on large buffers)."""
    global _POOL, _POOL_THREADS
    if _POOL is None:
        _POOL_THREADS = _io_threads()
        _POOL = ThreadPoolExecutor(max_workers=_POOL_THREADS, thread_name_prefix="fusec-keyio")
    return _POOL


def _pwrite_all(fd: int, parts: list[memoryview], offset: int) -> bytes:
    """Write ``parts`` back to back at ``offset``; their BLAKE3 digest (one chunk's)."""
    h = fmt.hasher()
    for part in parts:
        h.update(part)
        done = 0
        while done < len(part):
            done += os.pwrite(fd, part[done:], offset + done)
        offset += len(part)
    return h.digest()


_PIECE_BYTES = 1 << 20  # read, then hashed at once while still in the core's cache


def _pread_chunk(fd: int, out: memoryview, offset: int) -> tuple[int, bytes]:
    """Fill ``out`` from ``offset`` (stops early at end of file): bytes read and their digest.

    Read in pieces, each hashed right after it lands (the same digest as hashing the
    chunk at once) while it is still in cache: the hash does not read the chunk back from
    memory. (On the 16-core H100 host this measured no faster than one read per chunk:
    the hash's own speed bounds a claim, see keyfile.hasher.) Both calls release the GIL."""
    h = fmt.hasher()
    got, n = 0, len(out)
    while got < n:
        piece = out[got:min(n, got + _PIECE_BYTES)]
        k = os.preadv(fd, [piece], offset + got)
        if not k:
            break
        h.update(piece[:k])
        got += k
    return got, h.digest()


class _ChunkedSetWriter:
    """Streams one key set into a file at ``offset``: gate buffers are cut into
    ``CHUNK_BYTES`` chunks, each written (pwrite) and hashed in a pool thread, with at most
    ``2 x threads`` chunks in flight so memory stays bounded. Buffers handed to
    :meth:`add` must not change afterwards (the dealer packs fresh arrays per gate)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset = fd, offset
        self.parts: list[memoryview] = []
        self.fill = 0
        self.futures: list[Future] = []
        self.inflight: deque[Future] = deque()
        _io_pool()
        self.limit = 2 * _POOL_THREADS

    def add(self, buf: np.ndarray) -> None:
        mv = memoryview(np.ascontiguousarray(buf)).cast("B")
        pos = 0
        while pos < len(mv):
            take = min(fmt.CHUNK_BYTES - self.fill, len(mv) - pos)
            self.parts.append(mv[pos:pos + take])
            self.fill += take
            pos += take
            if self.fill == fmt.CHUNK_BYTES:
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
        return fmt.combine([f.result() for f in self.futures])

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()
        for f in self.futures:
            if not f.cancelled():
                f.exception()  # wait; errors are moot once the file is discarded


# --------------------------------------------------------------------------- writer
class KeyFileWriter:
    """Writes one party's key file: ``count`` key sets of ``layout``'s gates, each stored in
    the party's layout (``self.stored``: a seed in place of the shares of the gates seeded to
    this party, runtime/seeded_shares.py); the keys given are the party's in that layout.

    Either ``write_set(index, {gate_id: {field: array}})`` or, streaming,
    ``begin_set(index)``, ``write_gate(gate_id, arrays)`` for every slot in layout order,
    ``end_set()``. Sets may be written in any index order, each exactly once. ``close()``
    writes the header and renames the temporary file to ``path``; leaving the context
    manager with an exception (or calling ``abort()``) discards everything.

    ``key_set_id`` and ``pairing_secret`` are drawn once per keygen run
    (:func:`~fusec.runtime.keyfile.new_key_set_id`,
    :func:`~fusec.runtime.keyfile.new_pairing_secret`) and written into both parties' files.
    """

    def __init__(self, path: str | os.PathLike, layout: KeyLayout, party: int, key_set_id: bytes, count: int,
                 durable: bool = True, *, pairing_secret: bytes):
        if not isinstance(layout, KeyLayout):
            raise ParameterError(f"layout must be a KeyLayout, got {type(layout).__name__}")
        self.party = fmt.check_party(party)
        self.key_set_id, self.pairing_secret = fmt.check_identity(key_set_id, pairing_secret)
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 1 <= int(count) <= fmt.MAX_COUNT:
            raise ParameterError(f"number of key sets must be between 1 and {fmt.MAX_COUNT}, got {count!r}")
        self.path = Path(path)
        self.layout = layout
        self.stored = party_layout(layout, self.party)
        self.count = int(count)
        self.durable = durable  # fsync before the rename; off only for throwaway keys (benchmarks)
        self._slots = self.stored.slots
        self._data_offset = fmt.data_offset(self.count)
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
        self._sink = _ChunkedSetWriter(self._fd, self._data_offset + index * self.stored.set_nbytes)

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
                version=fmt.FORMAT_VERSION,
                party=self.party,
                layout_digest=self.stored.digest_bytes(),
                key_set_id_bytes=self.key_set_id,
                pairing_secret=self.pairing_secret,
                count=self.count,
                set_nbytes=self.stored.set_nbytes,
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
                fsync_dir(self.path.parent)
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
_FILLS: dict[int, int] = {}     # address of a caller's buffer -> token of the verified set read there
_TOKENS = itertools.count(1)


def _fill(buf: np.ndarray) -> int:
    """Record that a verified set now lies at ``buf`` (a caller's reused buffer); its token."""
    token = _FILLS[buf.ctypes.data] = next(_TOKENS)
    return token


class KeyFile:
    """An opened, validated key file of one party. Use :meth:`KeyFile.open`.

    Holds the file open, so a key file replaced on disk (e.g. by a new keygen run) does
    not change what this object reads. Consumed sets are recorded in ``ledger`` (the
    server's state directory, keyed by the key-set id and the party).
    """

    def __init__(self, path: Path, layout: KeyLayout, header: KeyFileHeader, f, ledger: Ledger):
        self.path = path
        self._layout = layout
        self.header = header
        self._f = f
        self.ledger = ledger
        self._verified: tuple[int, np.ndarray, int | None] | None = None  # last set verify_set read, for claim
        #: Inflate each set read into the full layout on the host (runtime/seeded_shares.py); False:
        #: sets stay in this party's stored layout (a GPU server inflates them on the card,
        #: runtime/device_inflate.py; its readers say so with ``seeded_party``).
        self.inflate = True

    @classmethod
    def open(cls, path: str | os.PathLike, layout: KeyLayout, party: int,
             state_dir: str | os.PathLike | None = None) -> "KeyFile":
        """Open and validate ``path`` as ``party``'s key file for ``layout``; consumed
        sets are recorded under ``state_dir`` (default: :func:`default_state_dir`)."""
        party = fmt.check_party(party)
        if not isinstance(layout, KeyLayout):
            raise ParameterError(f"layout must be a KeyLayout, got {type(layout).__name__}")
        p = Path(path)
        stored = party_layout(layout, party)     # how this party's sets lie in the file
        f = open_regular(p)
        try:
            h = fmt.parse_header(f, p)
            if h.party != party:
                raise KeyFileError(
                    f"{p} is party {h.party}'s key file but you are running as party {party}",
                    f"use party {party}'s key file: {_suggest(p, h.party, party)}",
                )
            if h.layout_digest != stored.digest_bytes():
                raise KeyFileError(
                    f"key file {p} was generated for another build/layout "
                    f"(its layout hash {h.layout_digest.hex()[:16]}, this build's {stored.digest()[:16]})",
                    "re-run fusec keygen for this build",
                )
            if h.set_nbytes != stored.set_nbytes:  # implied by the digest; belt and braces
                raise KeyFileError(
                    f"key file {p} has {h.set_nbytes} bytes per key set, the layout {stored.set_nbytes}",
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
        ledger = Ledger(default_state_dir() if state_dir is None else state_dir, h.key_set_id, party, h.count)
        return cls(p, layout, h, f, ledger)

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
    def pairing_secret(self) -> bytes:
        """The dealer's per-run secret shared with the peer's file (proves the pairing)."""
        return self.header.pairing_secret

    @property
    def layout(self) -> KeyLayout:
        return self._layout

    @property
    def stored_layout(self) -> KeyLayout:
        """How this party's sets lie in the file (``party_layout``)."""
        return party_layout(self._layout, self.party)

    @property
    def set_nbytes(self) -> int:
        """Bytes of a claimed set in memory: the full layout's (the file stores fewer where
        this party's shares of some gates are seeds: ``header.set_nbytes``), or the stored
        ones where sets are not inflated on the host (:attr:`inflate`)."""
        return self._layout.set_nbytes if self.inflate else self.header.set_nbytes

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
            used = self.ledger.used()
            if len(used) >= self.count:
                msg = f"all {self.count} key sets of {self.path} used (asked for set {index})"
            else:
                msg = f"key set {index} does not exist: {self.path} holds {self.count} key sets (0..{self.count - 1})"
            raise KeyFileError(msg, "generate more with `fusec keygen --count N` (one key set per inference)")
        return index

    def _read_set(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """One read of set ``index`` into ``out`` (a uint8 array of at least a set's bytes,
        e.g. the GPU's reused page-locked buffer) or a fresh array, checksum-verified
        (chunks read and hashed in parallel threads) and inflated in place from this party's
        stored layout into the full one (runtime/seeded_shares.py: the stored bytes are read
        into the buffer's tail) behind the chunks as they complete in order; not inflated
        when :attr:`inflate` is off."""
        if self._f is None:
            raise KeyFileError(f"key file {self.path} is closed")
        full, n = self.set_nbytes, self.header.set_nbytes
        whole = np.empty(full, dtype=np.uint8) if out is None else out.reshape(-1).view(np.uint8)[:full]
        if out is not None:
            _FILLS.pop(whole.ctypes.data, None)   # whatever a key file verified there is gone
        buf = whole[full - n:]
        mv = memoryview(buf)
        base, fd = self.header.set_offset(index), self._f.fileno()
        starts = range(0, n, fmt.CHUNK_BYTES)
        # each chunk is hashed as it lands, before the inflation behind the read prefix may
        # overwrite it; a set that fails its checksum is refused, inflated or not
        # (not inflated: the buffer holds just the stored bytes, and InflateBehind does nothing)
        with InflateBehind(self._layout, self.party, whole, n) as arrival:
            reads = [_io_pool().submit(_pread_chunk, fd, mv[s:s + fmt.CHUNK_BYTES], base + s) for s in starts]
            digests = []
            try:
                for s, read in zip(starts, reads):
                    got, digest = read.result()
                    if got < min(fmt.CHUNK_BYTES, n - s):
                        raise KeyFileError(
                            f"key file {self.path} is truncated: key set {index} ends after {s + got} of {n} bytes",
                            "copy the key file again or re-run fusec keygen",
                        )
                    digests.append(digest)
                    arrival.advance(s + got)
            finally:
                futures.wait(reads)     # no read still writes into the buffer once we leave
        if fmt.combine(digests) != self.header.set_checksums[index]:
            raise KeyFileError(
                f"key set {index} of {self.path} is corrupted (checksum mismatch)",
                "copy the key file again or re-run fusec keygen; do not use this set",
            )
        return whole

    def verify_set(self, index: int, out: Callable[[int], np.ndarray | None] | None = None) -> None:
        """Check set ``index`` against its checksum; raises KeyFileError if it is corrupted.

        The bytes are kept for a following :meth:`claim` of the same set (a server
        verifies before it connects, then claims: one read of a multi-GB set, not two).
        ``out`` as for :meth:`claim`: e.g. the GPU's page-locked buffer, so the set is
        staged from there. Nothing else may write that buffer before the claim; a read of
        another set into it by any key file is noticed, and the claim reads again."""
        index = self._check_index(index)
        self._verified = None
        dest = out(self.set_nbytes) if out is not None else None
        buf = self._read_set(index, dest)
        self._verified = (index, buf, _fill(buf) if dest is not None else None)

    def verify_all(self) -> None:
        for i in range(self.count):
            self._read_set(i)

    # ------------------------------------------------------------------ reuse tracking
    def used_sets(self) -> list[int]:
        """Indices of key sets recorded as consumed (by any copy of this file), sorted."""
        return sorted(self.ledger.used())

    def unused_count(self) -> int:
        """Key sets not yet consumed (through any copy of this file)."""
        return self.count - len(self.ledger.used())

    def next_unused(self) -> int | None:
        """The smallest key-set index not yet consumed, or None when all are used."""
        used = self.ledger.used()
        return next((i for i in range(self.count) if i not in used), None)

    def claim(self, index: int, out: Callable[[int], np.ndarray | None] | None = None) -> "KeySetReader":
        """Verify set ``index``, record it as consumed (durably), and return its reader.
        When the set must be read (it was not verified just before), ``out(nbytes)`` may
        give the buffer to read it into (asked only then: a reused multi-GB buffer is not
        allocated next to the verified copy; None: a fresh array).

        Raises KeyReuseError if the set was already consumed (through this file, a copy or
        another path of it), KeyFileError if it is out of range or corrupted. A corrupted
        set is not recorded: the check runs before the mark.
        """
        index = self._check_index(index)
        if self._f is None:
            raise KeyFileError(f"key file {self.path} is closed")
        used = self.ledger.used()
        if index in used:
            raise self._reused(index, used)
        kept, self._verified = self._verified, None
        if (kept is not None and kept[0] == index and kept[1].size == self.set_nbytes   # (read as inflate says now)
                and (kept[2] is None or _FILLS.get(kept[1].ctypes.data) == kept[2])):
            buf = kept[1]
        else:
            kept = None     # the verified copy of another set goes before a new buffer is asked for
            buf = self._read_set(index, out(self.set_nbytes) if out is not None else None)
        if not self.ledger.mark(index, {"key_file": str(self.path)}):  # mark, then use
            raise self._reused(index, self.ledger.used())
        return KeySetReader(self._layout if self.inflate else self.stored_layout, buf, index=index,
                            key_set_id=self.key_set_id, path=self.path,
                            seeded_party=None if self.inflate else self.party)

    def _reused(self, index: int, used: set[int]) -> KeyReuseError:
        free = next((i for i in range(self.count) if i not in used), None)
        return KeyReuseError(
            f"key set {index} of {self.path} (key-set id {self.key_set_id[:12]}..) was already used; "
            f"evaluating it again would leak the difference of two inputs",
            "generate fresh keys with fusec keygen" + (f" (next unused set: {free})" if free is not None else ""),
        )


class KeySetReader:
    """Sequential access to one claimed key set, in the layout's key-consumption order."""

    def __init__(self, layout: KeyLayout, buf: np.ndarray, *, index: int = 0, key_set_id: str = "", path: Path | None = None,
                 seeded_party: int | None = None):
        if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size != layout.set_nbytes:
            raise KeyFileError(
                f"key set buffer holds {buf.size} bytes, the layout says {layout.set_nbytes}"
            )
        self.layout = layout
        #: Not None: ``layout`` is that party's stored layout, its seeded slots not yet inflated
        #: (``Backend.stage_set`` inflates them where it unpacks them).
        self.seeded_party = seeded_party
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
