"""Data-movement and axis-sum gates against numpy on plaintext, and the linear-time graph scheduler.

The oracles apply the numpy operator (transpose, slicing, concatenate, take, pad, an
explicit im2col loop, Python-int sums) to the plaintext values; the gate only sees the
index map computed from ``arange`` and the masked values of two parties.
"""
import threading
import time

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.gates.arith import Input, Mul
from fusec.runtime.gates.base import ZERO_COST
from fusec.runtime.gates.compare import ReLU2
from fusec.runtime.gates.linear import Add
from fusec.runtime.gates.movement import Rearrange, SumAxis
from fusec.runtime.graph import GateGraph
from fusec.runtime.protocol import RoundLog, drive
from fusec.runtime.rng import DealerRng
from tests.harness import forced_masks, queue_exchanges, run_gate

N = 50


def values(shape, bits=N, seed=0):
    return np.random.default_rng(seed).integers(0, 2 ** 63, shape, dtype=np.uint64) & ring.mask(bits)


def check_free(gate, ins, bits=N):
    """Run through both parties with random and forced masks; return the plaintext output.

    Also checks that the gate is free: empty keys, no round, zero cost."""
    outs = []
    forced = [[forced_masks(np.size(v), bits)[j] for v in ins] for j in range(3)]
    for masks in [None] + forced:
        got, _, logs = run_gate(gate, [v.reshape(-1) for v in ins], [bits] * len(ins), in_masks=masks)
        assert logs[0].rounds == logs[1].rounds == 0
        outs.append(got)
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])
    rng = DealerRng()
    _, k0, k1 = gate.keygen(rng, [rng.ring(np.size(v), bits) for v in ins])
    assert k0 == {} and k1 == {} and gate.fields() == [] and gate.key_bits_total() == 0
    assert gate.cost() == ZERO_COST
    return outs[0]


def rearrange(op, *shapes, bits=N):
    """The compiler's recipe: run the data-movement op on arange over the concatenated inputs."""
    offs = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    aranges = [np.arange(offs[i], offs[i + 1]).reshape(s) for i, s in enumerate(shapes)]
    idx = np.asarray(op(*aranges))
    return Rearrange([int(np.prod(s)) for s in shapes], idx, bits), idx.shape


# --------------------------------------------------------------------------- Rearrange
def test_transpose_and_reshape():
    x = values((2, 3, 4))
    g, shape = rearrange(lambda a: a.transpose(2, 0, 1), x.shape)
    assert g.elements == 24 and g.inputs == 1
    got = check_free(g, [x])
    assert np.array_equal(got.reshape(shape), np.transpose(x, (2, 0, 1)))


def test_slice_with_steps():
    x = values((3, 5, 4), seed=1)
    g, shape = rearrange(lambda a: a[1:, ::2, 1:3], x.shape)
    assert np.array_equal(check_free(g, [x]).reshape(shape), x[1:, ::2, 1:3])


def test_concat_three_inputs():
    xs = [values((2, 3), seed=2), values((2, 1), seed=3), values((2, 4), seed=4)]
    g, shape = rearrange(lambda a, b, c: np.concatenate([a, b, c], axis=1), *[v.shape for v in xs])
    assert g.inputs == 3 and shape == (2, 8)
    assert np.array_equal(check_free(g, xs).reshape(shape), np.concatenate(xs, axis=1))


def test_gather_on_public_indices_with_repeats():
    x = values((5, 3), seed=5)
    rows = np.array([4, 0, 4, 2, 1, 1])
    g, shape = rearrange(lambda a: np.take(a, rows, axis=0), x.shape)
    assert np.array_equal(check_free(g, [x]).reshape(shape), np.take(x, rows, axis=0))


def test_pad_with_minus_one_is_zero():
    x = values((3, 4), seed=6)
    g, shape = rearrange(lambda a: np.pad(a, ((1, 2), (0, 1)), constant_values=-1), x.shape)
    assert g.pads
    got = check_free(g, [x]).reshape(shape)
    assert np.array_equal(got, np.pad(x, ((1, 2), (0, 1))))
    # the padded positions are 0 in value AND mask: the public value there is 0
    rng = DealerRng()
    r = rng.ring(12, N)
    mask = g.keygen(rng, [r])[0].reshape(shape)
    assert not mask[0].any() and not mask[:, -1].any()


def test_im2col_with_padding():
    C, H, W, k, pad, stride = 2, 5, 4, 3, 1, 2
    x = values((C, H, W), seed=7)

    def im2col_index(a):
        p = np.pad(a, ((0, 0), (pad, pad), (pad, pad)), constant_values=-1)
        win = np.lib.stride_tricks.sliding_window_view(p, (k, k), axis=(1, 2))[:, ::stride, ::stride]
        return win.transpose(1, 2, 0, 3, 4).reshape(win.shape[1] * win.shape[2], C * k * k)

    g, shape = rearrange(im2col_index, x.shape)
    got = check_free(g, [x]).reshape(shape)
    # oracle: explicit loops over output positions
    xp = np.zeros((C, H + 2 * pad, W + 2 * pad), np.uint64)
    xp[:, pad:pad + H, pad:pad + W] = x
    rows = []
    for i in range(0, H + 2 * pad - k + 1, stride):
        for j in range(0, W + 2 * pad - k + 1, stride):
            rows.append(xp[:, i:i + k, j:j + k].reshape(-1))
    assert np.array_equal(got, np.array(rows))


def test_index_dtype_and_validation():
    g = Rearrange([3, 2], np.array([4, 0, -1]), N)
    assert g.index.dtype == np.int32 and g.elements == 3
    with pytest.raises(ParameterError):
        Rearrange([3], np.array([3]), N)          # out of range
    with pytest.raises(ParameterError):
        Rearrange([3], np.array([-2]), N)
    with pytest.raises(ParameterError):
        Rearrange([3], np.array([], dtype=np.int64), N)   # empty output
    with pytest.raises(ParameterError):
        Rearrange([3], np.array([0.5]), N)
    with pytest.raises(ParameterError):
        g.value_map([np.zeros(3, np.uint64), np.zeros(3, np.uint64)], None)   # wrong input size


# --------------------------------------------------------------------------- SumAxis
@pytest.mark.parametrize("bits", [37, 50, 64])
@pytest.mark.parametrize("axes,keepdims", [((1,), True), ((0, 2), False), ((-1,), True), ((0, 1, 2), False)])
def test_sum_axis_wraps_mod_2n(bits, axes, keepdims):
    shape = (3, 5, 7)
    g = np.random.default_rng(bits)
    # values near 2^bits - 1 so every sum wraps
    x = (ring.mask(bits) - g.integers(0, 1000, shape).astype(np.uint64)) & ring.mask(bits)
    gate = SumAxis(shape, axes, bits, keepdims=keepdims)
    got = check_free(gate, [x], bits)
    want = np.sum(x.astype(object), axis=axes, keepdims=keepdims) % (1 << bits)
    assert gate.out_shape == np.shape(want)
    assert gate.elements == np.size(want)
    assert [int(v) for v in got] == [int(v) for v in np.ravel(want)]


def test_sum_axis_validation():
    with pytest.raises(ParameterError):
        SumAxis((3, 4), (2,), N)
    with pytest.raises(ParameterError):
        SumAxis((3, 0), (1,), N)
    assert SumAxis((3, 4), 0, N).out_shape == (1, 4)


# --------------------------------------------------------------------------- graph scheduling
class QuadraticGraph(GateGraph):
    """The previous scheduler (scan every node after each completion): the reference order."""

    def evaluate(self, party, keys, inputs, exchange, be, log=None):
        values, started, gen_node = {}, set(), []

        def start_ready():
            gens = []
            for n in self.nodes:
                if n.id in started or any(w not in values for w in n.inputs):
                    continue
                started.add(n.id)
                if isinstance(n.gate, Input):
                    args = [inputs.get(n.id) if party == n.gate.owner else None]
                else:
                    args = [values[w] for w in n.inputs]
                gens.append(n.gate.eval(party, be.stage_key(keys[n.id]), args, be))
                gen_node.append(n.id)
            return gens

        def on_done(i, result):
            values[gen_node[i]] = result
            return start_ready()

        drive(start_ready(), exchange, party, be, log, on_done=on_done)
        return {n.id: values[n.id] for n in self.outputs if values.get(n.id) is not None}


def random_graph(cls, nodes: int, seed: int, bits: int = 37) -> GateGraph:
    """A random DAG over one element count: inputs, free gates, muls, ReLUs, repeated operands."""
    g, rng = cls(), np.random.default_rng(seed)
    E = 4
    wires = [g.input("x0", E, bits, owner=1), g.input("x1", E, bits, owner=0)]
    for i in range(nodes):
        kind = rng.integers(0, 4)
        a, b = (wires[j] for j in rng.integers(0, len(wires), 2))
        if kind == 0:
            wires.append(g.add(f"n{i}", Mul(E, bits), [a, a if rng.random() < 0.2 else b]))
        elif kind == 1:
            wires.append(g.add(f"n{i}", ReLU2(E, bits), [a]))
        elif kind == 2:
            wires.append(g.add(f"n{i}", Add(E, bits), [a, b]))
        else:
            wires.append(g.add(f"n{i}", Rearrange([E, E], rng.integers(-1, 2 * E, E), bits), [a, b]))
    for w in wires[-3:]:
        g.output(f"out_{w}", w)
    return g


def run_graph(graph, keys, inputs):
    """Both parties through ``graph.evaluate``; returns outputs and each party's transcript."""
    ex = queue_exchanges()
    res, err, transcripts, logs = {}, [], ([], []), (RoundLog(), RoundLog())

    def work(p):
        def exchange(data, scope, limit=None):
            transcripts[p].append((scope, bytes(data)))
            return ex[p](data, scope, limit)
        try:
            res[p] = graph.evaluate(p, keys[p], inputs[p], exchange, get_backend("cpu"), logs[p])
        except BaseException as e:  # pragma: no cover - surfaced below
            err.append(e)

    ts = [threading.Thread(target=work, args=(p,)) for p in (0, 1)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if err:
        raise err[0]
    return res, transcripts, logs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scheduler_matches_the_quadratic_reference(seed):
    """Same start order => byte-identical messages, same rounds, same outputs."""
    fast, slow = random_graph(GateGraph, 60, seed), random_graph(QuadraticGraph, 60, seed)
    k0, k1, _ = fast.keygen(DealerRng())
    bits = 37
    x = {0: {"x1": values(4, bits, 1)}, 1: {"x0": values(4, bits, 2)}}
    r_fast, t_fast, l_fast = run_graph(fast, (k0, k1), x)
    r_slow, t_slow, l_slow = run_graph(slow, (k0, k1), x)
    assert t_fast == t_slow
    assert l_fast[0].rounds == l_slow[0].rounds and l_fast[0].bytes_sent == l_slow[0].bytes_sent
    assert r_fast[1].keys() == r_slow[1].keys()
    for k in r_fast[1]:
        assert np.array_equal(r_fast[1][k], r_slow[1][k])


def test_scheduler_is_linear_on_a_long_graph():
    """6000 free gates plus a few round gates: the old scan was ~N^2/2 node checks."""
    g, E, bits = GateGraph(), 2, 37
    w = g.input("x", E, bits, owner=1)
    for i in range(6000):
        w = g.add(f"t{i}", Rearrange([E], np.array([1, 0]), bits), [w])
        if i % 1000 == 999:
            w = g.add(f"m{i}", Mul(E, bits), [w, w])
    g.output("y", w)
    k0, k1, _ = g.keygen(DealerRng())
    x = np.array([3, 5], np.uint64)
    t0 = time.perf_counter()
    res, _, logs = run_graph(g, (k0, k1), {0: {}, 1: {"x": x}})
    took = time.perf_counter() - t0
    v = x.copy()
    for _ in range(6):
        v = v * v
    assert np.array_equal(res[1]["y"], v & ring.mask(bits))   # even number of swaps per block
    assert logs[0].rounds == 1 + 6                            # input + one per Mul
    assert took < 20, took
