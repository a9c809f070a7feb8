"""Lower the secure part of the IR to a runtime gate graph (gate selection).

Each IR node becomes one gate (or a few, for broadcasting), named after the node, so the
key layout, the profiler and ``inspect`` all speak the IR's names. Constants are encoded
here at the scale the scale pass chose. Data movement of every kind becomes one
``Rearrange`` gate whose index map is the op itself run on ``arange`` (so it is exactly
the reference semantics). ``--gates sigma`` changes only which gate a labelled ``Scalar``
becomes. The lowering is deterministic: keygen and both servers rebuild the same graph
from ``ir.json`` + ``weights.npz``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fusec.errors import CompileError
from fusec.ir.graph import Graph, Node
from fusec.ir.ops import run_node
from fusec.ir.spec import OperatorSpec
from fusec.passes import lower_sigma
from fusec.passes.options import CompileOptions
from fusec.passes.pricing import gate_price, worth_rounds
from fusec.passes.ranges import narrow_bits, proven, width_bits
from fusec.passes.scales import power_of_two_factor
from fusec.ir.ops import is_movement
from fusec.runtime import ring
from fusec.runtime.gates.arith import MatMulPrivate, Mul
from fusec.runtime.gates.base import Gate
from fusec.runtime.gates.compare import MaxTree, MaxTreeNarrow
from fusec.runtime.gates.linear import Add, AddPublic, MatMulPublic, MulPublic
from fusec.runtime.gates.movement import Rearrange, SumAxis
from fusec.runtime.gates.mul_narrow import MulNarrow, View
from fusec.runtime.gates.scalar import ScalarGate
from fusec.runtime.gates.truncation import ArsOneRound, TruncateNarrow
from fusec.runtime.graph import GateGraph


@dataclass
class Lowered:
    gates: GateGraph
    wire: dict[str, str] = field(default_factory=dict)         # IR tensor -> gate node id
    inputs: dict[str, tuple[str, int]] = field(default_factory=dict)   # Share node -> (client tensor, owner)
    outputs: dict[str, tuple[str, int]] = field(default_factory=dict)  # gate id -> (IR tensor, scale)
    ir_node: dict[str, str] = field(default_factory=dict)       # gate id -> IR node name


def encode(c, scale: int, bits: int) -> np.ndarray:
    """Round a public real constant to the ring at ``scale`` fractional bits."""
    v = np.round(np.asarray(c, np.float64) * 2.0 ** scale)
    return v.astype(np.int64).astype(np.uint64) & ring.mask(bits)


class _Lowering:
    def __init__(self, graph: Graph, opts: CompileOptions):
        self.g, self.o, self.n = graph, opts, opts.bits
        self.out = Lowered(GateGraph())
        self.folded: dict[str, tuple[str, int, int]] = {}   # rescaled tensor -> (raw tensor, shift, view bits)
        self.folded_mul: dict[str, tuple[str, View]] = {}   # rescaled tensor read by products -> (raw, view)

    # ------------------------------------------------------------------ helpers
    def add(self, gid: str, gate: Gate, inputs: list[str], node: Node) -> str:
        self.out.gates.add(gid, gate, inputs)
        self.out.ir_node[gid] = node.name
        return gid

    def secret(self, t: str) -> bool:
        return self.g.info(t).visibility == "secret"

    def shape(self, t: str) -> tuple[int, ...]:
        return self.g.info(t).shape

    def scale(self, t: str) -> int:
        return self.g.info(t).scale

    def broadcast(self, node: Node, t: str, shape: tuple[int, ...], tag: str) -> str:
        """Wire of tensor ``t`` broadcast to ``shape`` (free Rearrange when needed)."""
        src = self.out.wire[t]
        if self.shape(t) == tuple(shape):
            return src
        size = int(np.prod(self.shape(t)))
        idx = np.broadcast_to(np.arange(size).reshape(self.shape(t)), shape).reshape(-1)
        return self.add(f"{node.name}/{tag}", Rearrange([size], idx, self.n), [src], node)

    def const_full(self, t: str, shape) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.g.const(t), np.float64), shape).reshape(-1)

    # ------------------------------------------------------------------ per op
    def movement(self, node: Node) -> None:
        secret = [t for t in node.inputs if t and self.secret(t)]
        if node.op in ("Gather",) and not self.g.is_const(node.inputs[1]):
            raise CompileError(f"{node!r} gathers with secret indices", "only public (constant) indices are supported")
        offsets, args, sizes, consts = 0, [], [], []    # consts: (position, value) of public data
        for i, t in enumerate(node.inputs):
            if t and self.secret(t):
                size = int(np.prod(self.shape(t)))
                args.append(np.arange(offsets, offsets + size, dtype=np.int64).reshape(self.shape(t)) + 1)
                sizes.append(size)
                offsets += size
            elif t and self.g.is_const(t) and node.op in ("Gather",) and i == 1:
                args.append(self.g.const(t))
            elif t and self.g.is_const(t) and self.g.info(t).dtype == "float":
                # a public constant moved beside secrets (ViT's class token): the zero slot, plus
                # its values added publicly below (a wire with a zero mask, at no cost)
                args.append(np.zeros(np.shape(self.g.const(t)), np.int64))
                consts.append((i, self.g.const(t)))
            elif t:
                raise CompileError(f"{node!r} mixes constants into data movement of secret tensors",
                                   "this pattern is not supported yet")
            else:
                args.append(None)
        attrs = dict(node.attrs)
        pad_value = float(attrs.get("value", 0.0) or 0.0) if node.op in ("Pad", "Im2Col") else 0.0
        if node.op in ("Pad", "Im2Col"):
            attrs["value"] = 0          # index 0 after the -1 below: the padding slot
        results = run_node(node.op, args, attrs)
        publics = None
        if consts:
            vals = [np.zeros(np.shape(a), np.float64) if a is not None else None for a in args]
            for i, v in consts:
                vals[i] = np.asarray(v, np.float64)
            publics = run_node(node.op, vals, attrs)
        wires = [self.out.wire[t] for t in secret]
        deferred = self.folded_mul.get(secret[0]) if len(secret) == 1 else None
        if deferred is not None and deferred[0] == secret[0]:   # a deferred output shift moves with its wire
            self.folded_mul.update({t: (t, deferred[1]) for t in node.outputs})
        for i, (t, idx) in enumerate(zip(node.outputs, results)):
            gid = node.name if len(node.outputs) == 1 else f"{node.name}:{i}"
            index = np.asarray(idx, np.int64).reshape(-1) - 1
            if len(secret) == 1 and index.size == sizes[0] and np.array_equal(index, np.arange(index.size)):
                self.out.wire[t] = wires[0]       # a pure reshape: no gate at all
                continue
            self.out.wire[t] = self.add(gid, Rearrange(sizes, index, self.n), wires, node)
            if publics is not None:
                const = np.asarray(publics[i], np.float64).reshape(-1)
                self.out.wire[t] = self.add(f"{gid}/public", AddPublic(index.size, self.n,
                                            encode(const, self.scale(t), self.n)), [self.out.wire[t]], node)
            if pad_value != 0.0:        # e.g. max pooling pads with "minus infinity": a public constant
                lim = self.o.safe_magnitude
                const = np.where(index < 0, np.clip(pad_value, -lim, lim), 0.0)
                self.out.wire[t] = self.add(f"{gid}/padvalue", AddPublic(index.size, self.n,
                                            encode(const, self.scale(t), self.n)), [self.out.wire[t]], node)

    def add_sub(self, node: Node) -> None:
        a, b = node.inputs
        out = node.outputs[0]
        shape, s, N = self.shape(out), self.scale(out), int(np.prod(self.shape(out)))
        sub = node.op == "Sub"
        if self.secret(a) and self.secret(b):
            wa, wb = self.broadcast(node, a, shape, "bcast0"), self.broadcast(node, b, shape, "bcast1")
            self.out.wire[out] = self.add(node.name, Add(N, self.n, subtract=sub), [wa, wb], node)
            return
        x, c = (a, b) if self.secret(a) else (b, a)
        wx = self.broadcast(node, x, shape, "bcast")
        cval = self.const_full(c, shape)
        if sub and x == b:     # c - x = (-1) x + c
            wx = self.add(f"{node.name}/neg", MulPublic(N, self.n, -1), [wx], node)
        elif sub:
            cval = -cval
        self.out.wire[out] = self.add(node.name, AddPublic(N, self.n, encode(cval, s, self.n)), [wx], node)

    def mul(self, node: Node) -> None:
        a, b = node.inputs
        out = node.outputs[0]
        shape, N = self.shape(out), int(np.prod(self.shape(out)))
        if self.secret(a) and self.secret(b):
            (ra, va), (rb, vb) = (self.folded_mul.get(t, (t, None)) for t in (a, b))
            wa, wb = self.broadcast(node, ra, shape, "bcast0"), self.broadcast(node, rb, shape, "bcast1")
            gate = Mul(N, self.n) if va is None and vb is None else MulNarrow(N, self.n, va, vb, square=a == b)
            self.out.wire[out] = self.add(node.name, gate, [wa, wb], node)
            return
        x, c = (a, b) if self.secret(a) else (b, a)
        wx = self.broadcast(node, x, shape, "bcast")
        cv = self.const_full(c, shape)
        scalar = cv[0] if np.all(cv == cv[0]) else None
        k = encode(scalar if scalar is not None else cv, node.attrs["const_scale"], self.n)
        self.out.wire[out] = self.add(node.name, MulPublic(N, self.n, k), [wx], node)

    def matmul(self, node: Node) -> None:
        a, b = node.inputs
        out = node.outputs[0]
        if self.secret(a) and self.secret(b):
            sa, sb = self.shape(a), self.shape(b)
            batch = np.broadcast_shapes(sa[:-2], sb[:-2])
            wa = self.broadcast(node, a, batch + sa[-2:], "bcast0")
            wb = self.broadcast(node, b, batch + sb[-2:], "bcast1")
            self.out.wire[out] = self.add(node.name, MatMulPrivate(batch + sa[-2:], batch + sb[-2:], self.n),
                                          [wa, wb], node)
            return
        cs = node.attrs["const_scale"]
        if max(np.ndim(self.g.const(b if self.secret(a) else a)), 2) > 2:
            return self.matmul_batched_public(node, cs)
        if self.secret(a):
            W = self.g.const(b)
            if W.ndim != 2:
                raise CompileError(f"{node!r}: public weight of rank {W.ndim}", "only 2-D public weights are supported")
            self.out.wire[out] = self.add(node.name, MatMulPublic(self.shape(a), encode(W, cs, self.n), self.n),
                                          [self.out.wire[a]], node)
            return
        # C @ X = (X^T @ C^T)^T for a public 2-D C
        C, sx = self.g.const(a), self.shape(b)
        if C.ndim != 2 or len(sx) < 2:
            raise CompileError(f"{node!r}: public left operand of rank {C.ndim}", "only 2-D public weights are supported")
        perm = list(range(len(sx) - 2)) + [len(sx) - 1, len(sx) - 2]
        size = int(np.prod(sx))
        xt_shape = tuple(sx[p] for p in perm)
        idx = np.transpose(np.arange(size).reshape(sx), perm).reshape(-1)
        wt = self.add(f"{node.name}/xT", Rearrange([size], idx, self.n), [self.out.wire[b]], node)
        prod = self.add(f"{node.name}/mm", MatMulPublic(xt_shape, encode(C.T, cs, self.n), self.n), [wt], node)
        pshape = xt_shape[:-1] + (C.shape[0],)
        idx2 = np.transpose(np.arange(int(np.prod(pshape))).reshape(pshape), perm).reshape(-1)
        self.out.wire[out] = self.add(node.name, Rearrange([int(np.prod(pshape))], idx2, self.n), [prod], node)

    def matmul_batched_public(self, node: Node, cs: int) -> None:
        """A secret times a public operand of rank > 2 (DeBERTa's relative-position keys): one
        free public matmul per batch slice, gathered by free rearranges."""
        a, b = node.inputs
        out = node.outputs[0]
        left_secret = self.secret(a)
        x, C = (a, self.g.const(b)) if left_secret else (b, self.g.const(a))
        sx = self.shape(x)
        if len(sx) < 2:
            raise CompileError(f"{node!r}: a batched public operand needs a secret operand of rank >= 2")
        batch = tuple(np.broadcast_shapes(sx[:-2], C.shape[:-2]))
        xb = self.broadcast(node, x, batch + sx[-2:], "bcastx")
        Cb = np.broadcast_to(C, batch + C.shape[-2:]).reshape((-1,) + C.shape[-2:])
        m, k = sx[-2:]
        per = m * k
        parts = []
        for i in range(Cb.shape[0]):
            sl = self.add(f"{node.name}/x{i}", Rearrange([int(np.prod(batch)) * per], np.arange(i * per, (i + 1) * per),
                                                           self.n), [xb], node)
            if left_secret:
                parts.append(self.add(f"{node.name}/mm{i}", MatMulPublic((m, k), encode(Cb[i], cs, self.n), self.n),
                                      [sl], node))
            else:                       # C @ X = (X^T @ C^T)^T
                idx = np.arange(per).reshape(m, k).T.reshape(-1)
                xt = self.add(f"{node.name}/xT{i}", Rearrange([per], idx, self.n), [sl], node)
                prod = self.add(f"{node.name}/mm{i}", MatMulPublic((k, m), encode(Cb[i].T, cs, self.n), self.n),
                                [xt], node)
                rows = Cb.shape[1]
                parts.append(self.add(f"{node.name}/mmT{i}", Rearrange([k * rows], np.arange(k * rows).reshape(k, rows)
                                                                        .T.reshape(-1), self.n), [prod], node))
        sizes = [self.out.gates.node(w).gate.elements for w in parts]
        self.out.wire[out] = self.add(node.name, Rearrange(sizes, np.arange(sum(sizes)), self.n), parts, node)

    def reduce(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        shape = self.shape(x)
        axes = tuple(node.attrs.get("axes") if node.attrs.get("axes") is not None else range(len(shape)))
        if node.op in ("ReduceSum", "ReduceMean"):
            gid = node.name if node.op == "ReduceSum" else f"{node.name}/sum"
            w = self.add(gid, SumAxis(shape, axes, self.n, keepdims=True), [self.out.wire[x]], node)
            if node.op == "ReduceMean":
                k = int(np.prod([shape[a] for a in axes]))
                N = int(np.prod(self.shape(out)))
                w = self.add(node.name, MulPublic(N, self.n, encode(1.0 / k, node.attrs["const_scale"], self.n)), [w], node)
            self.out.wire[out] = w
        elif node.op in ("ReduceMax", "ReduceMin"):
            w = self.out.wire[x]
            axes = tuple(sorted(a % len(shape) for a in axes))
            raw, pre = self.max_input(x) if node.op == "ReduceMax" and len(axes) == 1 else (x, 0)
            src, pre, coarse = self.coarse_max(node, x, raw, pre) if len(axes) == 1 else (raw, pre, 0)
            if pre or coarse:   # the tree truncates its input itself, for free
                lo, hi = proven(self.g, src)
                k = width_bits(lo, hi, self.scale(src), slack=3)
                gate = self.max_tree(shape, axes[0], k, pre + coarse)
                w = self.add(f"{node.name}/grid" if coarse else node.name, gate, [self.out.wire[src]], node)
                if coarse:      # from the grid back to the max's scale: local
                    w = self.add(node.name, MulPublic(gate.elements, self.n, 1 << coarse), [w], node)
                self.out.wire[out] = w
                return
            if len(axes) > 1:           # move the reduced axes last, flatten them into one
                keep = [a for a in range(len(shape)) if a not in axes]
                perm = keep + list(axes)
                idx = np.transpose(np.arange(int(np.prod(shape))).reshape(shape), perm).reshape(-1)
                w = self.add(f"{node.name}/gather", Rearrange([int(np.prod(shape))], idx, self.n), [w], node)
                shape = tuple(shape[a] for a in keep) + (int(np.prod([shape[a] for a in axes])),)
                axes = (len(shape) - 1,)
            N = int(np.prod(shape))
            if node.op == "ReduceMin":  # min(x) = -max(-x)
                w = self.add(f"{node.name}/neg", MulPublic(N, self.n, -1), [w], node)
            w = self.add(node.name if node.op == "ReduceMax" else f"{node.name}/max",
                         self.max_gate(x, shape, axes[0], node.op == "ReduceMin"), [w], node)
            if node.op == "ReduceMin":
                w = self.add(node.name, MulPublic(N // shape[axes[0]], self.n, -1), [w], node)
            self.out.wire[out] = w
        else:
            raise CompileError(f"{node!r}: {node.op} of a secret tensor is not supported")

    def max_gate(self, x: str, shape, axis: int, negated: bool) -> Gate:
        """Max tree comparing on the proven width of the differences (fused) or SIGMA's."""
        if self.o.gates == "sigma" and hasattr(lower_sigma, "max_gate"):
            return lower_sigma.max_gate(shape, axis, self.o, self.scale(x))
        lo, hi = proven(self.g, x)
        k = width_bits(lo, hi, self.scale(x), slack=2)       # |x| < 2^(k-3): differences fit k bits
        if k is None or k >= self.n or k < 4:
            return MaxTree(shape, self.n, axis)
        return self.max_tree(shape, axis, k, 0)

    def max_tree(self, shape, axis: int, view_bits: int, pre_shift: int) -> MaxTreeNarrow:
        """The max tree with ``--max-tree``'s comparisons, or under ``auto`` the first j levels
        packed for the j whose saving over the whole tree (passes/pricing.py) beats its j extra
        rounds by the most. Each level holds half the comparisons of the one before, so the
        wide levels pay for their round first: a batch-1 BERT-base at seq 128 packs the first
        level; larger batches and sequences, bound by the card's AES and the key's size, more."""
        def tree(packed: int) -> MaxTreeNarrow:
            return MaxTreeNarrow(shape, self.n, axis, view_bits, pre_shift=pre_shift, packed_levels=packed)

        shifted = tree(0)
        depth = len(shifted.levels)
        if self.o.max_tree != "auto":
            return shifted if self.o.max_tree == "shifted" else tree(depth)
        best, net = shifted, 0.0
        for j in range(1, depth + 1):
            t = tree(j)
            saved, extra = gate_price(shifted) - gate_price(t), t.cost().rounds - shifted.cost().rounds
            if worth_rounds(saved, extra, self.o.round_worth_bytes) and saved - extra * self.o.round_worth_bytes > net:
                best, net = t, saved - extra * self.o.round_worth_bytes
        return best

    def coarse_max(self, node: Node, x: str, raw: str, pre: int) -> tuple[str, int, int]:
        """(tree input, pre-shift, coarse shift c) for a max whose node allows an error of
        ``grid`` (softmax's, passes/expand_blocks): the tree drops c more low bits for free
        (c fewer DCF levels per comparison) and its result, scaled back by 2^c, is within
        2^c ulps of the true max, plus one where the tree reads the unrescaled tensor (the
        rescaled one it is subtracted from is within an ulp of that). The largest c whose
        error fits the grid; none (an exact max, no free truncation) when not even the
        rescale's ulp does. A node without a grid keeps ``(raw, pre)``."""
        grid = float(node.attrs.get("grid", 0.0))
        if node.op != "ReduceMax" or grid <= 0.0 or self.o.gates != "fused":
            return raw, pre, 0
        room = grid * 2.0 ** self.scale(x)          # the grid in ulps of the max's scale
        for src, p, extra in ([(raw, pre, 1)] if pre else []) + [(x, 0, 0)]:
            if room - extra < 1:
                continue
            lo, hi = proven(self.g, src)
            k = width_bits(lo, hi, self.scale(src), slack=3)
            if k is None or k > self.n:
                continue
            c = min(int(np.floor(np.log2(room - extra))), k - p - 4)
            if c > 0 or p:
                return src, p, max(c, 0)
        return x, 0, 0

    def max_input(self, x: str) -> tuple[str, int]:
        """(wire tensor, pre-shift) for a fused max tree: a max of a rescaled tensor reads the
        unrescaled one and truncates for free inside the tree (its rescale round is then off
        the max's critical path; the rescaled tensor's other readers keep theirs)."""
        p = self.g.producer(x)
        if self.o.gates != "fused" or p is None or p.op != "Rescale" or p.attrs["shift"] <= 0:
            return x, 0
        raw, s = p.inputs[0], p.attrs["shift"]
        lo, hi = proven(self.g, raw)
        k = width_bits(lo, hi, self.scale(raw), slack=3)
        if k is None or k > self.n or not 4 <= k - s < self.n:
            return x, 0
        return raw, s

    def centre(self, node: Node) -> None:
        """``k x - sum x``: a public multiply, a sum, a broadcast and a subtraction (all free)."""
        x, out = node.inputs[0], node.outputs[0]
        shape, N = self.shape(x), int(np.prod(self.shape(x)))
        axes = tuple(a % len(shape) for a in node.attrs["axes"])
        k = int(np.prod([shape[a] for a in axes]))
        kx = self.add(f"{node.name}/kx", MulPublic(N, self.n, k), [self.out.wire[x]], node)
        red = tuple(1 if i in axes else d for i, d in enumerate(shape))
        s = self.add(f"{node.name}/sum", SumAxis(shape, axes, self.n, keepdims=True), [self.out.wire[x]], node)
        idx = np.broadcast_to(np.arange(int(np.prod(red))).reshape(red), shape).reshape(-1)
        sb = self.add(f"{node.name}/bcast", Rearrange([int(np.prod(red))], idx, self.n), [s], node)
        self.out.wire[out] = self.add(node.name, Add(N, self.n, subtract=True), [kx, sb], node)

    def where(self, node: Node) -> None:
        cond, a, b = node.inputs
        out = node.outputs[0]
        if not self.g.is_const(cond):
            raise CompileError(f"{node!r}: Where with a secret condition", "only public conditions are supported")
        shape, N, s = self.shape(out), int(np.prod(self.shape(out))), self.scale(out)
        cv = np.broadcast_to(self.g.const(cond).astype(bool), shape).reshape(-1)
        parts, const = [], np.zeros(N)
        for t, sel, tag in ((a, cv, "a"), (b, ~cv, "b")):
            if self.secret(t):
                w = self.broadcast(node, t, shape, f"bcast_{tag}")
                parts.append(self.add(f"{node.name}/{tag}", MulPublic(N, self.n, sel.astype(np.int64)), [w], node))
            else:
                const = const + np.where(sel, self.const_full(t, shape), 0.0)
        w = parts[0] if len(parts) == 1 else self.add(f"{node.name}/sum", Add(N, self.n), parts, node)
        self.out.wire[out] = self.add(node.name, AddPublic(N, self.n, encode(const, s, self.n)), [w], node)

    def scalar(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        N = int(np.prod(self.shape(x)))
        lab, s_in = node.attrs.get("label"), self.scale(x)
        if node.attrs.get("impl") == "sigma":
            gate = lower_sigma.scalar_gate(node, lab, N, s_in, self.o)
        else:
            spec = OperatorSpec.from_dict(node.attrs["spec"])
            if spec.f_in != s_in:
                raise CompileError(f"{node!r}: spec fitted at f_in={spec.f_in}, input arrives at {s_in}")
            k_out = self.value_view_bits(spec, out, proven(self.g, x))
            defer = k_out is not None and self.read_by_products_only(out, through_moves=True)
            if x in self.folded:        # the rescale in front is done inside the gate, on the public view
                raw, pre, k_in = self.folded[x]
                gate = ScalarGate(N, spec, view_bits=k_in, out_view_bits=k_out, pre_shift=pre, proven=proven(self.g, x),
                                  defer_shift=defer and ScalarGate.narrows_value(spec, "packed", k_out))
                x = raw
            else:
                k_in = narrow_bits(self.g, x, spec.view_shift)
                k_in = k_in if k_in is not None and k_in < self.n else None
                lookup, pad = node.attrs.get("lookup", "auto"), node.attrs.get("pad", True)
                x_range = proven(self.g, x) if k_in is not None else None
                if lookup == "auto":
                    gate = self.scalar_lookup(N, spec, pad, k_in, k_out, self.o.round_worth_bytes, x_range)
                else:
                    gate = ScalarGate(N, spec, lookup=lookup, pad=pad, view_bits=k_in, out_view_bits=k_out, proven=x_range)
                if defer and ScalarGate.narrows_value(spec, gate.lookup, k_out):
                    # only where it removes the packed lookup's truncation round: the products'
                    # views cost key (small next to a round), a one-round lookup keeps its own
                    gate = ScalarGate(N, spec, lookup=gate.lookup, pad=pad, view_bits=k_in, out_view_bits=k_out,
                                      proven=x_range, defer_shift=True)
            if gate.deferred_bits is not None:
                # the output shift is left to the products that read it: each reads the k-bit
                # wire at poly_scale through the free truncation's view (MulNarrow), no round
                self.folded_mul[out] = (out, View(gate.deferred_bits, spec.out_shift))
            elif gate.out_scale != self.scale(out):
                raise CompileError(f"{node!r}: gate output scale {gate.out_scale} != IR scale {self.scale(out)}")
        self.out.wire[out] = self.add(node.name, gate, [self.out.wire[x]], node)

    def value_view_bits(self, spec: OperatorSpec, out: str, x_range: tuple[float, float]) -> int | None:
        """The width k (two bits of slack) of the lookup's value at ``poly_scale``, for a lookup
        mod 2^k and a free truncation of its output: from the output's proven range, or from
        the spec's own values over the input's proven range where that is tighter. A held
        function is bounded by its held value there: BERT's layer-norm rsqrt is proven below
        6.9e5 as a function of a variance that may be 0, but its spec holds it at 1,774."""
        if not spec.out_shift:
            return None
        ks = [narrow_bits(self.g, out, spec.out_shift, scale=spec.poly_scale)]
        lo, hi = x_range
        if math.isfinite(lo) and math.isfinite(hi):
            scale = 2.0 ** spec.f_in        # +-1: the input's rounding; the margin: a piece picked from a view
            v = spec.value_bound(math.floor(lo * scale) - 1, math.ceil(hi * scale) + 1,
                                 margin=(2 << spec.view_shift) + 2)
            ks.append(None if v is None else (v + (1 << spec.out_shift) + 1).bit_length() + 2)
        k = min((k for k in ks if k is not None), default=None)
        return k if k is not None and k <= self.n else None

    @staticmethod
    def scalar_lookup(N: int, spec: OperatorSpec, pad: bool, k_in: int | None, k_out: int | None,
                      round_worth: float, x_range: tuple[float, float] | None = None) -> ScalarGate:
        """The packed lookup (two rounds) or the one-round shifted one, priced over the whole gate
        (passes/pricing.py): the packed one where what it saves in key and AES pays for its extra
        round. A small gate (once per softmax or norm row) keeps the one round unless it is
        dear: a norm's rsqrt of ~500 pieces evaluates the shifted DCF at every breakpoint."""
        packed, shifted = (ScalarGate(N, spec, lookup=lk, pad=pad, view_bits=k_in, out_view_bits=k_out, proven=x_range)
                           for lk in ("packed", "shifted"))
        extra = packed.cost().rounds - shifted.cost().rounds
        return packed if worth_rounds(gate_price(shifted) - gate_price(packed), extra, round_worth) else shifted

    def rescale(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        N, sh = int(np.prod(self.shape(x))), node.attrs["shift"]
        if sh < 0:      # upscale: multiply by 2^-shift, free and exact
            self.out.wire[out] = self.add(node.name, MulPublic(N, self.n, 1 << -sh), [self.out.wire[x]], node)
            return
        if self.o.gates == "sigma":
            gate = lower_sigma.rescale_gate(N, sh, self.o, exact=not self.sigma_slack(x, sh))
        elif self.fold_into_scalar(node, x, sh) or self.fold_into_products(node, x, sh):
            return
        else:
            gate = self.truncation(node, x, N, sh)
        self.out.wire[out] = self.add(node.name, gate, [self.out.wire[x]], node)

    def sigma_slack(self, x: str, sh: int) -> bool:
        """SIGMA truncates an elementwise product (softmax's ``e * 1/sum``, layer norm's
        squares, ``d * rsqrt`` and ``* gamma``) with TrWithSlack, whose range assumption
        ``|x| < 2^(n-2)`` this build takes only where it is proven; matmuls keep TrFloor."""
        producer = self.g.producer(x)
        while producer is not None and power_of_two_factor(self.g, producer) is not None:
            producer = self.g.producer(next(t for t in producer.inputs[:2] if self.secret(t)))   # a scale only
        if producer is None or producer.op != "Mul":
            return False
        k = narrow_bits(self.g, x, sh)
        return k is not None and k <= self.n

    def fold_into_scalar(self, node: Node, x: str, sh: int) -> bool:
        """A rescale read only by a fused scalar gate whose pieces overlap (view_shift >= 1)
        costs no round: the gate opens the truncated input next to its comparison bits."""
        out = node.outputs[0]
        readers = self.g.consumers(out)
        if out in self.g.outputs or len(readers) != 1 or readers[0].op != "Scalar" \
                or readers[0].attrs.get("impl") != "fused" or "spec" not in readers[0].attrs:
            return False
        spec = OperatorSpec.from_dict(readers[0].attrs["spec"])
        if spec.view_shift < 1:
            return False
        k = narrow_bits(self.g, x, sh + spec.view_shift)
        if k is None or k > self.n or k - sh - spec.view_shift < 3:
            return False
        k_out = narrow_bits(self.g, readers[0].outputs[0], spec.out_shift, scale=spec.poly_scale) \
            if spec.out_shift else None
        if k_out is not None and k_out <= self.n and k_out <= k - sh:   # the widened input must fit the lookup's ring
            return False
        self.folded[out] = (x, sh, k)
        return True

    def read_by_products_only(self, t: str, through_moves: bool = False) -> bool:
        """Whether every reader of ``t`` is a product of two secrets (not the client's) and
        ``t`` is no graph output: then they may read it through a view (:class:`MulNarrow`).
        ``through_moves``: readers may also be pure data movement of ``t`` alone (a broadcast
        of a row's value, a reshape) whose outputs are read so in turn."""
        readers = self.g.consumers(t)
        return t not in self.g.outputs and bool(readers) and all(
            (r.op == "Mul" and r.attrs.get("at") != "client" and all(self.secret(u) for u in r.inputs[:2]))
            or (through_moves and self.moves_only(r, t)
                and all(self.read_by_products_only(o, True) for o in r.outputs))
            for r in readers)

    def moves_only(self, node: Node, t: str) -> bool:
        """``node`` only moves the elements of ``t`` (no other secret, no public values mixed
        in, no padding value): it commutes with an elementwise view of ``t``."""
        return is_movement(node.op) and node.op not in ("Pad", "Im2Col") and all(
            u == t or not u or (self.g.is_const(u) and self.g.info(u).dtype != "float") for u in node.inputs)

    def fold_into_products(self, node: Node, x: str, sh: int) -> bool:
        """A rescale read only by products of two secrets costs no round: each product reads
        the unrescaled wire through the free truncation's view (:class:`MulNarrow`), e.g.
        layer norm's ``x - mean`` in its square and in ``d * r``."""
        out = node.outputs[0]
        if not self.read_by_products_only(out):
            return False
        k = narrow_bits(self.g, x, sh)
        if k is None or k - sh < 3 or k > self.n or self.n <= k - sh:
            return False
        self.folded_mul[out] = (x, View(k, sh))
        return True

    def truncation(self, node: Node, x: str, N: int, sh: int) -> Gate:
        """Free truncation on the proven width, widened under slack (one round, no DCF);
        the full-ring exact ARS where no width is proven (with a note naming the tensor)."""
        k = narrow_bits(self.g, x, sh)
        if k is not None and k - sh >= 3 and k <= self.n and self.n > k - sh:
            return TruncateNarrow(N, self.n, k, sh)
        self.o.notes.append(f"{node!r}: no proven width below {self.n} bits for {x!r}; exact full-ring "
                            "truncation (two DCFs) instead of the free one")
        return ArsOneRound(N, self.n, sh)

    def share(self, node: Node) -> None:
        from fusec.runtime.gates.arith import Input  # noqa: PLC0415
        from fusec.runtime.gates.public_input import PublicInput  # noqa: PLC0415
        out = node.outputs[0]
        owner = node.attrs.get("owner", 1)
        kind = PublicInput if node.attrs.get("role") == "public" else Input    # public role: zero mask
        self.out.wire[out] = self.add(node.name, kind(int(np.prod(self.shape(out))), self.n, owner), [], node)
        self.out.inputs[node.name] = (node.inputs[0], owner)

    def identity(self, node: Node) -> None:
        self.out.wire[node.outputs[0]] = self.out.wire[node.inputs[0]]

    def visit(self, node: Node) -> None:
        if node.attrs.get("at") == "client":
            return
        handler = HANDLERS.get(node.op) or (_Lowering.movement if is_movement(node.op) else None)
        if handler is None:
            raise CompileError(f"{node!r} cannot run on secret data yet (no lowering for {node.op})",
                               "this op should have been fused or expanded by an earlier pass; please report it")
        handler(self, node)


#: op -> lowering (data movement of every kind: :meth:`_Lowering.movement`, by the op's category)
HANDLERS = {
    "Share": _Lowering.share, "Identity": _Lowering.identity, "Add": _Lowering.add_sub, "Sub": _Lowering.add_sub,
    "Mul": _Lowering.mul, "MatMul": _Lowering.matmul, "ReduceSum": _Lowering.reduce, "ReduceMean": _Lowering.reduce,
    "ReduceMax": _Lowering.reduce, "ReduceMin": _Lowering.reduce, "Where": _Lowering.where,
    "Scalar": _Lowering.scalar, "Rescale": _Lowering.rescale, "Centre": _Lowering.centre,
}


def lower(graph: Graph, opts: CompileOptions) -> Lowered:
    lw = _Lowering(graph, opts)
    for node in graph.nodes():
        lw.visit(node)
    from fusec.runtime.gates.arith import Output  # noqa: PLC0415
    for t in graph.outputs:
        if graph.info(t).visibility != "secret":
            raise CompileError(f"output {t!r} does not depend on the private input", "nothing to compute securely")
        gid = f"output:{t}"
        node = Node(gid, "Output", [t], [])
        lw.add(gid, Output(int(np.prod(graph.info(t).shape)), opts.bits, 1), [lw.out.wire[t]], node)
        lw.out.outputs[gid] = (t, graph.info(t).scale)
    return lw.out
