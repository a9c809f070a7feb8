"""Seed-compressed key shares: one party's additive shares of a gate come from a 16-byte seed.

About half of a key set's bytes are additive shares of the dealer's correlations (the
lookups' ``rho_a``, the masks' shares, ``r_out``...): the gate reads only the sum of the
two parties' values. For such a gate the dealer draws a fresh 128-bit seed from its CSPRNG
and gives it to one party, the *seeded* party, in place of that party's share fields. That
party's shares are the PRG's stream from the seed; the other party's are the value less
that stream. The seeded party's shares are pseudorandom and the other's are the value less a
pseudorandom string it never sees: the distribution of two uniform shares, up to the PRG (the
fixed-key AES assumption every DPF and DCF value expansion here already rests on). The seeds
come from a CSPRNG stream of their own (runtime/dealer.py ``share_seed_rng``).
Correction words (the same in both keys) and DPF roots (each party's own) are not shares
(:data:`fusec.runtime.gates.base.UNSHARED_FIELDS`) and stay as they are.

The stream of a share field ``j`` of a slot is ``H_V(seed ^ (i, TWEAK_SEEDED_SHARE | j))``
for block i, the PRG's value stream (runtime/prg.py), read as the field's dense little-endian
bit-packing: the field's packed bytes *are* the stream's first bytes (the last byte's unused
bits cleared), so a server regenerates them without unpacking anything.

Which party is seeded is decided slot by slot from the layout alone (:func:`seeded_parties`):
the largest saving first, each to the party that has saved less so far, so the two files
stay within one gate's saving of each other. A party's key file holds its sets in its
own layout (:func:`party_layout`: a seeded slot is its seed then its other fields); the
servers read a set into the tail of the full layout's buffer and :func:`inflate` it forward,
in place, into the full layout every gate reads. Nothing after the read changes.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from types import MappingProxyType

import numpy as np

from fusec.errors import KeyFileError
from fusec.runtime import ring
from fusec.runtime.layout import GateSlot, KeyField, KeyLayout
from fusec.runtime.prg import CpuPrg, blocks_needed, default_prg
from fusec.runtime.xp import np as xnp

__all__ = ["SEED_FIELD", "SEED_NBYTES", "TWEAK_SEEDED_SHARE", "seeded_parties", "party_layout", "split_key",
           "inflate", "inflated", "InflateBehind"]

#: The field that holds a seeded slot's seed (two uint64 words), first in the slot.
SEED_FIELD = "share_seed"
SEED_NBYTES = 16
#: Domain of the seeded shares' value stream (DPF levels use 0, leaves 1 << 62); the field's
#: index in its slot goes in the low bits.
TWEAK_SEEDED_SHARE = np.uint64(1 << 61)


def _share_fields(slot: GateSlot) -> list[KeyField]:
    return [f for f in slot.fields if f.share]


def _saved(slot: GateSlot) -> int:
    return sum(f.nbytes for f in _share_fields(slot)) - SEED_NBYTES


@lru_cache(maxsize=16)
def seeded_parties(layout: KeyLayout) -> Mapping[str, int]:
    """``{gate id: the party whose shares come from a seed}`` for every slot a seed makes smaller.

    Largest saving first, each to the party that has saved less so far (party 0 on a tie,
    then layout order): the two files end within one slot's saving of each other, most often
    within a few bytes."""
    savings = [(s.gate_id, _saved(s)) for s in layout.slots]
    saved, out = [0, 0], {}
    for gate_id, v in sorted((x for x in savings if x[1] > 0), key=lambda x: -x[1]):
        p = 0 if saved[0] <= saved[1] else 1
        out[gate_id] = p
        saved[p] += v
    return MappingProxyType(out)      # cached: read-only


@lru_cache(maxsize=16)
def party_layout(layout: KeyLayout, party: int) -> KeyLayout:
    """The layout of ``party``'s key file: each slot seeded to ``party`` holds its seed and then
    its fields that are not shares; every other slot is the full layout's. Equal to ``layout``
    when no slot is seeded to ``party`` (the object of the first equal layout asked for: cached)."""
    seeded = seeded_parties(layout)
    if party not in seeded.values():
        return layout
    seed = KeyField(SEED_FIELD, (2,), 64)
    return KeyLayout([(s.gate_id, s.kind, s.elements,
                       (seed,) + tuple(f for f in s.fields if not f.share) if seeded.get(s.gate_id) == party
                       else s.fields)
                      for s in layout.slots], insecure=layout.insecure)


def _stream(index: int, f: KeyField) -> tuple[int, np.uint64]:
    """(blocks, tweak) of the value stream of share field ``index`` of a slot: blocks whose
    bytes are the field's packing (the dealer's ``value_blocks`` and a server's
    ``value_stream`` draw the same ones)."""
    return blocks_needed(f.count, f.bits), TWEAK_SEEDED_SHARE | np.uint64(index)


#: Elements of a share field the dealer splits at a time (a multiple of 128, so every chunk's
#: bits begin on a stream block): its temporaries stay tens of MB where a batch-8 BERT-base
#: GELU's ``rho_rpow`` is 0.55 GB as uint64 (on a card the parties share, the dealer ran out of
#: memory allocating exactly that while it made four such copies).
SPLIT_CHUNK_ELEMENTS = 1 << 22


def split_key(slot: GateSlot, party: int | None, k0: dict, k1: dict, rng, be,
              chunk: int = SPLIT_CHUNK_ELEMENTS) -> tuple[dict, dict]:
    """The dealer's side: both parties' keys of ``slot`` with ``party``'s shares replaced by a
    fresh seed (from ``rng``, the dealer's CSPRNG) and the other party's by the values less the
    seed's stream. Runs where the dealer computes (``be``: numpy or CuPy; the stream's bytes
    are unpacked by the backend's own unpacking, the inverse of what a server writes).
    ``party`` None: unchanged. Each share field is split ``chunk`` elements at a time into one
    new array of the narrowest unsigned type of its width: the peak is that array and a
    chunk's temporaries, not the field several times over as uint64."""
    if party is None:
        return k0, k1
    return split_part(slot, party, k0, k1, draw_seed(rng), be, 0, chunk)


def draw_seed(rng):
    """A seeded slot's fresh seed (two words) from the dealer's CSPRNG ``rng``."""
    return rng.blocks((1,)).reshape(2)


def split_part(slot: GateSlot, party: int, k0: dict, k1: dict, seed, be, first: int = 0,
               chunk: int = SPLIT_CHUNK_ELEMENTS) -> tuple[dict, dict]:
    """:func:`split_key` with ``seed`` drawn, of the keys of the slot's elements from ``first``
    on (a gate keyed in element chunks, runtime/keygen_chunks.py): every share field then has
    its elements first, and the part's values take the seed's stream from the field's value
    ``first * (values per element)`` on, where the whole field's split takes them."""
    if chunk % 128:
        raise ValueError(f"split chunk {chunk} is not a multiple of 128 elements")
    keys = (k0, k1)
    mine = {SEED_FIELD: seed}
    theirs = dict(keys[1 - party])
    for j, f in enumerate(_share_fields(slot)):
        offset = first * int(np.prod(f.shape[1:], dtype=np.int64))     # values before the part
        theirs[f.name] = _other_share(f, j, seed, k0[f.name], k1[f.name], be, chunk, offset)
    mine.update({f.name: keys[party][f.name] for f in slot.fields if not f.share})
    return (mine, theirs) if party == 0 else (theirs, mine)


def _other_share(f: KeyField, index: int, seed, a, b, be, chunk: int, offset: int = 0):
    """(a + b - stream) mod 2^bits for share field ``index`` of a slot, ``chunk`` elements at a
    time: a chunk starting at element e starts at stream block e * bits / 128 (e is a multiple
    of 128), the piece the PRG's ``value_stream(start=)`` gives. ``a`` and ``b`` may be the
    field's values from ``offset`` on (a part of a gate keyed in chunks; ``offset * bits`` a
    multiple of 128)."""
    prg, bits = default_prg(), f.bits
    if (offset * bits) % 128:
        raise ValueError(f"a part of field {f.name!r} starting at value {offset} does not start on a stream block")
    shape = tuple(np.shape(a))
    a, b = xnp.asarray(a).reshape(-1), xnp.asarray(b).reshape(-1)
    count = int(a.size)
    out = xnp.empty(count, _narrowest_uint(bits))
    tweak = TWEAK_SEEDED_SHARE | np.uint64(index)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        raw = prg.value_stream(seed, blocks_needed(n, bits), tweak, start=(offset + start) * bits // 128)
        raw = raw.reshape(-1).view(np.uint8)[:(n * bits + 7) // 8]
        stream = be.unpack_open(raw, bits, n)                # a fresh array: worked on in place
        xnp.subtract(a[start:start + n].astype(np.uint64, copy=False), stream, out=stream)
        stream += b[start:start + n].astype(np.uint64, copy=False)
        stream &= np.uint64(ring.mask(bits))
        out[start:start + n] = stream
    return out.reshape(shape)


def _narrowest_uint(bits: int) -> np.dtype:
    return np.dtype(next(f"uint{w}" for w in (8, 16, 32, 64) if bits <= w))


#: Blocks of a seeded field's stream one job writes (16 MiB): a batch-8 GELU's 0.38 GB packed
#: ``rho_rpow`` spreads over every worker.
STREAM_JOB_BLOCKS = 1 << 20

_local = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _cpu_prg() -> CpuPrg:
    """This thread's CPU PRG: an AES encryptor must not be shared between threads (both
    parties in one process, a serving loop reading the next set in the background, the
    stream writers)."""
    prg = getattr(_local, "prg", None)
    if prg is None:
        prg = _local.prg = CpuPrg()
    return prg


def _stream_pool() -> ThreadPoolExecutor:
    """The threads that write seeded fields' streams (AES and numpy's passes release the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1)),
                                       thread_name_prefix="fusec-inflate")
        return _pool


def inflate(layout: KeyLayout, party: int, buf: np.ndarray,
            received: Callable[[int], None] | None = None) -> np.ndarray:
    """A set read in ``party``'s layout into the last bytes of ``buf`` (``layout.set_nbytes``,
    uint8), rewritten in place, forward, into the full layout; returns ``buf``.

    One pass in layout order moves what is kept (whole unseeded slots; a seeded slot's seed,
    then its other fields) and hands each seeded field's stream to worker threads in pieces
    (``STREAM_JOB_BLOCKS``). ``received(n)``, if given, returns once the first ``n`` stored
    bytes are in ``buf``: a set still arriving (runtime/keystream.py) is inflated behind the
    bytes as they come.

    Why this is safe in place and concurrently: a slot's full region ends at or before where
    its stored bytes end, and its stored bytes begin at or after where it begins (every
    seeded slot only shrinks, by more than its seed), so a slot reads only its own stored
    bytes and writes only below the next slot's; within a seeded slot, each kept field lands
    at or before its stored bytes and past every share field before it, and the streams are
    written only after the seed and the kept fields are out of their way."""
    seeded = seeded_parties(layout)
    if party not in seeded.values():    # (party_layout may be an equal layout's object: the cache's)
        return buf
    if buf.size != layout.set_nbytes:
        raise KeyFileError(f"key set buffer holds {buf.size} bytes, the layout says {layout.set_nbytes}")
    stored = party_layout(layout, party)
    base = layout.set_nbytes - stored.set_nbytes
    jobs: list[Future] = []
    try:
        for full, st in zip(layout.slots, stored.slots):
            src = base + st.offset
            if received is not None:
                received(st.end)
            if seeded.get(full.gate_id) != party:
                buf[full.offset:full.end] = buf[src:src + st.nbytes]
                continue
            seed = buf[src:src + SEED_NBYTES].view(np.uint64).copy()
            kept = st.field_offsets()
            pos, j, streams = full.offset, 0, []
            for f in full.fields:
                if f.share:
                    streams.append((buf[pos:pos + f.nbytes], j, f))
                    j += 1
                else:
                    off, nb = kept[f.name]
                    buf[pos:pos + nb] = buf[src + off:src + off + nb]
                pos += f.nbytes
            for dst, j, f in streams:
                jobs += _write_stream_jobs(dst, seed, j, f)
    finally:
        for job in jobs:
            job.result()        # every writer done (and its error raised) before the buffer is used or freed
    return buf


def inflated(layout: KeyLayout, party: int, stored: np.ndarray) -> np.ndarray:
    """A new buffer holding the full layout of a set given in ``party``'s stored layout."""
    buf = np.empty(layout.set_nbytes, np.uint8)
    buf[layout.set_nbytes - stored.size:] = np.ascontiguousarray(stored).view(np.uint8).reshape(-1)
    return inflate(layout, party, buf)


def _write_stream_jobs(dst: np.ndarray, seed: np.ndarray, index: int, f: KeyField) -> list[Future]:
    """Share field ``index``'s bytes (``dst``: the field's room) from its stream, in pieces."""
    nblocks, tweak = _stream(index, f)
    pool = _stream_pool()
    return [pool.submit(_write_stream_piece, dst, seed, tweak, first, min(STREAM_JOB_BLOCKS, nblocks - first), f)
            for first in range(0, nblocks, STREAM_JOB_BLOCKS)]


def _write_stream_piece(dst: np.ndarray, seed: np.ndarray, tweak: np.uint64, first: int, nblocks: int,
                        f: KeyField) -> None:
    """Blocks ``first`` to ``first + nblocks`` of a share field's stream into their bytes of
    ``dst``; the piece holding the field's last byte clears its bits past the values and the
    alignment padding after it."""
    n = f.packed_nbytes
    lo, hi = 16 * first, min(n, 16 * (first + nblocks))
    if lo < hi:
        dst[lo:hi] = _cpu_prg().value_stream(seed, nblocks, tweak, start=first).reshape(-1).view(np.uint8)[:hi - lo]
    if hi == n:
        tail = f.count * f.bits % 8
        if n and tail:
            dst[n - 1] &= np.uint8((1 << tail) - 1)
        dst[n:] = 0


class _SetAbandoned(Exception):
    """The receive stopped before the bytes an inflation waits for arrived."""


class InflateBehind:
    """A set's :func:`inflate` in a thread of its own, slot by slot behind the stored bytes as
    they arrive (from the dealer, runtime/keystream.py; from a key file's parallel reads,
    runtime/keyio.py): a large set's regeneration of its seeded shares (seconds at seq 512)
    overlaps the dealer's keygen, the wire or the disk instead of following them. ``advance(n)``: the first ``n`` stored bytes are in; leaving the ``with`` block waits
    for the inflation (and raises its error); a receive that fails abandons it."""

    def __init__(self, layout: KeyLayout, party: int, whole: np.ndarray, stored_nbytes: int) -> None:
        self._args = (layout, party, whole)
        self._got, self._abandoned, self._error = 0, False, None
        self._cv = threading.Condition()
        self._thread = None if stored_nbytes == whole.size else threading.Thread(
            target=self._run, name="fusec-inflate-behind", daemon=True)

    def __enter__(self) -> "InflateBehind":
        if self._thread is not None:
            self._thread.start()
        return self

    def advance(self, got: int) -> None:
        if self._thread is not None:
            with self._cv:
                self._got = got
                self._cv.notify_all()

    def _wait(self, n: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._got >= n or self._abandoned)
            if self._got < n:
                raise _SetAbandoned

    def _run(self) -> None:
        try:
            inflate(*self._args, received=self._wait)
        except _SetAbandoned:
            pass
        except BaseException as e:      # raised in the receiving thread, on leaving the block
            self._error = e

    def __exit__(self, kind, exc, tb) -> None:
        if self._thread is None:
            return
        if kind is not None:
            with self._cv:
                self._abandoned = True
                self._cv.notify_all()
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error
