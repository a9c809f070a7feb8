"""Two-party test harness: P0 and P1 in two threads, each with only its own key.

Each thread runs the real executor (:func:`fusec.runtime.protocol.drive`) and talks to
the other through a pair of queues; neither thread ever touches the other's key or
shares. Gate tests use this; the TCP and multi-process tests use real sockets.
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np

from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.protocol import RoundLog, drive
from fusec.runtime.rng import DealerRng


def queue_exchanges(timeout: float = 60.0):
    q = [queue.Queue(), queue.Queue()]

    def make(party):
        def exchange(data: bytes, scope: str, limit: int | None = None) -> bytes:
            q[1 - party].put(bytes(data))
            got = q[party].get(timeout=timeout)
            assert limit is None or len(got) <= limit, f"peer sent {len(got)} bytes, the schedule expects {limit}"
            return got
        return exchange
    return make(0), make(1)


def test_backend_kind():
    """The backend gate tests run on: ``FUSEC_TEST_BACKEND`` = cpu (default), fakegpu or gpu.

    ``fakegpu`` runs the GPU backend's data path on the CPU with a strict stand-in for CuPy
    (tests/fakedevice.py), ``gpu`` the real one (on a GPU machine).
    """
    name = os.environ.get("FUSEC_TEST_BACKEND", "cpu")
    if name == "fakegpu":
        from tests.fakedevice import FakeDeviceBackend
        return FakeDeviceBackend
    return type(get_backend(name))


def party_backends(be=None, gates=()):
    """One backend object per party: AES contexts and counters are never shared.

    On a GPU the kernels are those a build of ``gates`` would have: their packed
    comparisons' arc walks generated (:func:`kernel_source_for`). The default kernels have
    none, and walk every point from the root instead: the same values at several times the
    AES ``cost()`` states (20 against 4 per element for an 18-bit GELU lookup)."""
    kind = type(be) if be is not None else test_backend_kind()
    if getattr(kind, "name", None) == "gpu":
        source = kernel_source_for(gates)
        return kind(source), kind(source)
    return kind(), kind()


def kernel_source_for(gates) -> str | None:
    """The kernels.cu a build of these gates gets (the default kernels plus their arc walks,
    as ``fusec compile`` generates them); None where they walk no arcs (the default source)."""
    import dataclasses

    from fusec.codegen import cuda
    from fusec.codegen.program import gate_arcs

    arcs = gate_arcs(getattr(g, "gate", g) for g in gates)      # a CostProbe wraps its gate
    return cuda.render(dataclasses.replace(cuda.default_config(), dpf_arcs=tuple(arcs))) if arcs else None


def both_parties(work) -> None:
    """Run ``work(0)`` and ``work(1)`` in two threads; re-raise the first error."""
    err: list[BaseException] = []

    def guarded(p):
        try:
            work(p)
        except BaseException as e:  # pragma: no cover - surfaced below
            err.append(e)

    ts = [threading.Thread(target=guarded, args=(p,)) for p in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if err:
        raise err[0]


def gate_outputs(gate, keys, us) -> list:
    """Both parties' public outputs of one gate on ``keys`` (a pair) and public inputs ``us``,
    each party on its test backend (host arrays)."""
    bes, ex, out = party_backends(), queue_exchanges(), [None, None]

    def work(p):
        be = bes[p]
        out[p] = be.asnumpy(drive([gate.eval(p, be.stage_key(keys[p]), [be.asarray(u) for u in us], be)],
                                  ex[p], p, be)[0])

    both_parties(work)
    return out


def run_pair(gens0, gens1, be=None):
    """Drive two parties' generator lists concurrently; return (results0, results1, logs).

    ``be`` is a backend to copy, or the pair of backend objects the generators were made with.
    """
    bes = be if isinstance(be, tuple) else party_backends(be)
    ex = queue_exchanges()
    out = [None, None]
    logs = [RoundLog(), RoundLog()]
    gens = (gens0, gens1)

    def work(p):
        out[p] = to_host(bes[p], drive(gens[p], ex[p], p, bes[p], logs[p]))

    both_parties(work)
    return out[0], out[1], logs


def to_host(be, v):
    """Results of a gate evaluation as numpy arrays (lists/tuples kept)."""
    if isinstance(v, (list, tuple)):
        return type(v)(to_host(be, x) for x in v)
    return v if v is None or isinstance(v, (int, float)) else be.asnumpy(v)


def run_gate(gate, in_values, in_bits, rng=None, in_masks=None, be=None):
    """Mask ``in_values`` (plaintext uint64 arrays), keygen, evaluate, unmask.

    Returns (plaintext output, (out mask), logs). ``in_masks`` forces masks (e.g. 0,
    2^n-1, 2^(n-1)) instead of fresh random ones. ``in_bits`` gives each input's ring.
    """
    rng = rng or DealerRng()
    if in_masks is None:
        in_masks = [rng.ring(np.shape(v), b) for v, b in zip(in_values, in_bits)]
    in_masks = [np.asarray(m, np.uint64) & ring.mask(b) for m, b in zip(in_masks, in_bits)]
    us = [(np.asarray(v, np.uint64) + m) & ring.mask(b) for v, m, b in zip(in_values, in_masks, in_bits)]
    r_out, k0, k1 = gate.keygen(rng, in_masks)
    b0, b1 = party_backends(be, [gate])
    o0, o1, logs = run_pair([gate.eval(0, b0.stage_key(k0), [b0.asarray(u.copy()) for u in us], b0)],
                            [gate.eval(1, b1.stage_key(k1), [b1.asarray(u.copy()) for u in us], b1)], (b0, b1))
    u0, u1 = o0[0], o1[0]
    assert np.array_equal(np.asarray(u0), np.asarray(u1)), "parties disagree on the opened output"
    out_bits = getattr(gate, "out_bits", getattr(gate, "bits", 64))
    return (np.asarray(u0, np.uint64) - np.asarray(r_out, np.uint64).reshape(np.shape(u0))) & ring.mask(out_bits), r_out, logs


def forced_masks(shape, bits):
    """The masks every gate is tested at: 0, 2^n - 1, 2^(n-1)."""
    return [np.full(shape, v, np.uint64) for v in (0, (1 << bits) - 1, 1 << (bits - 1))]


class CostProbe:
    """Wraps a gate for :func:`run_gate`: checks its keys against ``fields()`` and counts.

    Every key is validated (names, dtype, shapes, values < 2^bits) and round-tripped through
    the key-file packing of its layout slot; ``key_bits`` records the bits of the arrays
    keygen really produced, ``aes[party]`` the AES blocks each party's eval really used.
    """

    def __init__(self, gate):
        from fusec.runtime.layout import GateSlot, KeyField

        self.gate = gate
        self.bits, self.out_bits = gate.bits, gate.out_bits
        self.specs = {name: (tuple(shape), bits) for name, shape, bits in gate.fields()}
        self.slot = GateSlot("g", gate.kind, gate.elements,
                             tuple(KeyField(nm, s, b) for nm, (s, b) in self.specs.items()))
        self.aes: dict[int, int] = {}
        self.key_bits: list[int] = []

    def _check(self, key):
        from fusec.runtime.layout import pack_gate_key, unpack_gate_key

        assert set(key) == set(self.specs), set(key) ^ set(self.specs)
        total = 0
        for name, (shape, bits) in self.specs.items():
            a = key[name]
            assert a.dtype == np.uint64 and a.shape == shape, (name, a.dtype, a.shape, shape)
            if bits < 64 and a.size:
                assert int(a.max()) < (1 << bits), name
            total += a.size * bits
        self.key_bits.append(total)
        return unpack_gate_key(self.slot, pack_gate_key(self.slot, key))

    def keygen(self, rng, in_masks):
        r, k0, k1 = self.gate.keygen(rng, in_masks)
        assert self.gate.key_bits_total() == self.gate.cost().key_bits * self.gate.elements
        return r, self._check(k0), self._check(k1)

    def eval(self, party, key, inputs, be):
        a0 = be.aes_calls
        out = yield from self.gate.eval(party, key, inputs, be)
        self.aes[party] = be.aes_calls - a0
        return out


def run_graph(gates, inputs: dict, seed: bytes = b"graph-test"):
    """Dealer + both parties of a GateGraph in-process (threads, queues); returns P1's outputs and logs.

    ``inputs`` maps Input gate ids to ring values; each party only gets the ones it owns.
    """
    from fusec.runtime.gates.arith import Input

    k0, k1, _ = gates.keygen(DealerRng(seed))
    owner = {n.id: n.gate.owner for n in gates.nodes if isinstance(n.gate, Input)}
    bes = party_backends(gates=[n.gate for n in gates.nodes])
    ex = queue_exchanges()
    out, logs = [None, None], [RoundLog(), RoundLog()]
    keys = (k0, k1)

    def work(p):
        mine = {k: v for k, v in inputs.items() if owner.get(k) == p}
        out[p] = gates.evaluate(p, keys[p], mine, ex[p], bes[p], logs[p])

    both_parties(work)
    return out[1], logs


def measure_gate(gate, xi, n: int, masks=None, be=None):
    """Run ``gate`` on signed inputs ``xi`` with both parties; return (signed output, the
    per-element cost measured from the real keys, AES counter and bytes sent, logs).
    ``be``: a backend to run on instead of the test backend."""
    from fusec.runtime.gates.base import GateCost

    probe = CostProbe(gate)
    got, _, logs = run_gate(probe, [ring.from_signed(np.asarray(xi, np.int64), n)], [n], in_masks=masks, be=be)
    E = gate.elements
    assert probe.key_bits[0] == probe.key_bits[1]
    assert probe.aes[0] == probe.aes[1]
    assert logs[0].rounds == logs[1].rounds
    sent = [sum(lg.bytes_sent.values()) for lg in logs]
    assert sent[0] == sent[1]
    cost = GateCost(key_bits=probe.key_bits[0] / E, aes=probe.aes[0] / E, rounds=logs[0].rounds,
                    open_bits=8 * sent[0] / E)
    return ring.to_signed(got, n), cost, logs
