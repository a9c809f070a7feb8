"""A gate graph: the runtime's view of a program (wires, gates, key-consumption order).

Nodes are kept in the order the builder (later: the compiler) fixed; that order is the
key layout's order. Evaluation is dataflow: a node starts as soon as its inputs exist,
all nodes waiting on an open share one message per round (protocol.drive), and both
parties walk the same deterministic schedule.
"""
from __future__ import annotations

import contextlib

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from fusec.errors import ParameterError
from fusec.runtime.gates.arith import Input, Output
from fusec.runtime.gates.base import Gate, GateCost, Key
from fusec.runtime.keygen_chunks import KeySink, gate_keygen
from fusec.runtime.layout import KeyLayout
from fusec.runtime.protocol import Exchange, RoundLog, drive, timed
from fusec.runtime.rng import DealerRng


@dataclass
class Node:
    id: str
    gate: Gate
    inputs: list[str]


class GateGraph:
    """Builder + keygen + evaluation of a small program of gates."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self._ids: set[str] = set()
        # an --insecure-mask-dependent-shapes build (padding ablation): its layout says so
        # (and so has another digest than the padded build's)
        self.insecure = False
        # the layout marks each gate's additive shares, so the dealer gives one party a seed in
        # their place (runtime/seeded_shares.py); off: every field in both key files
        self.seeded_shares = True

    # ------------------------------------------------------------------ building
    def add(self, node_id: str, gate: Gate, inputs: list[str] = ()) -> str:
        if node_id in self._ids:
            raise ParameterError(f"duplicate node id {node_id!r}")
        for w in inputs:
            if w not in self._ids:
                raise ParameterError(f"node {node_id!r} reads {w!r}, which no earlier node produces")
        if len(inputs) != gate.inputs:
            raise ParameterError(f"node {node_id!r}: {gate.kind} takes {gate.inputs} inputs, got {len(inputs)}")
        self.nodes.append(Node(node_id, gate, list(inputs)))
        self._ids.add(node_id)
        return node_id

    def input(self, name: str, elements: int, bits: int, owner: int = 1) -> str:
        return self.add(name, Input(elements, bits, owner))

    def output(self, name: str, wire: str, receiver: int = 1) -> str:
        g = self.node(wire).gate
        bits = getattr(g, "out_bits", None) or getattr(g, "bits")
        return self.add(name, Output(g.elements, bits, receiver), [wire])

    def drop(self, node_ids: set[str]) -> None:
        """Remove nodes a pass fused into their readers; no remaining node may read them."""
        for n in self.nodes:
            if n.id not in node_ids and any(w in node_ids for w in n.inputs):
                raise ParameterError(f"node {n.id!r} still reads a dropped node")
        self.nodes = [n for n in self.nodes if n.id not in node_ids]
        self._ids -= set(node_ids)

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.gate, Input)]

    @property
    def outputs(self) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.gate, Output)]

    # ------------------------------------------------------------------ layout / cost
    def layout(self) -> KeyLayout:
        return KeyLayout([(n.id, n.gate.kind, n.gate.elements, n.gate.key_fields(self.seeded_shares))
                          for n in self.nodes], insecure=self.insecure)

    def costs(self) -> list[tuple[str, str, int, GateCost]]:
        return [(n.id, n.gate.kind, n.gate.elements, n.gate.cost()) for n in self.nodes]

    # ------------------------------------------------------------------ dealer
    def keygen(self, rng: DealerRng) -> tuple[dict[str, Key], dict[str, Key], dict[str, np.ndarray]]:
        """Both parties' keys for one inference, plus every wire's mask (dealer only)."""
        masks: dict[str, np.ndarray] = {}
        keys: tuple[dict[str, Key], dict[str, Key]] = ({}, {})
        for node_id, k0, k1 in self.keygen_stream(rng, masks):
            keys[0][node_id], keys[1][node_id] = k0, k1
        return keys[0], keys[1], masks

    def keygen_stream(self, rng: DealerRng, masks: dict | None = None,
                      sink: Callable[[str], KeySink | None] | None = None) -> Iterator[tuple[str, object, object]]:
        """The keys gate by gate, in layout order, so a dealer can write each and drop it
        (a large model's key set need not fit in memory); wire masks go into ``masks``.

        Without ``masks`` each wire's mask is dropped once the last gate reading it has its
        keys: the dealer then holds the live wires' masks only, not every activation of the
        model (several GB on the device for BERT-base at batch 4). A large elementwise gate is
        keyed in element chunks, its keys then host arrays (runtime/keygen_chunks.py);
        ``sink(gate id)`` gives where a gate's keys go, part by part, and what it returns is
        yielded in place of the keys (None: the keys as above)."""
        keep_all = masks is not None
        masks = {} if masks is None else masks
        last_reader = {w: i for i, n in enumerate(self.nodes) for w in n.inputs}
        for i, n in enumerate(self.nodes):
            out, k0, k1 = gate_keygen(n.gate, rng, [masks[w] for w in n.inputs],     # large gates in chunks
                                      sink=sink(n.id) if sink is not None else None)
            masks[n.id] = out
            if not keep_all:
                for w in set(n.inputs):
                    if last_reader[w] == i:
                        del masks[w]
                if n.id not in last_reader:     # read by no gate (an output's own mask)
                    del masks[n.id]
            yield n.id, k0, k1

    # ------------------------------------------------------------------ online
    def evaluate(self, party: int, keys: Callable[[str], Key] | Mapping[str, Key], inputs: dict[str, np.ndarray],
                 exchange: Exchange, be, log: RoundLog | None = None,
                 scopes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Run this party's side; returns the outputs this party receives (by node id).

        With ``log`` and ``scopes`` (gate id -> profiler scope), each gate's local work is
        timed into ``log.compute`` under its scope.
        """
        plan = be.launch_plan(self, keys)
        if plan is not None and plan.ready:     # a recorded launch plan: no Python per gate
            with be.activate():
                return plan.replay(inputs, exchange, log)
        get = keys.__getitem__ if isinstance(keys, Mapping) else keys
        values: dict[str, object] = {}
        gen_node: list[int] = []
        # Dataflow bookkeeping, linear in the graph size: per node the number of distinct
        # input wires not yet produced, per wire the nodes that read it. A node starts
        # when its count reaches zero; nodes that become ready together start in node
        # order, exactly the order a full scan of the node list would give.
        index = {n.id: i for i, n in enumerate(self.nodes)}
        missing = [len(set(n.inputs)) for n in self.nodes]
        readers: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for w in set(n.inputs):
                readers[index[w]].append(i)
        # A wire's value is dropped once its last reader has started (that gate holds it while
        # it runs): live memory is the live activations, not every activation of the model
        # (BERT-base at batch 8 kept ~10 GB of dead wires on the card by layer 10).
        unread = [len(r) for r in readers]
        kept = {n.id for n in self.outputs}

        def start(ready: list[int]):
            gens = []
            for i in sorted(ready):
                n = self.nodes[i]
                if isinstance(n.gate, Input):
                    args = [inputs.get(n.id) if party == n.gate.owner else None]
                    if party == n.gate.owner and n.id not in inputs:
                        raise ParameterError(f"no value given for input {n.id!r}")
                    if plan is not None and args[0] is not None:    # recording: a buffer a replay refills
                        args = [plan.input(n.id, args[0])]
                else:
                    args = [values[w] for w in n.inputs]
                    for w in set(n.inputs):
                        unread[index[w]] -= 1
                        if unread[index[w]] == 0 and w not in kept:
                            del values[w]
                gen = n.gate.eval(party, be.stage_key(get(n.id)), args, be)
                if log is not None and scopes is not None:
                    gen = timed(gen, scopes.get(n.id, "other"), log)
                gens.append(gen)
                gen_node.append(i)
            return gens

        def on_done(g: int, result):
            done = gen_node[g]
            values[self.nodes[done].id] = result
            ready = []
            for i in readers[done]:
                missing[i] -= 1
                if missing[i] == 0:
                    ready.append(i)
            return start(ready)

        def describe(g: int) -> str:
            node = self.nodes[gen_node[g]]
            return f"{node.id} ({node.gate.kind})"

        with be.recording(plan) if plan is not None else contextlib.nullcontext():
            be.segment_start()      # before the first gates start: their keys are unpacked inside the capture
            drive(start([i for i, c in enumerate(missing) if c == 0]), exchange, party, be, log, on_done=on_done,
                  describe=describe)
            received = {n.id: values[n.id] for n in self.outputs if values.get(n.id) is not None}
            if plan is not None:
                plan.outputs = received
        return {node_id: be.asnumpy(v) for node_id, v in received.items()}
