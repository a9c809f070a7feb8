"""The input owner's request: the arrays a user would feed onnxruntime, checked by role.

``fusec run`` and ``fusec verify`` take one ``.npz`` with the model's inputs by their ONNX
names (or a ``.npy`` when one input is needed). :func:`check_feeds` checks everything a
user can get wrong before any byte is sent, one clear line each: an input missing or not
the model's, a wrong shape or dtype, NaN, a token id outside the vocabulary, a mask that
is not 0/1, a float outside the build's input contract, and a value given for a
*constant* input (fixed at compile time) that differs from the compiled one. It returns
the feeds of the inputs the secure program takes (private and public ones).
"""
from __future__ import annotations

import math

import numpy as np

from fusec.errors import FusecError
from fusec.ir.input_roles import constant_matches


def roles_of(graph) -> dict[str, dict]:
    """The build's input roles; builds from before roles: their IR inputs are private."""
    roles = graph.meta.get("input_roles")
    if roles:
        return roles
    out = {t: {"role": "constant", "shape": how.get("shape", []), "value_desc": how.get("value")}
           for t, how in graph.meta.get("public_inputs", {}).items()}
    out.update({t: {"role": "private", "shape": list(graph.info(t).shape), "dtype": graph.info(t).dtype,
                    "kind": "data"} for t in graph.inputs})
    return out


def needed(graph) -> list[str]:
    """Names a request must carry (private and public inputs the program reads)."""
    return [t for t in graph.inputs]


def check_feeds(graph, feeds: dict[str, np.ndarray], what: str = "input") -> dict[str, np.ndarray]:
    """Check a request against the build; returns the feeds of ``graph.inputs``."""
    roles = roles_of(graph)
    names = list(roles)
    extra = [k for k in feeds if k not in roles and k not in graph.inputs]
    if extra:
        raise FusecError(f"{what} {', '.join(repr(k) for k in sorted(extra))}: not an input of this model",
                         f"the model's inputs: {', '.join(names)}")
    out: dict[str, np.ndarray] = {}
    for name, r in roles.items():
        if r["role"] == "constant":
            if name in feeds:
                _check_constant(name, r, feeds[name])
            continue
        if name not in graph.inputs:          # the output does not depend on it
            continue
        if name not in feeds:
            raise FusecError(f"no value for model input {name!r} (role {r['role']})",
                             f"give every per-request input: {', '.join(needed(graph))}")
        out[name] = _check_one(graph, name, r, np.asarray(feeds[name]))
    return out


def _check_constant(name: str, r: dict, value) -> None:
    v = np.asarray(value)
    if tuple(v.shape) != tuple(r["shape"]):
        raise FusecError(f"input {name!r} has shape {tuple(v.shape)}; it is a constant of this build with shape "
                         f"{tuple(r['shape'])}", f"recompile with --input-role {name}=public (or private) to give "
                                                 "it per request")
    if "sha256" not in r:                   # a graph without recorded roles: shape checked only
        return
    ok, where = constant_matches(r, v)
    if not ok:
        at = f" (first difference at index {where})" if where is not None else ""
        raise FusecError(f"input {name!r} differs from the value fixed at compile time ({r.get('value_desc')}){at}",
                         f"it is a constant of this build; recompile with --input-role {name}=public (servers "
                         f"see it) or {name}=private (hidden) to give it per request, or drop it from the input")


def _check_one(graph, name: str, r: dict, v: np.ndarray) -> np.ndarray:
    info = graph.info(name)
    if tuple(v.shape) != info.shape:
        raise FusecError(f"input {name!r} has shape {tuple(v.shape)}, the build expects {info.shape}",
                         "recompile with matching --batch/--seq (or --input-shape), or reshape the input")
    if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_):
        raise FusecError(f"input {name!r} has dtype {v.dtype}, expected {r.get('dtype', info.dtype)}")
    if info.dtype in ("int", "bool") and not (np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_):
        raise FusecError(f"input {name!r} must be integer ({r.get('dtype', info.dtype)}), got dtype {v.dtype}",
                         "token ids and masks are integers; cast with .astype(np.int64)")
    if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
        raise FusecError(f"input {name!r} contains NaN or infinity")
    if r.get("kind") == "mask":
        bad = (v != 0) & (v != 1)
        if bad.any():
            i = tuple(int(k) for k in np.argwhere(bad)[0])
            raise FusecError(f"input {name!r}: value {v[i].item()!r} at index {i} is not 0 or 1 (an attention mask)",
                             "masks hold 1 for real tokens and 0 for padding")
    _check_vocab(graph, name, v)
    contract = (graph.meta.get("input_contract") or {}).get(name)
    if contract is not None and info.dtype == "float":
        _check_contract(name, v, *contract)
    return v


def _check_vocab(graph, name: str, v: np.ndarray) -> None:
    users = [(name, n) for n in graph.consumers(name)]
    for t, n in users:                   # the ids may be reshaped first (gpt2): same values
        if n.op in ("Reshape", "Identity", "Cast") and n.inputs[0] == t:
            users += [(n.outputs[0], m) for m in graph.consumers(n.outputs[0])]
        if n.op == "Gather" and n.inputs[1] == t and graph.is_const(n.inputs[0]):
            vocab = graph.const(n.inputs[0]).shape[n.attrs.get("axis", 0)]
            bad = (v < 0) | (v >= vocab)
            if bad.any():
                i = tuple(int(k) for k in np.argwhere(bad)[0])
                raise FusecError(f"input {name!r}: token id {int(v[i])} at index {i} is outside the vocabulary "
                                 f"[0, {vocab})", "tokenize with the model's own tokenizer")


def _check_contract(name: str, v: np.ndarray, lo: float, hi: float) -> None:
    """A float input must lie in the build's input contract (``passes/ranges``): every proven
    range and ring width assumes it, so a value outside could silently wrap. One line, no hint."""
    v = np.asarray(v, np.float64)
    outside = np.maximum(lo - v, v - hi)
    if v.size == 0 or not np.all(np.isfinite(v)) or outside.max() <= 0:
        return
    i = np.unravel_index(int(np.argmax(outside)), v.shape)
    new_lo = lo if v.min() >= lo else -2.0 ** math.ceil(math.log2(-v.min())) if v.min() < 0 else 0.0
    new_hi = hi if v.max() <= hi else 2.0 ** math.ceil(math.log2(v.max())) if v.max() > 0 else 0.0
    raise FusecError(f"input {name!r}: value {_num(v[i])} at index {tuple(int(k) for k in i)} is outside the input "
                     f"contract [{_num(lo)}, {_num(hi)}] this build was compiled for ({int((outside > 0).sum())} "
                     f"value(s) outside); recompile with --input-range {name}={_num(new_lo)}:{_num(new_hi)} "
                     f"(or any range covering your data) to widen it")


def _num(x) -> str:
    x = float(x)
    return f"{x:g}" if float(f"{x:g}") == x else f"{x:.17g}"


def full_request(graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` plus every constant input's compiled value (what onnxruntime must be fed to
    compute what the build computes)."""
    out = dict(feeds)
    for name, r in roles_of(graph).items():
        if r["role"] == "constant" and name not in out and "value" in r:
            out[name] = np.asarray(r["value"], np.dtype(r["dtype"])).reshape(r["shape"])
    return out
