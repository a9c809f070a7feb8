"""Range analysis by calibration: one plaintext float run records every tensor's range.

Fixed point needs to know how large values get: to pick where products are rescaled,
to fit scalar functions on the interval they really see, and to warn (naming the tensor)
when a value would overflow the ring. The default calibration input is random (token ids
uniform over the embedding table, floats standard normal); ``fusec compile --calib x.npz``
gives representative data instead. Ranges are stored in ``graph.meta["ranges"]``.
"""
from __future__ import annotations

import numpy as np

from fusec.errors import CompileError
from fusec.ir.graph import Graph
from fusec.ir.ops import interpret
from fusec.passes.options import CompileOptions


def default_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    roles = graph.meta.get("input_roles") or {}
    for name in graph.inputs:
        info = graph.info(name)
        if roles.get(name, {}).get("kind") == "mask":    # 0/1, padded: a random true length per row
            feeds[name] = _padding_mask(rng, info.shape)
        elif info.dtype == "float":
            feeds[name] = rng.standard_normal(info.shape)
        else:
            hi = 100
            for n in graph.consumers(name):
                if n.op == "Gather" and n.inputs[1] == name and graph.is_const(n.inputs[0]):
                    hi = graph.const(n.inputs[0]).shape[n.attrs.get("axis", 0)]
            feeds[name] = rng.integers(0, hi, size=info.shape)
    return feeds


def _padding_mask(rng, shape: tuple[int, ...]) -> np.ndarray:
    """Ones then zeros along the last axis, at least one real token per row."""
    if not shape:
        return np.ones((), np.int64)
    L = shape[-1]
    lengths = rng.integers(1, L + 1, size=shape[:-1])
    return (np.arange(L) < lengths[..., None]).astype(np.int64)


def calibrate(graph: Graph, opts: CompileOptions, feeds: dict[str, np.ndarray] | None = None) -> Graph:
    feeds = feeds if feeds is not None else (opts.calib or default_feeds(graph, opts.calib_seed))
    missing = [t for t in graph.inputs if t not in feeds]
    if missing:
        raise CompileError(f"the calibration data lacks input(s) {', '.join(missing)}",
                           f"give every model input: {', '.join(graph.inputs)}")
    for t in graph.inputs:
        want = graph.info(t).shape
        if tuple(np.shape(feeds[t])) != want:
            raise CompileError(f"calibration input {t!r} has shape {tuple(np.shape(feeds[t]))}, the model "
                               f"was compiled for {want}", "pass --batch/--seq matching the calibration data")
    env = interpret(graph, feeds, keep=True)
    ranges = {}
    for t, info in graph.tensors.items():
        if info.visibility != "secret" or t not in env:
            continue
        v = np.asarray(env[t], np.float64)
        finite = v[np.isfinite(v)]
        if finite.size != v.size:
            opts.notes.append(f"calibration: tensor {t!r} has non-finite values in the float run")
        ranges[t] = [float(finite.min()), float(finite.max())] if finite.size else [0.0, 0.0]
    graph.meta["ranges"] = ranges
    return graph
