"""Compile flags, shared by every pass (one frozen dataclass, recorded in the manifest)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fusec.errors import CompileError

GATE_SETS = ("fused", "sigma")
RESCALES = ("slack", "ars")
MAX_TREES = ("auto", "shifted", "packed")
#: What a construction's saving is weighed over against the price of a round: the whole true batch
#: (a larger batch may buy AES with rounds) or one inference (every batch gets batch 1's choices).
ROUND_PRICES = ("batch", "inference")


@dataclass(frozen=True)
class CompileOptions:
    bits: int = 50                  # ring width n
    frac: int = 12                  # fractional bits f of activations
    weight_frac: int = 12           # fractional bits of public weights / constants
    gates: str = "fused"            # "fused" (ours) or "sigma" (SIGMA-style baseline)
    weights: str = "public"         # "public" | "private"
    rescale: str = "slack"          # truncation after products: TR with slack (1 round) or one-round ARS (2 DCFs)
    max_error_ulps: float = 8.0     # bound each fitted OperatorSpec must meet on its range
    # fused softmax: its max may be off by up to this (real units): the tree compares on a coarser
    # grid (fewer DCF levels), exp is fitted up to +grid; softmax itself does not depend on the shift
    softmax_max_grid: float = 2.0 ** -5
    # fused row maxima: each tree level's comparison as the one-round shifted lookup or the packed
    # one (a round more per level, a third of the AES, half the key); auto: passes/pricing.py decides
    max_tree: str = "auto"
    # what a construction must save (key bytes + 16 B per AES, over the whole gate) to be worth one more
    # round (passes/pricing.py): raise it for a high-latency link, lower it for large batches on one card
    round_worth_mib: float = 32.0
    # "batch": that saving is counted over the whole true batch; "inference": per inference, so the
    # program per inference (key, AES, bytes, rounds) is batch 1's at every batch size
    round_price: str = "batch"
    price_batch: int = 1            # the true batch "inference" pricing divides by (set by fusec.build)
    insecure_mask_dependent_shapes: bool = False   # padding ablation only
    # one party of each gate gets a 16-byte seed in place of its additive shares (runtime/seeded_shares.py);
    # None: on for the fused gates, off for the sigma baseline (SIGMA's keys hold both parties' shares)
    seeded_shares: bool | None = None
    calib_seed: int = 0
    client_prefix: bool = True      # run the input owner's plaintext prefix (embeddings) before sharing
    notes: list = field(default_factory=list, compare=False, hash=False)
    # one request (input name -> array) or several (fusec/calib_set.py): ranges cover them all
    calib: dict | list[dict] | None = field(default=None, compare=False, hash=False, repr=False)
    input_ranges: dict | None = field(default=None, compare=False, hash=False, repr=False)  # name -> (lo, hi)

    def __post_init__(self):
        if self.gates not in GATE_SETS:
            raise CompileError(f"unknown gate set {self.gates!r}", f"use one of {', '.join(GATE_SETS)}")
        if self.seeded_shares is None:
            object.__setattr__(self, "seeded_shares", self.gates == "fused")
        if self.rescale not in RESCALES:
            raise CompileError(f"unknown rescale {self.rescale!r}", f"use one of {', '.join(RESCALES)}")
        if not 0.0 <= self.round_worth_mib <= 1e9:
            raise CompileError(f"round worth {self.round_worth_mib} MiB is out of range", "use a value from 0 to 1e9")
        if self.round_price not in ROUND_PRICES:
            raise CompileError(f"unknown round price {self.round_price!r}", f"use one of {', '.join(ROUND_PRICES)}")
        if int(self.price_batch) < 1:
            raise CompileError(f"price batch {self.price_batch} must be at least 1")
        if self.max_tree not in MAX_TREES:
            raise CompileError(f"unknown max tree {self.max_tree!r}", f"use one of {', '.join(MAX_TREES)}")
        if not 16 <= self.bits <= 64:
            raise CompileError(f"ring width {self.bits} is out of range", "use --bits between 16 and 64")
        if not 0.0 <= self.softmax_max_grid <= 1.0:
            raise CompileError(f"softmax max grid {self.softmax_max_grid} is out of range", "use 0 (exact) to 1")
        if not 0 < self.frac < self.bits // 2:
            raise CompileError(f"--frac {self.frac} does not fit a {self.bits}-bit ring with products at 2f",
                               f"use --frac below {self.bits // 2}")

    @property
    def round_worth_bytes(self) -> float:
        """What one more round must save over a whole gate (passes/pricing.py): the stated
        price, times the true batch where savings are weighed per inference (a gate's saving
        grows with the batch, so the choice is then the same at every batch size)."""
        per_batch = self.price_batch if self.round_price == "inference" else 1
        return self.round_worth_mib * (1 << 20) * per_batch

    @property
    def safe_magnitude(self) -> float:
        """What "infinity" becomes (attention masks): far beyond any real score (exp of minus it is
        0 at every precision), and x*2^f stays well inside 2^(n-2)."""
        return float(min(2 ** (self.bits - self.frac - 5), 2 ** 16))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("notes")
        d.pop("calib")
        d.pop("input_ranges")
        return d
