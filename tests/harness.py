"""Two-party test harness: P0 and P1 in two threads, each with only its own key.

Each thread runs the real executor (:func:`fusec.runtime.protocol.drive`) and talks to
the other through a pair of queues; neither thread ever touches the other's key or
shares. Gate tests use this; the TCP and multi-process tests use real sockets.
"""
from __future__ import annotations

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
        def exchange(data: bytes, scope: str) -> bytes:
            q[1 - party].put(bytes(data))
            return q[party].get(timeout=timeout)
        return exchange
    return make(0), make(1)


def party_backends(be=None):
    """One backend object per party: AES contexts and counters are never shared."""
    kind = type(be) if be is not None else type(get_backend("cpu"))
    return kind(), kind()


def run_pair(gens0, gens1, be=None):
    """Drive two parties' generator lists concurrently; return (results0, results1, logs)."""
    bes = party_backends(be)
    ex = queue_exchanges()
    out = [None, None]
    logs = [RoundLog(), RoundLog()]
    err = []

    def work(p, gens):
        try:
            out[p] = drive(gens, ex[p], p, bes[p], logs[p])
        except BaseException as e:  # pragma: no cover - surfaced below
            err.append(e)

    ts = [threading.Thread(target=work, args=(p, g)) for p, g in ((0, gens0), (1, gens1))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if err:
        raise err[0]
    return out[0], out[1], logs


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
    b0, b1 = party_backends(be)
    o0, o1, logs = run_pair([gate.eval(0, k0, [u.copy() for u in us], b0)],
                            [gate.eval(1, k1, [u.copy() for u in us], b1)], be)
    u0, u1 = o0[0], o1[0]
    assert np.array_equal(np.asarray(u0), np.asarray(u1)), "parties disagree on the opened output"
    out_bits = getattr(gate, "out_bits", getattr(gate, "bits", 64))
    return (np.asarray(u0, np.uint64) - np.asarray(r_out, np.uint64).reshape(np.shape(u0))) & ring.mask(out_bits), r_out, logs


def forced_masks(shape, bits):
    """The masks every gate is tested at: 0, 2^n - 1, 2^(n-1)."""
    return [np.full(shape, v, np.uint64) for v in (0, (1 << bits) - 1, 1 << (bits - 1))]
