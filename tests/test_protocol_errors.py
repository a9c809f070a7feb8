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


def _failing_graph(kind: str, error: BaseException):
    """Input x, then gate ``boom`` of ``kind`` that opens once and then raises ``error`` in its
    local step (the third round of the program), and an exchange that answers zeros."""
    from fusec.runtime.gates.arith import Input
    from fusec.runtime.gates.base import ZERO_COST, Gate
    from fusec.runtime.graph import GateGraph

    class Failing(Gate):
        inputs = 1

        def __init__(self, elements):
            super().__init__(elements)
            self.bits = 16
            self.kind = kind

        def fields(self):
            return []

        def cost(self):
            return ZERO_COST

        def keygen(self, rng, in_masks):
            return in_masks[0], {}, {}

        def eval(self, party, key, inputs, be):
            v = yield Open(inputs[0], 16, scope="mul")
            raise error
            yield v  # pragma: no cover

    g = GateGraph()
    g.add("x", Input(4, 16, 0))
    g.add("boom", Failing(4), ["x"])

    def run():
        g.evaluate(0, {"x": {"mask": np.zeros(4, np.uint64)}, "boom": {}}, {"x": np.arange(4, dtype=np.uint64)},
                   lambda ours, scope, expect: bytes(expect), get_backend("cpu"))
    return run


def test_a_kernel_failure_names_the_gate_and_round():
    """A kernel that fails inside a gate's local step: the error names the gate (as the
    graph knows it) and the round, so a user can report where the program broke."""
    from fusec.runtime.gpu_kernels import GpuKernelError

    run = _failing_graph("failing", GpuKernelError("CUDA kernel fusec_demo failed (demo step): an illegal memory access"))
    with pytest.raises(GpuKernelError, match=r"^gate boom \(failing\), round 3: CUDA kernel fusec_demo failed"):
        run()


def test_running_out_of_device_memory_mid_round_names_the_gate_and_round():
    """A device allocation that fails inside a gate's local step (four workers on one card,
    batch 8 in lanes): one FusecError naming the gate and the round, with what to do, instead
    of the allocator's traceback."""
    from fusec.errors import FusecError

    class OutOfMemoryError(MemoryError):        # CuPy's is cupy.cuda.memory.OutOfMemoryError
        pass

    run = _failing_graph("hungry", OutOfMemoryError("Out of memory allocating 150,994,944 bytes"))
    with pytest.raises(FusecError, match=r"^gate boom \(hungry\), round 3: the GPU ran out of memory: Out of memory") \
            as ei:
        run()
    assert "CUDA_VISIBLE_DEVICES" in ei.value.hint


def test_running_out_of_device_memory_while_unpacking_names_the_round():
    """The same in the round's unpack (batch 8 with both parties on one 80 GB card ran out there):
    one line naming the round, its scope and the step, not the allocator's traceback."""
    from fusec.errors import FusecError
    from fusec.runtime.backend import Backend
    from fusec.runtime.gates.arith import Input
    from fusec.runtime.graph import GateGraph

    class OutOfMemoryError(MemoryError):
        pass

    class Hungry(Backend):
        def unpack_round(self, layout, shares, theirs):
            raise OutOfMemoryError("Out of memory allocating 301,989,888 bytes")

    g = GateGraph()
    g.add("x", Input(4, 16, 0))
    with pytest.raises(FusecError, match=r"^round 1 \(\w+, 1 opens\), unpacking the peer's opens: the GPU ran out of "
                                         r"memory: Out of memory allocating 301,989,888 bytes"):
        g.evaluate(0, {"x": {"mask": np.zeros(4, np.uint64)}}, {"x": np.arange(4, dtype=np.uint64)},
                   lambda ours, scope, expect: bytes(expect), Hungry())


def test_a_bug_keeps_its_traceback():
    """Anything that is neither a kernel failure nor a device allocation is not re-worded."""
    from fusec.runtime.backend import Backend
    from fusec.runtime.gates.arith import Input
    from fusec.runtime.graph import GateGraph

    class Broken(Backend):
        def pack_round(self, layout, shares):
            raise ZeroDivisionError("a bug")

    g = GateGraph()
    g.add("x", Input(4, 16, 0))
    with pytest.raises(ZeroDivisionError, match="^a bug$"):
        g.evaluate(0, {"x": {"mask": np.zeros(4, np.uint64)}}, {"x": np.arange(4, dtype=np.uint64)},
                   lambda ours, scope, expect: bytes(expect), Broken())
