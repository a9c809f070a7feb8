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


def test_a_kernel_failure_names_the_gate_and_round():
    """A kernel that fails inside a gate's local step: the error names the gate (as the
    graph knows it) and the round, so a user can report where the program broke."""
    from fusec.runtime.gates.arith import Input
    from fusec.runtime.gates.base import ZERO_COST, Gate
    from fusec.runtime.gpu_kernels import GpuKernelError
    from fusec.runtime.graph import GateGraph

    class Failing(Gate):
        kind = "failing"
        inputs = 1

        def __init__(self, elements):
            super().__init__(elements)
            self.bits = 16

        def fields(self):
            return []

        def cost(self):
            return ZERO_COST

        def keygen(self, rng, in_masks):
            return in_masks[0], {}, {}

        def eval(self, party, key, inputs, be):
            v = yield Open(inputs[0], 16, scope="mul")
            raise GpuKernelError("CUDA kernel fusec_demo failed (demo step): an illegal memory access")
            yield v  # pragma: no cover

    g = GateGraph()
    g.add("x", Input(4, 16, 0))
    g.add("boom", Failing(4), ["x"])

    def exchange(ours, scope, expect):
        return bytes(expect)

    with pytest.raises(GpuKernelError, match=r"^gate boom \(failing\), round 3: CUDA kernel fusec_demo failed"):
        g.evaluate(0, {"x": {"mask": np.zeros(4, np.uint64)}, "boom": {}}, {"x": np.arange(4, dtype=np.uint64)}, exchange, get_backend("cpu"))


def test_running_out_of_device_memory_mid_round_names_the_gate_and_round():
    """A device allocation that fails inside a gate's local step (four workers on one card,
    batch 8 in lanes): one FusecError naming the gate and the round, with what to do, instead
    of the allocator's traceback."""
    from fusec.errors import FusecError
    from fusec.runtime.gates.arith import Input
    from fusec.runtime.gates.base import ZERO_COST, Gate
    from fusec.runtime.graph import GateGraph

    class OutOfMemoryError(MemoryError):        # CuPy's is cupy.cuda.memory.OutOfMemoryError
        pass

    class Hungry(Gate):
        kind = "hungry"
        inputs = 1

        def __init__(self, elements):
            super().__init__(elements)
            self.bits = 16

        def fields(self):
            return []

        def cost(self):
            return ZERO_COST

        def keygen(self, rng, in_masks):
            return in_masks[0], {}, {}

        def eval(self, party, key, inputs, be):
            v = yield Open(inputs[0], 16, scope="mul")
            raise OutOfMemoryError("Out of memory allocating 150,994,944 bytes (allocated so far: 19,000,734,720 bytes).")
            yield v  # pragma: no cover

    g = GateGraph()
    g.add("x", Input(4, 16, 0))
    g.add("big", Hungry(4), ["x"])

    def exchange(ours, scope, expect):
        return bytes(expect)

    with pytest.raises(FusecError, match=r"^gate big \(hungry\), round 3: the GPU ran out of memory: Out of memory") as ei:
        g.evaluate(0, {"x": {"mask": np.zeros(4, np.uint64)}, "big": {}}, {"x": np.arange(4, dtype=np.uint64)},
                   exchange, get_backend("cpu"))
    assert "CUDA_VISIBLE_DEVICES" in ei.value.hint
