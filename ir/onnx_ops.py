"""ONNX op -> IR converters, one function per ONNX op, registered in ``CONVERTERS``.

A converter runs only for nodes that have at least one non-constant input (nodes on
constants alone are folded by the frontend before dispatch). It reads its inputs through
the lowering ``Context`` (``cx.t(name)`` gives the IR tensor, ``cx.const_input`` a
compile-time array) and adds IR nodes with ``cx.emit``, which folds on its own whenever
every input of an IR node is constant (e.g. a Conv weight's reshape/transpose). Each
converter names its last IR output after the ONNX output, so ONNX tensor names survive.

Lowering rules the rest of the compiler relies on (see ``ir/ops.py``): axes are
non-negative, Reshape/Expand shapes are static and fully resolved, Slice bounds are
clamped, and every value that decides a shape is a compile-time constant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnx
from onnx import TensorProto

from fusec.errors import CompileError
from fusec.ir.ops import run_node

if TYPE_CHECKING:
    from fusec.ir.onnx_frontend import Context

Converter = Callable[["Context", onnx.NodeProto, dict], None]
CONVERTERS: dict[str, Converter] = {}

#: ONNX element type -> IR dtype kind.
ONNX_KIND: dict[int, str] = {
    **{t: "float" for t in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)},
    **{t: "int" for t in (TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
                          TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64)},
    TensorProto.BOOL: "bool",
}

#: What a max-pool window pads with: the float32 lowest value, like exported attention masks
#: (a later pass clamps such constants to the ring's range).
POOL_PAD_MIN = float(np.finfo(np.float32).min)

Step = tuple[str, list[str], dict[str, Any]]


def register(*ops: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return deco


# ====================================================================== helpers
def _in(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _out(node: onnx.NodeProto, i: int = 0) -> str:
    return node.output[i] if len(node.output) > i else ""


def _err(cx: Context, msg: str, hint: str | None = None) -> CompileError:
    return CompileError(f"node {cx.node_name!r} ({cx.node.op_type}): {msg}", hint)


def _axis(cx: Context, axis: Any, rank: int) -> int:
    """ONNX axis in [-rank, rank) -> non-negative."""
    a = int(axis)
    if not -rank <= a < max(rank, 1):
        raise _err(cx, f"axis {a} is out of range for rank {rank}")
    return a % rank if rank else 0


def _axes(cx: Context, axes: Any, rank: int) -> list[int]:
    out = [_axis(cx, a, rank) for a in np.asarray(axes).reshape(-1)]
    if len(set(out)) != len(out):
        raise _err(cx, f"repeated axes {list(np.asarray(axes).reshape(-1))}")
    return out


def _ints(v: Any) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _chain(cx: Context, x: str, steps: list[Step], out: str) -> str:
    """Apply ``steps`` to ``x`` in turn (each step: op, extra inputs after the running tensor,
    attrs); the last one produces ONNX tensor ``out``. No steps: ``out`` is ``x``."""
    for k, (op, extra, attrs) in enumerate(steps):
        x = cx.emit(op, [x, *extra], out=out if k == len(steps) - 1 else None, **attrs)
    if not steps:
        cx.bind(out, x)
    return x


def _kind_of_array(v: np.ndarray) -> str:
    if v.dtype == np.bool_:
        return "bool"
    return "int" if np.issubdtype(v.dtype, np.integer) else "float"


# ====================================================================== elementwise
@register("Add", "Sub", "Mul", "Pow", "Equal", "Less", "Greater", "And", "Or")
def _binary(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    cx.emit(node.op_type, [cx.t(node.input[0]), cx.t(node.input[1])], out=_out(node))


@register("Div")
def _div(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Integer Div truncates toward zero in ONNX (IR Div floors): divide as floats, then
    Cast back to int, which truncates."""
    x, y = cx.t(node.input[0]), cx.t(node.input[1])
    if cx.info(x).dtype == "int" and cx.info(y).dtype == "int":
        q = cx.emit("Div", [cx.emit("Cast", [x], to="float"), cx.emit("Cast", [y], to="float")])
        cx.emit("Cast", [q], out=_out(node), to="int")
    else:
        cx.emit("Div", [x, y], out=_out(node))


@register("LessOrEqual", "GreaterOrEqual")
def _compare_or_equal(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """a <= b is not (a > b); a >= b is not (a < b)."""
    strict = "Greater" if node.op_type == "LessOrEqual" else "Less"
    c = cx.emit(strict, [cx.t(node.input[0]), cx.t(node.input[1])])
    cx.emit("Not", [c], out=_out(node))


@register("Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "Softplus", "Abs", "Neg", "Not")
def _unary(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    if cx.info(x).dtype == "int" and node.op_type in ("Abs", "Neg", "Relu"):
        # IR unary ops compute in float; keep ONNX's integer result type
        cx.emit("Cast", [cx.emit(node.op_type, [x])], out=_out(node), to="int")
    else:
        cx.emit(node.op_type, [x], out=_out(node))


@register("LeakyRelu")
def _leaky_relu(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    cx.emit("LeakyRelu", [cx.t(node.input[0])], out=_out(node), alpha=float(a.get("alpha", 0.01)))


@register("Gelu")
def _gelu(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    approx = a.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise _err(cx, f"unknown approximate={approx!r}")
    cx.emit("Gelu", [cx.t(node.input[0])], out=_out(node), approximate=approx)


@register("HardSigmoid")
def _hard_sigmoid(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    _chain(cx, x, _hard_sigmoid_steps(cx, x, a.get("alpha", 0.2), a.get("beta", 0.5)), _out(node))


def _hard_sigmoid_steps(cx: Context, x: str, alpha: float, beta: float) -> list[Step]:
    """max(0, min(1, alpha*x + beta)) as Mul, Add, Clip."""
    return [("Mul", [cx.scalar(alpha, x)], {}), ("Add", [cx.scalar(beta, x)], {}),
            ("Clip", [], {"min": 0.0, "max": 1.0})]


@register("HardSwish")
def _hard_swish(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    hs = _chain(cx, x, _hard_sigmoid_steps(cx, x, 1.0 / 6.0, 0.5), "")
    cx.emit("Mul", [x, hs], out=_out(node))


@register("Elu", "Selu", "Celu")
def _elu(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """``gamma * (relu(x) + alpha * (exp(min(x, 0) / k) - 1))``: one tensor's elementwise
    chain, which passes/fuse_scalar turns into one compiled scalar gate (Elu: gamma = k = 1;
    Selu: ONNX's alpha and gamma; Celu: k = alpha)."""
    x = cx.t(node.input[0])
    selu = node.op_type == "Selu"
    alpha = float(a.get("alpha", 1.67326319217681884765625 if selu else 1.0))
    gamma = float(a.get("gamma", 1.05070102214813232421875)) if selu else 1.0
    k = alpha if node.op_type == "Celu" else 1.0
    neg = cx.emit("Neg", [cx.emit("Relu", [cx.emit("Neg", [x])])])                 # min(x, 0)
    e = cx.emit("Exp", [cx.emit("Mul", [neg, cx.scalar(1.0 / k, x)])])
    tail = cx.emit("Mul", [cx.emit("Sub", [e, cx.scalar(1.0, x)]), cx.scalar(alpha, x)])
    y = cx.emit("Add", [cx.emit("Relu", [x]), tail])
    if gamma != 1.0:
        cx.emit("Mul", [y, cx.scalar(gamma, x)], out=_out(node))
    else:
        cx.emit("Identity", [y], out=_out(node))


@register("Mish")
def _mish(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """``x * tanh(softplus(x))`` (opset 18)."""
    x = cx.t(node.input[0])
    cx.emit("Mul", [x, cx.emit("Tanh", [cx.emit("Softplus", [x])])], out=_out(node))


@register("Softsign")
def _softsign(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """x / (1 + |x|)."""
    x = cx.t(node.input[0])
    d = cx.emit("Add", [cx.emit("Abs", [x]), cx.scalar(1.0, x)])
    cx.emit("Div", [x, d], out=_out(node))


@register("Identity")
def _identity(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    cx.bind(_out(node), cx.t(node.input[0]))


@register("Dropout")
def _dropout(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Inference: the identity. A training-mode Dropout with a nonzero ratio is refused."""
    x = cx.t(node.input[0])
    training = cx.const_input(node, 2, "training_mode") if cx.opset >= 12 else None
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        ratio = cx.const_input(node, 1, "ratio")
        if ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0:
            raise _err(cx, "Dropout in training mode is random and cannot be compiled",
                       "export the model in eval mode (model.eval())")
    cx.bind(_out(node), x)
    if _out(node, 1):
        cx.set_value(_out(node, 1), np.ones(cx.shape(x), np.bool_))


@register("Cast")
def _cast(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    to = int(a["to"])
    if to not in ONNX_KIND:
        raise _err(cx, f"Cast to {TensorProto.DataType.Name(to)} is not supported")
    _cast_to(cx, node, ONNX_KIND[to])


@register("CastLike")
def _cast_like(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    like = node.input[1]
    kind = _kind_of_array(np.asarray(cx.value(like))) if cx.is_const(like) else cx.info(cx.t(like)).dtype
    _cast_to(cx, node, kind)


def _cast_to(cx: Context, node: onnx.NodeProto, kind: str) -> None:
    """Casts between float widths (or int widths) are free in the float64 IR semantics."""
    x = cx.t(node.input[0])
    if cx.info(x).dtype == kind:
        cx.bind(_out(node), x)
    else:
        cx.emit("Cast", [x], out=_out(node), to=kind)


@register("Clip")
def _clip(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Bounds are attributes before opset 11, optional constant inputs from it on."""
    x = cx.t(node.input[0])
    if cx.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo, hi = cx.const_input(node, 1, "min"), cx.const_input(node, 2, "max")
    bounds = {k: None if v is None else float(np.asarray(v).reshape(-1)[0]) for k, v in (("min", lo), ("max", hi))}
    if cx.info(x).dtype == "int":
        cx.emit("Cast", [cx.emit("Clip", [x], **bounds)], out=_out(node), to="int")
    else:
        cx.emit("Clip", [x], out=_out(node), **bounds)


@register("Where")
def _where(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    cx.emit("Where", [cx.t(i) for i in node.input[:3]], out=_out(node))


@register("Max", "Min", "Sum", "Mean")
def _variadic(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Variadic, broadcasting: a chain of the binary op (Mean: then times 1/n)."""
    ins = [cx.t(i) for i in node.input if i]
    op = {"Max": "Max", "Min": "Min", "Sum": "Add", "Mean": "Add"}[node.op_type]
    steps: list[Step] = [(op, [y], {}) for y in ins[1:]]
    if node.op_type == "Mean" and len(ins) > 1:
        steps.append(("Mul", [cx.scalar(1.0 / len(ins), ins[0])], {}))
    _chain(cx, ins[0], steps, _out(node))


# ====================================================================== linear algebra
@register("MatMul")
def _matmul(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    cx.emit("MatMul", [cx.t(node.input[0]), cx.t(node.input[1])], out=_out(node))


@register("Gemm")
def _gemm(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """alpha * A' @ B' + beta * C. Transposes and alpha fold into a constant B (the usual
    Linear layer), so a weight matrix stays one constant."""
    A, B = cx.t(node.input[0]), cx.t(node.input[1])
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if a.get("transA", 0):
        A = cx.emit("Transpose", [A], perm=[1, 0])
    if a.get("transB", 0):
        B = cx.emit("Transpose", [B], perm=[1, 0])
    if alpha != 1.0 and cx.graph.is_const(B):
        B, alpha = cx.emit("Mul", [B, cx.scalar(alpha, B)]), 1.0
    C = cx.t(node.input[2]) if _in(node, 2) and beta != 0.0 else None
    if C is not None and beta != 1.0:
        C = cx.emit("Mul", [C, cx.scalar(beta, C)])
    steps: list[Step] = [("MatMul", [B], {})]
    if alpha != 1.0:
        steps.append(("Mul", [cx.scalar(alpha, A)], {}))
    if C is not None:
        steps.append(("Add", [C], {}))
    _chain(cx, A, steps, _out(node))


# ====================================================================== shapes and data movement
def _reshape_target(cx: Context, in_shape: tuple[int, ...], shape: Any, allowzero: bool = False) -> list[int]:
    """Resolve ONNX Reshape's 0 (copy) and -1 (infer) into a static shape."""
    out = _ints(shape)
    for i, s in enumerate(out):
        if s == 0 and not allowzero:
            if i >= len(in_shape):
                raise _err(cx, f"shape {out} copies dim {i} of a rank-{len(in_shape)} input")
            out[i] = in_shape[i]
    total = int(np.prod(in_shape, dtype=np.int64))
    if out.count(-1) > 1 or any(s < -1 for s in out):
        raise _err(cx, f"invalid target shape {_ints(shape)}")
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise _err(cx, f"cannot reshape {list(in_shape)} to {_ints(shape)}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != total:
        raise _err(cx, f"cannot reshape {list(in_shape)} to {_ints(shape)}")
    return out


def _reshape_to(cx: Context, node: onnx.NodeProto, x: str, shape: list[int]) -> None:
    cx.emit("Reshape", [x], out=_out(node), shape=[int(s) for s in shape])


@register("Reshape")
def _reshape(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = a["shape"] if cx.opset < 5 else cx.const_input(node, 1, "shape")
    _reshape_to(cx, node, x, _reshape_target(cx, cx.shape(x), shape, bool(a.get("allowzero", 0))))


@register("Flatten")
def _flatten(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    axis = int(a.get("axis", 1))
    if not -len(shape) <= axis <= len(shape):
        raise _err(cx, f"axis {axis} is out of range for rank {len(shape)}")
    if axis < 0:
        axis += len(shape)
    _reshape_to(cx, node, x, [int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))])


def _axes_arg(cx: Context, node: onnx.NodeProto, a: dict, since: int) -> np.ndarray | None:
    """``axes`` as an attribute (before opset ``since``) or as input 1 (from it on)."""
    if "axes" in a:
        return np.asarray(a["axes"])
    if cx.opset >= since:
        return cx.const_input(node, 1, "axes")
    return None


@register("Squeeze")
def _squeeze(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    axes = _axes_arg(cx, node, a, 13)
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else _axes(cx, axes, len(shape))
    if any(shape[i] != 1 for i in axes):
        raise _err(cx, f"cannot squeeze axes {axes} of shape {list(shape)}")
    _reshape_to(cx, node, x, [d for i, d in enumerate(shape) if i not in axes])


@register("Unsqueeze")
def _unsqueeze(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = list(cx.shape(x))
    axes = _axes_arg(cx, node, a, 13)
    if axes is None:
        raise _err(cx, "Unsqueeze without axes")
    axes = sorted(_axes(cx, axes, len(shape) + len(np.asarray(axes).reshape(-1))))
    for ax in axes:
        shape.insert(ax, 1)
    _reshape_to(cx, node, x, shape)


@register("Transpose")
def _transpose(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    rank = len(cx.shape(x))
    perm = a.get("perm") or list(range(rank))[::-1]
    cx.emit("Transpose", [x], out=_out(node), perm=_axes(cx, perm, rank))


def _slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int | None]:
    """ONNX Slice clamping; the end becomes None where Python would need "before index 0"."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return start, (None if end < 0 else end)


@register("Slice")
def _slice(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    if cx.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = cx.const_input(node, 1, "starts"), cx.const_input(node, 2, "ends")
        axes, steps = cx.const_input(node, 3, "axes"), cx.const_input(node, 4, "steps")
    starts, ends = _ints(starts), _ints(ends)
    axes = _axes(cx, range(len(starts)) if axes is None else axes, len(shape))
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise _err(cx, f"inconsistent starts/ends/axes/steps {starts}/{ends}/{axes}/{steps}")
    bounds = [_slice_bounds(shape[ax], s, e, st) for s, e, ax, st in zip(starts, ends, axes, steps)]
    cx.emit("Slice", [x], out=_out(node), starts=[b[0] for b in bounds], ends=[b[1] for b in bounds],
            axes=axes, steps=steps)


@register("Concat")
def _concat(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    ins = [cx.t(i) for i in node.input if i]
    cx.emit("Concat", ins, out=_out(node), axis=_axis(cx, a["axis"], len(cx.shape(ins[0]))))


@register("Split")
def _split(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    axis = _axis(cx, a.get("axis", 0), len(shape))
    dim, n = shape[axis], len(node.output)
    split = cx.const_input(node, 1, "split") if cx.opset >= 13 else a.get("split")
    if split is not None and len(np.asarray(split).reshape(-1)):
        sizes = _ints(split)
    elif "num_outputs" in a:
        chunk = -(-dim // int(a["num_outputs"]))
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    else:
        if dim % n:
            raise _err(cx, f"cannot split {dim} into {n} equal parts")
        sizes = [dim // n] * n
    if sum(sizes) != dim or len(sizes) != n or min(sizes) < 0:
        raise _err(cx, f"split sizes {sizes} do not cover dim {dim} with {n} outputs")
    cx.emit_multi("Split", [x], [o or None for o in node.output], axis=axis, sizes=sizes)


@register("Gather")
def _gather(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Embedding lookups (constant table, client token ids) and constant-index selects."""
    data = cx.t(node.input[0])
    shape = cx.shape(data)
    axis = _axis(cx, a.get("axis", 0), len(shape))
    if cx.is_const(node.input[1]):
        idx = np.asarray(cx.value(node.input[1])).astype(np.int64)
        idx = np.where(idx < 0, idx + shape[axis], idx)
        if idx.size and (idx.min() < 0 or idx.max() >= shape[axis]):
            raise _err(cx, f"indices out of range for dim {shape[axis]}")
        ind = cx.const(idx, "indices")
    else:
        ind = cx.t(node.input[1])
        if cx.info(ind).visibility == "secret":
            raise _err(cx, f"indices {node.input[1]!r} are secret; a secret index is not supported",
                       "indices must be constants or client inputs (token ids)")
    cx.emit("Gather", [data, ind], out=_out(node), axis=axis)


@register("Expand")
def _expand(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = _ints(cx.const_input(node, 1, "shape"))
    try:
        target = list(np.broadcast_shapes(cx.shape(x), tuple(shape)))
    except ValueError:
        raise _err(cx, f"cannot expand {list(cx.shape(x))} to {shape}") from None
    cx.emit("Expand", [x], out=_out(node), shape=target)


@register("Tile")
def _tile(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """x[d0, d1] tiled by [r0, r1]: Reshape to [1, d0, 1, d1], Expand to [r0, d0, r1, d1], Reshape."""
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    reps = _ints(cx.const_input(node, 1, "repeats"))
    if len(reps) != len(shape) or min(reps, default=1) < 0:
        raise _err(cx, f"repeats {reps} do not fit rank {len(shape)}")
    inter = [v for d in shape for v in (1, d)]
    big = [v for d, r in zip(shape, reps) for v in (r, d)]
    steps: list[Step] = [] if all(r == 1 for r in reps) else [
        ("Reshape", [], {"shape": inter}), ("Expand", [], {"shape": big}),
        ("Reshape", [], {"shape": [d * r for d, r in zip(shape, reps)]})]
    _chain(cx, x, steps, _out(node))


@register("Trilu")
def _trilu(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Keep the upper/lower triangle: Where(constant mask, x, 0)."""
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    if len(shape) < 2:
        raise _err(cx, "Trilu needs rank >= 2")
    kv = cx.const_input(node, 1, "k")
    k = 0 if kv is None else int(np.asarray(kv).reshape(-1)[0])
    ones = np.ones(shape[-2:], np.bool_)
    mask = np.triu(ones, k) if a.get("upper", 1) else np.tril(ones, k)
    cx.emit("Where", [cx.const(mask, "mask"), x, cx.scalar(0, x)], out=_out(node))


@register("Pad")
def _pad(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    shape = cx.shape(x)
    rank = len(shape)
    mode = a.get("mode", "constant")
    if cx.opset < 11:
        pads, value, axes = a.get("pads", a.get("paddings")), a.get("value", 0.0), None
    else:
        pads, value = cx.const_input(node, 1, "pads"), cx.const_input(node, 2, "constant_value")
        axes = cx.const_input(node, 3, "axes")
    axes = list(range(rank)) if axes is None else _axes(cx, axes, rank)
    p = _ints(pads)
    if len(p) != 2 * len(axes):
        raise _err(cx, f"pads {p} do not fit axes {axes}")
    full = [(0, 0)] * rank
    for i, ax in enumerate(axes):
        full[ax] = (p[i], p[i + len(axes)])
    value = 0 if value is None else np.asarray(value).reshape(-1)[0].item() if np.size(value) else 0
    if mode == "constant":
        steps = _constant_pad_steps(shape, full, value)
    elif mode in ("edge", "reflect", "wrap"):
        steps = [("Gather", [cx.const(_pad_indices(shape[ax], b, e, mode), "pad_idx")], {"axis": ax})
                 for ax, (b, e) in enumerate(full) if (b, e) != (0, 0)]
    else:
        raise _err(cx, f"Pad mode {mode!r} is not supported")
    _chain(cx, x, steps, _out(node))


def _constant_pad_steps(shape: tuple[int, ...], full: list[tuple[int, int]], value: Any) -> list[Step]:
    """Negative pads crop (a Slice first), positive ones pad (then an IR Pad)."""
    steps: list[Step] = []
    crop = [(ax, max(-b, 0), shape[ax] - max(-e, 0)) for ax, (b, e) in enumerate(full) if b < 0 or e < 0]
    if crop:
        steps.append(("Slice", [], {"starts": [c[1] for c in crop], "ends": [c[2] for c in crop],
                                    "axes": [c[0] for c in crop], "steps": [1] * len(crop)}))
    grow = [(max(b, 0), max(e, 0)) for b, e in full]
    if any(b or e for b, e in grow):
        steps.append(("Pad", [], {"pads": [list(g) for g in grow], "value": value}))
    return steps


def _pad_indices(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of every output position along one axis for edge/reflect/wrap padding."""
    i = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if n == 1:
        return np.zeros_like(i)
    m = np.mod(i, 2 * n - 2)
    return np.where(m >= n, 2 * n - 2 - m, m)


# ====================================================================== shape-only and constant ops
@register("Shape")
def _shape(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Shapes are static, so Shape of any tensor is a constant."""
    shape = list(cx.shape(cx.t(node.input[0])))
    start, end = int(a.get("start", 0)), a.get("end")
    cx.set_value(_out(node), np.array(shape[start:None if end is None else int(end)], np.int64))


@register("Size")
def _size(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    cx.set_value(_out(node), np.array(int(np.prod(cx.shape(cx.t(node.input[0])), dtype=np.int64)), np.int64))


@register("ConstantOfShape")
def _constant_of_shape(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    shape = _ints(cx.const_input(node, 0, "shape"))
    v = np.asarray(a.get("value", np.zeros(1, np.float32)))
    cx.set_value(_out(node), np.full(shape, v.reshape(-1)[0], v.dtype))


@register("Range")
def _range(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    start, limit, delta = (np.asarray(cx.const_input(node, i, w)) for i, w in enumerate(("start", "limit", "delta")))
    cx.set_value(_out(node), np.arange(start, limit, delta).astype(start.dtype))


@register("Constant")
def _constant(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = np.asarray(a[key], np.float32 if "float" in key else np.int64 if "int" in key else None)
            cx.set_value(_out(node), v)
            return
    raise _err(cx, f"Constant with attributes {sorted(a)} is not supported")


# ====================================================================== reductions and blocks
@register("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare")
def _reduce(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Axes come as an attribute (older opsets) or as input 1; empty axes reduce everything
    unless noop_with_empty_axes makes the op the identity."""
    x = cx.t(node.input[0])
    rank = len(cx.shape(x))
    since = 13 if node.op_type == "ReduceSum" else 18
    axes = _axes_arg(cx, node, a, since)
    if axes is None or np.size(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            cx.bind(_out(node), x)
            return
        axes = range(rank)
    cx.emit(node.op_type, [x], out=_out(node), axes=sorted(_axes(cx, axes, rank)),
            keepdims=bool(a.get("keepdims", 1)))


def _coerced_2d(cx: Context, node: onnx.NodeProto, a: dict) -> tuple[str, int, list[int] | None]:
    """Softmax-like ops: (input, axis, original shape if opset < 13 needs the 2-D coercion)."""
    x = cx.t(node.input[0])
    shape = list(cx.shape(x))
    axis = _axis(cx, a.get("axis", -1 if cx.opset >= 13 else 1), len(shape))
    if cx.opset >= 13 or axis == len(shape) - 1:
        return x, axis, None
    flat = [int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))]
    return cx.emit("Reshape", [x], shape=flat), 1, shape


@register("Softmax")
def _softmax(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Opset >= 13: one axis. Older opsets flatten to 2-D at ``axis`` (coerced semantics)."""
    x, axis, back = _coerced_2d(cx, node, a)
    steps: list[Step] = [("Softmax", [], {"axis": axis})]
    if back is not None:
        steps.append(("Reshape", [], {"shape": back}))
    _chain(cx, x, steps, _out(node))


@register("LogSoftmax")
def _log_softmax(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """(x - max) - log(sum(exp(x - max))): exact for large inputs, unlike log(softmax)."""
    x, axis, back = _coerced_2d(cx, node, a)
    d = cx.emit("Sub", [x, cx.emit("ReduceMax", [x], axes=[axis], keepdims=True)])
    s = cx.emit("ReduceSum", [cx.emit("Exp", [d])], axes=[axis], keepdims=True)
    steps: list[Step] = [("Sub", [cx.emit("Log", [s])], {})]
    if back is not None:
        steps.append(("Reshape", [], {"shape": back}))
    _chain(cx, d, steps, _out(node))


@register("LayerNormalization")
def _layer_norm(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Y -> IR LayerNorm over axes [axis, rank). The optional Mean/InvStdDev outputs are
    spelled out with reductions (unused ones are dropped later)."""
    x = cx.t(node.input[0])
    rank = len(cx.shape(x))
    axis = _axis(cx, a.get("axis", -1), rank)
    eps = float(a.get("epsilon", 1e-5))
    ins = [x, cx.t(node.input[1])] + ([cx.t(node.input[2])] if _in(node, 2) else [])
    cx.emit("LayerNorm", ins, out=_out(node), axis=axis, epsilon=eps)
    if not (_out(node, 1) or _out(node, 2)):
        return
    axes = list(range(axis, rank))
    mean = cx.emit("ReduceMean", [x], out=_out(node, 1) or None, axes=axes, keepdims=True)
    if _out(node, 2):
        d = cx.emit("Sub", [x, mean])
        var = cx.emit("ReduceMean", [cx.emit("Mul", [d, d])], axes=axes, keepdims=True)
        _chain(cx, var, [("Add", [cx.scalar(eps, x)], {}), ("Sqrt", [], {}), ("Reciprocal", [], {})], _out(node, 2))


@register("RMSNormalization")
def _rms_norm(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Opset 23: ``x * 1/sqrt(mean(x^2 over [axis, rank)) + eps) * scale``, the chain T5 and
    Llama exports spell out (the reciprocal square root fuses into one rsqrt gate)."""
    x = cx.t(node.input[0])
    rank = len(cx.shape(x))
    axes = list(range(_axis(cx, a.get("axis", -1), rank), rank))
    ms = cx.emit("ReduceMean", [cx.emit("Mul", [x, x])], axes=axes, keepdims=True)
    inv = _chain(cx, ms, [("Add", [cx.scalar(float(a.get("epsilon", 1e-5)), x)], {}), ("Sqrt", [], {}),
                          ("Reciprocal", [], {})], "")
    cx.emit("Mul", [cx.emit("Mul", [x, inv]), cx.t(node.input[1])], out=_out(node))


@register("BatchNormalization")
def _batch_norm(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Inference form: x * k + b with k = scale / sqrt(var + eps), b = bias - mean * k
    (both folded to per-channel constants when the statistics are weights)."""
    if a.get("training_mode", 0) or any(node.output[1:]):
        raise _err(cx, "BatchNormalization in training mode cannot be compiled",
                   "export the model in eval mode (model.eval())")
    x, scale, bias, mean, var = (cx.t(i) for i in node.input[:5])
    shape = cx.shape(x)
    eps = float(a.get("epsilon", 1e-5))
    k = cx.emit("Div", [scale, cx.emit("Sqrt", [cx.emit("Add", [var, cx.scalar(eps, var)])])])
    b = cx.emit("Sub", [bias, cx.emit("Mul", [mean, k])])
    per_channel = [shape[1]] + [1] * (len(shape) - 2)
    k = cx.emit("Reshape", [k], shape=per_channel)
    b = cx.emit("Reshape", [b], shape=per_channel)
    cx.emit("Add", [cx.emit("Mul", [x, k]), b], out=_out(node))


# ====================================================================== convolution and pooling
def _window(cx: Context, a: dict, spatial: tuple[int, ...], kernel: list[int]
            ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Strides, dilations and (begin, end) pads per spatial dim, auto_pad resolved."""
    k = len(spatial)
    strides = list(a.get("strides") or [1] * k)
    dils = list(a.get("dilations") or [1] * k)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        p = list(a.get("pads") or [0] * (2 * k))
        pads = [(p[i], p[i + k]) for i in range(k)]
    elif auto == "VALID":
        pads = [(0, 0)] * k
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, kk, s, d in zip(spatial, kernel, strides, dils):
            total = max(0, (-(-n // s) - 1) * s + (kk - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
    else:
        raise _err(cx, f"auto_pad={auto!r} is not supported")
    if len(strides) != k or len(dils) != k or len(kernel) != k:
        raise _err(cx, f"kernel/strides/dilations do not match {k} spatial dims")
    return strides, dils, pads


def _out_size(n: int, k: int, s: int, d: int, pads: tuple[int, int], ceil: bool = False) -> int:
    span = n + pads[0] + pads[1] - d * (k - 1) - 1
    return (-(-span // s) if ceil else span // s) + 1


def _as_2d(cx: Context, kernel: list[int], strides: list[int], dils: list[int], pads: list[tuple[int, int]]
           ) -> dict[str, Any]:
    """Im2Col attributes; 1-D windows become 2-D ones of height 1."""
    if len(kernel) == 1:
        kernel, strides, dils, pads = [1, *kernel], [1, *strides], [1, *dils], [(0, 0), *pads]
    if len(kernel) != 2:
        raise _err(cx, f"{len(kernel)}-D windows are not supported (1-D and 2-D are)")
    return {"kernel": list(kernel), "strides": list(strides), "dilations": list(dils),
            "pads": [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]}


@register("Conv")
def _conv(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    """Im2Col -> MatMul with the [C*kh*kw, M] weight -> + bias -> back to NC(H)W. Groups
    are convolved one by one on channel slices and concatenated."""
    x, w = cx.t(node.input[0]), cx.t(node.input[1])
    xs, ws = cx.shape(x), cx.shape(w)
    kernel = list(a.get("kernel_shape") or ws[2:])
    strides, dils, pads = _window(cx, a, xs[2:], kernel)
    im = _as_2d(cx, kernel, strides, dils, pads)
    group = int(a.get("group", 1))
    n, c, m, cg = xs[0], xs[1], ws[0], ws[1]
    if c != cg * group or m % group:
        raise _err(cx, f"input channels {c}, weight {list(ws)} and group {group} do not fit")
    out_sp = [_out_size(d, k, s, dl, p) for d, k, s, dl, p in zip(xs[2:], kernel, strides, dils, pads)]
    x4 = x if len(xs) == 4 else cx.emit("Reshape", [x], shape=[n, c, 1, xs[2]])
    w4 = w if len(ws) == 4 else cx.emit("Reshape", [w], shape=[m, cg, 1, ws[2]])
    kk = im["kernel"][0] * im["kernel"][1]
    mg = m // group
    parts = []
    for g in range(group):
        xg = x4 if group == 1 else cx.emit("Slice", [x4], starts=[g * cg], ends=[(g + 1) * cg], axes=[1], steps=[1])
        wg = w4 if group == 1 else cx.emit("Slice", [w4], starts=[g * mg], ends=[(g + 1) * mg], axes=[0], steps=[1])
        cols = cx.emit("Im2Col", [xg], value=0.0, **im)
        wt = cx.emit("Transpose", [cx.emit("Reshape", [wg], shape=[mg, cg * kk])], perm=[1, 0])
        parts.append(cx.emit("MatMul", [cols, wt]))
    y = parts[0] if group == 1 else cx.emit("Concat", parts, axis=2)
    steps: list[Step] = [("Add", [cx.t(node.input[2])], {})] if _in(node, 2) else []
    steps += [("Transpose", [], {"perm": [0, 2, 1]}), ("Reshape", [], {"shape": [n, m, *out_sp]})]
    _chain(cx, y, steps, _out(node))


def _pool(cx: Context, node: onnx.NodeProto, a: dict, kind: str) -> None:
    """Every channel as its own image: Reshape to [N*C, 1, H, W], Im2Col, reduce the window
    axis, Reshape back. Average pools that exclude padding divide by per-window counts."""
    x = cx.t(node.input[0])
    xs = cx.shape(x)
    kernel = list(a["kernel_shape"])
    strides, dils, pads = _window(cx, a, xs[2:], kernel)
    out_sp = [_out_size(d, k, s, dl, p) for d, k, s, dl, p in zip(xs[2:], kernel, strides, dils, pads)]
    if a.get("ceil_mode", 0):
        ceil_sp = [_out_size(d, k, s, dl, p, True) for d, k, s, dl, p in zip(xs[2:], kernel, strides, dils, pads)]
        if ceil_sp != out_sp:
            raise _err(cx, f"ceil_mode=1 changes the output size ({out_sp} -> {ceil_sp}); not supported",
                       "export with ceil_mode=False or pad the input so the windows fit")
    im = _as_2d(cx, kernel, strides, dils, pads)
    n, c = xs[0], xs[1]
    hw = [1, xs[2]] if len(xs) == 3 else list(xs[2:])
    is_int = cx.info(x).dtype == "int"
    if is_int:  # pool in float (the pad value is a float), cast back at the end
        x = cx.emit("Cast", [x], to="float")
    x4 = cx.emit("Reshape", [x], shape=[n * c, 1, *hw])
    cols = cx.emit("Im2Col", [x4], value=POOL_PAD_MIN if kind == "max" else 0.0, **im)
    if kind == "max":
        steps: list[Step] = [("ReduceMax", [], {"axes": [2], "keepdims": False})]
    elif a.get("count_include_pad", 0) or not any(im["pads"]):
        steps = [("ReduceMean", [], {"axes": [2], "keepdims": False})]
    else:
        ones = np.ones((1, 1, *hw))
        counts = run_node("Im2Col", [ones], {**im, "value": 0.0})[0].sum(axis=2)[0]
        steps = [("ReduceSum", [], {"axes": [2], "keepdims": False}),
                 ("Mul", [cx.const(1.0 / counts, "inv_count")], {})]
    steps.append(("Reshape", [], {"shape": [n, c, *out_sp]}))
    if is_int:
        steps.append(("Cast", [], {"to": "int"}))
    _chain(cx, cols, steps, _out(node))


@register("MaxPool")
def _max_pool(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    if _out(node, 1):
        raise _err(cx, "MaxPool's Indices output is not supported")
    _pool(cx, node, a, "max")


@register("AveragePool")
def _average_pool(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    _pool(cx, node, a, "avg")


@register("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    x = cx.t(node.input[0])
    op = "ReduceMean" if node.op_type == "GlobalAveragePool" else "ReduceMax"
    cx.emit(op, [x], out=_out(node), axes=list(range(2, len(cx.shape(x)))), keepdims=True)


from fusec.ir import onnx_rnn  # noqa: E402,F401  (registers LSTM and GRU, unrolled)
from fusec.ir import onnx_attention  # noqa: E402,F401  (registers Attention, written out)
