"""Input roles: who knows each graph input, decided at compile time (issue 12, item 1).

Every ONNX graph input gets one role:

- ``private``: held by the input owner only; whatever the secure part needs of it enters as
  masked wires (``x + r``). The default for data (token ids, float features) and the
  choice for an attention mask whose padding (the true length) must stay hidden: the mask
  arithmetic runs at the owner and its result is shared like any other value.
- ``public``: given per request and revealed to both servers (the owner sends it with a
  zero mask). One build serves every value, e.g. an attention mask when the length may leak.
- ``constant``: fixed at compile time (``--public-input NAME=FILE``, or the defaults: an
  attention mask of ones, zero token types, ``arange`` position ids); folded into the build.
  A run-time value for it must equal the compiled one.

:func:`plan` turns the user's flags into what the frontend needs (the constant values, and
``None`` for names opted out of a default); :func:`record` writes ``graph.meta["input_roles"]``
after the frontend: per input its role, shape, dtype, kind (ids / mask / data) and what it
leaks, plus a constant's value so that ``fusec run`` can check a value given for it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fusec.errors import CompileError

ROLES = ("private", "public", "constant")

#: what each role reveals, as ``inspect`` prints it
LEAKS = {
    "private": "nothing but its shape (the owner shares what the secure part needs)",
    "public": "its value, to both servers, with every request",
    "constant": "its compile-time value, to anyone holding the build (one value per build)",
}

#: constants up to this many elements are kept in the IR meta so a run-time value can be compared
_KEEP_VALUES = 1 << 16


@dataclass
class RolePlan:
    """The user's role choices, resolved before the frontend runs."""
    roles: dict[str, str] = field(default_factory=dict)        # explicit --input-role choices
    public_inputs: dict[str, Any] = field(default_factory=dict)  # for load_model: value, or None = opt out


def parse_role(text: str) -> tuple[str, str]:
    """``"attention_mask=public"`` -> ``("attention_mask", "public")`` (for ``--input-role``)."""
    name, sep, role = text.partition("=")
    role = role.strip().lower()
    if not sep or not name.strip() or role not in ROLES:
        raise CompileError(f"--input-role {text!r} is not NAME=ROLE with ROLE one of {', '.join(ROLES)}",
                           "for example --input-role attention_mask=public")
    return name.strip(), role


def plan(roles: Mapping[str, str] | None, constants: Mapping[str, Any] | None) -> RolePlan:
    """Frontend arguments for these choices. A name given a value (``--public-input``) is a
    constant; ``private``/``public`` opt the input out of any default constant; ``constant``
    without a value takes the default (the frontend refuses a name it has no default for)."""
    roles = dict(roles or {})
    constants = dict(constants or {})
    for name, role in roles.items():
        if role not in ROLES:
            raise CompileError(f"input {name!r}: unknown role {role!r}", f"use one of {', '.join(ROLES)}")
        if name in constants and role != "constant":
            raise CompileError(f"input {name!r} is given a compile-time value (--public-input) and role {role!r}",
                               f"drop --public-input {name}=... for a per-request input, or use role constant")
    public = dict(constants)
    for name, role in roles.items():
        if role in ("private", "public"):
            public[name] = None
    return RolePlan(roles, public)


def record(graph, proto_inputs: list, plan_: RolePlan) -> dict[str, dict]:
    """``graph.meta["input_roles"]`` from the frontend's result; returns it.

    ``proto_inputs``: (name, numpy dtype) of every ONNX graph input, in order."""
    from fusec.ir.onnx_frontend import default_public_input  # noqa: PLC0415

    shapes = graph.meta.get("input_shapes", {})
    fixed = graph.meta.get("public_inputs", {})
    out: dict[str, dict] = {}
    for name, dtype in proto_inputs:
        shape = tuple(shapes.get(name, ()))
        entry: dict[str, Any] = {"shape": list(shape), "dtype": str(np.dtype(dtype))}
        if name in fixed:
            entry["role"] = "constant"
            value = plan_.public_inputs.get(name)
            if value is None:
                value = default_public_input(name, shape, np.dtype(dtype))[0]
            value = np.asarray(value).astype(dtype)
            entry["value_desc"] = fixed[name].get("value")
            entry["source"] = fixed[name].get("source")
            entry["sha256"] = _digest(value)
            if value.size <= _KEEP_VALUES:
                entry["value"] = value.tolist()
        elif name in graph.inputs:
            role = plan_.roles.get(name, "private")
            if role == "constant":
                raise CompileError(f"input {name!r}: role constant needs a value",
                                   f"pass --public-input {name}=FILE.npy (no default exists for this name)")
            entry["role"] = role
        else:
            entry["role"] = plan_.roles.get(name, "private")
            entry["unused"] = True           # the model's output does not depend on it
        entry["kind"] = kind_of(graph, name, dtype)
        entry["leaks"] = LEAKS[entry["role"]]
        out[name] = entry
    graph.meta["input_roles"] = out
    return out


def kind_of(graph, name: str, dtype) -> str:
    """``ids`` (token ids: the vocabulary bounds them), ``mask`` (0/1), ``data`` otherwise."""
    dt = np.dtype(dtype)
    if dt.kind in "iub" and "mask" in name.lower():
        return "mask"
    if name in graph.inputs and _feeds_gather(graph, name):
        return "ids"
    if dt.kind in "iu" and name in graph.meta.get("client_inputs", {}) and "token ids" in \
            graph.meta["client_inputs"][name]:
        return "ids"
    return "data"


def _feeds_gather(graph, name: str) -> bool:
    todo, seen = [name], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n in graph.consumers(t):
            if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1] == t:
                return True
            if n.op in ("Reshape", "Identity", "Cast", "Expand") and n.inputs[0] == t:
                todo.extend(n.outputs)
    return False


def onnx_inputs(model) -> list[tuple[str, np.dtype]]:
    """(name, numpy dtype) of a model's graph inputs (initializers excluded), read cheaply;
    empty for an unreadable file (the frontend then refuses it with the reason)."""
    import onnx  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415

    try:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model), load_external_data=False)
    except Exception:  # noqa: BLE001  (a bad file: the frontend says why, naming it)
        return []
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        except Exception:  # noqa: BLE001  (the frontend already refused such an input)
            dt = np.dtype(np.float32)
        out.append((vi.name, dt))
    return out


def _digest(v: np.ndarray) -> str:
    v = np.ascontiguousarray(v)
    return hashlib.sha256(str(v.dtype).encode() + str(v.shape).encode() + v.tobytes()).hexdigest()


def constant_matches(entry: dict, value: np.ndarray) -> tuple[bool, tuple | None]:
    """Whether a run-time value equals a constant input's compiled value; the first differing
    index when the value is kept in the meta."""
    v = np.asarray(value)
    want_dtype = np.dtype(entry["dtype"])
    try:
        cast = v.astype(want_dtype)
    except (TypeError, ValueError):
        return False, None
    if not np.array_equal(cast, v):
        return False, None
    if "value" in entry:
        want = np.asarray(entry["value"], want_dtype).reshape(entry["shape"])
        diff = np.argwhere(want != cast)
        return (len(diff) == 0), (tuple(int(i) for i in diff[0]) if len(diff) else None)
    return _digest(cast) == entry["sha256"], None
