"""Proven ranges: an interval for every secret tensor that holds for EVERY admissible input.

(Work in progress: the analysis itself lands in the next commit.) Interface used by
the other passes, the lowering and the report:

- ``graph.meta["proven"][tensor] = [lo, hi]``: real-valued bounds (floats; ``inf`` where
  nothing could be proven, e.g. private weights);
- :func:`width_bits` turns a proven interval at a fixed-point scale into the ring bits a
  value needs (signed, with the slack the truncation gates ask for).
"""
from __future__ import annotations

import math


def width_bits(lo: float, hi: float, scale: int, slack: int = 1) -> int | None:
    """Bits of a signed ring that holds every value of [lo, hi] at ``scale`` fractional
    bits, plus ``slack`` extra bits (1 = the sign bit is never reached by |x|): None when
    the interval is unbounded."""
    m = max(abs(lo), abs(hi))
    if not math.isfinite(m):
        return None
    q = math.ceil(m * 2.0 ** scale) + 1
    return max(1, q.bit_length()) + 1 + slack
