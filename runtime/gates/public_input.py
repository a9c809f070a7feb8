"""An input of role ``public``: the owner sends the value itself, so both servers hold it.

Same wire format, key field and round as :class:`~fusec.runtime.gates.arith.Input` (so the
layout, the schedule and the profiler treat it as an input), but the dealer fixes its mask
to zero: ``u = x``. Everything downstream is unchanged (every gate works for any input
mask, zero included). Used for per-request values the build declares public, e.g. an
attention mask when revealing the sequence length is acceptable (``ir/input_roles``).
"""
from __future__ import annotations

from fusec.runtime.gates.arith import Input
from fusec.runtime.rng import DealerRng
from fusec.runtime.xp import np


class PublicInput(Input):
    """A wire whose mask is zero: the owner's value, revealed to the other server."""

    def keygen(self, rng: DealerRng, in_masks):
        zero = np.zeros(self.elements, dtype=np.uint64)
        return zero, {"mask": zero.copy()}, {"mask": zero.copy()}
