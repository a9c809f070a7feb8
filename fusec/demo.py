"""The bundled example until the compiler exists: a small gate graph run for real.

P1 (the client) holds a vector x, P0 holds a private vector w. The servers compute,
under FSS, ``h = x * w`` (secret x secret), rescale it exactly, then the compiled GELU
scalar gate, a two-round ReLU and the maximum of the ReLU outputs (log-depth tree); P1
receives ``gelu(x*w)`` and ``max(relu(x*w))``. The dealer, P0 and P1 are three separate
processes; P0 and P1 talk over TCP on loopback.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from fusec.ir.spec import FitRequest, OperatorSpec, Tail, fit
from fusec.runtime.gates.arith import Mul
from fusec.runtime.gates.compare import MaxTree, ReLU2
from fusec.runtime.gates.scalar import ScalarGate
from fusec.runtime.gates.truncation import ArsOneRound
from fusec.runtime.graph import GateGraph


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@functools.lru_cache(maxsize=8)
def gelu_spec(n: int, f: int) -> OperatorSpec:
    return fit(FitRequest("gelu", gelu, -4.0, 4.0, pieces=16, degree=2, n_in=n, f_in=f, f_out=f,
                          right=Tail(slope=1.0)))


def build_graph(elements: int, n: int = 50, f: int = 12) -> GateGraph:
    g = GateGraph()
    x = g.input("x", elements, n, owner=1)
    w = g.input("w", elements, n, owner=0)
    h2 = g.add("mul", Mul(elements, n), [x, w])
    h = g.add("rescale", ArsOneRound(elements, n, f), [h2])
    y = g.add("gelu", ScalarGate(elements, gelu_spec(n, f)), [h])
    r = g.add("relu", ReLU2(elements, n), [h])
    m = g.add("max", MaxTree((elements,), n), [r])
    g.output("gelu_out", y)
    g.output("max_out", m)
    return g


def plaintext(x: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    h = x * w
    return {"gelu_out": gelu(h), "max_out": np.array([max(0.0, float(h.max()))])}


def serve(server, elements: int, n: int, f: int) -> dict:
    """One server of the demo graph (``fusec demo run``): ``server`` is the command's
    :class:`~fusec.party_cli.ServerOptions`. Every check that needs no peer (options,
    output path, TLS files, key file, input) runs before the socket opens; returns the
    summary written to ``--output``."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from fusec.runtime import ring  # noqa: PLC0415
    from fusec.runtime.backend import get_backend  # noqa: PLC0415
    from fusec.runtime.party import run_party  # noqa: PLC0415

    server.prepare()
    graph = build_graph(elements, n, f)
    be = get_backend(server.backend)
    kf, idx = server.open_keys(graph, inflate=not be.seeded_shares_on_device)   # every key check before any socket
    with kf:
        inputs = {_OWNED[server.party]: ring.encode_fixed(_load_vector(server.input_path, elements), f, n)}
        with server.channel() as ch:
            res = run_party(graph, server.party, kf, idx, ch, inputs, be)
    outs = {k: ring.decode_fixed(v, f, n).tolist() for k, v in res.outputs.items()}
    summary = {"party": server.party, "key_set": res.key_set, "online_seconds": res.online_seconds,
               "rounds": res.rounds, "bytes_sent": res.bytes_sent, "outputs": outs}
    if server.output_path:
        Path(server.output_path).write_text(json.dumps(summary))
    return summary


_OWNED = {0: "w", 1: "x"}


def _load_vector(path: str | None, elements: int) -> np.ndarray:
    """A party's private demo vector, checked before the socket opens."""
    from fusec.errors import FusecError  # noqa: PLC0415

    if not path:
        raise FusecError(f"this party owns a demo input and needs --input (a .npy vector of {elements} values)")
    try:
        vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FusecError(f"cannot read --input {path}: {e}") from None
    if vec.shape != (elements,) or not np.issubdtype(vec.dtype, np.number) or not np.all(np.isfinite(vec)):
        raise FusecError(f"--input {path} holds {vec.dtype} of shape {vec.shape}; the demo expects {elements} "
                         f"finite numbers")
    return vec
