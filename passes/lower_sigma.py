"""Gate selection for ``--gates sigma``: SIGMA's constructions and widths (the baseline).

The lowering (``passes/lower.py``) calls into this module for every labelled ``Scalar``
whose ``impl`` is ``"sigma"`` and for every ``Rescale`` of a sigma build, so the whole
baseline -- which gate, at which bit width -- lives in one place (ANCHORS.md lists what
SIGMA does and at which widths).
"""
from __future__ import annotations

from fusec.errors import CompileError
from fusec.ir.graph import Node
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.base import Gate
from fusec.runtime.gates.compare import ReLU2
from fusec.runtime.gates.sigma import SigmaGelu
from fusec.runtime.gates.truncation import ArsOneRound, TruncateSlack


def scalar_gate(node: Node, lab: str, N: int, s_in: int, opts: CompileOptions) -> Gate:
    """SIGMA's construction of the labelled scalar ``node`` on N elements at input scale s_in."""
    from fusec.runtime.gates import sigma_nonlinear as sn  # noqa: PLC0415
    n, f = opts.bits, opts.frac
    if lab == "gelu":
        return SigmaGelu(N, n, s_in)
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


def rescale_gate(N: int, shift: int, opts: CompileOptions) -> Gate:
    """The truncation a sigma build uses after a product (SIGMA: TrFloor after every matmul)."""
    n = opts.bits
    return TruncateSlack(N, n, shift) if opts.rescale == "slack" else ArsOneRound(N, n, shift)
