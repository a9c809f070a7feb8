"""The IR: a graph of operators over statically shaped tensors, kept in a networkx DiGraph.

Nodes are operators (``Node``), edges run producer -> consumer and carry the tensor
name. Tensors have a ``TensorInfo`` (shape, dtype, and once the scale pass ran, the
fixed-point scale and ring width) and a *visibility*:

- ``public``: known to everyone at compile time (weights, folded constants); the value
  lives in ``Graph.consts``;
- ``client``: plaintext held by the input owner only (token ids and whatever is computed
  from them before sharing, see ``passes/client_split``);
- ``secret``: a masked wire shared between P0 and P1.

The order of ``Graph.nodes()`` is deterministic (topological, ties broken by insertion
order), so the JSON form, the pretty print and everything derived from them (key layout,
schedule) are reproducible from the same model and flags.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from fusec.errors import CompileError

VISIBILITIES = ("public", "client", "secret")


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str = "float"          # "float" | "int" | "bool"
    visibility: str = "secret"    # "public" | "client" | "secret"
    scale: int | None = None      # fractional bits on the ring (secret tensors, after passes.scales)
    bits: int | None = None       # ring width (secret tensors, after passes.scales)
    owner: int | None = None      # for client tensors / inputs: the party that holds the plaintext

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        if self.visibility not in VISIBILITIES:
            raise CompileError(f"unknown visibility {self.visibility!r}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # short form for error messages
        return f"{self.op} node {self.name!r}"


class Graph:
    """Operators + tensors + constants. Mutate through the methods so the DiGraph stays right."""

    def __init__(self, name: str = "model") -> None:
        self.name = name
        self.g = nx.DiGraph()
        self.tensors: dict[str, TensorInfo] = {}
        self.consts: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []      # graph input tensors (client or secret)
        self.outputs: list[str] = []
        self.meta: dict[str, Any] = {}   # compile flags, notes (e.g. clamped constants)
        self._seq = 0
        self._producer: dict[str, str] = {}
        self._readers: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ building
    def fresh(self, base: str) -> str:
        """A tensor/node name not used yet, derived from ``base``."""
        name, i = base, 0
        while name in self.tensors or name in self.g:
            i += 1
            name = f"{base}_{i}"
        return name

    def add_const(self, name: str, value, dtype: str | None = None) -> str:
        value = np.asarray(value)
        if dtype is None:
            dtype = "bool" if value.dtype == np.bool_ else ("int" if np.issubdtype(value.dtype, np.integer) else "float")
        self.tensors[name] = TensorInfo(value.shape, dtype, "public")
        self.consts[name] = value
        return name

    def add_input(self, name: str, shape, dtype: str = "float", visibility: str = "secret", owner: int = 1) -> str:
        self.tensors[name] = TensorInfo(tuple(shape), dtype, visibility, owner=owner)
        self.inputs.append(name)
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], name: str | None = None,
                 infos: list[TensorInfo] | None = None, **attrs) -> Node:
        name = name or self.fresh(f"{op}_{self._seq}")
        if name in self.g:
            raise CompileError(f"duplicate node name {name!r}")
        for t in inputs:
            if t and t not in self.tensors:
                raise CompileError(f"{op} node {name!r} reads tensor {t!r}, which nothing defines")
        node = Node(name, op, list(inputs), list(outputs), dict(attrs))
        self.g.add_node(name, node=node, seq=self._seq)
        self._seq += 1
        for i, t in enumerate(outputs):
            if t in self._producer:
                raise CompileError(f"tensor {t!r} is produced twice ({self._producer[t]!r} and {name!r})")
            self._producer[t] = name
            if infos is not None:
                self.tensors[t] = infos[i]
        for t in inputs:
            self._readers.setdefault(t, set()).add(name)
            p = self._producer.get(t)
            if p is not None:
                self.g.add_edge(p, name)
        for t in outputs:
            for c in self._readers.get(t, ()):
                self.g.add_edge(name, c)
        return node

    def remove_node(self, name: str) -> None:
        node = self.node(name)
        for t in node.outputs:
            self._producer.pop(t, None)
        for t in node.inputs:
            self._readers.get(t, set()).discard(name)
        self.g.remove_node(name)

    def remove_unused(self) -> int:
        """Drop nodes whose outputs nobody reads, and unread constants/tensors. Returns nodes removed."""
        removed = 0
        while True:
            live = set(self.outputs)
            for n in self.g.nodes:
                live.update(self.node(n).inputs)
            dead = [n for n in self.g.nodes if not (set(self.node(n).outputs) & live)]
            if not dead:
                break
            for n in dead:
                self.remove_node(n)
                removed += 1
        live = set(self.outputs) | set(self.inputs)
        for n in self.g.nodes:
            live.update(self.node(n).inputs)
            live.update(self.node(n).outputs)
        for t in list(self.tensors):
            if t not in live:
                del self.tensors[t]
                self.consts.pop(t, None)
        return removed

    def rename_input(self, node_name: str, old: str, new: str) -> None:
        """Make ``node_name`` read ``new`` where it read ``old`` (edges follow)."""
        node = self.node(node_name)
        node.inputs = [new if t == old else t for t in node.inputs]
        self._readers.get(old, set()).discard(node_name)
        self._readers.setdefault(new, set()).add(node_name)
        p_old, p_new = self._producer.get(old), self._producer.get(new)
        if p_old is not None and old not in node.inputs and self.g.has_edge(p_old, node_name):
            if not any(t in self.node(p_old).outputs for t in node.inputs):
                self.g.remove_edge(p_old, node_name)
        if p_new is not None:
            self.g.add_edge(p_new, node_name)

    # ------------------------------------------------------------------ queries
    def node(self, name: str) -> Node:
        return self.g.nodes[name]["node"]

    def nodes(self) -> list[Node]:
        """Topological order, ties broken by insertion order: deterministic."""
        seq = nx.get_node_attributes(self.g, "seq")
        return [self.node(n) for n in nx.lexicographical_topological_sort(self.g, key=lambda n: seq[n])]

    def producer(self, tensor: str) -> Node | None:
        p = self._producer.get(tensor)
        return self.node(p) if p is not None else None

    def consumers(self, tensor: str) -> list[Node]:
        seq = nx.get_node_attributes(self.g, "seq")
        found = self._readers.get(tensor, ())
        return [self.node(n) for n in sorted(found, key=lambda n: seq[n])]

    def info(self, tensor: str) -> TensorInfo:
        return self.tensors[tensor]

    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def const(self, tensor: str) -> np.ndarray:
        return self.consts[tensor]

    def ops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes():
            out[n.op] = out.get(n.op, 0) + 1
        return out

    # ------------------------------------------------------------------ (de)serialization
    def to_json(self, include_consts: bool = False) -> str:
        """Deterministic JSON. Constants are listed by shape/dtype; with ``include_consts``
        their values are embedded (base64 .npy), otherwise they go to ``weights.npz``."""
        consts = {}
        for k in sorted(self.consts):
            v = self.consts[k]
            entry: dict[str, Any] = {"shape": list(v.shape), "dtype": str(v.dtype)}
            if include_consts:
                buf = io.BytesIO()
                np.save(buf, v, allow_pickle=False)
                entry["npy"] = base64.b64encode(buf.getvalue()).decode()
            consts[k] = entry
        doc = {
            "name": self.name,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "meta": self.meta,
            "tensors": {k: {**asdict(v), "shape": list(v.shape)} for k, v in sorted(self.tensors.items())},
            "consts": consts,
            "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "outputs": n.outputs,
                       "attrs": _jsonable(n.attrs)} for n in self.nodes()],
        }
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, weights: dict[str, np.ndarray] | None = None) -> "Graph":
        doc = json.loads(text)
        g = cls(doc["name"])
        g.meta = doc.get("meta", {})
        for k, v in doc["tensors"].items():
            g.tensors[k] = TensorInfo(**{**v, "shape": tuple(v["shape"])})
        for k, v in doc["consts"].items():
            if "npy" in v:
                g.consts[k] = np.load(io.BytesIO(base64.b64decode(v["npy"])), allow_pickle=False)
            elif weights is not None and k in weights:
                g.consts[k] = np.asarray(weights[k])
            else:
                raise CompileError(f"constant {k!r} has no value (weights.npz missing or stale?)",
                                   "re-run `fusec compile` to rebuild the build directory")
        g.inputs = list(doc["inputs"])
        g.outputs = list(doc["outputs"])
        for n in doc["nodes"]:
            g.add_node(n["op"], n["inputs"], n["outputs"], name=n["name"], **_from_jsonable(n["attrs"]))
        return g

    def copy(self) -> "Graph":
        return Graph.from_json(self.to_json(include_consts=True))

    # ------------------------------------------------------------------ printing
    def pretty(self, max_nodes: int | None = None) -> str:
        """One line per node: ``out[shape]@scale = Op(inputs) {attrs}``."""
        def t(name: str) -> str:
            i = self.tensors.get(name)
            if i is None:
                return name
            tag = {"public": "const ", "client": "client ", "secret": ""}[i.visibility]
            sc = f"@f{i.scale}" if i.scale is not None else ""
            return f"{tag}{name}{list(i.shape)}{sc}"

        lines = [f"graph {self.name}"]
        for name in self.inputs:
            i = self.tensors[name]
            lines.append(f"  input  {t(name)} {i.dtype} ({i.visibility}, owner P{i.owner})")
        nodes = self.nodes()
        for k, n in enumerate(nodes):
            if max_nodes is not None and k >= max_nodes:
                lines.append(f"  ... {len(nodes) - k} more nodes")
                break
            attrs = {a: v for a, v in n.attrs.items() if a != "spec"}
            extra = f" {_short(attrs)}" if attrs else ""
            if "spec" in n.attrs:
                s = n.attrs["spec"]
                extra += f" spec={s['name']} pieces={len(s['coeffs'])} deg={max(len(c) for c in s['coeffs']) - 1}"
            ins = ", ".join(t(i) for i in n.inputs)
            lines.append(f"  {', '.join(t(o) for o in n.outputs)} = {n.op}({ins}){extra}")
        for name in self.outputs:
            lines.append(f"  output {t(name)}")
        return "\n".join(lines)


def _short(attrs: dict) -> str:
    parts = []
    for k, v in attrs.items():
        s = json.dumps(_jsonable(v))
        parts.append(f"{k}={s if len(s) <= 60 else s[:57] + '...'}")
    return "{" + ", ".join(parts) + "}"


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return {"__array__": v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _from_jsonable(v):
    if isinstance(v, dict):
        if "__array__" in v:
            return np.asarray(v["__array__"], dtype=v["dtype"])
        return {k: _from_jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_jsonable(x) for x in v]
    return v
