"""Split off the input owner's plaintext prefix and insert ``Share`` where it ends.

With public weights, the ops that read only the owner's private input and public
constants and that are cheap table work (embedding ``Gather``, position / token-type
embedding adds, reshapes, casts) run in plaintext at the input owner: nothing about the
input leaves the owner, and the secure program starts at the first real computation
(LayerNorm, MatMul, a nonlinearity). *Plumbing* -- whatever is computed from integer or
boolean inputs (token ids, attention masks) without an embedding lookup: position ids by
``CumSum``, mask biases, mean pooling's token count -- runs at the owner whatever the op
(any ONNX op, through ``ir/owner_prefix``), and ``Div(secret, count)`` becomes a product
with the owner's ``1/count``. Everything after the split is a secret wire; the
``Share`` node is where the owner masks the value and sends ``x + r`` (DESIGN §1).

The split is visible in the IR: client nodes carry ``attrs["at"] == "client"`` and
``fusec inspect --ir`` prints them apart. A ``Share`` of a tensor computed only from inputs
of role ``public`` carries ``attrs["role"] == "public"``: it enters with a zero mask, so
both servers see the value (what that role allows).
"""
from __future__ import annotations

from fusec.errors import CompileError
from fusec.ir import owner_prefix  # noqa: F401  (registers the IR op OnnxNode: any ONNX op at the owner)
from fusec.ir.graph import Graph, TensorInfo
from fusec.passes.options import CompileOptions

#: ops the input owner may run on its own plaintext before sharing
CLIENT_OPS = {"Gather", "Reshape", "Transpose", "Slice", "Concat", "Split", "Expand", "Pad", "Identity", "Cast",
              "Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "Not", "And", "Or", "Where", "Neg"}


def client_split(graph: Graph, opts: CompileOptions) -> Graph:
    client_inputs = [t for t in graph.inputs if graph.info(t).visibility == "client"]
    if opts.weights == "private":
        why = ("the token ids select rows of the embedding table, so with private weights the lookup itself "
               "would need the weights at the input owner (or a secure table lookup)") if client_inputs else \
              "private-weight matmuls (P0 sends W + R_W once per key set) are not wired into the compiler yet"
        raise CompileError(f"--weights private is not supported yet: {why}",
                           "compile with --weights public (the default: the model is public, the input private)")
    for t in graph.inputs:
        info = graph.info(t)
        info.visibility = "client"
        info.owner = 1 if info.owner is None else info.owner
    plumbing = {t for t in graph.inputs if graph.info(t).dtype != "float"}
    for node in graph.nodes():
        vis = {graph.info(t).visibility for t in node.inputs if t}
        ints = any(graph.info(t).dtype != "float" for t in node.inputs if t and graph.info(t).visibility == "client")
        owned = [t for t in node.inputs if t and not graph.is_const(t)]
        meta = bool(owned) and all(t in plumbing for t in owned)
        if meta and not _is_lookup(graph, node):
            plumbing.update(node.outputs)
        if node.op == "Div" and "secret" in vis and node.inputs[1] in plumbing:
            _reciprocal_at_owner(graph, node)
            continue
        if node.op == owner_prefix.OP and "secret" in vis:
            secret = next(t for t in node.inputs if t and graph.info(t).visibility == "secret")
            raise CompileError(f"{node!r}: ONNX op {node.attrs.get('onnx_op')!r} has no secure lowering, and it "
                               f"reads {secret!r}, which the secure part computes (the input owner runs any op, "
                               "but only on its own inputs and constants)",
                               "`fusec ops` lists the ops the secure part lowers; re-export the model without this "
                               "op, or make what it reads the owner's (--input-role) or constant (--public-input)")
        if "client" in vis and "secret" not in vis and (meta or node.op in CLIENT_OPS or node.op == owner_prefix.OP) \
                and (opts.client_prefix or ints or meta or node.op == owner_prefix.OP):
            node.attrs["at"] = "client"
            owners = {graph.info(t).owner for t in node.inputs if t and graph.info(t).visibility == "client"}
            if len(owners) > 1:
                raise CompileError(f"{node!r} mixes plaintext inputs of different owners")
            for t in node.outputs:
                graph.info(t).visibility = "client"
                graph.info(t).owner = owners.pop() if len(owners) == 1 else 1
                owners = {graph.info(t).owner}
        else:
            node.attrs.pop("at", None)
            for t in node.outputs:
                graph.info(t).visibility = "public" if graph.is_const(t) else "secret"
    _insert_shares(graph, _public_derived(graph))
    return graph


def _is_lookup(graph: Graph, node) -> bool:
    """A Gather of rows of a public float table (an embedding): its output is data, not plumbing."""
    return node.op == "Gather" and graph.is_const(node.inputs[0]) and graph.info(node.inputs[0]).dtype == "float"


def _reciprocal_at_owner(graph: Graph, node) -> None:
    """``Div(secret, d)`` with ``d`` owner plumbing (mean pooling's token count): the owner
    computes ``1/d`` in plaintext and the secure part multiplies (no secure reciprocal, whose
    range a 0/1 mask's count would not bound)."""
    d = node.inputs[1]
    info = graph.info(d)
    rec = graph.fresh(f"{d}_reciprocal")
    graph.add_node("Reciprocal", [d], [rec], name=graph.fresh(f"{node.name}_reciprocal"),
                   infos=[TensorInfo(info.shape, "float", "client", owner=info.owner)], at="client")
    graph.rename_input(node.name, d, rec)
    node.op = "Mul"
    for t in node.outputs:
        graph.info(t).visibility = "secret"


def _public_derived(graph: Graph) -> set[str]:
    """Owner tensors computed only from inputs of role ``public`` (and constants): the
    servers may see them, so they enter with a zero mask (``ir/input_roles``)."""
    roles = graph.meta.get("input_roles") or {}
    pub = {t for t in graph.inputs if roles.get(t, {}).get("role") == "public"}
    for node in graph.nodes():
        if node.attrs.get("at") != "client":
            continue
        ins = [t for t in node.inputs if t and not graph.is_const(t)]
        if ins and all(t in pub for t in ins):
            pub.update(node.outputs)
    return pub


def _insert_shares(graph: Graph, public: set[str] = frozenset()) -> None:
    for t, info in list(graph.tensors.items()):
        if info.visibility != "client":
            continue
        readers = [n for n in graph.consumers(t) if n.attrs.get("at") != "client"]
        if not readers and t not in graph.outputs:
            continue
        # a boolean (a padding mask for a Where) is shared as 0/1; passes/compare_select turns the
        # secure Where / Not / And / Or that read it into arithmetic
        shared = graph.fresh(f"{t}_shared")
        extra = {"role": "public"} if t in public else {}
        graph.add_node("Share", [t], [shared], name=graph.fresh(f"share_{t}"),
                       infos=[TensorInfo(info.shape, "float", "secret", owner=info.owner)], owner=info.owner, **extra)
        for n in readers:
            graph.rename_input(n.name, t, shared)
        graph.outputs = [shared if o == t else o for o in graph.outputs]

