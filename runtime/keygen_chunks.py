"""A large elementwise gate's keys made in element chunks, so the dealer's device memory is a chunk's.

Why: the dealer makes a set gate by gate, and a gate's keygen holds every field of both
parties' keys as uint64 at once, with its temporaries. On a card the parties share, that was
the one allocation too many: GPT-2's GELU at batch 8 (3.1 M elements) had the dealer at
5.29 GB when it asked for 0.55 GB more (H100, 2026-12-07). A gate whose keys are elementwise
(:attr:`~fusec.runtime.gates.base.Gate.elementwise_keys`) is keyed instead ``chunk`` elements at
a time by the gate :meth:`~fusec.runtime.gates.base.Gate.with_elements` gives. Each chunk's keys go
to a :class:`KeySink` at once: the dealer's (runtime/dealer.py) splits the chunk's seeded shares
and packs every field of it where it was keyed, into each party's slot bytes on the host at the
chunk's bits (:class:`PackedParts`; only packed bytes leave the card), or, where a field's runs
would not start on a byte, joins the chunks as host arrays to be packed whole
(:class:`HostArrays`, also what a caller without a sink gets). The masks stay where the dealer
computes (the next gates read them).

Whether and how a gate is chunked depends on its key layout alone, the same on every backend,
so a test seed still gives the same files from the CPU and the GPU dealer; the keys of a chunked gate are other draws than one keygen of the
whole gate would take, from the same CSPRNG, as every set's are.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy

from fusec.errors import FusecError
from fusec.runtime import xp
from fusec.runtime.gates.base import Gate, Key, is_share_field
from fusec.runtime.layout import GateSlot, KeyField
from fusec.runtime.rng import DealerRng
from fusec.runtime.xp import np

#: A gate whose keys, both parties' as uint64, take at most this is keyed whole: on a card its
#: chunks' keys would leave the device unpacked and be packed on the host, which made the GPU
#: dealer 2.25x slower per BERT-base set when every gate past 2^18 elements was chunked (H100,
#: 3.27 -> 7.36 s; the whole gate is packed on the card and only its packed bytes copied).
#: BERT-base's GELU at batch 1 (393,216 elements, 0.4 GB) stays whole; GPT-2's at batch 8
#: (3.1 M elements, 6.6 GB, the dealer's out-of-memory) is chunked.
KEYGEN_WHOLE_BYTES = 1 << 30
#: What a chunk's keys take (both parties, uint64): the device's share of a chunked gate.
KEYGEN_CHUNK_BYTES = 1 << 28
#: Elements a chunk takes whatever its keys' size (tests: small gates chunked); None: by bytes.
KEYGEN_CHUNK_ELEMENTS: int | None = None


def element_axes(gate: Gate) -> dict[str, int] | None:
    """``{field: its element axis}`` of an elementwise gate, found by comparing the field shapes
    of its one- and two-element gates (the one axis where 1 becomes 2); None where a field has
    no such axis (e.g. a count shared by all elements), or where an additive share's is not
    the first (the dealer splits a chunk's seeded shares by its first element: split_part in
    runtime/seeded_shares.py): the gate is then keyed in one piece."""
    if not gate.elementwise_keys:
        return None
    one, two = gate.with_elements(1).fields(), gate.with_elements(2).fields()
    axes: dict[str, int] = {}
    for (name, s1, _), (name2, s2, _) in zip(one, two, strict=True):
        diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
        if name != name2 or len(s1) != len(s2) or len(diff) != 1 or (s1[diff[0]], s2[diff[0]]) != (1, 2) \
                or (diff[0] != 0 and is_share_field(name)):
            return None
        axes[name] = diff[0]
    return axes


def chunk_elements(gate: Gate) -> int | None:
    """Elements of each chunk :func:`gate_keygen` keys ``gate`` in by default, or None (whole):
    a multiple of 128 (a chunk's share fields then start on a block of the seeded shares'
    stream, runtime/seeded_shares.py) whose keys take about :data:`KEYGEN_CHUNK_BYTES`."""
    axes = element_axes(gate)
    if axes is None:
        return None
    if KEYGEN_CHUNK_ELEMENTS is not None:
        return KEYGEN_CHUNK_ELEMENTS if gate.elements > KEYGEN_CHUNK_ELEMENTS else None
    per_element = 16 * sum(int(numpy.prod(shape)) for _, shape, _ in gate.with_elements(1).fields())
    if gate.elements * per_element <= KEYGEN_WHOLE_BYTES:
        return None
    return max(128, KEYGEN_CHUNK_BYTES // per_element // 128 * 128)


def chunked(gate: Gate) -> bool:
    """Whether :func:`gate_keygen` keys ``gate`` in chunks by default (inputs of its element count)."""
    return chunk_elements(gate) is not None


#: What the dealer does to a chunk's keys where it computes, before they leave: called with the
#: part's first element and both parties' keys of it (runtime/dealer.py splits the seeded shares
#: so, a chunk at a time, with one seed for the gate).
Split = Callable[[int, Key, Key], tuple[Key, Key]]


class KeySink(Protocol):
    """Where :func:`gate_keygen` puts a gate's keys, part by part (the whole gate is one part)."""

    def put(self, first: int, count: int, k0: Key, k1: Key) -> None:
        """Both parties' keys of elements ``first .. first + count`` (in the part's field shapes)."""

    def result(self) -> tuple[object, object]:
        """The two parties' keys of the whole gate, once every part is in."""


class HostArrays:
    """The parts joined along each field's element axis into host (numpy) arrays of the whole
    gate's field shapes; a field with no element axis (a seed the split drew for the gate) is
    taken from the first part. ``split`` (if given) is applied to each part first."""

    def __init__(self, gate: Gate, axes: dict[str, int], split: Split | None = None) -> None:
        self.gate, self.axes, self.split = gate, axes, split
        self.keys: tuple[Key, Key] = ({}, {})
        self.host = getattr(xp.current(), "asnumpy", numpy.asarray)      # cupy.asnumpy on a device

    def put(self, first: int, count: int, k0: Key, k1: Key) -> None:
        if self.split is not None:
            k0, k1 = self.split(first, k0, k1)
        N, shapes = self.gate.elements, {name: shape for name, shape, _ in self.gate.with_elements(count).fields()}
        for whole, part in zip(self.keys, (k0, k1)):
            for name, v in part.items():
                if name not in self.axes:
                    whole.setdefault(name, self.host(v))
                    continue
                v, ax = self.host(v).reshape(shapes[name]), self.axes[name]
                if name not in whole:        # the whole gate's field, filled part by part
                    whole[name] = numpy.empty(v.shape[:ax] + (N,) + v.shape[ax + 1:], v.dtype)
                whole[name][(slice(None),) * ax + (slice(first, first + count),)] = v

    def result(self) -> tuple[Key, Key]:
        return self.keys


class PackedParts:
    """Each part's keys packed at once, where the backend computes, into each party's slot bytes
    (host; ``slots``: the two parties' slots of the gate, as their files hold them): only packed
    bytes leave the card, and no uint64 copy of the whole gate is ever made. A field's part
    lands at its element's bits: for a field whose element axis is not the first, one run of
    bytes per index before that axis. :meth:`fits` says where that is byte-aligned.
    ``split`` (if given) is applied to each part first."""

    def __init__(self, gate: Gate, axes: dict[str, int], slots: tuple[GateSlot, GateSlot], be,
                 split: Split | None = None) -> None:
        self.gate, self.axes, self.slots, self.be, self.split = gate, axes, slots, be, split
        self.bufs = tuple(be.key_bytes(s.nbytes) for s in slots)
        for slot, buf in zip(slots, self.bufs):      # the alignment padding after each field
            pos = 0
            for f in slot.fields:
                buf[pos + f.packed_nbytes:pos + f.nbytes] = 0
                pos += f.nbytes

    @staticmethod
    def fits(gate: Gate, axes: dict[str, int] | None, slots: tuple[GateSlot, GateSlot], chunk: int) -> bool:
        """Whether every part of ``chunk`` elements (a multiple of 8) starts on a byte of every
        field in both slots: a field whose element axis is not the first needs each run of the
        whole gate's elements to be whole bytes."""
        if axes is None or chunk % 8:
            return False
        for slot in slots:
            for f in slot.fields:
                ax = axes.get(f.name)
                if ax and f.count and (gate.elements * math.prod(f.shape[ax + 1:]) * f.bits) % 8:
                    return False
        return True

    def put(self, first: int, count: int, k0: Key, k1: Key) -> None:
        if self.split is not None:
            k0, k1 = self.split(first, k0, k1)
        N = self.gate.elements
        for slot, buf, keys in zip(self.slots, self.bufs, (k0, k1)):
            pos = 0
            for f in slot.fields:
                ax = self.axes.get(f.name)
                if ax is None:              # no element axis (a seed): the first part's
                    if first == 0 and f.count:
                        self.be.pack_key_field(slot, f, keys[f.name], out=buf[pos:pos + f.packed_nbytes])
                    pos += f.nbytes
                    continue
                part = KeyField(f.name, f.shape[:ax] + (count,) + f.shape[ax + 1:], f.bits, f.share)
                values = keys[f.name].reshape(part.shape)
                rows, per_element = math.prod(f.shape[:ax]), math.prod(f.shape[ax + 1:]) * f.bits
                start = first * per_element // 8
                if rows == 1:               # one run: packed straight into the slot's bytes
                    self.be.pack_key_field(slot, part, values, out=buf[pos + start:pos + start + part.packed_nbytes])
                else:                       # one run per row; every run is whole bytes (fits)
                    packed = self.be.pack_key_field(slot, part, values)
                    stride, length = N * per_element // 8, len(packed) // rows
                    buf[pos:pos + rows * stride].reshape(rows, stride)[:, start:start + length] = \
                        packed.reshape(rows, length)
                pos += f.nbytes

    def result(self) -> tuple[object, object]:
        return self.bufs


def gate_keygen(gate: Gate, rng: DealerRng, in_masks: list, chunk: int | None = None,
                sink: KeySink | None = None) -> tuple[object, object, object]:
    """``gate.keygen(rng, in_masks)``, in element chunks of ``chunk`` elements (default
    :func:`chunk_elements`; 0: never) where the gate is larger and its keys are elementwise.
    The keys go through ``sink`` where one is given (a gate keyed whole as one part), and the
    two parties' keys are what it returns; otherwise a chunked gate's are :class:`HostArrays`'
    and a whole gate's its keygen's. The output mask is one flat array of the backend's where
    the gate is chunked."""
    chunk = (chunk_elements(gate) or 0) if chunk is None else int(chunk)
    N = gate.elements
    flat = [m.reshape(-1) for m in in_masks]
    axes = element_axes(gate) if chunk and N > chunk and all(m.size == N for m in flat) else None
    if axes is None:
        out, k0, k1 = gate.keygen(rng, in_masks)
        if sink is None:
            return out, k0, k1
        sink.put(0, N, k0, k1)
        return (out, *sink.result())
    if chunk % 128:
        raise ValueError(f"keygen chunk {chunk} is not a multiple of 128 elements")
    sink = sink if sink is not None else HostArrays(gate, axes)
    outs: list = []
    for lo in range(0, N, chunk):
        sub = gate.with_elements(min(N, lo + chunk) - lo)
        out, k0, k1 = sub.keygen(rng, [m[lo:lo + sub.elements] for m in flat])
        if out.size != sub.elements:
            raise FusecError(f"dealer bug: {gate.kind}'s chunk of {sub.elements} elements has an output mask "
                             f"of {out.size}")
        outs.append(out.reshape(-1))
        sink.put(lo, sub.elements, k0, k1)
        del out, k0, k1
    return (np.concatenate(outs), *sink.result())
