"""The gate library at a glance: one instance of each gate with its per-element cost.

``fusec gates`` prints this table; the README quotes it. Costs are the gates' own
``cost()`` (tested against the key arrays and the AES counter), not a separate model.
"""
from __future__ import annotations

import math

import numpy as np

from fusec.errors import ParameterError
from fusec.ir.spec import FitRequest, Tail, fit, relu_spec
from fusec.runtime.gates.arith import MatMulPrivate, Mul
from fusec.runtime.gates.base import Gate
from fusec.runtime.gates.compare import DReLU, IntervalContainment, LutDpf, MaxTree, MaxTreeNarrow, ReLU2, Select
from fusec.runtime.gates.linear import Add, MatMulPublic, MulPublic
from fusec.runtime.gates.mul_narrow import View
from fusec.runtime.gates.scalar import ScalarGate
from fusec.runtime.gates.sigma import SigmaGelu
from fusec.runtime.gates.table import TableLookup
from fusec.runtime.gates.truncate_linear import TruncateLinear
from fusec.runtime.gates.truncation import (ArsExact, ArsOneRound, SignExtend, TruncateLocal,
                                            TruncateNarrow, TruncateReduce, TruncateSlack)


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def gelu_spec(n: int, f: int):
    """16 quadratic pieces on [-4, 4) where the ring holds them, else 32 linear ones."""
    try:
        return fit(FitRequest("gelu", _gelu, -4, 4, pieces=16, degree=2, n_in=n, f_in=f, f_out=f, right=Tail(1.0)))
    except ParameterError:
        return fit(FitRequest("gelu", _gelu, -4, 4, pieces=32, degree=1, n_in=n, f_in=f, f_out=f, right=Tail(1.0)))


def _bits(bound: float, scale: int, shift: int = 0) -> int:
    """What ``passes.ranges.narrow_bits`` gives a tensor proven within |x| < bound."""
    return (int(bound * 2 ** scale) + (1 << shift) + 1).bit_length() + 2


def _narrow_gelu(E: int, spec, n: int, f: int, pre: int) -> ScalarGate:
    """The compiled GELU as the compiler emits it for an input proven within |x| < 16."""
    k_in = min(n, _bits(16.0, f + pre, spec.view_shift + pre))
    k_out = _bits(16.5, spec.poly_scale, spec.out_shift)
    return ScalarGate(E, spec, view_bits=k_in, out_view_bits=k_out if k_out <= n else None, pre_shift=pre)


def library(n: int = 50, f: int = 12, elements: int = 1) -> list[tuple[str, Gate]]:
    """(label, gate) for every gate kind at ring width n, shift f (``elements`` per gate:
    1 for the cost table, more where tests run every kind on many elements)."""
    spec = gelu_spec(n, f)
    E = elements
    return [
        ("add (free)", Add(E, n)),
        ("public scalar (free)", MulPublic(E, n, 3)),
        ("matmul, public weights (free)", MatMulPublic((E, 4), np.arange(4, dtype=np.int64).reshape(4, 1) - 1, n)),
        ("mul (secret x secret)", Mul(E, n)),
        ("matmul, private weights 128x768x768 /out elem", MatMulPrivate((128, 768), (768, 768), n)),
        (f"truncate-reduce s={f}", TruncateReduce(E, n, f)),
        (f"sign extension {n - f}->{n}", SignExtend(E, n - f, n)),
        (f"ARS exact (TR+SExt) s={f}", ArsExact(E, n, f)),
        (f"ARS one round, two DCFs s={f}", ArsOneRound(E, n, f)),
        (f"TR with slack s={f}", TruncateSlack(E, n, f)),
        (f"local truncation s={f} (approx.)", TruncateLocal(E, n, f)),
        ("DReLU", DReLU(E, n)),
        ("select", Select(E, n)),
        ("ReLU two-round (DReLU+select)", ReLU2(E, n)),
        ("ReLU one-round (spline, 1 DCF)", ScalarGate(E, relu_spec(n, f), "shifted")),
        ("max over 8 (tree) /out elem", MaxTree((E, 8), n)),
        ("LUT 8-bit via DPF", LutDpf(E, n, np.arange(256), n, view_bits=8)),
        ("LUT 8-bit via shared truth table", TableLookup(E, n, np.arange(256), n, 8)),
        ("interval containment (2 intervals)", IntervalContainment(E, n, [(-10, 10), (0, 100)])),
        (f"ScalarGate GELU {spec.pieces - 2}x deg {spec.degree}, packed cmp (ours)", ScalarGate(E, spec, "packed")),
        ("  same, output shift deferred to the consumer's rescale", ScalarGate(E, spec, "packed", defer_shift=True)),
        (f"ScalarGate GELU {spec.pieces - 2}x deg {spec.degree}, shifted DCF (ours)", ScalarGate(E, spec, "shifted")),
        (f"ScalarGate GELU {spec.pieces - 2}x deg {spec.degree}, piece table", ScalarGate(E, spec, "pieces")),
        (f"truncation on a proven 24-bit view, s={f}, widened (ours)", TruncateNarrow(E, n, min(24, n), f)),
        ("  same, read only by a 4:1 public matmul: the product opened (ours) /out elem",
         TruncateLinear(MatMulPublic((E, 4), np.arange(4, dtype=np.int64).reshape(4, 1) - 2, n), 4 * E, n,
                        View(min(24, n), f), n)),
        ("ScalarGate GELU, |x| < 16 proven: narrow compare and lookup (ours)", _narrow_gelu(E, spec, n, f, 0)),
        (f"  same, the rescale by {f} in front folded in (no open of its own)", _narrow_gelu(E, spec, n, f, f)),
        ("max over 8, |x| < 16 proven: one round a level (ours) /out elem",
         MaxTreeNarrow((E, 8), n, 1, _bits(16.0, f) + 1)),
        ("  same, each level's comparison packed: two rounds a level, a third of the AES (ours) /out elem",
         MaxTreeNarrow((E, 8), n, 1, _bits(16.0, f) + 1, lookup="packed")),
        ("SIGMA GELU (TrWithSlack, one 32-bit DPF for sign and abs(x)<4, mux, 8-bit DPF LUT, select)", SigmaGelu(E, n, f)),
    ]


def table(n: int = 50, f: int = 12) -> str:
    rows = ["| gate | key bytes | AES | rounds | bits opened |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, g in library(n, f):
        c = g.cost()
        rows.append(f"| {label} | {c.key_bits / 8:,.1f} | {c.aes} | {c.rounds} | {c.open_bits} |")
    return "\n".join(rows)
