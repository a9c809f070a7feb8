"""The generated CUDA kernels, checked without a GPU.

* The rendered ``kernels.cu`` is a deterministic function of the kernel config.
* It compiles for the device (``nvcc -arch=sm_90 -cubin``).
* Its per-element logic is bit-exact with the numpy reference: the same source compiled
  with ``-DFUSEC_HOST_TEST`` turns every kernel into an ``extern "C"`` host loop over the
  same ``__host__ __device__`` code, and :class:`GpuKernels` drives it through
  :class:`HostLauncher` on numpy arrays. So these tests also cover the Python wrapper's
  shape handling and kernel selection, for the specialized kernels and the generic ones.

Expected values come from the CPU reference (runtime/prg.py, dcf.py, dpf.py, ring.py,
rng.py) or from ``cryptography`` directly, never from the code under test. The nvcc tests
skip where the CUDA toolkit is absent.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fusec.codegen import cuda
from fusec.errors import ParameterError
from fusec.runtime import dcf, dpf, prg, ring
from fusec.runtime.dpf_arc import DpfArc
from tests.test_dpf_trie import TRIES
from fusec.runtime.gpu_kernels import GpuKernels, HostLauncher, kernel_names, limb_plan
from fusec.runtime.rng import DealerRng

needs_nvcc = pytest.mark.skipif(cuda.nvcc_path() is None,
                                reason="nvcc (CUDA toolkit) not found: the generated kernels cannot be compiled here")

#: The default shapes plus odd ones, so the specialized kernels cover every edge of the
#: field extraction (w = 1, 64; m up to 17; payloads spanning several value blocks).
#: Arc walks (runtime/dpf_arc.py) of every shape: wrapping, shallow trees, full top levels,
#: range mode down to the leaves, a repeated offset, one point.
ARCS = [DpfArc(14, (0, 4591, -4096, -3000, -1000, 0x10, 500, 1200, 2200, 3333, 4000, 4591 + 1)),
        DpfArc(17, (0, 5, 9, 65542, 131032, 1 << 16)), DpfArc(6, (0, 7, 63, 31)), DpfArc(9, (0, 1, 2, 3)),
        DpfArc(20, (0, 1 << 19, (1 << 20) - 1, 12345)), DpfArc(12, (0, 100, 100, 4000)), DpfArc(16, (0,)),
        DpfArc(30, tuple(range(0, 16000, 1000))), DpfArc(10, tuple(range(1000, 1016))), DpfArc(62, (0, 3, -3)),
        DpfArc(14, (0, 76, 136, 206, 336, 495, 3175, 15889, 16047, 16177, 16247, 16307)),     # two runs
        DpfArc(20, (0, 5, 1 << 18, (1 << 18) + 3, 700000, 700001, 700002, 1 << 19))]

TEST_CONFIG = cuda.default_config().merged(cuda.KernelConfig(
    dcf_shapes=((37, 17, 37), (64, 3, 50), (50, 17, 1), (64, 17, 64), (5, 2, 63)),
    dpf_widths=(1, 5, 7, 8), ring_widths=(3, 7, 8, 63), dpf_arcs=tuple(ARCS)))

DCF_SHAPES = [(50, 1, 50), (37, 3, 37), (64, 17, 64), (37, 17, 37), (64, 3, 50), (50, 17, 1), (64, 1, 1),
              (12, 1, 37), (5, 2, 63), (20, 5, 33), (1, 1, 64)]
DPF_WIDTHS = [1, 5, 7, 8, 12, 36, 37, 49, 50, 63, 64, 9]


# ------------------------------------------------------------------------------ no compiler needed
def test_render_is_deterministic_and_normalized():
    a = cuda.render(TEST_CONFIG)
    assert a == cuda.render(TEST_CONFIG)
    shuffled = cuda.KernelConfig(tuple(reversed(TEST_CONFIG.dcf_shapes)) + TEST_CONFIG.dcf_shapes[:3],
                                 TEST_CONFIG.dpf_widths[::-1], TEST_CONFIG.ring_widths * 2,
                                 dpf_arcs=TEST_CONFIG.dpf_arcs[::-1] + TEST_CONFIG.dpf_arcs[:2])
    assert shuffled == TEST_CONFIG
    assert cuda.render(shuffled) == a
    assert cuda.render() == cuda.render(cuda.default_config())


def test_every_specialization_is_stamped():
    names = kernel_names(cuda.render(TEST_CONFIG))
    for n, m, w in TEST_CONFIG.dcf_shapes:
        assert cuda.dcf_kernel_name(n, m, w) in names
    for mode in cuda.DPF_MODES:
        assert cuda.dpf_kernel_name(mode, None) in names
        assert all(cuda.dpf_kernel_name(mode, n) in names for n in TEST_CONFIG.dpf_widths)
    assert all(k in names for b in TEST_CONFIG.ring_widths for k in cuda.pack_kernel_names(b))
    assert {cuda.dpf_arc_kernel_name(a) for a in ARCS} <= names and len({cuda.dpf_arc_kernel_name(a) for a in ARCS}) == len(ARCS)
    assert {cuda.DCF_GENERIC, *cuda.PACK_GENERIC, "fusec_aes_mmo", "fusec_ctr_keystream",
            "fusec_matmul_mod_tiled", "fusec_split_limbs", "fusec_combine_limbs"} <= names


@pytest.mark.parametrize("bad", [
    {"dcf_shapes": ((0, 1, 50),)}, {"dcf_shapes": ((50, 0, 50),)}, {"dcf_shapes": ((50, 1, 65),)},
    {"dcf_shapes": ((50, cuda.MAX_SPECIALIZED_M + 1, 50),)}, {"dpf_widths": (65,)}, {"ring_widths": (0,)},
    {"block_size": 100},
])
def test_config_rejects_bad_shapes(bad):
    with pytest.raises(ParameterError):
        cuda.KernelConfig(**bad)


def test_aes_tables_and_fips197_key_schedule():
    sbox = cuda.aes_sbox()
    assert (sbox[0x00], sbox[0x01], sbox[0x53], sbox[0xFF]) == (0x63, 0x7C, 0xED, 0x16)
    assert sorted(sbox) == list(range(256))
    assert cuda.aes_t0()[0] == 0xA56363C6  # (2S, S, S, 3S) of S = 0x63, little endian
    rk = cuda.expand_key(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))  # FIPS-197 A.1
    assert [x.to_bytes(4, "little").hex() for x in (rk[4], rk[43])] == ["a0fafe17", "b6630ca6"]


def _py_aes_encrypt(rk: tuple[int, ...], block: bytes) -> bytes:
    """Textbook AES-128 on bytes (FIPS-197 §5.1), only to test the key schedule without nvcc."""
    sbox = cuda.aes_sbox()
    keys = b"".join(w.to_bytes(4, "little") for w in rk)
    xt = lambda b: ((b << 1) ^ 0x11B) if b & 0x80 else b << 1  # noqa: E731
    s = bytearray(a ^ k for a, k in zip(block, keys[:16]))
    for r in range(1, 11):
        s = bytearray(sbox[b] for b in s)
        s = bytearray(s[(i + 4 * (i % 4)) % 16] for i in range(16))  # ShiftRows (column-major)
        if r < 10:
            out = bytearray()
            for c in range(4):
                a = s[4 * c: 4 * c + 4]
                out += bytes(xt(a[i]) ^ xt(a[(i + 1) % 4]) ^ a[(i + 1) % 4] ^ a[(i + 2) % 4] ^ a[(i + 3) % 4]
                             for i in range(4))
            s = out
        s = bytearray(a ^ k for a, k in zip(s, keys[16 * r: 16 * r + 16]))
    return bytes(s)


def test_key_schedule_matches_cryptography():
    rnd = np.random.default_rng(7)
    for key in [*prg.FIXED_KEYS.values(), *(rnd.bytes(16) for _ in range(3))]:
        block = rnd.bytes(16)
        ref = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)
        assert _py_aes_encrypt(cuda.expand_key(key), block) == ref


@pytest.mark.parametrize("K", [1, 768, 3072, 1 << 20])
@pytest.mark.parametrize("bits", [1, 37, 50, 64])
def test_limb_plan_is_exact_and_covers_the_ring(K, bits):
    L, count = limb_plan(K, bits)
    assert K * ((1 << L) - 1) ** 2 <= 1 << 53  # every fp64 limb GEMM output is an exact integer
    assert L * count >= bits and L * (count - 1) < bits
    assert limb_plan(1 << 54, 50) is None


# ------------------------------------------------------------------------------ nvcc
@needs_nvcc
@pytest.mark.parametrize("config", [TEST_CONFIG, cuda.KernelConfig(((50, 1, 50),), (50,), (50,), inline_aes=True)],
                         ids=["out-of-line-aes", "inlined-aes"])
def test_compiles_for_sm90(config):
    cuda.compile_check(cuda.render(config), arch="sm_90")


@needs_nvcc
def test_compile_errors_carry_nvcc_output():
    with pytest.raises(cuda.CudaCompileError, match="error"):
        cuda.compile_check(cuda.render(cuda.KernelConfig()) + "\nthis is not C++;\n")


@pytest.fixture(scope="session")
def host_launcher(tmp_path_factory) -> HostLauncher:
    """The host build of TEST_CONFIG's kernels, compiled once per test session."""
    if cuda.nvcc_path() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot build the host test harness")
    lib = cuda.compile_host_library(cuda.render(TEST_CONFIG), tmp_path_factory.mktemp("fusec-host-kernels"))
    return HostLauncher(lib)


@pytest.fixture(params=["specialized", "generic"])
def kernels(request, host_launcher) -> GpuKernels:
    """The wrapper over the host build; 'generic' hides the specializations from it."""
    config = TEST_CONFIG if request.param == "specialized" else cuda.KernelConfig()
    return GpuKernels(cuda.render(config), launcher=host_launcher, poison=True)


@pytest.fixture
def rnd() -> np.random.Generator:
    return np.random.default_rng(2024)


def _blocks(rnd, shape) -> np.ndarray:
    return rnd.integers(0, 2**64, size=tuple(shape) + (2,), dtype=np.uint64)


@pytest.mark.parametrize("shape", [(1,), (257,), (3, 5)])
def test_prg_matches_cpu(host_launcher, rnd, shape):
    k = GpuKernels(cuda.render(TEST_CONFIG), launcher=host_launcher, poison=True)
    cpu = prg.CpuPrg()
    b = _blocks(rnd, shape)
    for which in "LRV":
        np.testing.assert_array_equal(k.aes_mmo(which, b), prg.AesMmo(prg.FIXED_KEYS[which])(b))
    right = rnd.integers(0, 3, size=shape)  # any nonzero value means right, as astype(bool)
    np.testing.assert_array_equal(k.child(b, right), cpu.child(b, right))
    for got, ref in zip(k.children(b), cpu.children(b)):
        np.testing.assert_array_equal(got, ref)
    for nblocks, tweak in [(1, prg.TWEAK_LEAF_VALUE), (3, prg.TWEAK_LEVEL_VALUE), (9, np.uint64(5))]:
        np.testing.assert_array_equal(k.value_blocks(b, nblocks, tweak), cpu.value_blocks(b, nblocks, tweak))
    assert k.aes_blocks == b.size // 2 * (3 + 1 + 2 + 13)


@pytest.mark.parametrize("n,m,w", DCF_SHAPES)
@pytest.mark.parametrize("points", [None, 3])
def test_dcf_eval_matches_cpu(kernels, n, m, w, points):
    rng = DealerRng(b"dcf-%d-%d-%d" % (n, m, w))
    N = 67
    alpha, beta = rng.ring(N, n), rng.ring((N, m), w)
    keys = dcf.keygen(rng, alpha, beta, n, w)
    x = rng.ring(N if points is None else (N, points), n)
    x[:4] = (alpha[:4] if points is None else alpha[:4, None])  # the boundary itself
    x[4:8] = (x[4:8] | ~ring.mask(n)) if n < 64 else x[4:8]     # high bits the eval must drop
    shares = []
    for party, key in enumerate(keys):
        got = kernels.dcf_eval(party, key.root, key.cw_seed, key.cw_tr, key.cw_v, key.cw_final, x, n, m, w)
        ref = dcf.eval(party, key, x)
        assert got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        shares.append(got)
    lt = (x & ring.mask(n)) < (alpha if points is None else alpha[:, None])
    expect = np.where(lt[..., None], beta if points is None else beta[:, None, :], 0)
    np.testing.assert_array_equal((shares[0] + shares[1]) & ring.mask(w), expect)


@pytest.mark.parametrize("n", DPF_WIDTHS)
@pytest.mark.parametrize("points", [None, 4])
def test_dpf_evals_match_cpu(kernels, n, points):
    rng = DealerRng(b"dpf-%d" % n)
    N = 97
    alpha = rng.ring(N, n)
    x = rng.ring(N if points is None else (N, points), n)
    x[:5] = alpha[:5] if points is None else alpha[:5, None]
    for keygen, pairs in [(dpf.keygen, [(dpf.eval, kernels.dpf_eval), (dpf.prefix_parity, kernels.dpf_prefix_parity)]),
                          (dpf.lt_keygen, [(dpf.lt_eval, kernels.dpf_lt_eval)])]:
        keys = keygen(rng, alpha, n)
        for ref_fn, gpu_fn in pairs:
            for party, key in enumerate(keys):
                got = gpu_fn(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, x, n)
                np.testing.assert_array_equal(got, ref_fn(party, key, x))


@pytest.mark.parametrize("plan", ARCS + TRIES, ids=lambda a: f"{type(a).__name__}-n{a.n}-M{a.points}")
def test_dpf_walks_at_many_points_match_the_plain_walks(kernels, plan):
    """The generated arc walk (the generic config walks every point from the root instead) and
    the trie kernel (a block per element, level by level) == dpf.lt_eval at every point u - a_j,
    and count the plan's AES."""
    n, N = plan.n, 301
    rng = DealerRng(b"walk-%d-%d" % (n, plan.points))
    alpha, u = rng.ring(N, n), rng.ring(N, n)
    a = np.asarray(plan.offsets, np.uint64)
    u[:40] = (alpha[:40] + a[np.arange(40) % len(a)] + np.uint64(1)) & ring.mask(n)   # a point at alpha
    u[40:80] = (alpha[40:80] + a[np.arange(40) % len(a)]) & ring.mask(n)              # ... and one past it
    u[80:84] = [0, ring.mask(n), 1, ring.mask(n) - np.uint64(1)]
    pts = (u[:, None] - a[None, :]) & ring.mask(n)
    arc = isinstance(plan, DpfArc)
    walk = kernels.dpf_lt_arc if arc else kernels.dpf_lt_trie
    for party, key in enumerate(dpf.lt_keygen(rng, alpha, n)):
        before = kernels.aes_blocks
        got = walk(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, u, plan)
        np.testing.assert_array_equal(got, dpf.lt_eval(party, key, pts))
        if not arc or kernels.has(cuda.dpf_arc_kernel_name(plan)):
            assert kernels.aes_blocks - before == N * plan.aes_per_eval()


@pytest.mark.parametrize("alpha", [0, (1 << 10) - 1, 1 << 9])
def test_the_trie_kernel_at_every_input_of_ten_bits(kernels, alpha):
    """The host build of the trie kernel at every u of a 10-bit domain, alpha forced to 0,
    2^n - 1 and 2^(n-1): both parties' XOR against Python ints."""
    from fusec.runtime.dpf_trie import DpfTrie

    n = 10
    trie = DpfTrie(n, (0, 1, 2, 5, 64, 65, 127, 128, 129, 300, 301, 511, 512, 513, 700, 701, 900, 1000,
                       1020, 1021, 1022, 1023, 7, 8))
    u = np.arange(1 << n, dtype=np.uint64)
    k0, k1 = dpf.lt_keygen(DealerRng(b"trie-kernel-%d" % alpha), np.full(u.size, alpha, np.uint64), n)
    got = [kernels.dpf_lt_trie(p, k.root, k.cw_seed, k.cw_tr, k.cw_leaf, u, trie) for p, k in ((0, k0), (1, k1))]
    want = [[int((int(x) - a) % (1 << n) < alpha) for a in trie.offsets] for x in u]
    assert (got[0] ^ got[1]).tolist() == want


def test_a_trie_past_the_kernels_points_walks_every_point(kernels):
    """More points than a block takes (MAX_TRIE_POINTS): the wrapper walks every point from the
    root instead of overrunning the kernel's shared memory; the values are the same."""
    from fusec.runtime.dpf_trie import MAX_TRIE_POINTS, DpfTrie

    n, N = 20, 7
    trie = DpfTrie(n, tuple(range(0, 3 * (MAX_TRIE_POINTS + 5), 3)))
    rng = DealerRng(b"trie-wide")
    alpha, u = rng.ring(N, n), rng.ring(N, n)
    pts = (u[:, None] - np.asarray(trie.offsets, np.uint64)[None, :]) & ring.mask(n)
    for party, key in enumerate(dpf.lt_keygen(rng, alpha, n)):
        got = kernels.dpf_lt_trie(party, key.root, key.cw_seed, key.cw_tr, key.cw_leaf, u, trie)
        np.testing.assert_array_equal(got, dpf.lt_eval(party, key, pts))


def test_dcf_rejects_mismatched_keys(kernels):
    rng = DealerRng(b"shapes")
    k0, _ = dcf.keygen(rng, rng.ring(8, 20), rng.ring((8, 2), 20), 20, 20)
    with pytest.raises(ParameterError, match="cw_v"):
        kernels.dcf_eval(0, k0.root, k0.cw_seed, k0.cw_tr, k0.cw_v[:, :, :1], k0.cw_final, rng.ring(8, 20), 20, 2, 20)
    with pytest.raises(ParameterError, match="inputs of shape"):
        kernels.dcf_eval(0, k0.root, k0.cw_seed, k0.cw_tr, k0.cw_v, k0.cw_final, rng.ring(9, 20), 20, 2, 20)


def test_ctr_keystream_is_dealer_rng(host_launcher):
    k = GpuKernels(cuda.render(TEST_CONFIG), launcher=host_launcher, poison=True)
    seed = b"ctr-seed"
    material = hashlib.sha256(b"fusec/dealer-seed/v1" + seed).digest()  # as DealerRng derives it
    key, nonce = material[:16], material[16:]
    rng = DealerRng(seed)
    head = rng.words(1001)
    np.testing.assert_array_equal(k.ctr_keystream(key, nonce, 0, 1001), head)
    tail = rng.words(8)  # continues at word 1001, inside block 500
    np.testing.assert_array_equal(k.ctr_keystream(key, nonce, 500, 9)[1:], tail)
    for nonce in (b"\xff" * 15 + b"\xfe", b"\x00" * 8 + b"\xff" * 7 + b"\xfd"):  # carries across 2^64 and 2^128
        ref = np.frombuffer(Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(bytes(8 * 11)), np.uint64)
        np.testing.assert_array_equal(k.ctr_keystream(key, nonce, 0, 11), ref)
        np.testing.assert_array_equal(k.ctr_keystream(key, nonce, 3, 5), ref[6:11])


@pytest.mark.parametrize("bits", range(1, 65))
def test_pack_unpack_match_ring(kernels, rnd, bits):
    for count in (0, 1, 7, 64, 65, 333):
        v = rnd.integers(0, 2**64, size=count, dtype=np.uint64)
        ref = ring.pack_bits(v, bits)
        got = kernels.pack_bits(v, bits)
        assert got.dtype == np.uint8 and got.tobytes() == ref.tobytes()
        np.testing.assert_array_equal(kernels.unpack_bits(ref, bits, count), ring.unpack_bits(ref, bits, count))
    # a packed message sliced at an odd byte offset (an open inside a batched message)
    v = rnd.integers(0, 2**64, size=50, dtype=np.uint64)
    buf = np.concatenate([np.zeros(3, np.uint8), ring.pack_bits(v, bits), np.full(5, 0xFF, np.uint8)])
    np.testing.assert_array_equal(kernels.unpack_bits(buf[3:], bits, 50), v & ring.mask(bits))


def _packed_oracle(values, bits: int) -> bytes:
    """Values laid end to end in one little-endian integer, bits wide each (Python ints)."""
    acc = 0
    for i, v in enumerate(int(x) % (1 << bits) for x in values):
        acc |= v << (i * bits)
    return acc.to_bytes((len(values) * bits + 7) // 8, "little")


def _random_round(rnd, party: int, n: int = 9):
    """A round of ``n`` opens of mixed widths, sizes and senders (as protocol.drive sees it)."""
    from types import SimpleNamespace

    widths = [1, 2, 7, 8, 13, 37, 50, 63, 64]
    opens = []
    for j in range(n):
        shape = [(0,), (1,), (3, 5), (257,), (2, 3, 11)][j % 5]
        share = _edges(rnd, int(np.prod(shape)), 64, (1 << 64) - 2).reshape(shape) if np.prod(shape) > 4 \
            else rnd.integers(0, 2**64, size=shape, dtype=np.uint64)
        opens.append(SimpleNamespace(share=share, bits=int(rnd.choice(widths)), sender=[None, 0, 1][j % 3]))
    return opens


@pytest.mark.parametrize("party", [0, 1])
def test_round_message_kernels_match_an_oracle(kernels, rnd, party):
    """One kernel packs a round's opens, one rebuilds every value: the bytes of each open
    end to end (a Python-int oracle), and ours + theirs mod 2^bits, for every sender mode."""
    from fusec.runtime.backend import Backend
    from fusec.runtime.round_message import RoundMessage

    for _ in range(4):
        opens = _random_round(rnd, party)
        layout = RoundMessage.of(opens, party)
        shares = [o.share for o in opens]
        expect = b"".join(_packed_oracle(o.share.reshape(-1), o.bits) for o in opens if o.sender in (None, party))
        got = kernels.pack_round(layout, shares)
        assert got.dtype == np.uint8 and got.tobytes() == expect
        assert Backend().pack_round(layout, shares) == expect       # the CPU reference agrees
        peer_vals = [rnd.integers(0, 2**64, size=np.shape(o.share), dtype=np.uint64) for o in opens]
        peer_msg = b"".join(_packed_oracle(v.reshape(-1), o.bits) for v, o in zip(peer_vals, opens)
                            if o.sender in (None, 1 - party))
        assert len(peer_msg) == layout.their_bytes
        values = kernels.unpack_round(layout, shares, peer_msg)
        reference = Backend().unpack_round(layout, shares, peer_msg)
        for o, theirs, v, ref in zip(opens, peer_vals, values, reference):
            m = (1 << o.bits) - 1
            mine = [int(x) for x in o.share.reshape(-1)]
            peer = [int(x) for x in theirs.reshape(-1)]
            want = [(a + b) & m if o.sender is None else (a & m if o.sender == party else b & m)
                    for a, b in zip(mine, peer)]
            assert v.shape == o.share.shape and [int(x) for x in v.reshape(-1)] == want
            np.testing.assert_array_equal(ref, v)


@pytest.mark.parametrize("depth", [0, 1, 7, 38, 64])
def test_dpf_keygen_tree_kernel_is_the_dealers_loop(kernels, rnd, depth):
    """The GPU dealer's GGM trees (one thread per key) == tree.keygen_tree's level loop on
    the CPU for the same roots and paths: corrections, control bits and leaves."""
    from fusec.runtime import tree

    N = 37
    roots = [_blocks(rnd, (N,)) for _ in (0, 1)]
    roots = [tree.with_low_bit(r, np.full(N, b, np.uint64)) for b, r in enumerate(roots)]
    path = _edges(rnd, N, max(depth, 1)) if depth else np.zeros(N, np.uint64)   # 0, all ones, top bit

    class Drawn:                      # replays the two root draws keygen_tree makes
        def __init__(self):
            self.left = [r.copy() for r in roots]

        def blocks(self, n):
            return self.left.pop(0)

    want = tree.keygen_tree(Drawn(), path, depth, prg.CpuPrg())
    got = kernels.dpf_keygen_tree(roots[0], roots[1], path, depth)
    np.testing.assert_array_equal(got[0], want[1])
    np.testing.assert_array_equal(got[1], want[2])
    np.testing.assert_array_equal(got[2], want[3][0])
    np.testing.assert_array_equal(got[3], want[3][1])


@pytest.mark.parametrize("n,m,w", [(1, 1, 1), (12, 1, 12), (37, 5, 37), (50, 3, 50), (64, 2, 64), (20, 17, 33)])
def test_dcf_keygen_kernel_is_the_dealers_loop(kernels, rnd, n, m, w):
    """The GPU dealer's DCF keys (one thread per key) == dcf.keygen's loop on the CPU for the
    same root draws: every correction word, the payload corrections and the final word."""
    N = 29
    draws = [_blocks(rnd, (N,)) for _ in (0, 1)]

    class Drawn:                      # replays the two root draws dcf.keygen makes
        def __init__(self):
            self.left = [d.copy() for d in draws]

        def blocks(self, count):
            return self.left.pop(0)

    class Fused(prg.CpuPrg):          # the CPU PRG, with the kernel for the whole key loop
        def dcf_keygen(self, *args):
            return kernels.dcf_keygen(*args)

    alpha = _edges(rnd, N, n)                                   # 0, all ones, the top bit first
    beta = rnd.integers(0, 2**63, size=(N, m), dtype=np.uint64)
    beta[:3] = [[0] * m, [(1 << w) - 1] * m, [1 << (w - 1)] * m]
    want = dcf.keygen(Drawn(), alpha, beta, n, w, prg.CpuPrg())
    got = dcf.keygen(Drawn(), alpha, beta, n, w, Fused())
    for b in (0, 1):
        for name, a in want[b].arrays().items():
            np.testing.assert_array_equal(got[b].arrays()[name], a, err_msg=name)


@pytest.mark.parametrize("d,P,bits", [(0, 1, 13), (1, 4, 37), (2, 10, 50), (3, 17, 64)])
@pytest.mark.parametrize("party", [0, 1])
def test_packed_lookup_kernel_is_the_gates_numpy_round(kernels, rnd, d, P, bits, party):
    """The packed lookup's local second round in one kernel == scalar.PackedLookup's numpy
    code (E from the opened bits and the correlations, then scalar.combine) on random data."""
    from fusec.runtime.gates import scalar

    N, m = 53, ring.mask(bits)
    mono = [list(rnd.integers(0, 2**63, size=d + 1, dtype=np.uint64)) for _ in range(P + 1)]
    c_hat = rnd.integers(0, 2, size=(N, P), dtype=np.uint64)
    u = _edges(rnd, N, bits)                            # 0, all ones, the top bit first
    rpow = rnd.integers(0, 2**63, size=(N, d), dtype=np.uint64) & m
    rho_a = rnd.integers(0, 2**63, size=(N, P), dtype=np.uint64) & m
    rho_rpow = rnd.integers(0, 2**63, size=(N, P, d), dtype=np.uint64) & m
    r_out = rnd.integers(0, 2**63, size=N, dtype=np.uint64) & m
    rp = np.zeros((N, d + 1), np.uint64)
    rp[:, 0] = party
    rp[:, 1:] = rpow
    corr = np.concatenate([rho_a[:, :, None], rho_rpow], axis=2)
    sign = np.uint64(1) - (c_hat << np.uint64(1))
    E = (c_hat[:, :, None] * rp[:, None, :] + sign[:, :, None] * corr) & m
    want = (scalar.combine(mono, E, rp, scalar._powers(u, d, m), bits) + r_out) & m
    table = scalar._combine_table(tuple(tuple(int(c) for c in p) for p in mono), bits)
    got = kernels.packed_lookup(c_hat, u, rpow, rho_a, rho_rpow, r_out, table, d, bits, party)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("d,P,bits", [(0, 1, 13), (2, 10, 50), (3, 17, 64)])
@pytest.mark.parametrize("party", [0, 1])
def test_spline_lookup_kernel_is_the_gates_numpy_code(kernels, rnd, d, P, bits, party):
    """The shifted lookup's local work after its DCF in one kernel == scalar.SplineLookup's
    numpy code (E from the DCF shares, the predicates [u < a_i] and (-r)^j, then combine)."""
    from fusec.runtime.gates import scalar

    N, m = 61, ring.mask(bits)
    mono = [list(rnd.integers(0, 2**63, size=d + 1, dtype=np.uint64)) for _ in range(P + 1)]
    D = rnd.integers(0, 2**63, size=(N, P + 1, d + 1), dtype=np.uint64) & m
    a = np.sort(rnd.integers(0, 2**63, size=P, dtype=np.uint64) & m)
    u = _edges(rnd, N, bits, int(a[0]), int(a[0]) - 1, int(a[-1]))     # and at / just below breakpoints
    rpow = rnd.integers(0, 2**63, size=(N, d), dtype=np.uint64) & m
    r_out = rnd.integers(0, 2**63, size=N, dtype=np.uint64) & m
    rp = np.concatenate([np.full((N, 1), party, np.uint64), rpow], axis=1)
    below = (u[:, None] < a[None, :]).astype(np.uint64)
    E = (D[:, 1:, :] - D[:, :1, :] + below[:, :, None] * rp[:, None, :]) & m
    want = (scalar.combine(mono, E, rp, scalar._powers(u, d, m), bits) + r_out) & m
    table = scalar._combine_table(tuple(tuple(int(c) for c in p) for p in mono), bits)
    np.testing.assert_array_equal(kernels.spline_lookup(D, u, a, rpow, r_out, table, d, bits, party), want)


def _edges(rnd, size: int, bits: int, *more: int) -> np.ndarray:
    """Random words of ``bits`` bits whose first entries are forced: 0, 2^bits - 1, 2^(bits-1),
    then ``more`` (the edge cases of a mask or an opened value)."""
    v = rnd.integers(0, 2**64, size=size, dtype=np.uint64) & ring.mask(bits)
    forced = [0, (1 << bits) - 1, 1 << (bits - 1), *more]
    v[:len(forced)] = np.array([f & ((1 << bits) - 1) for f in forced], dtype=np.uint64)
    return v


@pytest.mark.parametrize("bits,k,s,w", [(50, 30, 12, 50), (64, 64, 13, 64), (37, 20, 0, 37), (50, 30, 3, 40),
                                        (8, 8, 3, 8)])
@pytest.mark.parametrize("party", [0, 1])
def test_truncate_narrow_kernel_is_the_gates_numpy_code(kernels, rnd, bits, k, s, w, party):
    """The free narrow truncation and its widening in one kernel == TruncateNarrow's numpy
    eval (hi_s(lo_k(u)), then widen_share): every (u, MSB share) pair at 8 bits, random words
    with forced edges (0, all ones, the top bit, the view's edges) at 37/50/64 bits."""
    from fusec.runtime.gates.truncation import widen_share

    m = k - s
    if bits <= 8:                                   # exhaustive: every u with every MSB-share word
        u, msb_q = (a.reshape(-1).astype(np.uint64) for a in np.meshgrid(np.arange(1 << bits), np.arange(1 << (w - m))))
    else:
        u = _edges(rnd, 97, bits, (1 << (k - 1)), (1 << k) - 1, 1 << s, (1 << s) - 1)
        msb_q = _edges(rnd, 97, w - m)
    offset = _edges(rnd, u.size, w)
    v = ring.hi(ring.lo(u & ring.mask(bits), k), s)
    want = widen_share(party, v, m, msb_q, offset, w)
    np.testing.assert_array_equal(kernels.truncate_narrow(u, msb_q, offset, bits, k, s, m, w, party), want)


@pytest.mark.parametrize("n,va,vb,square", [(50, (30, 12), None, False), (50, None, (24, 5), False),
                                            (50, (40, 3), (45, 2), False), (50, (20, 8), (22, 9), False),
                                            (50, (30, 12), (30, 12), True), (50, (50, 1), (50, 1), True),
                                            (37, (30, 12), (20, 3), False), (37, (37, 2), (37, 2), True),
                                            (64, (60, 4), (62, 7), False), (64, (64, 1), (64, 1), True),
                                            (10, (8, 2), (10, 1), False), (10, (8, 2), (8, 2), True)])
@pytest.mark.parametrize("party", [0, 1])
def test_mul_narrow_kernel_is_the_gates_numpy_eval(kernels, rnd, n, va, vb, square, party):
    """A product read through narrow views in one kernel == MulNarrow's numpy eval, for each
    combination of views (with and without the b_a b_b cross term) and for squares: at 10
    bits every first input against every mask class, at 37/50/64 bits random words with
    forced edges (0, all ones, the top bit) in the inputs and the masks."""
    from fusec.runtime.backend import get_backend
    from fusec.runtime.gates.mul_narrow import MulNarrow, View
    from fusec.runtime.rng import DealerRng

    N = (1 << n) if n <= 10 else 83
    views = tuple(None if v is None else View(*v) for v in (va, vb))
    gate = MulNarrow(N, n, *views, square=square)
    masks = [_edges(rnd, N, n) for _ in range(2)]
    u = [np.arange(N, dtype=np.uint64) if n <= 10 else _edges(rnd, N, 64), _edges(rnd, N, 64)]
    if square:
        masks[1], u[1] = masks[0], u[0]
    _, k0, k1 = gate.keygen(DealerRng(b"mul-narrow"), masks)
    key = (k0, k1)[party]
    want = next(gate.eval(party, key, u, get_backend("cpu"))).share
    np.testing.assert_array_equal(kernels.mul_narrow(u[0], u[1], key, views, square, n, party), want)


def test_a_key_set_unpacks_in_one_launch_as_gate_by_gate(kernels, rnd):
    """The GPU stages a whole key set with one unpack kernel: every field equals the CPU's
    per-gate unpacking of the same bytes (runtime/layout.py's reference)."""
    from fusec.runtime.device_keys import unpack_key_set
    from fusec.runtime.layout import KeyField, KeyLayout, unpack_gate_key

    layout = KeyLayout([("g0", "demo", 3, (KeyField("seed", (3, 2), 64), KeyField("t", (5, 3), 1))),
                        ("g1", "demo", 0, (KeyField("empty", (0,), 13),)),
                        ("g2", "demo", 7, (KeyField("v", (7,), 37), KeyField("c", (), 50), KeyField("w", (2, 7), 7)))])
    buf = rnd.integers(0, 256, size=layout.set_nbytes, dtype=np.uint8)
    got = unpack_key_set(kernels, layout, buf)
    for slot in layout.slots:
        ref = unpack_gate_key(slot, buf[slot.offset:slot.offset + slot.nbytes])
        assert set(got[slot.gate_id]) == set(ref)
        for name, want in ref.items():
            assert got[slot.gate_id][name].shape == want.shape
            np.testing.assert_array_equal(got[slot.gate_id][name], want)


@pytest.mark.parametrize("bits", [1, 37, 50, 64])
@pytest.mark.parametrize("sa,sb", [((5, 7), (7, 3)), ((2, 4, 9), (9, 5)), ((3, 4, 9), (3, 9, 5)), ((9,), (9, 4)),
                                   ((4, 9), (9,)), ((1, 4, 9), (3, 9, 2)), ((16, 3072), (3072, 3)), ((2, 0), (0, 3))])
def test_matmul_limbs_match_numpy(host_launcher, rnd, bits, sa, sb):
    k = GpuKernels(cuda.render(TEST_CONFIG), launcher=host_launcher, poison=True)
    A = rnd.integers(0, 2**64, size=sa, dtype=np.uint64)
    B = rnd.integers(0, 2**64, size=sb, dtype=np.uint64)
    ref = np.matmul(A, B) & ring.mask(bits)  # numpy's integer matmul wraps mod 2^64
    got = k.matmul_mod(A, B, bits, method="limb")
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(k.matmul_mod(A, B, bits), ref)  # auto: limbs on the host build
