"""Fixed-point scale assignment with lazy rescaling (DESIGN §4).

Every secret tensor gets a scale s (fractional bits) on the n-bit ring. Products add
scales; instead of truncating after every product, a ``Rescale`` is inserted only where
the next product would not fit: before a multiply whose result would exceed the scale cap
(3f) or the ring (calibrated magnitude * 2^s must stay under 2^(n-2) with 3 bits of
headroom). Sums, reductions, data movement and max keep the scale; an add of tensors at
different scales multiplies the lower one by a public power of two (free and exact).
Scalar gates take their input at whatever scale it arrives (their spec is fitted at that
``f_in``), so the rescale before a nonlinearity is fused into it whenever the fit allows.

Ranges come from ``passes.calibrate``; a tensor whose calibrated range overflows even at
the smallest useful scale gets a warning naming it.
"""
from __future__ import annotations

import math

import numpy as np

from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.ir.ops import KEEP_SCALE, MOVEMENT  # noqa: F401  (op categories live on the op definitions)
from fusec.passes.options import CompileOptions
from fusec.passes.ranges import proven

HEADROOM_BITS = 3


def exact_power_of_two(c: np.ndarray) -> int | None:
    """k when every entry of ``c`` is +-2^-k (k >= 0), else None."""
    v = np.abs(np.asarray(c, np.float64)).reshape(-1)
    if not v.size or not 0 < v[0] <= 1:
        return None
    k = -math.log2(v[0])
    return int(k) if k == int(k) and np.all(v[:64] == v[0]) and np.all(v == v[0]) else None


def power_of_two_factor(graph: Graph, node: Node) -> int | None:
    """k when ``node`` multiplies one secret by a public constant equal to +-2^-k everywhere
    (k >= 0): free and exact, the same integers read at k more fractional bits."""
    secret = [t for t in node.inputs[:2] if t and graph.info(t).visibility == "secret"]
    if node.op != "Mul" or len(secret) != 1:
        return None
    c = next((t for t in node.inputs[:2] if t not in secret), None)
    return exact_power_of_two(graph.const(c)) if c is not None and graph.is_const(c) else None


def _all_integers(v: np.ndarray, scale: float = 1.0) -> bool:
    """``np.all(v * scale == np.round(v * scale))`` for a flat ``v``, looking at a few elements
    first: a weight matrix that is not integer-valued (at some scale) says so in its first
    elements, and a BERT-base compile asks this of every matmul's weights for 12 scales."""
    head = v[:64] * scale
    if not np.all(head == np.round(head)):
        return False
    full = v * scale
    return bool(np.all(full == np.round(full)))


class _Scaler:
    def __init__(self, graph: Graph, opts: CompileOptions):
        self.g, self.o = graph, opts
        self.ranges: dict = graph.meta.get("ranges", {})
        self.cache: dict[tuple[str, int], str] = {}
        self.warned: set[str] = set()

    # -------------------------------------------------------------- helpers
    def maxabs(self, t: str) -> float:
        """The proven bound where there is one (sound for every input), else the calibrated."""
        lo, hi = proven(self.g, t)
        if math.isfinite(lo) and math.isfinite(hi):
            return max(abs(lo), abs(hi))
        lo, hi = self.ranges.get(t, (0.0, 0.0))
        return max(abs(lo), abs(hi))

    def fits(self, t: str, scale: int) -> bool:
        m = self.maxabs(t)
        return m == 0 or math.log2(m) + scale + HEADROOM_BITS < self.o.bits - 2

    def scale(self, t: str) -> int:
        return self.g.info(t).scale

    def set(self, t: str, scale: int) -> None:
        info = self.g.info(t)
        info.scale, info.bits = int(scale), self.o.bits

    def check(self, t: str) -> None:
        if not self.fits(t, self.scale(t)) and t not in self.warned:
            self.warned.add(t)
            self.o.notes.append(
                f"WARNING overflow risk: tensor {t!r} reaches |x| = {self.maxabs(t):.4g} in calibration; at scale "
                f"2^-{self.scale(t)} on a {self.o.bits}-bit ring that leaves under {HEADROOM_BITS} bits of headroom "
                f"(use --bits {self.o.bits + 4} or a smaller --frac)")

    def rescaled(self, node: Node, t: str, to: int) -> str:
        """Make ``node`` read ``t`` at scale ``to`` (down: Rescale; up: multiply by 2^k)."""
        s = self.scale(t)
        if s == to:
            return t
        key = (t, to)
        if key not in self.cache:
            info = self.g.info(t)
            new = self.g.fresh(f"{t}_s{to}")
            # Rescale is the identity on real values; a negative shift multiplies by 2^k (free, exact)
            self.g.add_node("Rescale", [t], [new], name=self.g.fresh(f"rescale_{t}" if s > to else f"upscale_{t}"),
                            infos=[TensorInfo(info.shape, "float", "secret")], shift=s - to)
            self.ranges[new] = self.ranges.get(t, [0.0, 0.0])
            self.set(new, to)
            self.cache[key] = new
        self.g.rename_input(node.name, t, self.cache[key])
        return self.cache[key]

    def const_scale(self, c: np.ndarray) -> int:
        """Integer-valued constants (masks 0/1, 2^k) need no fractional bits."""
        c = np.abs(np.asarray(c, np.float64)).reshape(-1)
        if _all_integers(c) and np.all(c < 2 ** 20):
            return 0
        # a power of two 2^-k (attention's 1/sqrt(64)) is exact at k fractional bits: the product
        # grows by k bits, not by weight_frac
        for k in range(1, self.o.weight_frac):
            if _all_integers(c, 2.0 ** k):
                return k
        return self.o.weight_frac

    # -------------------------------------------------------------- rules
    def product(self, node: Node) -> None:
        a, b = node.inputs[:2]
        out = node.outputs[0]
        f, cap = self.o.frac, 3 * self.o.frac
        secret = [t for t in (a, b) if self.g.info(t).visibility == "secret"]
        if len(secret) == 2 and node.op == "MatMul":
            # a matmul of two secrets (attention): bring both to scale f first; their rescales
            # run beside the other operand's, where a rescale after the product would cost a round
            secret = [self.rescaled(node, t, f) if self.scale(t) > f else t for t in secret]
        cs = None
        if len(secret) == 1:
            c = a if b in secret else b
            if "const_scale" not in node.attrs:
                node.attrs["const_scale"] = self.const_scale(self.g.const(c))
            cs = node.attrs["const_scale"]
            if exact_power_of_two(self.g.const(c)) == cs:
                # times 2^-cs exactly: the same integers read at cs more fractional bits (the
                # magnitude does not grow, so the cap on scales does not apply)
                cap = max(cap, sum(self.scale(t) for t in secret) + cs)
        for _ in range(4):
            total = sum(self.scale(t) for t in secret) + (cs or 0)
            if total <= cap and self.fits(out, total):
                break
            big = max(secret, key=self.scale)
            if self.scale(big) <= f:
                break
            secret = [self.rescaled(node, t, f) if t == big else t for t in secret]
        self.set(out, sum(self.scale(t) for t in secret) + (cs or 0))

    def scalar_out(self, node: Node) -> int:
        f = self.o.frac
        if node.attrs.get("label") in ("reciprocal", "rsqrt") and self.o.gates == "fused":
            # extra precision for small outputs that feed a product, where the ring has room
            # for it (n=50, f=12: 12 extra bits; n=37: none)
            extra = max(0, min(f, self.o.bits - 2 - 2 * f - 12))
            out = node.outputs[0]
            from fusec.passes.fit_specs import feasible  # noqa: PLC0415
            rng = tuple(self.ranges.get(node.inputs[0], (-1.0, 1.0)))
            x = node.inputs[0]
            # the largest output scale with a feasible spec: feasibility only gets harder as the
            # scale grows (the same absolute error, a larger value in the ring), so bisect; each
            # probe is a whole spec search (GPT-2's 25 layer norms made this the compile's bulk)
            ok = lambda s: self.fits(out, s + f) and feasible(  # noqa: E731
                node, rng, self.scale(x), s, self.o, proven(self.g, x))
            lo, hi = f, f + extra           # invariant: lo is feasible (or f), hi + 1 is not tried
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if ok(mid):
                    lo = mid
                else:
                    hi = mid - 1
            return lo
        return f

    # -------------------------------------------------------------- per-op rules (RULES below)
    def secret_inputs(self, node: Node) -> list[str]:
        return [t for t in node.inputs if t and self.g.info(t).visibility == "secret"]

    def set_secret_outputs(self, node: Node, scale: int) -> None:
        for t in node.outputs:
            if self.g.info(t).visibility == "secret":
                self.set(t, scale)

    def share(self, node: Node) -> None:
        self.set(node.outputs[0], self.o.frac)

    def linear_product(self, node: Node) -> None:
        if self.secret_inputs(node):
            self.product(node)
        else:
            self.set_secret_outputs(node, self.o.frac)

    def mean(self, node: Node) -> None:
        """``sum(x) * enc(1/k)``: 1/k is encoded with log2(k) bits more than the weights, so it
        keeps weight_frac significant bits (at 12 bits, 1/768 would round to 5/4096: 6% low)."""
        x, out = self.secret_inputs(node)[0], node.outputs[0]
        shape = self.g.info(x).shape
        axes = node.attrs.get("axes")
        axes = range(len(shape)) if axes is None else [a % len(shape) for a in axes]
        k = int(np.prod([shape[a] for a in axes]))
        cs = self.o.weight_frac + max(0, math.ceil(math.log2(k))) if k > 1 else 0
        node.attrs["const_scale"] = cs
        s = self.scale(x)
        if s + cs > max(3 * self.o.frac, self.o.frac + cs) or not self.fits(out, s + cs):
            s = self.scale(self.rescaled(node, x, self.o.frac))
        self.set(out, s + cs)

    def scalar(self, node: Node) -> None:
        x, lab = self.secret_inputs(node)[0], node.attrs.get("label")
        sigma_gelu = self.o.gates == "sigma" and lab in ("gelu", "gelu_tanh", "silu")
        if self.o.gates == "sigma" and lab != "relu" and not sigma_gelu:
            self.rescaled(node, x, self.o.frac)
        elif self.scale(x) > 2 * self.o.frac:
            self.rescaled(node, x, 2 * self.o.frac)
        # ReLU (both gate sets) and SIGMA's GELU (ReLU minus a LUT) output at their input scale
        same = lab == "relu" or sigma_gelu
        self.set(node.outputs[0], self.scale(node.inputs[0]) if same else self.scalar_out(node))

    def extremum(self, node: Node) -> None:
        x = self.secret_inputs(node)[0]
        if self.scale(x) > self.o.frac:
            # compare at scale f: a max tree on fewer bits (narrower keys); the values the max is
            # subtracted from (softmax) reuse the same rescaled tensor, so no extra round
            self.set(node.outputs[0], self.scale(self.rescaled(node, x, self.o.frac)))
        else:
            self.keep(node)

    def reuse_truncated(self, node: Node, secret_in: list[str]) -> None:
        """An input at a higher scale than the others that already has a truncated copy (made
        for another reader, e.g. a layer norm's output rescaled for the next matmul) is read
        through that copy: the sum stays at the lower scale, so whatever reads it (the next
        layer norm's centring) needs no truncation of its own. Free: the copy exists anyway."""
        low = min(self.scale(t) for t in secret_in)
        for t in secret_in:
            if self.scale(t) <= low:
                continue
            have = [to for (src, to) in self.cache if src == t and self.o.frac <= to <= low]
            if have:
                self.g.rename_input(node.name, t, self.cache[(t, max(have))])

    def truncate_early(self, node: Node, secret_in: list[str]) -> None:
        """An input whose producer says ``truncate_early`` (a layer norm whose matmuls read it
        before its affine tail, ``passes/fold_norm_affine``) is ready long before the other
        operand of its residual sum: read it truncated to the sum's lower scale, a round off
        the critical path, instead of carrying the sum at the higher scale into the next
        layer norm, which would then truncate it on the critical path."""
        low = max(min(self.scale(t) for t in secret_in), self.o.frac)
        for t in secret_in:
            p = self.g.producer(t)
            if self.scale(t) > low and p is not None and p.attrs.get("truncate_early"):
                self.rescaled(node, t, low)

    def keep(self, node: Node) -> None:
        """Ops that keep their input's scale (sums, movement, Rescale: minus its shift)."""
        secret_in = self.secret_inputs(node)
        out = node.outputs[0]
        if len(secret_in) > 1:
            self.reuse_truncated(node, secret_in)
            self.truncate_early(node, self.secret_inputs(node))
            secret_in = self.secret_inputs(node)
        if len(secret_in) > 1:   # align: upscale (free) where the result fits, else rescale down
            scales = sorted({self.scale(t) for t in secret_in}, reverse=True)
            top = next((s for s in scales if self.fits(out, s)), max(min(scales), self.o.frac))
            for t in secret_in:
                self.rescaled(node, t, top)
        secret_in = self.secret_inputs(node)   # after renaming
        s = self.scale(secret_in[0])
        if node.op != "Rescale" and s > self.o.frac and not self.fits(out, s):
            # e.g. a bias or an attention mask makes the result larger than its input
            s = next((k for k in range(s - 1, self.o.frac, -1) if self.fits(out, k)), self.o.frac)
            for t in secret_in:
                self.rescaled(node, t, s)
        if node.op == "Rescale":
            s -= node.attrs["shift"]
        self.set_secret_outputs(node, s)

    def centre(self, node: Node) -> None:
        """``k x - sum x`` grows by log2(k) bits: read x at the largest scale (down to f) at
        which the result fits, so one truncation (or none) serves both of its terms."""
        x, out = node.inputs[0], node.outputs[0]
        s = self.scale(x)
        target = next((t for t in range(s, self.o.frac, -1) if self.fits(out, t)), self.o.frac)
        if target < s:
            self.rescaled(node, x, target)
        self.set(out, target)

    def sigma_truncate_inputs(self, node: Node) -> None:
        """SIGMA's placement (``--gates sigma``): a product is truncated to scale f before any
        other use (its TrFloor right after the matmul); only movement, the sum that feeds
        layer norm's rsqrt, truncations themselves and a multiplication by a power of two read
        the wider value. The last is SIGMA's attention scale: 1/sqrt(64) folded into the
        scores' one TrFloor (by f + 3), not a second truncation after it. A broadcast
        (Expand) is truncated on its input, the row's L values, not on the L x d copies."""
        if node.op in ("ReduceSum", "Rescale", "Scalar") or node.op in MOVEMENT and node.op != "Expand" \
                or power_of_two_factor(self.g, node) is not None:
            return      # an Expand is truncated before it broadcasts: SIGMA's TrFloor of a mean on L values
        for t in self.secret_inputs(node):
            if self.scale(t) > self.o.frac:
                self.rescaled(node, t, self.o.frac)

    def visit(self, node: Node) -> None:
        if node.attrs.get("at") == "client":
            return
        if self.o.gates == "sigma":
            self.sigma_truncate_inputs(node)
        rule = RULES.get(node.op) or (_Scaler.keep if node.op in KEEP_SCALE else None)
        if rule is None:
            self.set_secret_outputs(node, self.o.frac)
        else:
            rule(self, node)
        for t in node.outputs:
            if self.g.info(t).visibility == "secret":
                self.check(t)


#: op -> scale rule; ops that keep their scale (op category data, ``ir/ops.py``) use ``keep``;
#: anything else outputs at scale f
RULES = {
    "Share": _Scaler.share, "Mul": _Scaler.linear_product, "MatMul": _Scaler.linear_product,
    "ReduceMean": _Scaler.mean, "Scalar": _Scaler.scalar, "ReduceMax": _Scaler.extremum,
    "ReduceMin": _Scaler.extremum, "Rescale": _Scaler.keep, "Centre": _Scaler.centre,
}


def assign_scales(graph: Graph, opts: CompileOptions) -> Graph:
    s = _Scaler(graph, opts)
    for node in graph.nodes():
        s.visit(node)
    graph.meta["ranges"] = s.ranges
    return graph
