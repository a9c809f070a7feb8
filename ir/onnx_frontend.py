"""The ONNX frontend: an ``.onnx`` file (or ModelProto) -> a statically shaped IR ``Graph``.

What it does, in order, and why:

1. **Load and check** the model. Anything a user can get wrong (a truncated download, the
   wrong file, a missing external-data file, an invalid graph) becomes a ``CompileError``
   naming the file, never a protobuf traceback.
2. **Fix every shape.** Secure inference needs static shapes (key material is sized per
   element), so dynamic input dims are bound from ``batch``/``seq`` by their names
   (``batch``, ``sequence``, ...), from ``input_shapes``, or from a public input's value.
   A dim that stays dynamic is an error that says which flag to pass.
3. **Split inputs by who knows them.** Float inputs are secret (shared). Integer/bool
   inputs are *client* plaintext (token ids: the owner looks up its own embeddings).
   Inputs whose value is fixed at compile time (attention masks of all ones, zero token
   types, ``arange`` position ids, or whatever the user passes in ``public_inputs``) become
   constants, so the mask arithmetic around them folds away.
4. **Fold constants at the ONNX level.** Every node whose inputs are all known at compile
   time (initializers, public inputs, shapes of static tensors, earlier folded nodes) is
   evaluated with ``onnx.reference`` (exact ONNX semantics, any dtype, any op), so shape
   plumbing (Shape/Gather/Concat/Range/ConstantOfShape/GatherND...) never reaches the IR.
5. **Lower the rest** node by node through the converter table in ``ir/onnx_ops.py``.
   Every IR tensor gets its shape/dtype by evaluating the IR op on placeholder values
   (zeros for non-constant inputs), and is checked against ONNX shape inference where
   that is static.

The result keeps ONNX tensor names for ONNX tensors (so users recognise them in reports)
and derives names for the extra tensors a lowering introduces.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fusec import limits
from fusec.errors import CompileError
from fusec.ir import onnx_checks as checks
from fusec.ir.graph import Graph, TensorInfo
from fusec.ir.ops import OPS, run_node
from fusec.ir.onnx_ops import CONVERTERS, ONNX_KIND

__all__ = ["load_model", "SUPPORTED_OPS", "parse_input_shape"]

#: ONNX ops (default domain) the frontend lowers when their inputs are not all constant.
#: Any standard op whose inputs are all compile-time constants is folded regardless.
SUPPORTED_OPS: list[str] = sorted(CONVERTERS)

_FLOAT_TYPES = {t for t, kind in ONNX_KIND.items() if kind == "float"}

_BATCH_NAME = re.compile(r"^(n|b|bs|batch|.*batch.*)$", re.IGNORECASE)
_SEQ_NAME = re.compile(r"(seq|sequence|length|len\b|_len|tokens?$|past)", re.IGNORECASE)
_TOKEN_ID_NAME = re.compile(r"(^|_)(input_ids|ids|tokens?|token_ids)$", re.IGNORECASE)

#: Ops through which an integer input still "is" its token ids (for classifying inputs).
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


# ====================================================================== public API
def load_model(model: str | os.PathLike | onnx.ModelProto, batch: int | None = None, seq: int | None = None,
               input_shapes: Mapping[str, Sequence[int]] | None = None,
               public_inputs: Mapping[str, Any] | None = None) -> Graph:
    """Load an ONNX model and lower it to a statically shaped IR graph.

    ``batch``/``seq`` bind dynamic dims by name (see module doc); ``input_shapes`` maps an
    input name to its full shape and wins over everything else. ``public_inputs`` maps an
    input name to a value known at compile time (it becomes a constant); a value of
    ``None`` opts an input out of the defaults (``attention_mask`` -> ones,
    ``token_type_ids`` -> zeros, ``position_ids`` -> ``arange(seq)``).
    """
    proto, label = _read(model)
    _check(proto, label)
    if proto.functions:
        proto = _inline(proto, label)
    initializers = {t.name: t for t in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    user_public = dict(public_inputs or {})
    _check_names(inputs, input_shapes, user_public, label)
    shapes = _resolve_shapes(inputs, batch, seq, input_shapes, user_public)
    for vi in inputs:
        limits.check_size(shapes[vi.name], checks.itemsize(vi.type.tensor_type.elem_type), f"input {vi.name!r}")
    public, how = _public_values(inputs, shapes, user_public)

    graph = Graph(proto.graph.name or Path(label).stem or "model")
    ctx = Context(graph, proto, _static_shapes(proto, shapes, public))
    for name, tensor in initializers.items():
        ctx.values[name] = _to_array(tensor, label)
    ctx.values.update(public)
    client = _add_inputs(graph, proto, inputs, shapes, public)
    graph.meta.update({
        "onnx": {"opset": ctx.opset, "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
                 "ir_version": proto.ir_version, "source": label},
        "input_shapes": {vi.name: list(shapes[vi.name]) for vi in inputs},
        "public_inputs": how,
        "client_inputs": client,
    })
    for i, node in enumerate(proto.graph.node):
        ctx.convert(node, i)
    graph.outputs = [ctx.t(o.name) for o in proto.graph.output]
    graph.remove_unused()
    return graph


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"input_ids=1x128"`` -> ``("input_ids", (1, 128))`` (for ``--input-shape``)."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise CompileError(f"cannot parse input shape {text!r}",
                           "write it as NAME=DxDx..., e.g. input_ids=1x128") from None


# ====================================================================== loading and checking
def _read(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The ModelProto, with external data, and a label for messages (the file name)."""
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>"
    path = Path(model)
    label = str(path)
    if not path.is_file():
        raise CompileError(f"model file {label} does not exist" if not path.exists() else f"{label} is not a file",
                           "check the path to the .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises DecodeError, RuntimeWarning, ...)
        raise CompileError(f"{label} is not a readable ONNX model ({type(e).__name__}: {_first_line(e)})",
                           "the file may be truncated or not an ONNX file; re-export or re-download it") from None
    checks.check_strings(proto, label)
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise CompileError(f"{label} does not contain an ONNX model (no graph or IR version)",
                           "the file may be truncated or not an ONNX file; re-export or re-download it")
    _load_external(proto, path, label)
    return proto, label


def _load_external(proto: onnx.ModelProto, path: Path, label: str) -> None:
    """Load external tensor data next to the model, naming the file that is missing."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    base = path.parent
    checks.check_external_data([t for t in _all_tensors(proto.graph) if uses_external_data(t)], base, label)
    try:
        load_external_data_for_model(proto, str(base))
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"{label}: cannot load external tensor data ({_first_line(e)})",
                           "copy the .data file(s) saved with the model next to the .onnx file") from None


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes, subgraphs included (where external data can live)."""
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for g in a.graphs:
                yield from _all_tensors(g)


def _check(proto: onnx.ModelProto, label: str) -> None:
    """onnx.checker on the graph without its big weights (serialising those costs seconds and
    fails past 2 GiB; a corrupt weight is caught when it is read), errors as CompileError."""
    checks.check_opsets(proto, label)
    for t in proto.graph.initializer:
        checks.check_initializer_size(t, label)
    checks.check_model(_light(proto, {}), label)


def _inline(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Inline model-local functions (torch dynamo exports may keep some)."""
    try:
        from onnx import inliner
        return inliner.inline_local_functions(proto)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"{label}: cannot inline the model's local functions ({_first_line(e)})") from None


def _to_array(t: onnx.TensorProto, label: str) -> np.ndarray:
    checks.check_initializer_size(t, label)
    try:
        v = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"{label}: initializer {t.name!r} is corrupt ({_first_line(e)})",
                           "re-export the model") from None
    checks.check_constant_values(t.name, v)
    return v


def _fixed_size_hint(infos: list) -> str | None:
    """Why shapes may not broadcast: a weight of the model (public, e.g. BERT's 512 position
    embeddings) sized for other inputs than the ones compiled for (--seq / --batch)."""
    fixed = [i.shape for i in infos if i is not None and i.visibility == "public"]
    moving = [i.shape for i in infos if i is not None and i.visibility != "public"]
    for c in fixed:
        for m in moving:
            for a, b in zip(reversed(c), reversed(m)):
                if a != b and a != 1 and b != 1:
                    return (f"a weight of the model has {a} where the input-dependent tensor has {b}: the model "
                            f"is built for size {a} on that axis (e.g. its position embeddings); compile with "
                            f"--seq / --batch it supports")
    return None


def _first_line(e: BaseException) -> str:
    return checks.one_line(e, 300)


# ====================================================================== input shapes
def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared dims: an int, a dim_param name, or None (unknown); None if no shape at all."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _check_names(inputs: list[onnx.ValueInfoProto], input_shapes: dict, public: dict, label: str) -> None:
    names = [vi.name for vi in inputs]
    for what, given in (("input_shapes", input_shapes), ("public_inputs", public)):
        for k in given:
            if k not in names:
                raise CompileError(f"{what} names {k!r}, which is not an input of {label}",
                                   f"the model's inputs are: {', '.join(names) or '(none)'}")


def _resolve_shapes(inputs: list[onnx.ValueInfoProto], batch: int | None, seq: int | None,
                    input_shapes: dict[str, tuple[int, ...]], public: dict) -> dict[str, tuple[int, ...]]:
    """Bind every input dim to a number; shared dim_params get one value across inputs."""
    known: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    fixed = {k: v for k, v in input_shapes.items()}
    for k, v in public.items():
        if v is not None and k not in fixed:
            fixed[k] = tuple(np.shape(v))
    for vi in inputs:  # explicit shapes first: they name dim_params for the others
        if vi.name in fixed:
            shapes[vi.name] = _explicit_shape(vi, fixed[vi.name], known)
    for vi in inputs:
        if vi.name not in shapes:
            shapes[vi.name] = _implicit_shape(vi, batch, seq, known)
    return shapes


def _explicit_shape(vi: onnx.ValueInfoProto, shape: tuple[int, ...], known: dict[str, int]) -> tuple[int, ...]:
    dims = _dims(vi)
    if any(d < 0 for d in shape):
        raise CompileError(f"input {vi.name!r}: shape {list(shape)} has a negative dim")
    if dims is not None:
        if len(dims) != len(shape):
            raise CompileError(f"input {vi.name!r} has rank {len(dims)} ({_fmt_dims(dims)}), "
                               f"but the given shape {list(shape)} has rank {len(shape)}")
        for i, (d, s) in enumerate(zip(dims, shape)):
            if isinstance(d, int) and d > 0 and d != s:
                raise CompileError(f"input {vi.name!r}: dim {i} is fixed to {d} by the model, "
                                   f"but the given shape {list(shape)} says {s}")
            if isinstance(d, str):
                known.setdefault(d, s)
    return tuple(shape)


def _implicit_shape(vi: onnx.ValueInfoProto, batch: int | None, seq: int | None,
                    known: dict[str, int]) -> tuple[int, ...]:
    dims = _dims(vi)
    if dims is None:
        raise CompileError(f"input {vi.name!r} has no declared shape",
                           f"pass its shape, e.g. --input-shape {vi.name}=1x128")
    out = []
    for i, d in enumerate(dims):
        v = _bind_dim(d, i, batch, seq, known)
        if v is None:
            what = f"dim {i} ({d!r})" if d else f"dim {i} (unnamed)"
            example = "x".join(str(x) if isinstance(x, int) and x > 0 else "1" if k == 0 else "128"
                               for k, x in enumerate(dims))
            raise CompileError(
                f"input {vi.name!r} has a dynamic {what} in shape {_fmt_dims(dims)} that batch/seq do not fix",
                f"pass --batch/--seq (they bind dims named like batch/sequence), or the input's whole shape, "
                f"e.g. --input-shape {vi.name}={example}")
        if isinstance(d, str):
            known.setdefault(d, v)
        out.append(v)
    return tuple(out)


def _bind_dim(d: int | str | None, i: int, batch: int | None, seq: int | None, known: dict[str, int]) -> int | None:
    """One dim's value: static, shared with an input already bound, or by its name/position."""
    if isinstance(d, int) and d > 0:
        return d
    if isinstance(d, str) and d in known:
        return known[d]
    if isinstance(d, str) and _BATCH_NAME.match(d):
        return batch
    if isinstance(d, str) and _SEQ_NAME.search(d):
        return seq
    if i == 0:
        return batch
    return None


def _fmt_dims(dims: list) -> str:
    return "[" + ", ".join(str(d) if d not in (None, 0) else "?" for d in dims) + "]"


# ====================================================================== inputs: public / client / secret
def _public_values(inputs: list[onnx.ValueInfoProto], shapes: dict[str, tuple[int, ...]], user: dict
                   ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Values of compile-time-known inputs, and how each was chosen (for the report)."""
    values: dict[str, np.ndarray] = {}
    how: dict[str, dict] = {}
    for vi in inputs:
        name, shape = vi.name, shapes[vi.name]
        dtype = _np_dtype(vi)
        if name in user:
            if user[name] is None:
                continue
            values[name] = _as_input_array(user[name], dtype, name)
            how[name] = {"source": "user", "value": _describe(values[name]), "shape": list(shape)}
            continue
        default = default_public_input(name, shape, dtype)
        if default is not None:
            values[name], desc = default
            how[name] = {"source": "default", "value": desc, "shape": list(shape)}
    return values, how


def default_public_input(name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, str] | None:
    """The value an input gets when the user fixes none (and how it is described), or None."""
    low = name.lower()
    if "attention_mask" in low:
        return np.ones(shape, dtype), "all ones (no padding)"
    if "token_type_ids" in low:
        return np.zeros(shape, dtype), "zeros (one segment)"
    if "position_ids" in low:
        n = shape[-1] if shape else 1
        return np.broadcast_to(np.arange(n).astype(dtype), shape).copy(), f"arange({n})"
    return None


def _as_input_array(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    try:
        return np.asarray(value).astype(dtype)
    except (TypeError, ValueError) as e:
        raise CompileError(f"public input {name!r}: cannot use the given value as {dtype} ({e})") from None


def _describe(v: np.ndarray) -> str:
    if v.size and np.all(v == v.flat[0]):
        return f"all {v.flat[0].item()!r}"
    return f"given ({v.dtype}, {v.size} values)"


def _np_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    et = vi.type.tensor_type.elem_type
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(et))
    except Exception:  # noqa: BLE001
        raise CompileError(f"input {vi.name!r} has element type {TensorProto.DataType.Name(et)}, "
                           "which fusec cannot take as an input") from None


def _add_inputs(graph: Graph, proto: onnx.ModelProto, inputs: list[onnx.ValueInfoProto],
                shapes: dict[str, tuple[int, ...]], public: dict[str, np.ndarray]) -> dict[str, str]:
    """Secret float inputs and client int/bool inputs (owner P1); returns why each is client."""
    gather_fed = _gather_index_inputs(proto)
    client: dict[str, str] = {}
    for vi in inputs:
        if vi.name in public:
            continue
        et = vi.type.tensor_type.elem_type
        kind = ONNX_KIND.get(et)
        if kind == "float":
            graph.add_input(vi.name, shapes[vi.name], "float", "secret", owner=1)
        elif kind in ("int", "bool"):
            graph.add_input(vi.name, shapes[vi.name], kind, "client", owner=1)
            client[vi.name] = ("token ids (Gather indices)" if vi.name in gather_fed
                               else "token ids (by name)" if _TOKEN_ID_NAME.search(vi.name)
                               else "integer/bool input, computed on in plaintext by its owner")
        else:
            raise CompileError(f"input {vi.name!r} has element type {TensorProto.DataType.Name(et)}, "
                               "which fusec cannot take as an input",
                               "export the model with float or integer inputs")
    return client


def _gather_index_inputs(proto: onnx.ModelProto) -> set[str]:
    """Inputs that reach a Gather's indices, possibly through casts/reshapes."""
    origin = {vi.name: vi.name for vi in proto.graph.input}
    found: set[str] = set()
    for n in proto.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in origin:
            found.add(origin[n.input[1]])
        if n.op_type in _PASS_THROUGH and n.input and n.input[0] in origin:
            for o in n.output:
                origin[o] = origin[n.input[0]]
    return found


def _all_names(proto: onnx.ModelProto) -> set[str]:
    names = {vi.name for vi in proto.graph.input} | {o.name for o in proto.graph.output}
    for n in proto.graph.node:
        names.update(n.input)
        names.update(n.output)
    names.discard("")
    return names


# ====================================================================== ONNX shape inference (a cross-check)
def _light(proto: onnx.ModelProto, public: dict[str, np.ndarray],
           shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """The model without its big weights (they become typed inputs), inputs fixed to ``shapes``
    and public inputs as initializers: cheap to copy, to check and to run shape inference on."""
    g = proto.graph
    inits, weight_inputs = [], []
    for t in g.initializer:
        n = int(np.prod(t.dims, dtype=np.int64))
        if n > 4096 and t.data_type in _FLOAT_TYPES:
            weight_inputs.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            inits.append(t)
    inputs = []
    init_names = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in init_names:
            continue
        if vi.name in public:
            inits.append(numpy_helper.from_array(public[vi.name], vi.name))
            continue
        shape = shapes.get(vi.name) if shapes else None
        inputs.append(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(shape))
                      if shape is not None else vi)
    # with fixed inputs, declared output dims may disagree with inference: keep only the type
    outputs = ([helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in g.output]
               if shapes is not None else list(g.output))
    graph = helper.make_graph(list(g.node), g.name or "model", inputs + weight_inputs, outputs, inits)
    light = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    light.functions.extend(proto.functions)
    return light


def _static_shapes(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                   public: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Static shapes ONNX shape inference finds (with data propagation), keyed by tensor name.

    Used to cross-check the shapes the lowering computes; a model where inference itself
    fails is still compiled (the lowering computes every shape on its own)."""
    light = _light(proto, public, shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:  # noqa: BLE001
        return {}
    checks.check_inferred_shapes(inferred)          # before anything of that size is allocated or folded
    if checks.data_prop_is_bounded(inferred):
        try:
            inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
        except Exception:  # noqa: BLE001
            pass
        checks.check_inferred_shapes(inferred)
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None and all(isinstance(d, int) for d in dims):
            out[vi.name] = tuple(dims)
    return out


# ====================================================================== the lowering context
class Context:
    """State while lowering one model; the converters in ``onnx_ops`` talk to the graph through it.

    ONNX tensors keep their names in the IR. ``values`` holds every ONNX tensor whose value
    is known at compile time (initializers, public inputs, folded nodes); they enter the
    IR graph as constants only when a lowered node reads them, so unused weights and the
    folded shape plumbing never appear. ``alias`` maps ONNX tensors that a lowering did not
    compute anew (Identity, Dropout, same-kind Cast) to the IR tensor holding them.
    """

    def __init__(self, graph: Graph, proto: onnx.ModelProto, onnx_shapes: dict[str, tuple[int, ...]]):
        self.graph = graph
        self.opsets = {(d.domain or "ai.onnx"): d.version for d in proto.opset_import}
        self.opset = self.opsets.get("ai.onnx", 1)
        self.ir_version = proto.ir_version
        self.onnx_shapes = onnx_shapes
        self.values: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}
        self.reserved: set[str] = _all_names(proto)   # fresh names never take an ONNX tensor's name
        self.graph_outputs: set[str] = {o.name for o in proto.graph.output}
        self.node: onnx.NodeProto | None = None
        self.node_name = ""
        self.budget = limits.Budget(limits.current().fold_seconds)   # all constant folds together
        self.folded_bytes = 0

    # ------------------------------------------------------------------ the driver
    def convert(self, node: onnx.NodeProto, index: int) -> None:
        """Fold ``node`` if all its inputs are constants, else lower it with its converter."""
        self.node = node
        self.node_name = node.name or f"{node.op_type}_{index}"
        domain = node.domain or "ai.onnx"
        if all(self.is_const(i) for i in node.input if i) and self._fold(node):
            return
        self._check_sizes(node)
        conv = CONVERTERS.get(node.op_type) if domain == "ai.onnx" else None
        if conv is None and domain == "ai.onnx":     # the input owner's plaintext, or a short refusal
            from fusec.ir import owner_prefix  # noqa: PLC0415
            return owner_prefix.convert(self, node)
        if conv is None:
            raise self.unsupported()
        try:
            conv(self, node, attributes(node))
        except CompileError:
            raise
        except Exception as e:  # noqa: BLE001  (a malformed node the checker let through)
            raise CompileError(f"node {self.node_name!r} ({node.op_type}): cannot lower it: "
                               f"{type(e).__name__}: {_first_line(e)}",
                               "check the node's attributes and inputs (onnx.checker with full_check=True)") from None

    def _check_sizes(self, node: onnx.NodeProto) -> None:
        """Before lowering: the node's output sizes by ONNX shape inference on the node alone
        (constants small enough as values, the rest by shape), unless its shape follows from a
        rule the IR checks without allocating (elementwise, broadcasting, MatMul)."""
        if node.op_type in _RULE_ONNX_OPS and not node.domain:
            return
        consts, typed = {}, {}
        for i in node.input:
            if not i:
                continue
            if self.is_const(i):
                consts[i] = self.value(i)
            elif self.alias.get(i, i) in self.graph.tensors:
                info = self.graph.info(self.alias.get(i, i))
                typed[i] = (info.shape, {"float": TensorProto.FLOAT, "int": TensorProto.INT64,
                                         "bool": TensorProto.BOOL}.get(info.dtype, TensorProto.FLOAT))
        checks.check_fold(node, consts, self.opsets, self.ir_version, f"node {self.node_name!r} ({node.op_type})",
                          typed)

    def unsupported(self) -> CompileError:
        node = self.node
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        return CompileError(
            f"node {self.node_name!r}: ONNX op {op!r} (model opset {self.opset}) has no secure lowering "
            f"for inputs that are secret (`fusec ops` lists the {len(SUPPORTED_OPS)} that have one)",
            "ops whose inputs are all compile-time constants are folded, and ops on the input owner's "
            "data alone run in its plaintext; otherwise re-export the model so it avoids this op "
            "(another opset or a simpler formulation), or make the inputs that feed it public")

    def _fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate a node on constants (onnxruntime, else the ONNX reference evaluator, which
        has gaps of its own); False lets the node's converter try."""
        feeds = {i: self.value(i) for i in node.input if i}
        what = f"node {self.node_name!r} ({node.op_type})"
        checks.check_fold(node, feeds, self.opsets, self.ir_version, what)   # sizes before evaluating
        errors = []
        for evaluate in (self._eval_ort, self._eval_reference):
            try:
                with np.errstate(all="ignore"):
                    outs = evaluate(node, feeds)
                break
            except CompileError:
                raise
            except Exception as e:  # noqa: BLE001
                if self.budget.left() <= 0:         # onnxruntime stopped by the budget: no second try
                    raise self.budget.error(f"folding {what}") from None
                errors.append(_first_line(e))
        else:
            if node.op_type in CONVERTERS and node.domain in ("", "ai.onnx"):
                return False
            raise CompileError(f"node {self.node_name!r} ({node.op_type}) has constant inputs but could not be "
                               f"evaluated at compile time: {errors[-1]}")
        for name, v in zip(node.output, outs):
            if name:
                v = np.asarray(v)
                self._check_folded(name, v, what)
                self.set_value(name, v)
        return True

    def _check_folded(self, name: str, v: np.ndarray, what: str) -> None:
        """A folded value: its size (and all folded constants together) within the limits; a
        Constant node's value by the initializers' rules; NaN from folding refused."""
        lim = limits.current()
        limits.check_size(v.shape, v.dtype.itemsize, f"{what}: output {name!r}")
        self.folded_bytes += v.nbytes
        if self.folded_bytes > lim.max_bytes:
            raise CompileError(f"{what}: folded constants take {limits.fmt_bytes(self.folded_bytes)} together, over "
                               f"the limit of {limits.fmt_bytes(lim.max_bytes)}", limits.HINT)
        if self.node.op_type == "Constant":
            checks.check_constant_values(name, v, f"constant (node {self.node_name!r})")
        elif v.dtype.kind == "f" and v.size and np.isnan(v).any():
            raise CompileError(f"{what}: folding gives NaN in {name!r} (e.g. 0/0 or sqrt of a negative constant)",
                               "the model's constants are corrupt; re-export it")

    def _eval_ort(self, node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
               for k, v in feeds.items()]
        outs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
        g = helper.make_graph([node], "fold", ins, outs)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("" if k == "ai.onnx" else k, v)
                                                 for k, v in self.opsets.items()], ir_version=self.ir_version)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a failure falls back to the reference; don't print it
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        run_opts = ort.RunOptions()
        run_opts.log_severity_level = 4
        with self.budget.guard(f"folding node {self.node_name!r} ({node.op_type})", run_opts):
            got = dict(zip([o.name for o in outs], sess.run(None, feeds, run_opts)))
        return [got.get(o) for o in node.output]

    def _eval_reference(self, node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        with self.budget.guard(f"folding node {self.node_name!r} ({node.op_type})"):
            return ReferenceEvaluator(node, opsets=self._opsets_for_ref()).run(None, feeds)

    def _opsets_for_ref(self) -> dict[str, int]:
        return {("" if k == "ai.onnx" else k): v for k, v in self.opsets.items()}

    # ------------------------------------------------------------------ ONNX-level queries
    def is_const(self, name: str) -> bool:
        if name in self.values:
            return True
        t = self.alias.get(name, name)
        return self.graph.is_const(t)

    def value(self, name: str) -> np.ndarray:
        """The compile-time value of ONNX tensor ``name`` (it must be constant)."""
        if name in self.values:
            return self.values[name]
        return self.graph.const(self.alias.get(name, name))

    def const_input(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        """Input ``i`` as a constant array, None if absent; an error names ``what`` if not constant."""
        if len(node.input) <= i or not node.input[i]:
            return None
        if not self.is_const(node.input[i]):
            raise CompileError(f"node {self.node_name!r} ({node.op_type}): input {i} ({what}) must be known at "
                               f"compile time, but {node.input[i]!r} is computed from model inputs",
                               "make the inputs it depends on public (public_inputs / --public-input) or "
                               "re-export with static shapes")
        return self.value(node.input[i])

    def t(self, name: str) -> str:
        """The IR tensor holding ONNX tensor ``name``, adding it as a constant if it is one."""
        if name in self.values:
            if name not in self.graph.tensors:
                self.graph.add_const(name, _ir_array(self.values[name]))
            return name
        ir = self.alias.get(name, name)
        if ir not in self.graph.tensors:
            raise CompileError(f"node {self.node_name!r} reads tensor {name!r}, which nothing defines")
        return ir

    def info(self, ir_name: str) -> TensorInfo:
        return self.graph.info(ir_name)

    def shape(self, ir_name: str) -> tuple[int, ...]:
        return self.graph.info(ir_name).shape

    # ------------------------------------------------------------------ building
    def fresh(self, base: str) -> str:
        """A tensor/node name used by neither the IR nor the ONNX model."""
        name, i = base, 0
        while name in self.reserved or name in self.graph.tensors or name in self.graph.g:
            i += 1
            name = f"{base}_{i}"
        return name

    def const(self, value: Any, base: str = "const", dtype: Any = None) -> str:
        """A new IR constant (scalars from attributes, index arrays, masks)."""
        arr = np.asarray(value, dtype=dtype)
        return self.graph.add_const(self.fresh(f"{self.node_name}/{base}"), arr)

    def scalar(self, value: float, like: str | None = None) -> str:
        """A scalar constant of the same kind as IR tensor ``like`` (float32 for floats:
        ONNX float attributes are float32, so this is exact and keeps folded weights float32)."""
        kind = self.info(like).dtype if like else "float"
        dtype = {"float": np.float32, "int": np.int64, "bool": np.bool_}[kind]
        return self.const(np.asarray(value).astype(dtype), "c")

    def set_value(self, onnx_name: str, value: np.ndarray) -> None:
        """ONNX tensor ``onnx_name`` is the constant ``value``."""
        self.values[onnx_name] = value
        self._check_shape(onnx_name, value.shape)

    def emit(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        """Add one single-output IR node; returns its output's IR name (``out`` if given)."""
        return self.emit_multi(op, inputs, [out], **attrs)[0]

    def emit_multi(self, op: str, inputs: list[str], outs: list[str | None], **attrs) -> list[str]:
        """Add an IR node (or fold it when every input is constant); ``outs`` are ONNX names or
        None for new intermediate tensors."""
        infos = [self.graph.info(t) if t else None for t in inputs]
        names = [o if o else self.fresh(f"{self.node_name}/{op}") for o in outs]
        folded = all(i is None or i.visibility == "public" for i in infos)
        try:
            results = run_node(op, self._placeholders(inputs, infos), attrs) if folded else None
            out_infos = None if folded else self._infer(op, inputs, infos, attrs)
        except Exception as e:  # noqa: BLE001
            raise CompileError(f"node {self.node_name!r} ({self.node.op_type}): cannot lower to IR {op} "
                               f"with inputs {[i.shape if i else None for i in infos]} and {attrs}: "
                               f"{_first_line(e)}", _fixed_size_hint(infos)) from None
        if folded:
            for n, o, v in zip(names, outs, results):
                v = _ir_array(np.asarray(v))
                self.graph.add_const(n, v)
                if o:
                    self.set_value(o, v)
            return names
        for (shape, kind), n in zip(out_infos, names):
            limits.check_size(shape, 8, f"node {self.node_name!r} ({self.node.op_type}): IR tensor {n!r}")
        vis, owner = _visibility(infos)
        new_infos = [TensorInfo(shape, kind, vis, owner=owner) for shape, kind in out_infos]
        for o, i in zip(outs, new_infos):
            if o:
                self._check_shape(o, i.shape)
        self.graph.add_node(op, inputs, names, name=self.graph.fresh(self.node_name), infos=new_infos, **attrs)
        return names

    def _infer(self, op: str, inputs: list[str], infos: list[TensorInfo | None], attrs: dict
               ) -> list[tuple[tuple[int, ...], str]]:
        """(shape, dtype kind) of each output. Elementwise ops and MatMul by rule (their dtype
        from a one-element run); anything else by running the op on placeholders."""
        shapes = _rule_shape(op, [i.shape if i is not None else None for i in infos])
        if shapes is not None:
            tiny = [None if v is None else v.reshape(-1)[:1] for v in self._placeholders(inputs, infos, tiny=True)]
            return [(shapes, _kind(np.asarray(v))) for v in run_node(op, tiny, attrs)]
        return [(np.shape(v), _kind(np.asarray(v))) for v in run_node(op, self._placeholders(inputs, infos), attrs)]

    def bind(self, onnx_name: str, ir_name: str) -> None:
        """ONNX tensor ``onnx_name`` is IR tensor ``ir_name`` (no new value computed). A graph
        output gets a node of its own so it keeps its ONNX name."""
        if not onnx_name:
            return
        if self.graph.is_const(ir_name):
            self.set_value(onnx_name, self.graph.const(ir_name))
        elif onnx_name in self.graph_outputs:
            kind = self.info(ir_name).dtype
            if kind == "float":
                self.emit("Identity", [ir_name], out=onnx_name)
            else:
                self.emit("Cast", [ir_name], out=onnx_name, to=kind)
        else:
            self._check_shape(onnx_name, self.shape(ir_name))
            self.alias[onnx_name] = ir_name

    def _placeholders(self, inputs: list[str], infos: list[TensorInfo | None], tiny: bool = False
                      ) -> list[np.ndarray | None]:
        """Constants as they are, other tensors as zeros (one zero if ``tiny``): enough to get
        every output's shape and dtype."""
        out: list[np.ndarray | None] = []
        for t, i in zip(inputs, infos):
            if i is None:
                out.append(None)
            elif self.graph.is_const(t):
                out.append(self.graph.const(t))
            else:
                dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_}[i.dtype]
                out.append(np.zeros(1 if tiny else i.shape, dtype))
        return out

    def _check_shape(self, onnx_name: str, shape: tuple[int, ...]) -> None:
        want = self.onnx_shapes.get(onnx_name)
        if want is not None and tuple(want) != tuple(shape):
            raise CompileError(f"node {self.node_name!r} ({self.node.op_type if self.node else '?'}): tensor "
                               f"{onnx_name!r} comes out with shape {list(shape)}, but ONNX shape inference "
                               f"says {list(want)}",
                               "this is a frontend bug or an inconsistent --input-shape; please report it "
                               "with the model")


_SAME_SHAPE_OPS = {n for n, d in OPS.items() if d.kind == "unary"}
#: ONNX ops whose lowering sizes its output by rule (no placeholder evaluation): no extra size check
_RULE_ONNX_OPS = {"Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf", "Reciprocal", "Identity",
                  "Add", "Sub", "Mul", "Div", "Pow", "Where", "MatMul", "Cast", "Dropout", "Softmax",
                  "LayerNormalization", "Gelu"}
_BROADCAST_OPS = {n for n, d in OPS.items() if d.kind == "binary"} | {"Where"}


def _rule_shape(op: str, shapes: list[tuple[int, ...] | None]) -> tuple[int, ...] | None:
    """Output shape of single-output ops whose shape follows a simple rule, None otherwise
    (saves evaluating big MatMuls and erf's on placeholders)."""
    if op in _SAME_SHAPE_OPS and len(shapes) == 1:
        return tuple(shapes[0])
    if op in _BROADCAST_OPS and None not in shapes:
        return tuple(np.broadcast_shapes(*shapes))
    if op == "MatMul":
        a, b = shapes
        if not a or not b:
            raise ValueError("MatMul of a scalar")
        a2, b2 = (a if len(a) > 1 else (1, *a)), (b if len(b) > 1 else (*b, 1))
        if a2[-1] != b2[-2]:
            raise ValueError(f"MatMul inner dims differ: {list(a)} @ {list(b)}")
        out = tuple(np.broadcast_shapes(a2[:-2], b2[:-2])) + (a2[-2], b2[-1])
        return out[:-2] + out[-2 + (len(a) == 1): len(out) - (len(b) == 1)]
    return None


def _visibility(infos: list[TensorInfo | None]) -> tuple[str, int | None]:
    """Secret if any input is secret, else client (computed by the input owner)."""
    vis = [i.visibility for i in infos if i is not None]
    if "secret" in vis:
        return "secret", None
    owners = [i.owner for i in infos if i is not None and i.visibility == "client" and i.owner is not None]
    return "client", owners[0] if owners else 1


def _kind(v: np.ndarray) -> str:
    if v.dtype == np.bool_:
        return "bool"
    if np.issubdtype(v.dtype, np.integer):
        return "int"
    return "float"


def _ir_array(v: np.ndarray) -> np.ndarray:
    """Constants as the IR keeps them: float16/bfloat16/float8 widen to float32."""
    v = np.asarray(v)
    if v.dtype == np.bool_ or np.issubdtype(v.dtype, np.integer) or v.dtype in (np.float32, np.float64):
        return v
    try:
        return v.astype(np.float32)
    except (TypeError, ValueError):
        raise CompileError(f"constant of dtype {v.dtype} cannot be used by the IR") from None


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded, tensors as arrays)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out
