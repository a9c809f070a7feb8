"""Any ONNX op in the input owner's plaintext prefix (issue 12, item 2).

What depends only on the owner's inputs and public constants never needs a secure
lowering: the owner computes it in plaintext before sharing. RoBERTa's position ids
(``CumSum`` of the padding mask), DeBERTa's relative positions (``GatherElements``),
``Range``/``Expand`` on ids, ``NonZero``-free index plumbing of every kind: the frontend
keeps such a node as one IR op, :data:`OP` (``OnnxNode``), carrying the ONNX node itself,
and the owner evaluates it with onnxruntime (the ONNX reference evaluator where
onnxruntime lacks it) -- exact ONNX semantics, any op, any dtype. ``passes/client_split``
places it at the owner; a secret input to it is a compile error naming the node.

The IR op's attributes: the serialized node (base64), the model's opsets and IR version,
the ONNX element type of every input (the IR keeps ints as int64 and floats as float64,
so inputs are cast back before the call) and the static output shapes (a node whose
output shape would depend on the input's values is refused at run time, naming it).
"""
from __future__ import annotations

import base64
from functools import lru_cache

import numpy as np
import onnx
from onnx import helper

from fusec.errors import CompileError, FusecError
from fusec.ir.ops import OPS, OpDef

OP = "OnnxNode"


def convert(cx, node: onnx.NodeProto) -> None:
    """The frontend's fallback for an op without a secure converter: at the owner when its
    inputs allow; ``GatherElements`` with constant indices as data movement on secrets;
    else a short refusal naming the node, the secret input and where the supported list is."""
    if node.op_type == "GatherElements" and cx.is_const(node.input[1]):
        return _gather_elements(cx, node)        # data movement: free on shares, plain at the owner
    if owner_only(cx, node):
        return emit(cx, node)
    secret = next((i for i in node.input if i and not cx.is_const(i)
                   and cx.info(cx.t(i)).visibility != "client"), "?")
    raise CompileError(f"node {cx.node_name!r}: ONNX op {node.op_type!r} (opset {cx.opset}) has no secure lowering, "
                       f"and it reads {secret!r}, which the secure part computes (the input owner runs any op, "
                       "but only on its own inputs and constants)",
                       "`fusec ops` lists the ops the secure part lowers; re-export the model without this op, or "
                       "make what it reads the owner's (--input-role) or constant (--public-input)")


def _gather_elements(cx, node: onnx.NodeProto) -> None:
    """``GatherElements(x, idx, axis)`` with public ``idx``: a Gather of the flattened ``x`` at
    the flat positions ``idx`` names (free data movement on shares)."""
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    idx = np.asarray(cx.value(node.input[1]), np.int64)
    axis = int(next((a.i for a in node.attribute if a.name == "axis"), 0)) % len(shape)
    idx = np.where(idx < 0, idx + shape[axis], idx)
    grid = list(np.indices(idx.shape))
    grid[axis] = idx
    flat = np.ravel_multi_index(tuple(grid), shape)
    xs = cx.emit("Reshape", [x], shape=[int(np.prod(shape))])
    out = node.output[0]
    cx.emit("Gather", [xs, cx.const(flat, "flat_index")], out=out, axis=0)


def owner_only(cx, node: onnx.NodeProto) -> bool:
    """Every input is a constant or the owner's plaintext (no secret wire)."""
    ins = [i for i in node.input if i]
    return bool(ins) and any(not cx.is_const(i) for i in ins) and all(
        cx.is_const(i) or cx.info(cx.t(i)).visibility == "client" for i in ins)


def emit(cx, node: onnx.NodeProto) -> None:
    """Add ``node`` to the IR as one owner-side :data:`OP`; outputs keep their ONNX names."""
    ins = [cx.t(i) if i else "" for i in node.input]
    err = None
    for types in _type_guesses(cx, node, ins):      # the IR keeps ints as int64: which width the op wants
        attrs = {"onnx": base64.b64encode(node.SerializeToString()).decode(), "onnx_op": node.op_type,
                 "opsets": {("" if k == "ai.onnx" else k): v for k, v in cx.opsets.items()},
                 "ir_version": cx.ir_version, "in_types": types}
        feeds = [cx.graph.const(t) if t and cx.graph.is_const(t) else
                 (np.zeros(cx.info(t).shape, _np(types[k])) if t else None) for k, t in enumerate(ins)]
        try:
            outs = _run(attrs, feeds)
            break
        except Exception as e:  # noqa: BLE001
            err = e
    else:
        raise CompileError(f"node {cx.node_name!r} ({node.op_type}): the input owner cannot evaluate it "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    shapes = [list(cx.onnx_shapes.get(o, np.shape(v))) for o, v in zip(node.output, outs)]
    attrs["out_shapes"] = shapes
    names = [o if o else cx.fresh(f"{cx.node_name}/unused") for o in node.output]
    from fusec.ir.graph import TensorInfo  # noqa: PLC0415
    infos = [TensorInfo(tuple(s), _kind(np.asarray(v)), "client", owner=1) for s, v in zip(shapes, outs)]
    cx.graph.add_node(OP, ins, names, name=cx.graph.fresh(cx.node_name), infos=infos, **attrs)


def _type_guesses(cx, node: onnx.NodeProto, ins: list[str]):
    """Element types to try for the node's inputs: constants as they are; the owner's ints as
    int64, then as the width of an integer constant beside them, then int32 (the IR does not
    keep the model's integer widths; the values are the same)."""
    T = onnx.TensorProto
    consts = {i: helper.np_dtype_to_tensor_dtype(np.asarray(cx.graph.const(t)).dtype)
              for i, t in enumerate(ins) if t and cx.graph.is_const(t)}
    widths = [T.INT64] + [v for v in consts.values() if v in (T.INT32, T.INT16, T.INT8, T.UINT8)] + [T.INT32]
    seen = set()
    for w in widths:
        types = []
        for i, t in enumerate(ins):
            if not t:
                types.append(0)
            elif i in consts:
                types.append(consts[i])
            else:
                types.append({"float": T.FLOAT, "int": w, "bool": T.BOOL}[cx.info(t).dtype])
        if tuple(types) not in seen:
            seen.add(tuple(types))
            yield types


def _np(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _kind(v: np.ndarray) -> str:
    if v.dtype == np.bool_:
        return "bool"
    return "int" if np.issubdtype(v.dtype, np.integer) else "float"


@lru_cache(maxsize=256)
def _session(blob: str, opsets: tuple, ir_version: int, in_sig: tuple):
    """An onnxruntime session for one node (cached: the owner evaluates it once per request)."""
    import onnxruntime as ort  # noqa: PLC0415

    node = onnx.NodeProto.FromString(base64.b64decode(blob))
    ins = [helper.make_tensor_value_info(n, t, shape) for n, t, shape in in_sig]
    outs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
    g = helper.make_graph([node], "owner", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=ir_version)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]), node


def _run(attrs: dict, inputs: list) -> list[np.ndarray]:
    node = onnx.NodeProto.FromString(base64.b64decode(attrs["onnx"]))
    feeds = {}
    for name, t, v in zip(node.input, attrs["in_types"], inputs):
        if name and v is not None:
            feeds[name] = np.asarray(v).astype(_np(t))
    opsets = tuple(sorted(attrs["opsets"].items()))
    sig = tuple((n, t, list(np.shape(feeds[n]))) for n, t in zip(node.input, attrs["in_types"]) if n in feeds)
    try:
        sess, node = _session(attrs["onnx"], opsets, attrs["ir_version"], tuple((n, t, tuple(s)) for n, t, s in sig))
        got = dict(zip([o for o in node.output if o], sess.run(None, feeds)))
    except Exception:  # noqa: BLE001  (an op onnxruntime lacks: the reference evaluator)
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415
        got = dict(zip([o for o in node.output if o], ReferenceEvaluator(node, opsets=dict(opsets)).run(None, feeds)))
    return [np.asarray(got[o]) if o else None for o in node.output]


def _ref(inputs: list, attrs: dict) -> list[np.ndarray]:
    """The IR reference: run the ONNX node; outputs as the IR keeps them (float64 / int64 / bool)."""
    outs = _run(attrs, inputs)
    res = []
    for i, (v, shape) in enumerate(zip(outs, attrs.get("out_shapes", [None] * len(outs)))):
        if v is None:
            res.append(None)
            continue
        if shape is not None and list(v.shape) != list(shape):
            raise FusecError(f"ONNX node {attrs.get('onnx_op')} (owner side): output {i} has shape {list(v.shape)} "
                             f"for this input, the build was compiled for {list(shape)}",
                             "its output shape depends on the input's values; fix the input's shape or value")
        res.append(v if v.dtype == np.bool_ else v.astype(np.int64) if np.issubdtype(v.dtype, np.integer)
                   else v.astype(np.float64))
    return res


OPS[OP] = OpDef(OP, "misc", _ref, False, "an ONNX node the input owner evaluates in plaintext (ir/owner_prefix)")


def ops_text(width: int = 100) -> str:
    """What ``fusec ops`` prints: the secure lowerings, and where any other op may run."""
    import textwrap  # noqa: PLC0415

    from fusec.ir.onnx_frontend import SUPPORTED_OPS  # noqa: PLC0415
    secure = sorted(set(SUPPORTED_OPS) | {"GatherElements"})
    lines = [f"ONNX ops (default domain) lowered on secret data ({len(secure)}):"]
    lines += textwrap.wrap(", ".join(secure), width, initial_indent="  ", subsequent_indent="  ")
    lines += ["", "Anywhere else, any ONNX op:",
              "  - all inputs constant (weights, shapes, constant inputs): folded at compile time;",
              "  - only the input owner's inputs and constants (ids, masks: CumSum position ids, Range, comparisons,",
              "    casts, Where, GatherElements on ids ...): run in plaintext by the owner before sharing",
              "    (onnxruntime, or the ONNX reference evaluator); `fusec inspect` shows the split.",
              "  - GatherElements on secret data: with constant indices only (free data movement)."]
    return "\n".join(lines)
