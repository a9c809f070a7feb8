"""ONNX ``Attention`` (opsets 23-25) written out as the ops fusec already compiles (issue 12, item 3).

Exporters at opset 23 may emit one ``Attention`` node for scaled dot-product attention; the
secure program wants the pieces it already has gates for, the way older exports spell them:

    Q, K, V -> [batch, heads, seq, head_size]      (3-D inputs: Reshape + Transpose by q/kv_num_heads)
    S = (Q @ K^T) * scale                          (default 1/sqrt(head_size))
    S = softcap * tanh(S / softcap)                (softcap > 0)
    S = S + bias                                   (attn_mask, is_causal, windows, nonpad_kv_seqlen)
    Y = Softmax(S) @ V                             (back to [batch, seq, heads * v_head_size] for 3-D)

Grouped-query attention (``q_num_heads = r * kv_num_heads``) repeats every K/V head r times.
Instead of copying K and V (a secret product's cost grows with its operands), query heads
are grouped: ``Q`` reshaped to ``[batch, kv_heads, r * seq, head_size]`` multiplies K as it
is, and the probabilities multiply V as it is; only free reshapes sit around the mask and the
softmax, so softmax still feeds its ``@ V`` directly (``passes/defer_softmax_division``).

The mask's parts that are known at compile time (a constant ``attn_mask``, ``is_causal``, the
opset-25 windows, a constant ``nonpad_kv_seqlen``) become one constant bias with ``-inf`` for
"never attend" (``passes/clamp_constants`` makes it the ring's safe minimum). A run-time float
mask is added as it is (secret or the input owner's); a run-time boolean mask must be the input
owner's (it becomes ``Where(mask, 0, min)`` in the owner's plaintext). A query row whose every
key is masked gives 0 (the spec's rule): a constant 0/1 row factor, or for an owner's boolean
mask, the owner's "any key allowed" per row times the output. ``past_key``/``past_value`` are
concatenated in front of K/V (causal offset = their length) and ``present_*`` are those tensors;
``qk_matmul_output`` is given in all four modes. ``softmax_precision`` is ignored (fixed point).

Refused with the node named: a boolean mask computed from secret data (no comparison gate
should decide what attends), ``nonpad_kv_seqlen`` not known at compile time or with a cache,
shapes the spec does not allow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from fusec.ir.onnx_ops import Step, _chain, _err, _in, _out, register

if TYPE_CHECKING:
    from fusec.ir.onnx_frontend import Context

#: what a run-time boolean mask's "False" adds (finite: a row masked everywhere stays NaN-free
#: before its 0 factor; exp of it is 0 at every precision, and clamp_constants narrows it)
MASKED = float(np.finfo(np.float32).min)


@dataclass
class _Dims:
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head: int        # Q/K head size
    v_head: int

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


@register("Attention")
def _attention(cx: Context, node: onnx.NodeProto, a: dict) -> None:
    q, k, v = (cx.t(node.input[i]) for i in range(3))
    rank = len(cx.shape(q))
    if rank not in (3, 4) or len(cx.shape(k)) != rank or len(cx.shape(v)) != rank:
        raise _err(cx, f"Q, K, V must all be 3-D or all 4-D, got shapes {[list(cx.shape(t)) for t in (q, k, v)]}")
    if rank == 3:
        hq, hkv = a.get("q_num_heads"), a.get("kv_num_heads")
        if hq is None or hkv is None:
            raise _err(cx, "3-D Q/K/V need the q_num_heads and kv_num_heads attributes")
        q, k, v = _heads(cx, q, int(hq), "Q"), _heads(cx, k, int(hkv), "K"), _heads(cx, v, int(hkv), "V")
    k, v, past = _cache(cx, node, k, v)
    d = _dims(cx, q, k, v)
    mode = int(a.get("qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        raise _err(cx, f"qk_matmul_output_mode {mode} is not one of 0, 1, 2, 3")
    scale = a.get("scale")
    scale = 1.0 / math.sqrt(d.head) if scale is None else float(scale)
    softcap = float(a.get("softcap", 0.0) or 0.0)
    qk_out = _out(node, 3)

    qg = _grouped(cx, q, d, d.head)
    s = cx.emit("MatMul", [qg, cx.emit("Transpose", [k], perm=[0, 1, 3, 2])])
    s = _ungrouped(cx, s, d, d.kv_len)
    s = cx.emit("Mul", [s, cx.scalar(scale, s)], out=qk_out if qk_out and mode == 0 and not softcap else None)
    if qk_out and mode == 0 and softcap:
        cx.bind(qk_out, s)
    if softcap > 0:
        t = cx.emit("Tanh", [cx.emit("Mul", [s, cx.scalar(1.0 / softcap, s)])])
        s = cx.emit("Mul", [t, cx.scalar(softcap, s)])
    elif softcap < 0:
        raise _err(cx, f"softcap {softcap} is negative")
    if qk_out and mode == 1:
        cx.bind(qk_out, s)
    const_bias, keep = _constant_bias(cx, node, a, d, past)
    if const_bias is not None:
        s = cx.emit("Add", [s, cx.const(const_bias, "bias")])
    s, rt_keep = _runtime_mask(cx, node, s, d, const_bias)
    if qk_out and mode == 2:
        cx.bind(qk_out, s)
    p = cx.emit("Softmax", [_grouped(cx, s, d, d.kv_len)], axis=3)
    factor = cx.const(keep, "keep") if keep is not None else rt_keep
    if qk_out and mode == 3:
        pn = _ungrouped(cx, p, d, d.kv_len)
        _chain(cx, pn, [("Mul", [factor], {})] if factor else [], qk_out)
    steps: list[Step] = [("MatMul", [v], {})]
    if d.group > 1:
        steps.append(("Reshape", [], {"shape": [d.batch, d.q_heads, d.q_len, d.v_head]}))
    if factor:
        steps.append(("Mul", [factor], {}))
    if rank == 3:
        steps += [("Transpose", [], {"perm": [0, 2, 1, 3]}),
                  ("Reshape", [], {"shape": [d.batch, d.q_len, d.q_heads * d.v_head]})]
    _chain(cx, p, steps, _out(node))


# ---------------------------------------------------------------------- shapes
def _heads(cx: Context, x: str, heads: int, what: str) -> str:
    """[batch, seq, heads * size] -> [batch, heads, seq, size]."""
    b, s, hidden = cx.shape(x)
    if heads <= 0 or hidden % heads:
        raise _err(cx, f"{what} has hidden size {hidden}, not a multiple of its {heads} heads")
    x = cx.emit("Reshape", [x], shape=[b, s, heads, hidden // heads])
    return cx.emit("Transpose", [x], perm=[0, 2, 1, 3])


def _cache(cx: Context, node: onnx.NodeProto, k: str, v: str) -> tuple[str, str, int]:
    """past_key / past_value in front of K / V along the sequence; present_* are the results."""
    pk, pv = _in(node, 4), _in(node, 5)
    if bool(pk) != bool(pv):
        raise _err(cx, "past_key and past_value must be given together")
    past = 0
    if pk:
        pk, pv = cx.t(pk), cx.t(pv)
        if len(cx.shape(pk)) != 4 or len(cx.shape(pv)) != 4:
            raise _err(cx, f"past_key/past_value must be 4-D, got {list(cx.shape(pk))} and {list(cx.shape(pv))}")
        past = cx.shape(pk)[2]
        k = cx.emit("Concat", [pk, k], out=_out(node, 1) or None, axis=2)
        v = cx.emit("Concat", [pv, v], out=_out(node, 2) or None, axis=2)
    else:
        cx.bind(_out(node, 1), k)
        cx.bind(_out(node, 2), v)
    return k, v, past


def _dims(cx: Context, q: str, k: str, v: str) -> _Dims:
    (b, hq, sq, dq), (bk, hk, sk, dk), (bv, hv, sv, dv) = cx.shape(q), cx.shape(k), cx.shape(v)
    shapes = f"Q {[b, hq, sq, dq]}, K {[bk, hk, sk, dk]}, V {[bv, hv, sv, dv]} (as [batch, heads, seq, size])"
    if not b == bk == bv:
        raise _err(cx, f"batch sizes differ: {shapes}")
    if dq != dk:
        raise _err(cx, f"Q and K head sizes differ: {shapes}")
    if hk != hv or sk != sv:
        raise _err(cx, f"K and V differ in heads or sequence length: {shapes}")
    if hk <= 0 or hq % hk:
        raise _err(cx, f"{hq} query heads are not a multiple of {hk} key/value heads: {shapes}")
    return _Dims(b, hq, hk, sq, sk, dq, dv)


def _grouped(cx: Context, x: str, d: _Dims, last: int) -> str:
    """[batch, q_heads, q_len, last] -> [batch, kv_heads, group * q_len, last] (query head
    g * group + j is row block j of key/value head g: the interleaved repeat of K and V)."""
    if d.group == 1:
        return x
    return cx.emit("Reshape", [x], shape=[d.batch, d.kv_heads, d.group * d.q_len, last])


def _ungrouped(cx: Context, x: str, d: _Dims, last: int) -> str:
    if d.group == 1:
        return x
    return cx.emit("Reshape", [x], shape=[d.batch, d.q_heads, d.q_len, last])


# ---------------------------------------------------------------------- masks
def _constant_bias(cx: Context, node: onnx.NodeProto, a: dict, d: _Dims, past: int
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The compile-time part of the additive bias (None if all zero) and the 0/1 factor of rows
    it masks everywhere (None if there are none): a constant attn_mask, causal, windows, nonpad."""
    i = np.arange(d.q_len).reshape(-1, 1)
    j = np.arange(d.kv_len).reshape(1, -1)
    bias = np.zeros((d.q_len, d.kv_len), np.float32)
    mask_in = _in(node, 3)
    if mask_in and cx.is_const(mask_in):
        bias = bias + _pad_mask(cx, np.asarray(cx.value(mask_in)), d.kv_len)
    nonpad = None
    if _in(node, 6):
        if past:
            raise _err(cx, "nonpad_kv_seqlen cannot be combined with past_key/past_value (the spec forbids it)")
        nonpad = np.asarray(cx.const_input(node, 6, "nonpad_kv_seqlen"), np.int64).reshape(-1)
        if nonpad.shape != (d.batch,):
            raise _err(cx, f"nonpad_kv_seqlen has {nonpad.size} entries for batch {d.batch}")
    offset = (nonpad - d.q_len).reshape(-1, 1, 1, 1) if nonpad is not None else past
    diff = (i + offset) - j
    allowed = np.ones(np.shape(diff), bool)
    if a.get("is_causal", 0):
        allowed &= diff >= 0
    left, right = int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1))
    if left < -1 or right < -1:
        raise _err(cx, f"window sizes must be -1 or nonnegative, got left {left}, right {right}")
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    if nonpad is not None:
        allowed = allowed & (j < nonpad.reshape(-1, 1, 1, 1))
    if not allowed.all():
        bias = bias + np.where(allowed, np.float32(0), np.float32(-np.inf))
    dead = np.all(np.isneginf(bias), axis=-1, keepdims=True)
    keep = None
    if dead.any():
        bias = np.where(dead, np.float32(0), bias)           # the row is zeroed afterwards: keep it finite
        keep = (~dead).astype(np.float32)
    if not bias.any():
        return None, keep
    return bias.astype(np.float32), keep


def _pad_mask(cx: Context, m: np.ndarray, kv_len: int) -> np.ndarray:
    """A constant mask as an additive bias, its last axis padded to the key length (-inf / False)."""
    if m.ndim == 0 or m.shape[-1] > kv_len:
        raise _err(cx, f"attn_mask of shape {list(m.shape)} does not fit {kv_len} keys")
    if m.dtype == np.bool_:
        m = np.where(m, np.float32(0), np.float32(-np.inf))
    m = np.asarray(m, np.float32)
    pad = kv_len - m.shape[-1]
    if pad:
        m = np.concatenate([m, np.full(m.shape[:-1] + (pad,), -np.inf, np.float32)], axis=-1)
    return m


def _runtime_mask(cx: Context, node: onnx.NodeProto, s: str, d: _Dims, const_bias: np.ndarray | None
                  ) -> tuple[str, str | None]:
    """Scores plus a mask known only at run time, and (boolean masks) the owner's 0/1 row factor."""
    mask_in = _in(node, 3)
    if not mask_in or cx.is_const(mask_in):
        return s, None
    m = cx.t(mask_in)
    info = cx.info(m)
    shape = cx.shape(m)
    if not shape or shape[-1] > d.kv_len:
        raise _err(cx, f"attn_mask of shape {list(shape)} does not fit {d.kv_len} keys")
    pad = d.kv_len - shape[-1]
    if info.dtype == "bool":
        if info.visibility == "secret":
            raise _err(cx, f"the boolean attn_mask {mask_in!r} is computed from secret data; a mask must be "
                           "a constant or the input owner's", "give the mask as a model input (its owner's) or a "
                                                              "float additive mask")
        if pad:
            m = cx.emit("Concat", [m, cx.const(np.zeros(shape[:-1] + (pad,), bool), "pad")], axis=len(shape) - 1)
        allowed = m
        if const_bias is not None and np.isneginf(const_bias).any():
            allowed = cx.emit("And", [m, cx.const(np.isfinite(const_bias), "allowed")])
        keep = cx.emit("ReduceMax", [cx.emit("Cast", [allowed], to="float")], axes=[len(cx.shape(allowed)) - 1],
                       keepdims=True)
        bias = cx.emit("Where", [m, cx.scalar(0.0), cx.scalar(MASKED)])
        return cx.emit("Add", [s, bias]), keep
    if info.dtype != "float":
        raise _err(cx, f"attn_mask {mask_in!r} must be boolean or float, not {info.dtype}")
    if pad:
        m = cx.emit("Concat", [m, cx.const(np.full(shape[:-1] + (pad,), -np.inf, np.float32), "pad")],
                    axis=len(shape) - 1)
    return cx.emit("Add", [s, m]), None
