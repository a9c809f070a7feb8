"""SIGMA's transformer, block by block, priced with the ``--gates sigma`` gates: the check against
SIGMA's published totals.

The compiler's sigma build prices whatever graph the scale pass produced (where it places
truncations is the compiler's choice). This module instead lays out SIGMA's own schedule of a
BERT / GPT-2 layer (EzPC ``GPU-MPC/fss/gpu_mha.cu``, ``gpu_softmax.cu``, ``gpu_layernorm.cu``,
``gpu_mul.cu``, ``gpu_matmul.cu``) and prices every step with the per-element ``cost()`` of the
gate that implements it here, so the gates can be checked against SIGMA's totals (ANCHORS.md:
BERT-base, seq 128: 16.8-18.1 GB key per party, 1128 rounds, 0.99-1.06 GB online both parties).

Per layer (L tokens, d model width, H heads, F = 4 d), SIGMA's sequence (rounds in brackets):

=========================  ============================================================  ======
step                       what SIGMA runs                                                rounds
=========================  ============================================================  ======
QKV = X W_qkv              Beaver matmul (masks of X, W, Z), open Z, TrFloor by f         1 + 4
S = Q K^T                  Beaver matmul, open, TrFloor by f + 3 (1/sqrt(64) folded)     1 + 4
softmax(S)                 max tree (7 levels, 39-bit compares), nExp, row sum,           35
                           inverse (13-bit LUT), Beaver product, TrWithSlack
P V, output projection     Beaver matmul, open, TrFloor (each)                            2 x 5
LayerNorm x 2              mean (TrFloor on L values), square + open row sums, 1/sqrt     2 x 11
                           (SIGMA's code: on the opened masked sum, no key), two Beaver
                           products each followed by TrWithSlack
FFN1, FFN2                 Beaver matmul, open, TrFloor (each)                            2 x 5
GELU                       :class:`SigmaGelu`                                             7
=========================  ============================================================  ======

94 rounds per layer: 1128 for BERT-base's 12 layers, SIGMA's figure. GPT-2 (causal) packs the
lower triangle of the scores: softmax, the score truncation and P V work on L (L + 1) / 2
entries per head. ``weights="private"`` is SIGMA's setting (the weight masks are key material);
``"public"`` drops them (our default build: a public-weight matmul is free and opens nothing).
Key bytes are bit-packed (SIGMA stores every share in a 64-bit word: its files are larger).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import dataclasses

from fusec.runtime.gates.base import Gate, GateCost
from fusec.runtime.gates.sigma import SigmaGelu
from fusec.runtime.gates.sigma_fss import SigmaMaxTree, SigmaTrFloor, SigmaTrunc
from fusec.runtime.gates.sigma_nonlinear import SigmaInverse, SigmaNegExp

__all__ = ["SigmaTotals", "sigma_transformer", "BERT_BASE", "GPT2"]

BERT_BASE = {"layers": 12, "seq": 128, "d": 768, "heads": 12, "causal": False}
GPT2 = {"layers": 12, "seq": 128, "d": 768, "heads": 12, "causal": True}


@dataclass
class SigmaTotals:
    """Totals per party for one inference: key bits, rounds, bits sent; and the per-step split."""

    key_bits: int = 0
    rounds: int = 0
    open_bits: int = 0
    steps: dict = field(default_factory=dict)

    def add(self, name: str, per_elem: GateCost, count: int, rounds: int | None = None) -> None:
        kb, ob = per_elem.key_bits * count, per_elem.open_bits * count
        r = per_elem.rounds if rounds is None else rounds
        self.key_bits += kb
        self.open_bits += ob
        self.rounds += r
        k0, o0, r0 = self.steps.get(name, (0, 0, 0))
        self.steps[name] = (k0 + kb, o0 + ob, r0 + r)

    @property
    def key_bytes(self) -> float:
        return self.key_bits / 8

    @property
    def sent_bytes(self) -> float:
        """Bytes one party sends (both parties: twice this)."""
        return self.open_bits / 8


def _word(bits: int) -> int:
    """Bits SIGMA stores a share of ``bits`` bits in (``writeShares``: 1-2 bit values packed,
    others in the narrowest of u8/u16/u64 its templates use; AES blocks as they are)."""
    if bits <= 2:
        return bits
    return 8 if bits <= 8 else 16 if bits <= 16 else 64


def stored_bits(gate: Gate) -> int:
    """Key bits per element as SIGMA's files would hold ``gate``'s fields (see :func:`_word`)."""
    total = 0
    for _, shape, bits in gate.fields():
        count = 1
        for d in shape:
            count *= d
        total += count * _word(bits)
    return total // gate.elements


def _beaver(n: int, a: int, b: int, c: int, private_b: bool = True, kw: int | None = None) -> tuple[int, int]:
    """(key bits, open bits) of a masked product with operands of a and b elements and c outputs
    (``kw``: bits one stored share takes, default n)."""
    return (kw or n) * (a + (b if private_b else 0) + c), n * c


def sigma_transformer(layers: int, seq: int, d: int, heads: int, causal: bool = False, bits: int = 50,
                      frac: int = 12, weights: str = "private", storage: str = "packed") -> SigmaTotals:
    """SIGMA's schedule of ``layers`` transformer layers priced with this library's sigma gates.

    ``storage="packed"``: key bits as this library's key files hold them (every field packed
    to its width). ``"words"``: as SIGMA's files would (ring shares in 64-bit words, see
    :func:`stored_bits`), for comparing with SIGMA's measured key sizes.
    """
    n, f, L, H, F = bits, frac, seq, heads, 4 * d
    words = storage == "words"
    wn = 64 if words else n                                   # one stored ring share

    def C(gate: Gate) -> GateCost:
        c = gate.cost()
        return dataclasses.replace(c, key_bits=stored_bits(gate)) if words else c
    dh = d // H
    private = weights == "private"
    S = H * (L * (L + 1) // 2 if causal else L * L)          # score entries (packed lower triangle)
    t = SigmaTotals()

    def matmul(name, a, b, c, shift, public_weight):
        if public_weight and not private:
            t.add(f"{name} truncation", C(SigmaTrFloor(1, n, shift)), c)
            return
        kb, ob = _beaver(n, a, b, c, kw=wn)
        t.add(f"{name} product", GateCost(kb, 0, 1, ob), 1)
        t.add(f"{name} truncation", C(SigmaTrFloor(1, n, shift)), c)

    def layernorm(name):
        t.add(f"{name} mean", C(SigmaTrFloor(1, n, f)), L)                     # TrFloor of sum * 2^f/d
        t.add(f"{name} squares", GateCost(2 * wn * L * d, 0, 1, n * L), 1)          # square key, open row sums
        slack = C(SigmaTrunc(1, n, f, slack=True))
        kb, ob = _beaver(n, L * d, L, L * d, kw=wn)                                       # (x - mu) * rsqrt(row)
        t.add(f"{name} normalise", GateCost(kb, 0, 1, ob), 1)
        t.add(f"{name} normalise", slack, L * d)
        kb, ob = _beaver(n, L * d, d, L * d, private, kw=wn)                              # * gamma (+ beta)
        t.add(f"{name} affine", GateCost(kb, 0, 1, ob), 1)
        t.add(f"{name} affine", slack, L * d)

    for _ in range(layers):
        matmul("QKV", L * d, d * 3 * d, L * 3 * d, f, True)
        kb, ob = _beaver(n, L * d, L * d, S, kw=wn)                                      # Q K^T, both secret
        t.add("QK^T product", GateCost(kb, 0, 1, ob), 1)
        t.add("QK^T truncation", C(SigmaTrFloor(1, n, f + (3 if dh == 64 else 0))), S)
        # softmax: max tree over each row (causal rows are shorter; priced as SIGMA's packed tree)
        mt = C(SigmaMaxTree((1, L), n, -1, n - f + 1))
        t.add("softmax max", GateCost(mt.key_bits, mt.aes, mt.rounds, mt.open_bits), H * L if not causal else 0,
              rounds=mt.rounds)
        if causal:                                                                 # L(L+1)/2 - L relus per head
            one = mt.key_bits // (L - 1), mt.open_bits // (L - 1)
            relus = H * (L * (L + 1) // 2 - L)
            t.add("softmax max", GateCost(one[0] * relus, 0, 0, one[1] * relus), 1, rounds=0)
        t.add("softmax nExp", C(SigmaNegExp(1, n, f)), S)
        t.add("softmax inverse", C(SigmaInverse(1, n, f, max_value=L)), H * L)
        kb, ob = _beaver(n, S, H * L, S, kw=wn)
        t.add("softmax product", GateCost(kb, 0, 1, ob), 1)
        t.add("softmax product", C(SigmaTrunc(1, n, f, slack=True)), S)
        kb, ob = _beaver(n, S, L * d, L * d, kw=wn)
        t.add("PV product", GateCost(kb, 0, 1, ob), 1)
        t.add("PV truncation", C(SigmaTrFloor(1, n, f)), L * d)
        matmul("projection", L * d, d * d, L * d, f, True)
        layernorm("LayerNorm 1")
        matmul("FFN1", L * d, d * F, L * F, f, True)
        t.add("GELU", C(SigmaGelu(1, n, f)), L * F)
        matmul("FFN2", L * F, F * d, L * d, f, True)
        layernorm("LayerNorm 2")
    return t
