"""The compiler pipeline: one readable list of passes, IR -> IR, then lowering to gates.

``PASSES`` run in order on the IR produced by the ONNX frontend; each takes
``(graph, options)`` and returns the graph. ``build_gates`` turns the final IR into the
runtime gate graph in key-consumption order; keygen and both servers call it on the
saved ``ir.json`` so all three agree on the layout (its digest is checked everywhere).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from fusec.ir.graph import Graph
from fusec.passes.calibrate import calibrate
from fusec.passes.canonicalize import canonicalize
from fusec.passes.clamp_constants import clamp_constants
from fusec.passes.defer_softmax_division import defer_softmax_division
from fusec.passes.client_split import client_split
from fusec.passes.expand_blocks import expand_blocks
from fusec.passes.fit_specs import fit_specs
from fusec.passes.fold_constants import fold_constants
from fusec.passes.fold_norm_affine import fold_norm_affine
from fusec.passes.fuse_scalar import fuse_scalar
from fusec.passes.fuse_truncate_linear import fuse_truncate_linear
from fusec.passes.key_order import key_order
from fusec.passes.lift_max_tree import lift_max_tree
from fusec.passes.mask_softmax import mask_softmax
from fusec.passes.lower import Lowered, lower
from fusec.passes.merge_rescales import merge_rescales
from fusec.passes.narrow_opens import narrow_opens
from fusec.passes.options import CompileOptions
from fusec.passes.owner_contract import owner_contract
from fusec.passes.padding import pad_shapes
from fusec.passes.ranges import prove_ranges
from fusec.passes.scales import assign_scales
from fusec.passes.schedule import Step, schedule, scope_of

Pass = Callable[[Graph, CompileOptions], Graph]
#: ``progress(stage, None)`` when a compile stage starts, ``progress(stage, "1.2 s")`` when it
#: ends, ``progress(stage, "failed")`` when it raised (so a printed line can be closed)
Progress = Callable[[str, "str | None"], None]

PASSES: list[Pass] = [
    fold_constants,    # shape arithmetic, masks built from public inputs
    client_split,      # the input owner's plaintext prefix; Share where the secure part starts
    mask_softmax,      # softmax(x + C) with -inf in constant C: those entries left out, exactly 0
    clamp_constants,   # -3.4e38 and friends -> the most negative safe fixed-point value
    canonicalize,      # Div -> Mul(Reciprocal), Pow 2 -> Mul, ReduceL2 -> Sqrt(Sum(x*x)), sink movement
    fuse_scalar,       # elementwise chains on one tensor -> one Scalar (GELU, SiLU, rsqrt, ...)
    expand_blocks,     # Softmax, LayerNorm -> reductions + labelled Scalars
    defer_softmax_division,  # softmax(S) @ V -> (exp @ V) * (1/sum): the product runs beside the reciprocal
    fold_norm_affine,  # (gamma z + beta) @ W -> z @ (gamma W) + beta W: no truncation between a layer norm and a matmul
    owner_contract,    # ranges the owner promises (and checks) for what it computes from masks / ids
    prove_ranges,      # an interval per secret tensor that holds for every admissible input
    calibrate,         # plaintext float run: every tensor's range
    assign_scales,     # fixed-point scales, lazy Rescale insertion, overflow warnings
    fit_specs,         # OperatorSpec per Scalar, to the error bound
    merge_rescales,    # Rescale(Rescale(x)) -> one truncation
    pad_shapes,        # mask-independent key shapes (or the loud ablation)
]


@contextmanager
def stage(progress: Progress | None, name: str) -> Iterator[None]:
    """Announce a compile stage as it starts (a slow pass is named while it runs, not after)
    and give its seconds when it ends; ``fusec compile`` prints both on one line."""
    t0 = time.perf_counter()
    if progress:
        progress(name, None)
    try:
        yield
    except BaseException:
        if progress:
            progress(name, "failed")
        raise
    if progress:
        progress(name, f"{time.perf_counter() - t0:.1f} s")


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS and LAPACK on one thread while the passes run. The range pass's eigenvalue bounds
    (LAPACK's threaded reductions round differently per thread count) are then the same bits
    on every machine, and on a shared 2-core machine the threads no longer spin against other
    processes: BERT-base's prove_ranges took 47 s with two threads there, 14 s with one."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:         # not installed: the BLAS's own thread count
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def run_passes(graph: Graph, opts: CompileOptions, progress: Progress | None = None) -> Graph:
    with one_blas_thread():
        for p in PASSES:
            with stage(progress, p.__name__):
                graph = p(graph, opts)
    graph.meta["notes"] = list(opts.notes)
    return graph


def build_gates(graph: Graph, opts: CompileOptions) -> tuple[Lowered, list[Step]]:
    """Lower, schedule, and order keys. Deterministic in (graph, opts)."""
    low = lower(graph, opts)
    low.gates = lift_max_tree(low.gates, opts)     # softmax's max tree unwidened where exp lifts its view itself
    low.gates = narrow_opens(low.gates, opts)      # products and truncations on the bits their readers use
    low.gates = fuse_truncate_linear(low.gates, opts)     # a truncation read by a shrinking map opens the map
    ir_attrs = {gid: graph.node(name).attrs if name in graph.g else {} for gid, name in low.ir_node.items()}
    scopes = {n.id: scope_of(ir_attrs.get(n.id, {}), n.gate.kind) for n in low.gates.nodes}
    steps = schedule(low.gates, scopes)
    low.gates, steps = key_order(low.gates, steps)
    low.gates.insecure = opts.insecure_mask_dependent_shapes     # the layout says so: another digest
    low.gates.seeded_shares = opts.seeded_shares                 # share fields marked: the dealer seeds them
    return low, steps
