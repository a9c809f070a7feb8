"""ONNX ``LSTM`` and ``GRU`` unrolled over the static sequence (issue 12, item 3).

Secure inference needs static shapes, so the sequence length is known at compile time and a
recurrent layer is just its cell written out once per step: public matmuls with the input
and recurrent weights, sigmoid / tanh gates (each one fused scalar gate), secret products of
gate and state. ONNX semantics (operator docs): gate order ``iofc`` (LSTM) and ``zrh`` (GRU),
``W``/``R``/``B`` stacked per direction, directions ``forward``, ``reverse`` and
``bidirectional``, ``layout`` 0 (``[seq, batch, ...]``) or 1 (batch first), optional initial
states and LSTM peepholes, ``linear_before_reset`` for GRU. Not supported (a clear error): custom activations,
``clip``, ``input_forget``, per-batch ``sequence_lens`` shorter than
the sequence.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from fusec.ir.onnx_ops import _err, _in, _out, register

if TYPE_CHECKING:
    from fusec.ir.onnx_frontend import Context


def _check(cx: Context, node: onnx.NodeProto, a: dict, default_acts: list[str]) -> None:
    acts = a.get("activations")
    n_dir = 2 if a.get("direction", "forward") == "bidirectional" else 1
    if acts and [s.lower() for s in acts] != [s.lower() for s in default_acts * n_dir]:
        raise _err(cx, f"custom activations {acts} are not supported", "export with the default activations")
    if a.get("clip") is not None:
        raise _err(cx, "cell clipping (clip) is not supported")
    if a.get("input_forget", 0):
        raise _err(cx, "input_forget=1 is not supported")
    if _in(node, 4):
        if not cx.is_const(node.input[4]):
            raise _err(cx, "sequence_lens must be a constant", "export without per-batch sequence lengths")
        lens = np.asarray(cx.value(node.input[4])).reshape(-1)
        if lens.size and np.any(lens != lens.max()):
            raise _err(cx, f"sequence_lens {lens.tolist()} differ per batch entry; only full-length sequences "
                           "are supported")


def _const(cx: Context, node: onnx.NodeProto, i: int, what: str) -> np.ndarray:
    v = cx.const_input(node, i, what)
    return np.asarray(v, np.float32)


def _step_inputs(cx: Context, x: str, layout: int) -> list[str]:
    """Per time step, the ``[batch, input]`` slice of X."""
    shape = cx.shape(x)
    T_ax = 1 if layout else 0
    T = shape[T_ax]
    b, i = (shape[0], shape[2]) if layout else (shape[1], shape[2])
    out = []
    for t in range(T):
        s = cx.emit("Slice", [x], starts=[t], ends=[t + 1], axes=[T_ax], steps=[1])
        out.append(cx.emit("Reshape", [s], shape=[b, i]))
    return out


def _state(cx: Context, node: onnx.NodeProto, i: int, d: int, b: int, H: int, layout: int) -> str:
    """Initial state of direction d as ``[batch, H]`` (zeros when absent)."""
    if not _in(node, i):
        return cx.const(np.zeros((b, H), np.float32), "zero_state")
    s = cx.t(node.input[i])
    ax = 1 if layout else 0
    sl = cx.emit("Slice", [s], starts=[d], ends=[d + 1], axes=[ax], steps=[1])
    return cx.emit("Reshape", [sl], shape=[b, H])


def _split(cx: Context, x: str, k: int, H: int, tag: str) -> list[str]:
    """``x [b, k*H]`` -> k gates ``[b, H]`` (distinct names: the IR keeps every tensor once)."""
    names = [cx.fresh(f"{cx.node_name}/{tag}_gate{j}") for j in range(k)]
    return cx.emit_multi("Split", [x], names, axis=1, sizes=[H] * k)


class _Consts:
    """Each weight slice and bias enters the IR once, however many steps read it."""

    def __init__(self, cx: Context):
        self.cx, self.made = cx, {}

    def __call__(self, key: str, value: np.ndarray) -> str:
        if key not in self.made:
            self.made[key] = self.cx.const(np.ascontiguousarray(value, np.float32), key)
        return self.made[key]


def _lin(cx: Context, k: _Consts, x: str, key: str, W: np.ndarray, bias: np.ndarray) -> str:
    """``x @ W.T + bias`` with public W ``[k, in]``."""
    y = cx.emit("MatMul", [x, k(f"{key}_wT", W.T)])
    return cx.emit("Add", [y, k(f"{key}_b", bias)])


def _emit_outputs(cx: Context, node: onnx.NodeProto, ys: list[list[str]], finals: list[list[str]],
                  b: int, H: int, layout: int) -> None:
    """Y ``[T, dirs, b, H]`` (layout 1: ``[b, T, dirs, H]``), Y_h / Y_c ``[dirs, b, H]`` (``[b, dirs, H]``)."""
    dirs, T = len(ys), len(ys[0])
    if _out(node, 0):
        steps = []
        for t in range(T):
            per_dir = [cx.emit("Reshape", [ys[d][t]], shape=[1, 1, b, H]) for d in range(dirs)]
            steps.append(per_dir[0] if dirs == 1 else cx.emit("Concat", per_dir, axis=1))
        y = steps[0] if T == 1 else cx.emit("Concat", steps, axis=0)
        if layout:
            y = cx.emit("Transpose", [y], perm=[2, 0, 1, 3])
        cx.emit("Identity", [y], out=_out(node, 0))
    for k, fin in enumerate(finals):
        if not _out(node, 1 + k):
            continue
        parts = [cx.emit("Reshape", [f], shape=[1, b, H]) for f in fin]
        y = parts[0] if dirs == 1 else cx.emit("Concat", parts, axis=0)
        if layout:
            y = cx.emit("Transpose", [y], perm=[1, 0, 2])
        cx.emit("Identity", [y], out=_out(node, 1 + k))


@register("LSTM")
def _lstm(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    _check(cx, node, a, ["Sigmoid", "Tanh", "Tanh"])
    layout = int(a.get("layout", 0))
    x = cx.t(node.input[0])
    W, R = _const(cx, node, 1, "W"), _const(cx, node, 2, "R")
    dirs, H4, _ = W.shape
    H = H4 // 4
    B = _const(cx, node, 3, "B") if _in(node, 3) else np.zeros((dirs, 8 * H), np.float32)
    P = _const(cx, node, 7, "P") if _in(node, 7) else None       # peepholes: i, o, f on the cell
    xs = _step_inputs(cx, x, layout)
    b = cx.shape(xs[0])[0]
    direction = a.get("direction", "forward")
    ys, hs, cs = [], [], []
    k = _Consts(cx)
    for d in range(dirs):
        h, c = _state(cx, node, 5, d, b, H, layout), _state(cx, node, 6, d, b, H, layout)
        order = range(len(xs)) if (d == 0 and direction != "reverse") else reversed(range(len(xs)))
        out = {}
        for t in order:
            g = cx.emit("Add", [_lin(cx, k, xs[t], f"w{d}", W[d], B[d, :4 * H] + B[d, 4 * H:]),
                                cx.emit("MatMul", [h, k(f"r{d}", R[d].T)])])
            i_, o_, f_, c_ = _split(cx, g, 4, H, f"d{d}t{t}")
            if P is not None:
                i_ = cx.emit("Add", [i_, cx.emit("Mul", [c, k(f"pi{d}", P[d, :H])])])
                f_ = cx.emit("Add", [f_, cx.emit("Mul", [c, k(f"pf{d}", P[d, 2 * H:])])])
            i_, f_ = cx.emit("Sigmoid", [i_]), cx.emit("Sigmoid", [f_])
            c = cx.emit("Add", [cx.emit("Mul", [f_, c]), cx.emit("Mul", [i_, cx.emit("Tanh", [c_])])])
            if P is not None:
                o_ = cx.emit("Add", [o_, cx.emit("Mul", [c, k(f"po{d}", P[d, H:2 * H])])])
            h = cx.emit("Mul", [cx.emit("Sigmoid", [o_]), cx.emit("Tanh", [c])])
            out[t] = h
        ys.append([out[t] for t in range(len(xs))])
        hs.append(h)
        cs.append(c)
    _emit_outputs(cx, node, ys, [hs, cs], b, H, layout)


@register("GRU")
def _gru(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    _check(cx, node, a, ["Sigmoid", "Tanh"])
    layout = int(a.get("layout", 0))
    lbr = int(a.get("linear_before_reset", 0))
    x = cx.t(node.input[0])
    W, R = _const(cx, node, 1, "W"), _const(cx, node, 2, "R")
    dirs, H3, _ = W.shape
    H = H3 // 3
    B = _const(cx, node, 3, "B") if _in(node, 3) else np.zeros((dirs, 6 * H), np.float32)
    xs = _step_inputs(cx, x, layout)
    b = cx.shape(xs[0])[0]
    direction = a.get("direction", "forward")
    ys, hs = [], []
    k = _Consts(cx)
    for d in range(dirs):
        h = _state(cx, node, 5, d, b, H, layout)
        Wb, Rb = B[d, :3 * H], B[d, 3 * H:]
        Rz, Rr, Rh = R[d, :H], R[d, H:2 * H], R[d, 2 * H:]
        order = range(len(xs)) if (d == 0 and direction != "reverse") else reversed(range(len(xs)))
        out = {}
        for t in order:
            xw = _lin(cx, k, xs[t], f"w{d}", W[d], Wb)
            xz, xr, xh = _split(cx, xw, 3, H, f"d{d}t{t}")
            z = cx.emit("Sigmoid", [cx.emit("Add", [xz, _lin(cx, k, h, f"rz{d}", Rz, Rb[:H])])])
            r = cx.emit("Sigmoid", [cx.emit("Add", [xr, _lin(cx, k, h, f"rr{d}", Rr, Rb[H:2 * H])])])
            if lbr:
                rh = cx.emit("Mul", [r, _lin(cx, k, h, f"rh{d}", Rh, Rb[2 * H:])])
            else:
                rh = _lin(cx, k, cx.emit("Mul", [r, h]), f"rh{d}", Rh, Rb[2 * H:])
            n = cx.emit("Tanh", [cx.emit("Add", [xh, rh])])
            # h' = (1 - z) * n + z * h = n + z * (h - n)
            h = cx.emit("Add", [n, cx.emit("Mul", [z, cx.emit("Sub", [h, n])])])
            out[t] = h
        ys.append([out[t] for t in range(len(xs))])
        hs.append(h)
    _emit_outputs(cx, node, ys, [hs], b, H, layout)
