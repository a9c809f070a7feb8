"""The byte layout of one round's messages: which open's shares sit where.

Every open of a round is packed to its ring width, and the packed opens follow each other
byte-aligned in the round's one message (ring.pack_bits of each, concatenated). Both
parties derive the same layout from the same schedule, so no framing per open is needed.
:class:`RoundMessage` is that layout seen from one party: where each open sits in the
message it sends and in the one it receives, and who sends shares of it at all (an open
may be *to* one party, whose share then never travels).

The backends turn it into bytes: the CPU packs open by open (the reference), the GPU
packs a whole round with one kernel and rebuilds every value with another
(:meth:`fusec.runtime.gpu_kernels.GpuKernels.pack_round`), the same bytes either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from fusec.runtime import ring

#: Who sends shares of an open, from this party's view (the kernels' ROUND_* values).
BOTH, PEER, MINE = 0, 1, 2


class OpenSlot(NamedTuple):
    """One open of a round: its values, their width, and where its shares travel (a named
    tuple: a round builds one per open, in the online phase's Python)."""

    count: int
    bits: int
    shape: tuple[int, ...]
    mode: int           # BOTH, PEER (only the peer's share travels) or MINE (only ours)
    ours: int           # first byte in our message (-1: we send nothing for it)
    theirs: int         # first byte in the peer's message (-1: the peer sends nothing)

    @property
    def nbytes(self) -> int:
        return ring.packed_size(self.count, self.bits)


@dataclass(frozen=True)
class RoundMessage:
    """The layout of one round for one party (see the module docstring)."""

    slots: tuple[OpenSlot, ...]
    our_bytes: int
    their_bytes: int

    @classmethod
    def of(cls, opens: Sequence, party: int) -> RoundMessage:
        """The layout of ``opens`` (objects with ``share``, ``bits`` and ``sender``: None for
        both parties, else the party whose share travels) for ``party``."""
        slots, ours, theirs = [], 0, 0
        for req in opens:
            shape = getattr(req.share, "shape", None)
            shape = tuple(np.shape(req.share) if shape is None else shape)
            count = math.prod(shape)
            bits = int(req.bits)
            mode = BOTH if req.sender is None else (MINE if req.sender == party else PEER)
            nbytes = ring.packed_size(count, bits)
            slots.append(OpenSlot(count, bits, shape, mode,
                                  ours if mode != PEER else -1, theirs if mode != MINE else -1))
            ours += nbytes if mode != PEER else 0
            theirs += nbytes if mode != MINE else 0
        return cls(tuple(slots), ours, theirs)
