"""SIGMA's own transformer schedule priced with the sigma gates (runtime/gates/sigma_model.py),
against SIGMA's published totals (ANCHORS.md).

BERT-base, seq 128: 16.8-18.1 GB key per party, 1128 rounds, 0.99-1.06 GB online (both parties).
GPT-2: 14.3-15.3 GB, 0.82-0.89 GB. The per-element costs are the gates' ``cost()``, which the
gate tests (test_sigma*.py) check against measured keys, AES and rounds.
"""

from fusec.runtime.gates.sigma_model import BERT_BASE, GPT2, sigma_transformer


def test_bert_base_matches_sigma():
    t = sigma_transformer(**BERT_BASE)                     # SIGMA's setting: secret weights
    assert t.rounds == 1128 == 94 * 12
    assert abs(t.key_bytes / 16.8e9 - 1) < 0.15
    assert 16.8e9 <= t.key_bytes <= 18.1e9                 # inside SIGMA's published range
    assert abs(2 * t.sent_bytes / 0.99e9 - 1) < 0.15
    print(f"\nBERT-base (SIGMA schedule): key {t.key_bytes / 1e9:.2f} GB/party, {t.rounds} rounds, "
          f"online {2 * t.sent_bytes / 1e9:.3f} GB both parties")


def test_gpt2_matches_sigma():
    t = sigma_transformer(**GPT2)
    assert t.rounds == 1128
    assert 14.3e9 * 0.85 <= t.key_bytes <= 15.3e9 * 1.15
    assert 0.82e9 * 0.85 <= 2 * t.sent_bytes <= 0.89e9 * 1.15


def test_public_weights_only_drop_the_weight_masks():
    """Public weights: the four weight matmuls need no Beaver key and no open; gamma needs no mask."""
    priv, pub = sigma_transformer(**BERT_BASE), sigma_transformer(**BERT_BASE, weights="public")
    n, L, d, F = 50, 128, 768, 3072
    per_layer = ((L * d + d * 3 * d + L * 3 * d) + (L * d + d * d + L * d) + (L * d + d * F + L * F)
                 + (L * F + F * d + L * d) + 2 * d)
    assert priv.key_bits - pub.key_bits == 12 * n * per_layer
    assert priv.rounds - pub.rounds == 4 * 12


def test_where_the_key_goes():
    """TrFloor after the matmuls, nExp, GELU and the max tree carry ~90% of SIGMA's key."""
    t = sigma_transformer(**BERT_BASE)
    big = sum(kb for name, (kb, _, _) in t.steps.items()
              if "truncation" in name or name in ("softmax nExp", "GELU", "softmax max"))
    assert big / t.key_bits > 0.85


def test_stored_as_sigma_stores_shares():
    """With shares in SIGMA's 64-bit words (u8/u16 where its templates use them), the totals land
    inside SIGMA's measured key sizes: BERT-base 16.8-18.1 GB, GPT-2 14.3-15.3 GB."""
    bert = sigma_transformer(**BERT_BASE, storage="words")
    gpt2 = sigma_transformer(**GPT2, storage="words")
    assert 16.8e9 <= bert.key_bytes <= 18.1e9
    assert 14.3e9 <= gpt2.key_bytes <= 15.3e9
    assert bert.key_bytes > sigma_transformer(**BERT_BASE).key_bytes
