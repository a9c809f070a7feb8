"""What a gate is: one keygen/eval pair over masked wires, with its cost as data.

Masked wires (DESIGN §5.1): a wire of ``bits`` bits carrying x is public as
``u = x + r mod 2^bits``; the dealer alone knows the mask ``r``. A gate's keygen gets the
input masks, draws (or derives, for linear gates) the output mask, and returns one key
per party; its eval turns public inputs into the public masked output.

Eval is a generator: it ``yield``s :class:`Open` requests and receives the reconstructed
values, then ``return``s the masked output. The executor (protocol.py) advances every
independent gate until each waits on an open and sends all those opens as one message,
so a gate never talks to the channel itself and rounds batch across gates for free.
"""
from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generator

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.dcf import DcfKey
from fusec.runtime.dpf import DpfKey
from fusec.runtime.dpf_arith import DpfArithKey
from fusec.runtime.layout import KeyField
from fusec.runtime.rng import DealerRng

Key = dict[str, np.ndarray]
FieldSpec = tuple[str, tuple[int, ...], int]  # (name, shape, bits)


@dataclass(frozen=True)
class GateCost:
    """Per-element, per-party cost of one gate (what ``fusec inspect`` prints).

    key_bits: key material per element; aes: AES blocks per element at eval;
    rounds: sequential opens; open_bits: bits this party sends per element.
    """

    key_bits: int
    aes: int
    rounds: int
    open_bits: int

    def __add__(self, other: "GateCost") -> "GateCost":
        return GateCost(self.key_bits + other.key_bits, self.aes + other.aes,
                        self.rounds + other.rounds, self.open_bits + other.open_bits)

    def parallel(self, other: "GateCost") -> "GateCost":
        """Cost of two gates run side by side: rounds overlap."""
        return dataclasses.replace(self + other, rounds=max(self.rounds, other.rounds))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


ZERO_COST = GateCost(0, 0, 0, 0)


@dataclass
class Open:
    """Ask the executor to reconstruct ``share`` (sum of both parties' shares mod 2^bits).

    With ``sender`` set, only that party sends (its share is the whole value, e.g. an
    input owner sending ``x + r``); the other party contributes nothing and receives it.
    1-bit opens are XOR openings (sum mod 2). The scope names the profiler bucket.
    """

    share: Any
    bits: int
    sender: int | None = None
    scope: str = "open"


EvalGen = Generator["Open | list[Open]", Any, Any]


def parallel(*gens: EvalGen) -> EvalGen:
    """Run sub-gate evaluations side by side inside one gate: their opens of the same
    step share a round (yielded as one list). Returns the list of their results."""
    gens = list(gens)
    results: list = [None] * len(gens)
    pending: dict[int, Any] = {}
    for i, g in enumerate(gens):
        try:
            pending[i] = next(g)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        order = list(pending)
        flat = [r for i in order for r in (pending[i] if isinstance(pending[i], list) else [pending[i]])]
        vals = yield flat
        pos, nxt = 0, {}
        for i in order:
            req = pending[i]
            k = len(req) if isinstance(req, list) else 1
            v = vals[pos:pos + k] if isinstance(req, list) else vals[pos]
            pos += k
            try:
                nxt[i] = gens[i].send(v)
            except StopIteration as stop:
                results[i] = stop.value
        pending = nxt
    return results


#: Key fields, by the last part of their name, whose two parties' values are not additive shares of
#: one value, so the dealer never derives them from a seed (runtime/seeded_shares.py): a DPF's or
#: DCF's root (each party's own seed) and correction words (the same in both keys); an input
#: owner's or output receiver's ``mask`` (one party's alone); an INSECURE lookup's ``pieces_used``
#: (the same in both keys). Every other field is an additive share mod 2^bits whose sum is all a
#: gate reads (tests/test_seeded_shares.py re-shares every gate kind's and checks its output;
#: tests/test_padding_ablation.py runs a graph with an input, an output and a piece count from key
#: files).
UNSHARED_FIELDS = frozenset(
    {name for name, _, _ in DpfKey.field_specs(2, 1) + DcfKey.field_specs(2, 1, 1, 1)
     + DpfArithKey.field_specs(2, 1, 1)} | {"mask", "pieces_used"})


def is_share_field(name: str) -> bool:
    """Whether a key field (a gate's name for it, sub-gate prefixes included) is an additive share."""
    return name.rsplit(".", 1)[-1] not in UNSHARED_FIELDS


def field_bits(fields: list[FieldSpec]) -> int:
    """Total key bits of a list of field specs."""
    return sum(int(np.prod(shape, dtype=np.int64)) * bits for _, shape, bits in fields)


def prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> Key:
    return {f"{prefix}.{k}": v for k, v in arrays.items()}


def unprefixed(prefix: str, key: Key) -> dict[str, np.ndarray]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in key.items() if k.startswith(p)}


class Gate(ABC):
    """A keygen/eval pair for ``elements`` independent elements.

    Subclasses set ``kind``, store their parameters, and implement ``fields``,
    ``keygen``, ``eval`` and ``cost``. ``inputs`` is the number of input wires.
    """

    kind: ClassVar[str] = "gate"
    inputs: ClassVar[int] = 1
    #: Each element's key is drawn from that element's input masks alone, every input and every
    #: key field has one element axis, and nothing else depends on the element count: the dealer
    #: may then make a large gate's key in element chunks (runtime/keygen_chunks.py), so its
    #: memory is a chunk's, not the gate's (:meth:`with_elements` makes the chunk's gate).
    elementwise_keys: ClassVar[bool] = False

    def __init__(self, elements: int):
        if elements <= 0:
            raise ParameterError(f"{self.kind}: a gate needs at least one element, got {elements}",
                                 "empty tensors have nothing to compute; drop the node")
        self.elements = int(elements)

    @abstractmethod
    def fields(self) -> list[FieldSpec]:
        """The key layout of one party (same for both), structure of arrays."""

    @abstractmethod
    def keygen(self, rng: DealerRng, in_masks: list[np.ndarray]) -> tuple[np.ndarray, Key, Key]:
        """Return (output mask, key of party 0, key of party 1)."""

    @abstractmethod
    def eval(self, party: int, key: Key, inputs: list, be) -> EvalGen:
        """Generator: yields :class:`Open` requests, returns the public masked output."""

    @abstractmethod
    def cost(self) -> GateCost:
        """Per-element cost, matching what keygen/eval really do."""

    def key_bits_total(self) -> int:
        return field_bits(self.fields())

    def with_elements(self, elements: int) -> "Gate":
        """This gate on ``elements`` elements (an element chunk's gate; only where
        :attr:`elementwise_keys` holds, which says the count is the only thing to change)."""
        if not self.elementwise_keys:
            raise TypeError(f"{self.kind}: its keys are not elementwise; it has no chunk gate")
        gate = copy.copy(self)
        gate.elements = int(elements)
        return gate

    def key_fields(self, mark_shares: bool = True) -> tuple[KeyField, ...]:
        """:meth:`fields` as the layout's fields, each marked whether it is an additive share
        (``mark_shares`` False: none is, and the dealer seeds nothing)."""
        return tuple(KeyField(name, tuple(shape), bits, share=mark_shares and is_share_field(name))
                     for name, shape, bits in self.fields())

    def describe(self) -> dict:
        """Parameters and cost, for ``fusec inspect``."""
        params = {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str, bool))}
        return {"kind": self.kind, **params, "cost": self.cost().as_dict()}


class KeyAcc:
    """Both parties' keys of a composite gate, collected under the sub-gates' prefixes
    during keygen: ``mask = acc.add("tr", sub.keygen(rng, masks))``."""

    def __init__(self) -> None:
        self.keys: tuple[Key, Key] = ({}, {})

    def add(self, prefix: str, out):
        mask, k0, k1 = out
        self.keys[0].update(prefixed(prefix, k0))
        self.keys[1].update(prefixed(prefix, k1))
        return mask


def check_width(bits: int, what: str) -> int:
    return ring.check_bits(bits, what)


def run_local(gen: EvalGen):
    """Drive a generator that must not open anything (linear gates); return its value."""
    try:
        req = next(gen)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError(f"gate opened a value ({req}) where none was expected")


class Chain(Gate):
    """Gates applied one after another; keys nested under ``"<i>."`` prefixes.

    The output mask of stage i is the input mask of stage i+1; costs add up. Used to
    compose a lookup with its output truncation, or DReLU with Select.
    """

    kind = "chain"

    def __init__(self, stages: list[Gate], kind: str | None = None):
        super().__init__(stages[0].elements)
        self.stages = stages
        self.inputs = stages[0].inputs  # type: ignore[misc]
        if kind:
            self.kind = kind  # type: ignore[misc]
        self.bits = getattr(stages[0], "bits", None)
        self.out_bits = getattr(stages[-1], "out_bits", getattr(stages[-1], "bits", None))
        self.elementwise_keys = all(g.elementwise_keys for g in stages)  # type: ignore[misc]

    def with_elements(self, elements: int) -> "Chain":
        gate = super().with_elements(elements)
        gate.stages = [g.with_elements(elements) for g in self.stages]
        return gate

    def fields(self):
        return [(f"{i}.{name}", shape, bits) for i, g in enumerate(self.stages) for name, shape, bits in g.fields()]

    def keygen(self, rng: DealerRng, in_masks):
        keys: tuple[Key, Key] = ({}, {})
        masks = in_masks
        for i, g in enumerate(self.stages):
            out, k0, k1 = g.keygen(rng, masks)
            keys[0].update(prefixed(str(i), k0))
            keys[1].update(prefixed(str(i), k1))
            masks = [out]
        return masks[0], keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        vals = inputs
        for i, g in enumerate(self.stages):
            out = yield from g.eval(party, unprefixed(str(i), key), vals, be)
            vals = [out]
        return vals[0]

    def cost(self) -> GateCost:
        total = ZERO_COST
        for g in self.stages:
            total = total + g.cost()
        return total
