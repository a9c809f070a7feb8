"""A peer that stalls mid-program: the error names the round it stopped in."""
from __future__ import annotations

import numpy as np
import pytest

from fusec.errors import PeerError
from fusec.runtime.backend import get_backend
from fusec.runtime.gates.base import Open
from fusec.runtime.protocol import drive


def _three_rounds():
    v = np.arange(4, dtype=np.uint64)
    for _ in range(3):
        v = yield Open(v, 16, scope="mul")
    return v


def test_a_stall_names_its_round():
    calls = []

    def exchange(ours: bytes, scope: str, expect: int) -> bytes:
        calls.append(scope)
        if len(calls) == 2:
            raise PeerError("timed out after 0.1 s waiting for the peer", "check the peer")
        return bytes(expect)

    with pytest.raises(PeerError, match=r"^round 2 \(mul, 1 opens\): timed out") as ei:
        drive([_three_rounds()], exchange, 0, get_backend("cpu"))
    assert ei.value.hint == "check the peer"
