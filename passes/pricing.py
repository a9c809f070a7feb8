"""The compiler's one currency for trading key, AES and rounds (every choice between two
constructions of the same result prices them here).

A gate's price per element is its key bytes plus 16 bytes per AES block the servers
evaluate online (each block is 16 bytes of PRG output they must produce). A construction
that takes one more round is worth it only where it saves at least what a round is worth
over the whole gate (``--round-worth``, 32 MiB by default): that keeps a batch-1 model's
latency (a round costs a wire exchange) and lets large batches and long sequences, where
the card's AES and the key's size bound the time, take the cheaper gate. With
``--round-price inference`` the price of a round is multiplied by the true batch
(``CompileOptions.round_worth_bytes``), so a gate's saving counts per inference and every
batch size makes batch 1's choices (its program per inference: tests/test_batch_invariance.py).
"""
from __future__ import annotations

from fusec.runtime.gates.base import Gate, GateCost

#: bytes of key one AES block evaluated online is worth
AES_BYTES = 16
def price(cost: GateCost) -> float:
    """Key bytes plus ``AES_BYTES`` per AES block."""
    return cost.key_bits / 8 + AES_BYTES * cost.aes


def gate_price(gate: Gate) -> float:
    """:func:`price` of a whole gate: its key fields plus the AES of all its elements."""
    return gate.key_bits_total() / 8 + AES_BYTES * gate.elements * gate.cost().aes


def worth_rounds(saved: float, rounds: int, round_worth: float) -> bool:
    """Whether saving ``saved`` (price, over the whole gate) pays for ``rounds`` more rounds,
    each worth ``round_worth`` (``CompileOptions.round_worth_bytes``)."""
    return saved >= round_worth * rounds
