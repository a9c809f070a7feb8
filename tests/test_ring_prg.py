"""Ring helpers, bit packing, the fixed-key AES-MMO PRG and the dealer CSPRNG.

Every expected value here comes from an independent oracle written with Python integers
(or ``cryptography`` directly for AES), never from values printed by the code under test.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.prg import FIXED_KEYS, AesMmo, CpuPrg, blocks_needed, words_to_fields
from fusec.runtime.rng import DealerRng

M64 = (1 << 64) - 1


# ------------------------------------------------------------------ oracles
def oracle_pack(values: list[int], w: int) -> bytes:
    """Value i at bit offset i*w of one big little-endian integer."""
    acc = 0
    for i, v in enumerate(values):
        acc |= (v & ((1 << w) - 1)) << (i * w)
    nbytes = (len(values) * w + 7) // 8
    return acc.to_bytes(nbytes, "little")


def oracle_unpack(buf: bytes, w: int, count: int) -> list[int]:
    acc = int.from_bytes(buf, "little")
    return [(acc >> (i * w)) & ((1 << w) - 1) for i in range(count)]


def oracle_mmo(key: bytes, block16: bytes) -> bytes:
    """H_k(s) = AES_k(sigma(s)) XOR sigma(s), sigma(hi, lo) = (hi ^ lo, hi).

    lo = bytes 0-7 little endian, hi = bytes 8-15 little endian.
    """
    lo = int.from_bytes(block16[:8], "little")
    hi = int.from_bytes(block16[8:], "little")
    s_hi, s_lo = hi ^ lo, hi
    sig = s_lo.to_bytes(8, "little") + s_hi.to_bytes(8, "little")
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    c = enc.update(sig) + enc.finalize()
    return bytes(a ^ b for a, b in zip(c, sig))


# ------------------------------------------------------------------ ring
def test_check_bits_bounds():
    for w in (1, 2, 50, 64):
        assert ring.check_bits(w) == w
    for bad in (0, 65, -1, 128):
        with pytest.raises(ParameterError):
            ring.check_bits(bad)
    with pytest.raises(ParameterError):
        ring.check_bits(3.0)
    # ParameterError is a ValueError too (callers may catch either)
    with pytest.raises(ValueError):
        ring.check_bits(0)


@pytest.mark.parametrize("fn", [
    lambda w: ring.mask(w),
    lambda w: ring.reduce(np.zeros(3, np.uint64), w),
    lambda w: ring.to_signed(np.zeros(3, np.uint64), w),
    lambda w: ring.pack_bits(np.zeros(3, np.uint64), w),
    lambda w: ring.unpack_bits(b"\0" * 64, w, 3),
])
@pytest.mark.parametrize("w", [0, 65])
def test_bad_width_everywhere(fn, w):
    with pytest.raises(ParameterError):
        fn(w)


def test_mask_reduce_lo_hi_msb():
    rnd = random.Random(1)
    for w in range(1, 65):
        assert int(ring.mask(w)) == (1 << w) - 1
        xs = [rnd.getrandbits(64) for _ in range(50)] + [0, M64, 1 << 63]
        a = np.array(xs, np.uint64)
        assert [int(v) for v in ring.reduce(a, w)] == [x % (1 << w) for x in xs]
        red = [x % (1 << w) for x in xs]
        r = np.array(red, np.uint64)
        assert [int(v) for v in ring.msb(r, w)] == [(x >> (w - 1)) & 1 for x in red]
        for k in (0, 1, w // 2, w):
            assert [int(v) for v in ring.lo(r, k)] == [x % (1 << k) for x in red]
            assert [int(v) for v in ring.hi(r, k)] == [x >> k for x in red]


def test_to_signed_from_signed_all_widths():
    rnd = random.Random(2)
    for w in range(1, 65):
        xs = [rnd.getrandbits(w) for _ in range(200)] + [0, 1, (1 << w) - 1, 1 << (w - 1), (1 << (w - 1)) - 1]
        expect = [x - (1 << w) if x >= (1 << (w - 1)) else x for x in xs]
        got = ring.to_signed(np.array(xs, np.uint64), w)
        assert got.dtype == np.int64
        assert [int(v) for v in got] == expect
        back = ring.from_signed(np.array(expect, np.int64), w)
        assert back.dtype == np.uint64
        assert [int(v) for v in back] == xs
        # from_signed of already-unsigned input just reduces
        big = np.array([x | (rnd.getrandbits(64) << w & M64) for x in xs], np.uint64)
        assert [int(v) for v in ring.from_signed(big, w)] == xs
    # python ints / lists accepted
    assert [int(v) for v in ring.from_signed([-1, 0, 3], 8)] == [255, 0, 3]


@pytest.mark.parametrize("bits,frac", [(50, 12), (37, 12), (64, 16), (16, 4), (8, 0)])
def test_encode_decode_fixed(bits, frac):
    rnd = random.Random(bits * 100 + frac)
    lim = 2 ** (bits - 1 - frac)
    vals = [rnd.uniform(-lim, lim) * 0.999 for _ in range(300)] + [0.0, 0.5 / 2 ** frac * 0.99, -1.0 / 2 ** frac]
    if bits == 64:  # keep within float64 exactness
        vals = [v / 2 ** 12 for v in vals]
    enc = ring.encode_fixed(vals, frac, bits)
    ints = [round(v * 2 ** frac) for v in vals]  # Python round == rint (half to even)
    assert [int(e) for e in enc] == [i % (1 << bits) for i in ints]
    dec = ring.decode_fixed(enc, frac, bits)
    assert np.array_equal(dec, np.array([i / 2 ** frac for i in ints]))
    assert np.all(np.abs(dec - np.array(vals)) <= 0.5 / 2 ** frac)


def test_encode_fixed_rejects_nan():
    with pytest.raises(ParameterError):
        ring.encode_fixed([float("nan"), 1.0], 12, 50)


def test_encode_fixed_out_of_range():
    with pytest.raises(ParameterError):
        ring.encode_fixed([128.0], 0, 8)
    with pytest.raises(ParameterError):
        ring.encode_fixed([-129.0], 0, 8)
    assert [int(v) for v in ring.encode_fixed([127.0, -128.0], 0, 8)] == [127, 128]
    with pytest.raises(ParameterError):
        ring.encode_fixed([2.0 ** 37], 12, 50)


@pytest.mark.parametrize("w", range(1, 65))
def test_pack_unpack_round_trip_oracle(w):
    rnd = random.Random(w)
    for count in (0, 1, 7, 1001):
        vals = [rnd.getrandbits(w) for _ in range(count)]
        if count:
            vals[0] = (1 << w) - 1  # all ones
        expect = oracle_pack(vals, w)
        packed = ring.pack_bits(np.array(vals, np.uint64), w)
        assert packed.dtype == np.uint8
        assert packed.size == ring.packed_size(count, w) == len(expect)
        assert packed.tobytes() == expect, (w, count)
        # unpack from bytes and from an ndarray; from the oracle's bytes
        for buf in (expect, np.frombuffer(expect, np.uint8)):
            got = ring.unpack_bits(buf, w, count)
            assert got.dtype == np.uint64
            assert [int(v) for v in got] == vals
        assert oracle_unpack(packed.tobytes(), w, count) == vals


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("w", [3, 13, 37, 50, 63])
def test_pack_unpack_across_passes_of_blocks(w, blocks, monkeypatch):
    """Odd widths are packed and unpacked ``BLOCKS_PER_PASS`` blocks at a time: counts that end
    inside, at and past a pass's last block, over several passes, against the bit-string oracle."""
    monkeypatch.setattr(ring, "BLOCKS_PER_PASS", blocks)
    per = 64 // math.gcd(w, 64)
    rnd = random.Random(7 * w + blocks)
    for count in (1, per * blocks - 1, per * blocks, per * blocks + 1, 5 * per * blocks + 7):
        vals = [rnd.getrandbits(w) for _ in range(count)]
        packed = ring.pack_bits(np.array(vals, np.uint64), w)
        assert packed.tobytes() == oracle_pack(vals, w), (w, blocks, count)
        assert [int(v) for v in ring.unpack_bits(oracle_pack(vals, w), w, count)] == vals, (w, blocks, count)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.bool_, np.int64])
@pytest.mark.parametrize("w", [1, 2, 5, 8, 13, 16, 37, 64])
def test_pack_reads_every_integer_dtype_as_its_values(w, dtype):
    """The dealer's split leaves share fields in their narrowest unsigned type; packing reads
    any unsigned width without widening it first (and bools, signed integers as uint64)."""
    rnd = random.Random(31 * w)
    top = 2 if dtype is np.bool_ else (1 << min(w, 8 * np.dtype(dtype).itemsize - (dtype is np.int64)))
    vals = [rnd.randrange(top) for _ in range(300)]
    packed = ring.pack_bits(np.array(vals, dtype), w)
    assert packed.tobytes() == oracle_pack([v % (1 << w) for v in vals], w), (w, dtype)


def test_a_value_too_wide_for_its_field_is_refused_in_any_unsigned_dtype():
    from fusec.errors import KeyFileError
    from fusec.runtime.layout import KeyField, KeyLayout, pack_gate_array

    slot = KeyLayout([("g", "k", 1, (KeyField("a", (4,), 2),))]).slots[0]
    for dtype in (np.uint8, np.uint16, np.uint64):
        with pytest.raises(KeyFileError, match=r"value 4 at index \(3,\) does not fit in 2 bits"):
            pack_gate_array(slot, {"a": np.array([0, 1, 3, 4], dtype)})
        assert pack_gate_array(slot, {"a": np.array([0, 1, 2, 3], dtype)}).tobytes()[:1] == bytes([0b11100100])


@pytest.mark.parametrize("w", [1, 3, 8, 13, 32, 50, 64])
def test_pack_ignores_high_bits_and_shapes(w):
    rnd = random.Random(100 + w)
    vals = [rnd.getrandbits(64) for _ in range(33)]
    packed = ring.pack_bits(np.array(vals, np.uint64).reshape(3, 11), w)
    assert packed.tobytes() == oracle_pack([v % (1 << w) for v in vals], w)


def test_unpack_short_buffer():
    with pytest.raises(ParameterError):
        ring.unpack_bits(b"\0" * 6, 50, 1)
    with pytest.raises(ParameterError):
        ring.unpack_bits(b"", 1, 1)


# ------------------------------------------------------------------ PRG
def test_fixed_keys_distinct():
    assert set(FIXED_KEYS) == {"L", "R", "V"}
    ks = list(FIXED_KEYS.values())
    assert all(len(k) == 16 for k in ks)
    assert len(set(ks)) == 3
    prg = CpuPrg()
    blk = DealerRng(b"k" * 16).blocks(4)
    outs = [prg.h[k](blk) for k in ("L", "R", "V")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.array_equal(outs[i], outs[j])


@pytest.mark.parametrize("name", ["L", "R", "V"])
def test_aes_mmo_against_cryptography_oracle(name):
    key = FIXED_KEYS[name]
    h = AesMmo(key)
    rnd = random.Random(7)
    raw = [rnd.getrandbits(128) for _ in range(37)] + [0, (1 << 128) - 1, 1, 1 << 64]
    arr = np.array([[x & M64, x >> 64] for x in raw], np.uint64)
    out = h(arr)
    assert out.shape == arr.shape and out.dtype == np.uint64
    assert h.calls == len(raw)
    for x, o in zip(raw, out):
        exp = oracle_mmo(key, x.to_bytes(16, "little"))
        assert int(o[0]).to_bytes(8, "little") + int(o[1]).to_bytes(8, "little") == exp
    # arbitrary leading shape; a second call reuses the encryptor (no state leaks between calls)
    out2 = h(arr[:40].reshape(4, 10, 2))
    assert np.array_equal(out2.reshape(40, 2), out[:40])
    assert h.calls == len(raw) + 40


def test_aes_mmo_not_plain_aes_and_sigma():
    # the oracle itself: sigma is applied (H(0) = AES(0) since sigma(0)=0, but H(lo=1) != AES(1)^1)
    key = FIXED_KEYS["L"]
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blk = (1).to_bytes(16, "little")
    plain = bytes(a ^ b for a, b in zip(enc.update(blk), blk))
    h = AesMmo(key)(np.array([[1, 0]], np.uint64))
    got = int(h[0, 0]).to_bytes(8, "little") + int(h[0, 1]).to_bytes(8, "little")
    assert got == oracle_mmo(key, blk) != plain


def test_cpu_prg_children_child_value_blocks():
    prg = CpuPrg()
    rng = DealerRng(b"c" * 16)
    s = rng.blocks(64)
    L, R = prg.children(s)
    assert np.array_equal(L, AesMmo(FIXED_KEYS["L"])(s))
    assert np.array_equal(R, AesMmo(FIXED_KEYS["R"])(s))
    right = rng.bits(64)
    c = prg.child(s, right)
    assert np.array_equal(c, np.where(right.astype(bool)[:, None], R, L))
    before = prg.aes_calls
    prg.child(s, right)
    assert prg.aes_calls - before == 64  # one AES per element
    # value blocks: H_V(b ^ (i, tweak))
    tweak = np.uint64(1 << 62)
    vb = prg.value_blocks(s[:5], 3, tweak)
    assert vb.shape == (5, 3, 2)
    for e in range(5):
        for i in range(3):
            lo = int(s[e, 0]) ^ i
            hi = int(s[e, 1]) ^ (1 << 62)
            exp = oracle_mmo(FIXED_KEYS["V"], lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))
            assert int(vb[e, i, 0]).to_bytes(8, "little") + int(vb[e, i, 1]).to_bytes(8, "little") == exp


@pytest.mark.parametrize("w", [1, 3, 50, 64])
@pytest.mark.parametrize("count", [1, 2, 5, 43])
def test_words_to_fields_big_int_oracle(w, count):
    rnd = random.Random(w * 1000 + count)
    nb = blocks_needed(count, w)
    assert nb * 128 >= count * w and (nb - 1) * 128 < max(count * w, 1)
    lead = (3, 2)
    streams = [[rnd.getrandbits(128) for _ in range(nb)] for _ in range(6)]
    arr = np.array([[[b & M64, b >> 64] for b in st] for st in streams], np.uint64).reshape(lead + (nb, 2))
    got = words_to_fields(arr, count, w)
    assert got.shape == lead + (count,)
    got = got.reshape(6, count)
    for si, st in enumerate(streams):
        big = 0
        for j, b in enumerate(st):
            big |= b << (128 * j)
        exp = [(big >> (k * w)) & ((1 << w) - 1) for k in range(count)]
        assert [int(v) for v in got[si]] == exp


# ------------------------------------------------------------------ dealer RNG
def test_dealer_rng_determinism():
    a, b = DealerRng(b"s" * 32), DealerRng(b"s" * 32)
    assert np.array_equal(a.words(1000), b.words(1000))
    # the stream continues (no repetition of the first chunk)
    x, y = a.words(100), b.words(100)
    assert np.array_equal(x, y)
    assert not np.array_equal(x, DealerRng(b"s" * 32).words(100))
    # chunking does not change the stream
    c = DealerRng(b"q" * 32)
    d = DealerRng(b"q" * 32)
    assert np.array_equal(np.concatenate([c.words(3), c.words(997)]), d.words(1000))


def test_dealer_rng_different_seeds():
    base = DealerRng(b"s" * 32).words(64)
    assert not np.array_equal(base, DealerRng(b"t" + b"s" * 31).words(64))
    assert not np.array_equal(base, DealerRng(b"s" * 16 + b"n" * 16).words(64))  # nonce half matters
    assert not np.array_equal(DealerRng().words(64), DealerRng().words(64))
    assert not np.array_equal(DealerRng(None).words(64), base)


def test_dealer_rng_seed_17_to_31_bytes_all_used():
    assert not np.array_equal(DealerRng(b"x" * 16 + b"aaaa").words(8), DealerRng(b"x" * 16 + b"bbbb").words(8))


def test_dealer_rng_long_seed_all_used():
    assert not np.array_equal(DealerRng(b"x" * 32 + b"a").words(8), DealerRng(b"x" * 32 + b"b").words(8))


def test_dealer_rng_ranges_and_share():
    rng = DealerRng(b"r" * 32)
    for w in (1, 2, 7, 37, 50, 63, 64):
        v = rng.ring((10, 100), w)
        assert v.shape == (10, 100) and v.dtype == np.uint64
        if w < 64:
            assert int(v.max()) < (1 << w)
        # top bit gets used (not all values tiny)
        assert int(v.max()) >= (1 << (w - 1))
        val = rng.ring(500, w)
        s0, s1 = rng.share(val, w)
        assert s0.shape == s1.shape == val.shape
        assert [((int(a) + int(b)) % (1 << w)) for a, b in zip(s0, s1)] == [int(x) for x in val]
        if w < 64:
            assert int(s0.max()) < (1 << w) and int(s1.max()) < (1 << w)
    bits = rng.bits(1000)
    assert set(np.unique(bits).tolist()) <= {0, 1}
    blk = rng.blocks((3, 4))
    assert blk.shape == (3, 4, 2)
    assert rng.words(0).shape == (0,)


def test_dealer_rng_bit_uniformity():
    rng = DealerRng(b"u" * 32)
    # 1M bits: overall frequency of ones within 1%
    w = rng.words(1_000_000 // 64)
    ones = int(np.bitwise_count(w).sum())
    assert abs(ones / 1_000_000 - 0.5) < 0.01
    # per bit position over 1M words: each of the 64 positions within 1% (sigma = 0.05%)
    w = rng.words(1_000_000)
    pos = ((w[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
    assert np.all(np.abs(pos - 0.5) < 0.01), pos
    # ring elements of a narrow width: each of the 8 values has frequency 1/8 +- 0.002 (~5 sigma)
    r = rng.ring(800_000, 3)
    freq = np.bincount(r.astype(np.int64), minlength=8) / r.size
    assert np.all(np.abs(freq - 1 / 8) < 0.002), freq


def test_value_stream_of_one_seed_against_the_mmo_oracle():
    """CpuPrg.value_stream (sigma written straight for one seed) == H_V(seed ^ (i, tweak)) by
    the byte-level oracle, and == value_blocks of that seed, block for block."""
    prg = CpuPrg()
    rnd = random.Random(11)
    for nblocks in (1, 3, 64):
        seed = np.array([rnd.getrandbits(64), rnd.getrandbits(64)], np.uint64)
        tweak = np.uint64((1 << 61) | rnd.getrandbits(8))
        got = prg.value_stream(seed, nblocks, tweak)
        assert got.shape == (nblocks, 2)
        assert np.array_equal(got, prg.value_blocks(seed.reshape(1, 2), nblocks, tweak)[0])
        for i in range(nblocks):
            lo, hi = int(seed[0]) ^ i, int(seed[1]) ^ int(tweak)
            want = oracle_mmo(FIXED_KEYS["V"], lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))
            assert int(got[i, 0]).to_bytes(8, "little") + int(got[i, 1]).to_bytes(8, "little") == want, i
        for start in {s for s in (1, nblocks // 2, nblocks - 1) if 0 < s < nblocks}:     # a piece of the stream: its blocks, not the first ones
            piece = prg.value_stream(seed, nblocks - start, tweak, start=start)
            assert np.array_equal(piece, got[start:]), (nblocks, start)


@pytest.mark.parametrize("k, wbits", [(1, 1), (3, 20), (768, 16), (3072, 15), (5000, 30), (64, 38), (64, 39),
                                      (16, 63), (300, 64)])
def test_matmul_of_small_weights_against_numpys_integer_product(k, wbits):
    """ring.matmul_small (float64 BLAS over limbs) == numpy's uint64 matmul mod 2^64, with the
    inputs at their extremes: every uint64 of ``a`` up to all ones, weights of magnitude up to
    2^wbits - 1 of both signs (and int64's minimum), batch dimensions; from 38-bit weights at k =
    64 a limb would be under 8 bits and the integer product runs instead."""
    from fusec.runtime.ring import matmul_small
    gen = np.random.default_rng(k * 131 + wbits)
    a = gen.integers(0, 2**64 - 1, (2, 5, k), dtype=np.uint64, endpoint=True)
    a[0, 0, :] = np.uint64(2**64 - 1)
    a[1, 0, :] = 0
    a[1, 1, :] = np.uint64(2**63)       # each limb's top bit alone, then the sign bit of the whole
    top = (1 << wbits) - 1 if wbits < 64 else 2**63 - 1
    w = gen.integers(-top, top, (k, 7), dtype=np.int64, endpoint=True)
    w[0, 0], w[-1, -1] = top, -top
    if wbits == 64:
        w[0, 1] = np.iinfo(np.int64).min
    want = np.matmul(a, w.view(np.uint64))
    assert np.array_equal(matmul_small(a, w), want)
    assert matmul_small(a[:, :0, :], w).shape == (2, 0, 7)


def test_dealer_words_are_the_ctr_keystream_across_draws():
    """DealerRng.words encrypts into its array (update_into): draws of any size, zero
    included, concatenate to AES-CTR's keystream under the seed's key and nonce."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from fusec.runtime.rng import DealerRng
    rng = DealerRng(b"words")
    m = hashlib.sha256(b"fusec/dealer-seed/v1" + b"words").digest()
    enc = Cipher(algorithms.AES(m[:16]), modes.CTR(m[16:32])).encryptor()
    sizes = (1, 0, 7, 1000, 3, 1 << 16)
    got = np.concatenate([rng.words(n) for n in sizes])
    assert np.array_equal(got, np.frombuffer(enc.update(bytes(8 * sum(sizes))), np.uint64))
