"""Gate selection for ``--gates sigma``: SIGMA's constructions and widths (the baseline).

The lowering (``passes/lower.py``) calls into this module for every labelled ``Scalar``
whose ``impl`` is ``"sigma"`` and for every ``Rescale`` of a sigma build, so the whole
baseline -- which gate, at which bit width -- lives in one place (ANCHORS.md lists what
SIGMA does and at which widths; runtime/gates/sigma_fss.py how its blocks are built).

What SIGMA does (EzPC ``GPU-MPC/fss``), n = 50, f = 12, activations assumed to fit
``bin`` = n - f = 38 bits:

- every truncation after a product is TrFloor (TruncateReduce + SignExtend, 1-bit DPF keys
  on s and n - s bits, four rounds): :func:`rescale_gate`;
- GELU: a matmul's output is first TrFloored to scale f, then SIGMA's GELU (TrWithSlack to
  33 bits, one 32-bit comparison key for sign and ``|x| < 4``, 8-bit mux, 8-bit DPF LUT,
  select; 7 rounds, 575.75 B);
- softmax: max tree with 39-bit compares (:func:`max_gate`), nExp with a 40-bit clip
  compare and two 8-bit DPF LUTs, inverse by a 13-bit DPF LUT;
- layer norm's ``1/sqrt``: a 13-bit float-like LUT (:class:`SigmaRsqrt`).
"""
from __future__ import annotations

from fusec.errors import CompileError
from fusec.ir.graph import Node
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.base import Gate
from fusec.runtime.gates.compare import MaxTree, ReLU2
from fusec.runtime.gates.sigma import SigmaGelu
from fusec.runtime.gates.sigma_fss import SigmaMaxTree, SigmaTrFloor, SigmaTrunc


def scalar_gate(node: Node, lab: str, N: int, s_in: int, opts: CompileOptions) -> Gate:
    """SIGMA's construction of the labelled scalar ``node`` on N elements at input scale s_in.

    The gate's output scale equals what the scale pass assigned: GELU outputs at its input
    scale (when that is a product's scale, SIGMA's TrFloor to f runs first inside the gate
    and the result is multiplied back, for free); the others at f.
    """
    from fusec.runtime.gates import sigma_nonlinear as sn  # noqa: PLC0415
    n, f = opts.bits, opts.frac
    if lab in ("gelu", "gelu_tanh", "silu"):      # SIGMA's GELU protocol (SiLU: 10-bit clip and table)
        if s_in >= f:
            return SigmaGelu(N, n, f, in_scale=s_in, fn=lab)
        return SigmaGelu(N, n, s_in, fn=lab)
    if lab == "relu":
        return ReLU2(N, n)
    if s_in != f:
        raise CompileError(f"{node!r}: SIGMA {lab} expects its input at scale {f}, got {s_in}")
    if lab == "nexp":
        return sn.SigmaNegExp(N, n, f)
    if lab == "reciprocal":
        return sn.SigmaInverse(N, n, f, max_value=node.attrs["domain"][1])
    if lab == "rsqrt":
        return sn.sigma_layernorm_rsqrt(N, n, f, node.attrs["rsqrt_scale"], node.attrs["rsqrt_eps"])
    raise CompileError(f"{node!r}: no SIGMA construction for {lab}")


def rescale_gate(N: int, shift: int, opts: CompileOptions, exact: bool = True) -> Gate:
    """The truncation a sigma build uses after a product.

    ``exact`` (default): SIGMA's TrFloor, run after every matmul (four rounds, an s-bit and an
    (n - s)-bit comparison key). ``exact=False``: SIGMA's TrWithSlack (two rounds, one s-bit key,
    valid for ``|x| < 2^(n-2)``), which SIGMA runs after the elementwise products of softmax
    (``e * 1/sum``), nExp and layer norm (``(x - mu) * rsqrt``, ``* gamma``).
    """
    if exact:
        return SigmaTrFloor(N, opts.bits, shift)
    return SigmaTrunc(N, opts.bits, shift, slack=True)


def max_gate(shape, axis: int, opts: CompileOptions, scale: int | None = None) -> Gate:
    """SIGMA's max over ``axis``: the log-depth tree with 39-bit compares (bin + 1 at n = 50, f = 12).

    The narrow compare is SIGMA's range assumption for inputs at scale f (``|x| < 2^(bin-1)``, so
    differences fit bin + 1 bits). At a larger ``scale`` (a product not yet truncated) the
    values need ``scale - f`` more bits; when that reaches the ring, the full-width
    :class:`MaxTree` is used.
    """
    n, f = opts.bits, opts.frac
    cmp_bits = n - f + 1 + max(0, (scale if scale is not None else f) - f)
    if cmp_bits >= n:
        return MaxTree(shape, n, axis)
    return SigmaMaxTree(shape, n, axis, cmp_bits)
