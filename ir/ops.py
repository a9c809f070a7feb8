"""The IR's operator vocabulary and its plaintext meaning (a float64 numpy interpreter).

Every op the frontend emits is listed here with a reference implementation. The same
implementation serves constant folding, the input owner's plaintext prefix
(``passes/client_split``), the fused scalar functions (``passes/fuse_scalar``), and the
tests (IR interpreter against onnxruntime). Data-movement ops work on any dtype, which
lets the lowering turn them into index maps by running them on ``arange``.

Attribute conventions: axes are non-negative after the frontend normalises them;
``Reshape.shape`` is fully static (no 0/-1 left).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from fusec.errors import CompileError

Ref = Callable[[list[np.ndarray], dict], list[np.ndarray]]


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str        # "unary" | "binary" | "movement" | "reduce" | "linear" | "block" | "misc"
    ref: Ref
    nonlinear: bool = False   # needs a gate with keys when its input is secret
    doc: str = ""
    #: what passes ask instead of keeping name sets: "elementwise" (unary and binary ops),
    #: "movement" (index maps, any dtype: free on shares), "reduce", "linear", "block", "misc"
    category: str = ""
    keeps_scale: bool = False   # the output has its input's fixed-point scale (sums, movement, max)
    fusable: bool = False       # may join a fused scalar chain (passes/fuse_scalar)

    def __post_init__(self):
        if not self.category:
            object.__setattr__(self, "category", "elementwise" if self.kind in ("unary", "binary") else self.kind)


OPS: dict[str, OpDef] = {}


def _op(name: str, kind: str, nonlinear: bool = False, doc: str = ""):
    def deco(fn):
        OPS[name] = OpDef(name, kind, fn, nonlinear, doc)
        return fn
    return deco


def _unary(name: str, f, nonlinear: bool = True, doc: str = ""):
    OPS[name] = OpDef(name, "unary", lambda xs, a, f=f: [np.asarray(f(np.asarray(xs[0], np.float64)))], nonlinear, doc)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_unary("Relu", lambda x: np.maximum(x, 0.0))
_unary("Sigmoid", sigmoid)
_unary("Tanh", np.tanh)
_unary("Erf", _erf)
_unary("Exp", np.exp)
_unary("Log", np.log)
_unary("Sqrt", np.sqrt)
_unary("Reciprocal", lambda x: 1.0 / x)
_unary("Abs", np.abs)
_unary("Softplus", lambda x: np.logaddexp(0.0, x))
_unary("Neg", np.negative, nonlinear=False)
_unary("Identity", lambda x: x, nonlinear=False)
OPS["Gelu"] = OpDef("Gelu", "unary", lambda xs, a: [gelu_tanh(xs[0]) if a.get("approximate") == "tanh" else gelu(xs[0])], True)
OPS["LeakyRelu"] = OpDef("LeakyRelu", "unary", lambda xs, a: [np.where(xs[0] >= 0, xs[0], a.get("alpha", 0.01) * xs[0])], True)


@_op("Clip", "unary", nonlinear=True, doc="attrs min/max (None = unbounded)")
def _clip(xs, a):
    lo, hi = a.get("min"), a.get("max")
    return [np.clip(xs[0], -np.inf if lo is None else lo, np.inf if hi is None else hi)]


@_op("Cast", "misc", doc="attr to: float|int|bool")
def _cast(xs, a):
    return [np.asarray(xs[0]).astype({"float": np.float64, "int": np.int64, "bool": np.bool_}[a["to"]])]


# ------------------------------------------------------------------ elementwise binary (numpy broadcasting)
def _binary(name: str, f, nonlinear: bool = False):
    OPS[name] = OpDef(name, "binary", lambda xs, a, f=f: [np.asarray(f(xs[0], xs[1]))], nonlinear)


_binary("Add", np.add)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)
_binary("Div", lambda x, y: np.floor_divide(x, y) if np.issubdtype(np.asarray(x).dtype, np.integer)
        and np.issubdtype(np.asarray(y).dtype, np.integer) else np.divide(x, y))
_binary("Pow", np.power, nonlinear=True)
_binary("Max", np.maximum, nonlinear=True)
_binary("Min", np.minimum, nonlinear=True)
_binary("Equal", np.equal, nonlinear=True)
_binary("Less", np.less, nonlinear=True)
_binary("Greater", np.greater, nonlinear=True)
_binary("And", np.logical_and, nonlinear=True)
_binary("Or", np.logical_or, nonlinear=True)
_unary("Not", np.logical_not)


@_op("Where", "misc", nonlinear=True, doc="inputs cond, a, b")
def _where(xs, a):
    return [np.where(np.asarray(xs[0], bool), xs[1], xs[2])]


# ------------------------------------------------------------------ linear algebra
@_op("MatMul", "linear", doc="numpy matmul semantics (batched, broadcasting)")
def _matmul(xs, a):
    return [np.matmul(xs[0], xs[1])]


# ------------------------------------------------------------------ reductions (attrs: axes list, keepdims bool)
def _reduce(name: str, f, nonlinear: bool):
    def ref(xs, a, f=f):
        axes = tuple(a["axes"]) if a.get("axes") is not None else None
        return [np.asarray(f(xs[0], axis=axes, keepdims=bool(a.get("keepdims", True))))]
    OPS[name] = OpDef(name, "reduce", ref, nonlinear)


_reduce("ReduceSum", np.sum, False)
_reduce("ReduceMean", np.mean, False)
_reduce("ReduceMax", np.max, True)
_reduce("ReduceMin", np.min, True)
_reduce("ReduceL2", lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)), True)
_reduce("ReduceSumSquare", lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims), True)


@_op("Centre", "linear", doc="k x - sum(x) over attr axes (k their size): a layer norm's centring times k, "
                              "exact in fixed point (emitted by passes.expand_blocks)")
def _centre(xs, a):
    x = np.asarray(xs[0], np.float64)
    axes = tuple(a["axes"])
    k = int(np.prod([x.shape[i] for i in axes]))
    return [k * x - np.sum(x, axis=axes, keepdims=True)]


# ------------------------------------------------------------------ vector blocks (emitted by ir/onnx_ops.py, expanded by passes.expand_blocks)
@_op("Softmax", "block", nonlinear=True, doc="attr axis")
def _softmax(xs, a):
    x = xs[0] - np.max(xs[0], axis=a["axis"], keepdims=True)
    e = np.exp(x)
    return [e / np.sum(e, axis=a["axis"], keepdims=True)]


@_op("LayerNorm", "block", nonlinear=True, doc="inputs x, scale, bias; attrs axis (last k axes from axis), epsilon")
def _layernorm(xs, a):
    x = xs[0]
    axes = tuple(range(a["axis"], x.ndim))
    mu = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mu), axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + a["epsilon"])
    if len(xs) > 1 and xs[1] is not None:
        y = y * xs[1]
    if len(xs) > 2 and xs[2] is not None:
        y = y + xs[2]
    return [y]


@_op("Scalar", "unary", nonlinear=True, doc="a fused univariate function: attr 'fn' is a sub-graph (see passes.fuse_scalar)")
def _scalar(xs, a):
    from fusec.ir.scalar_fn import evaluate  # noqa: PLC0415  (avoid an import cycle)
    return [evaluate(a["fn"], np.asarray(xs[0], np.float64))]


@_op("Rescale", "misc", doc="fixed-point truncation by attr shift bits (identity in float)")
def _rescale(xs, a):
    return [xs[0]]


@_op("Share", "misc", doc="the input owner masks and sends a plaintext tensor (start of the secure part)")
def _share(xs, a):
    return [np.asarray(xs[0], np.float64)]


# ------------------------------------------------------------------ data movement (any dtype)
@_op("Reshape", "movement", doc="attr shape (static)")
def _reshape(xs, a):
    return [np.reshape(xs[0], tuple(a["shape"]))]


@_op("Transpose", "movement", doc="attr perm")
def _transpose(xs, a):
    return [np.transpose(xs[0], tuple(a["perm"]))]


@_op("Slice", "movement", doc="attrs starts, ends, axes, steps (normalised, clamped)")
def _slice(xs, a):
    sl = [slice(None)] * xs[0].ndim
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], a["steps"]):
        sl[ax] = slice(s, None if e is None else e, st)
    return [xs[0][tuple(sl)]]


@_op("Concat", "movement", doc="attr axis")
def _concat(xs, a):
    return [np.concatenate(xs, axis=a["axis"])]


@_op("Split", "movement", doc="attrs axis, sizes")
def _split(xs, a):
    idx = np.cumsum(a["sizes"])[:-1]
    return list(np.split(xs[0], idx, axis=a["axis"]))


@_op("Gather", "movement", doc="inputs data, indices (public const or client); attr axis")
def _gather(xs, a):
    return [np.take(xs[0], np.asarray(xs[1], np.int64), axis=a["axis"])]


@_op("Expand", "movement", doc="attr shape: numpy broadcast_to")
def _expand(xs, a):
    return [np.broadcast_to(xs[0], tuple(a["shape"])).copy()]


@_op("Pad", "movement", doc="attrs pads [(before, after)] per axis, value")
def _pad(xs, a):
    return [np.pad(xs[0], [tuple(p) for p in a["pads"]], constant_values=a.get("value", 0))]


@_op("Im2Col", "movement",
     doc="x [N,C,H,W] -> [N, OH*OW, C*kh*kw]; attrs kernel, strides, pads (t,l,b,r), dilations, value")
def _im2col(xs, a):
    x = xs[0]
    kh, kw = a["kernel"]
    sh, sw = a.get("strides", (1, 1))
    dh, dw = a.get("dilations", (1, 1))
    t, l, b, r = a.get("pads", (0, 0, 0, 0))
    x = np.pad(x, [(0, 0), (0, 0), (t, b), (l, r)], constant_values=a.get("value", 0))
    N, C, H, W = x.shape
    oh = (H - dh * (kh - 1) - 1) // sh + 1
    ow = (W - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((N, oh * ow, C, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            cols[:, :, :, i, j] = patch.reshape(N, C, oh * ow).transpose(0, 2, 1)
    return [cols.reshape(N, oh * ow, C * kh * kw)]


# ------------------------------------------------------------------ categories as data
OPS["Identity"] = replace(OPS["Identity"], category="movement")
for _name in ("Reshape", "Transpose", "Slice", "Concat", "Split", "Gather", "Expand", "Pad", "Im2Col", "Identity",
              "ReduceSum", "ReduceMax", "ReduceMin", "Add", "Sub", "Where", "Neg", "Centre"):
    OPS[_name] = replace(OPS[_name], keeps_scale=True)
for _name, _d in list(OPS.items()):
    # elementwise chains that fuse into one Scalar: unary float functions and arithmetic with scalars
    if (_d.kind == "unary" and _name not in ("Scalar", "Identity")) or _name in ("Add", "Sub", "Mul", "Div", "Pow",
                                                                                   "Max", "Min"):
        OPS[_name] = replace(_d, fusable=True)


def category(op: str) -> str | None:
    d = OPS.get(op)
    return d.category if d else None


def is_movement(op: str) -> bool:
    return category(op) == "movement"


def keeps_scale(op: str) -> bool:
    d = OPS.get(op)
    return bool(d and d.keeps_scale)


def is_fusable(op: str) -> bool:
    d = OPS.get(op)
    return bool(d and d.fusable)


#: the name sets passes used to keep (kept importable until every pass asks the helpers)
MOVEMENT = frozenset(op for op, d in OPS.items() if d.category == "movement")
KEEP_SCALE = frozenset(op for op, d in OPS.items() if d.keeps_scale)
ELEMENTWISE_BINARY = frozenset(op for op, d in OPS.items() if d.kind == "binary" and d.fusable)


def run_node(op: str, inputs: list[np.ndarray], attrs: dict, where: str = "") -> list[np.ndarray]:
    """Evaluate one op in plaintext (float64 for floats)."""
    d = OPS.get(op)
    if d is None:
        raise CompileError(f"IR op {op!r} has no reference implementation{where}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return d.ref(inputs, attrs)


def interpret(graph, feeds: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
    """Run the whole IR in plaintext float64; returns the graph outputs (or every tensor)."""
    env: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in graph.consts.items()}
    for name in graph.inputs:
        if name not in feeds:
            raise CompileError(f"no value for input {name!r}")
        v = np.asarray(feeds[name])
        env[name] = v.astype(np.float64) if graph.info(name).dtype == "float" else v
    for n in graph.nodes():
        outs = run_node(n.op, [env[t] if t else None for t in n.inputs], n.attrs, f" ({n!r})")
        for t, v in zip(n.outputs, outs):
            env[t] = v
    return env if keep else {t: env[t] for t in graph.outputs}
