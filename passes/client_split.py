"""Split off the input owner's plaintext prefix and insert ``Share`` where it ends.

With public weights, the ops that read only the owner's private input and public
constants and that are cheap table work (embedding ``Gather``, position / token-type
embedding adds, reshapes, casts) run in plaintext at the input owner: nothing about the
input leaves the owner, and the secure program starts at the first real computation
(LayerNorm, MatMul, a nonlinearity). Everything after the split is a secret wire; the
``Share`` node is where the owner masks the value and sends ``x + r`` (DESIGN §1).

The split is visible in the IR: client nodes carry ``attrs["at"] == "client"`` and
``fusec inspect --ir`` prints them apart.
"""
from __future__ import annotations

from fusec.errors import CompileError
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
    for node in graph.nodes():
        vis = {graph.info(t).visibility for t in node.inputs if t}
        ints = any(graph.info(t).dtype != "float" for t in node.inputs if t and graph.info(t).visibility == "client")
        if "client" in vis and "secret" not in vis and node.op in CLIENT_OPS and (opts.client_prefix or ints):
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
    _insert_shares(graph)
    return graph


def _insert_shares(graph: Graph) -> None:
    for t, info in list(graph.tensors.items()):
        if info.visibility != "client":
            continue
        readers = [n for n in graph.consumers(t) if n.attrs.get("at") != "client"]
        if not readers and t not in graph.outputs:
            continue
        if info.dtype == "bool":
            raise CompileError(f"boolean tensor {t!r} computed from the private input reaches the secure part",
                               "only numeric tensors can be shared; this model pattern is not supported")
        shared = graph.fresh(f"{t}_shared")
        graph.add_node("Share", [t], [shared], name=graph.fresh(f"share_{t}"),
                       infos=[TensorInfo(info.shape, "float", "secret", owner=info.owner)], owner=info.owner)
        for n in readers:
            graph.rename_input(n.name, t, shared)
        graph.outputs = [shared if o == t else o for o in graph.outputs]

