"""Seeded key shares regenerated on the device: a GPU server keeps a key set in its stored
layout and writes each seeded slot's share fields from the slot's seed when it unpacks the slot.

A party's key set lies in its stored layout (runtime/seeded_shares.py ``party_layout``): a
slot seeded to it holds a 16-byte seed where its share fields would be. The CPU backend
inflates a set on the host into the full layout every gate reads. A GPU server instead copies
the stored bytes to the card (a quarter fewer bytes over PCIe, a quarter less device memory:
21.4 instead of 29.4 GB per party for BERT-base at batch 8) and inflates a slot, or a run of
slots, on the device just before it unpacks them: one kernel per share field
(``GpuKernels.seeded_stream``), whose words equal the host's inflation byte for byte. A slot
unpacked inside a launch plan reads its seed from the fixed key buffer, so the replay
regenerates the next set's shares from the next set's seeds.

The share fields' AES (one block per 16 bytes of share) runs where the slot is unpacked: before
the online clock when the set is unpacked up front; for a set too large to unpack whole, before
it too where the inflated set still fits beside the online phase (the whole set inflated on the
card, runtime/device_keys.py ``_inflate_early``), else inside it as each gate starts, and inside
it for streamed sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusec.runtime.layout import GateSlot, KeyLayout
from fusec.runtime.seeded_shares import SEED_NBYTES, TWEAK_SEEDED_SHARE, party_layout, seeded_parties

__all__ = ["StoredSet", "inflate_slot", "inflate_run", "slot_bytes"]


@dataclass(frozen=True)
class StoredSet:
    """How a key set's bytes lie: in ``party``'s stored layout of ``layout`` (``party`` None: in
    ``layout`` itself, inflated already)."""

    layout: KeyLayout
    party: int | None = None
    stored: KeyLayout = field(init=False)
    seeded: frozenset = field(init=False)       # gate ids whose slot holds a seed in ``stored``
    _full: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        party = self.party
        mine = frozenset() if party is None else frozenset(g for g, p in seeded_parties(self.layout).items()
                                                           if p == party)
        object.__setattr__(self, "seeded", mine)
        object.__setattr__(self, "stored", party_layout(self.layout, party) if mine else self.layout)
        object.__setattr__(self, "_full", {s.gate_id: s for s in self.layout.slots})

    def full_slot(self, gate_id: str) -> GateSlot:
        return self._full[gate_id]

    def pairs(self, stored_slots=None) -> list[tuple[GateSlot, GateSlot]]:
        """(full slot, stored slot) for ``stored_slots`` (default: every slot), in layout order."""
        return [(self._full[s.gate_id], s) for s in (self.stored.slots if stored_slots is None else stored_slots)]


def inflate_slot(kernels, full: GateSlot, stored: GateSlot, src, dst) -> None:
    """The full slot's bytes into ``dst`` (uint8 device array of ``full.nbytes``) from a seeded
    slot's stored bytes ``src`` (uint8, ``stored.nbytes``): the kept fields copied, each share
    field written from the seed by ``kernels.seeded_stream`` (share field j's stream has the
    tweak ``TWEAK_SEEDED_SHARE | j``, as the dealer drew it)."""
    seed = src[:SEED_NBYTES].view(np.uint64)
    kept = stored.field_offsets()
    pos, j = 0, 0
    for f in full.fields:
        room = dst[pos:pos + f.nbytes]
        if f.share:
            kernels.seeded_stream(seed, room.view(np.uint64), f.count * f.bits, TWEAK_SEEDED_SHARE | np.uint64(j))
            j += 1
        else:
            off, nb = kept[f.name]
            _copy(room, src[off:off + nb])
        pos += f.nbytes


def slot_bytes(kernels, xp, sset: StoredSet, stored: GateSlot, src) -> tuple[GateSlot, Any]:
    """(full slot, its bytes on the device) from a slot's stored bytes ``src``: ``src`` itself
    where the slot holds no seed, else a fresh buffer inflated from it."""
    full = sset.full_slot(stored.gate_id)
    if stored.gate_id not in sset.seeded:
        return full, src
    out = xp.empty(full.nbytes, np.uint8)
    inflate_slot(kernels, full, stored, src, out)
    return full, out


def inflate_run(kernels, sset: StoredSet, pairs: list[tuple[GateSlot, GateSlot]], src, dst) -> None:
    """A run of consecutive slots' full bytes into ``dst`` (from the first full slot's offset on)
    from their stored bytes in ``src`` (from the first stored slot's offset on)."""
    full0, st0 = pairs[0][0].offset, pairs[0][1].offset
    for full, st in pairs:
        s, d = src[st.offset - st0:st.end - st0], dst[full.offset - full0:full.end - full0]
        if full.gate_id in sset.seeded:
            inflate_slot(kernels, full, st, s, d)
        else:
            _copy(d, s)


def _copy(dst, src) -> None:
    """Device bytes copied as words (fields and slots are ALIGN = 8 bytes apart and long): an
    elementwise copy of uint8 moves one byte per thread."""
    dst.view(np.uint64)[...] = src.view(np.uint64)
