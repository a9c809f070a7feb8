"""The generated kernels on a real GPU (CuPy), against the CPU reference.

Every :class:`GpuKernels` function is compared bit for bit with its numpy counterpart on
fresh random inputs, at sizes that are not multiples of the block size and (for AES) large
enough to fill the GPU. Outputs are poisoned (0xA5 bytes) before each launch, so a kernel
that skips an element fails. Skipped where CuPy or a CUDA device is missing; CI checks the
same kernel code on the host in tests/test_codegen.py.

    python -m pytest -q -m gpu tests/test_gpu_kernels.py
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fusec.codegen import cuda
from fusec.runtime import dcf, dpf, prg, ring
from fusec.runtime.dpf_arc import DpfArc
from tests.test_dpf_trie import TRIES
from fusec.runtime.gpu_kernels import GpuKernelError, GpuKernels
from fusec.runtime.rng import DealerRng


def _cuda_unavailable() -> str | None:
    """Why the GPU tests cannot run here (None when they can)."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:  # ImportError, CUDARuntimeError (no driver)
        return f"CuPy / CUDA unavailable: {e}"
    return None


_REASON = _cuda_unavailable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

#: The default shapes plus a few the tests evaluate both specialized and generic.
ARCS = [DpfArc(14, (0, 76, 136, 206, 336, 495, 3175, 15889, 16047, 16177, 16247, 16307)),   # GELU's in BERT-base
        DpfArc(17, (0, 6, 7, 130535, 130777, 130883, 130951, 131001, 131041)),              # a softmax exp's
        DpfArc(20, (0, 1 << 19, (1 << 20) - 1, 12345)), DpfArc(6, (0, 7, 63, 31)), DpfArc(10, tuple(range(1000, 1016)))]
CONFIG = cuda.default_config().merged(cuda.KernelConfig(dcf_shapes=((64, 17, 64), (37, 17, 37)), dpf_widths=(8,),
                                                        dpf_arcs=tuple(ARCS)))
SIZES = [1, 255, 257, 10_007]


@pytest.fixture(scope="module", params=["specialized", "generic"])
def gk(request) -> GpuKernels:
    """Kernels of CONFIG, or of the empty config (every call then runs a generic kernel)."""
    config = CONFIG if request.param == "specialized" else cuda.KernelConfig()
    return GpuKernels(config=config, poison=True, sync=True)


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.fixture
def rnd() -> np.random.Generator:
    return np.random.default_rng()


def _blocks(rnd, n: int) -> np.ndarray:
    return rnd.integers(0, 2**64, size=(n, 2), dtype=np.uint64)


def _same(got, ref) -> None:
    got = got.get()
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n", SIZES + [1 << 20, 1_000_003])
def test_aes_mmo(gk, cp, rnd, n):
    b = _blocks(rnd, n)
    for which in "LRV":
        _same(gk.aes_mmo(which, cp.asarray(b)), prg.AesMmo(prg.FIXED_KEYS[which])(b))


@pytest.mark.parametrize("n", SIZES)
def test_prg_child_children_value_blocks(gk, cp, rnd, n):
    cpu = prg.CpuPrg()
    b = _blocks(rnd, n)
    right = rnd.integers(0, 2, size=n).astype(np.uint64)
    _same(gk.child(cp.asarray(b), cp.asarray(right)), cpu.child(b, right))
    for got, ref in zip(gk.children(cp.asarray(b)), cpu.children(b)):
        _same(got, ref)
    for nblocks, tweak in [(1, prg.TWEAK_LEAF_VALUE), (7, prg.TWEAK_LEVEL_VALUE)]:
        _same(gk.value_blocks(cp.asarray(b), nblocks, tweak), cpu.value_blocks(b, nblocks, tweak))


@pytest.mark.parametrize("n,m,w", [(50, 1, 50), (37, 3, 37), (64, 17, 64), (37, 17, 37), (64, 1, 1), (50, 5, 50),
                                   (12, 1, 50), (20, 4, 33)])
@pytest.mark.parametrize("points", [None, 3])
def test_dcf_eval(gk, cp, n, m, w, points):
    rng = DealerRng()
    N = 3001 if m < 17 else 517
    alpha, beta = rng.ring(N, n), rng.ring((N, m), w)
    keys = dcf.keygen(rng, alpha, beta, n, w)
    x = rng.ring(N if points is None else (N, points), n)
    for party, key in enumerate(keys):
        dev = [cp.asarray(a) for a in (key.root, key.cw_seed, key.cw_tr, key.cw_v, key.cw_final, x)]
        _same(gk.dcf_eval(party, *dev, n, m, w), dcf.eval(party, key, x))


@pytest.mark.parametrize("n", [5, 8, 12, 36, 37, 49, 50, 63, 64, 21])
@pytest.mark.parametrize("points", [None, 4])
def test_dpf_evals(gk, cp, n, points):
    rng = DealerRng()
    N = 4099
    alpha = rng.ring(N, n)
    x = rng.ring(N if points is None else (N, points), n)
    x[:7] = alpha[:7] if points is None else alpha[:7, None]
    for keygen, pairs in [(dpf.keygen, [(dpf.eval, gk.dpf_eval), (dpf.prefix_parity, gk.dpf_prefix_parity)]),
                          (dpf.lt_keygen, [(dpf.lt_eval, gk.dpf_lt_eval)])]:
        for party, key in enumerate(keygen(rng, alpha, n)):
            dev = [cp.asarray(a) for a in (key.root, key.cw_seed, key.cw_tr, key.cw_leaf, x)]
            for ref_fn, gpu_fn in pairs:
                _same(gpu_fn(party, *dev, n), ref_fn(party, key, x))


@pytest.mark.parametrize("plan", ARCS + TRIES, ids=lambda a: f"{type(a).__name__}-n{a.n}-M{a.points}")
def test_dpf_walks_at_many_points(gk, cp, plan):
    """The generated arc walk (or, generic, the per-point walks) and the trie kernel (a block per
    element, shared memory between the levels) == dpf.lt_eval at u - a_j."""
    rng, n, N = DealerRng(), plan.n, 20_011
    alpha, u = rng.ring(N, n), rng.ring(N, n)
    a = np.asarray(plan.offsets, np.uint64)
    u[:64] = (alpha[:64] + a[np.arange(64) % len(a)] + np.uint64(1)) & ring.mask(n)
    pts = (u[:, None] - a[None, :]) & ring.mask(n)
    walk = gk.dpf_lt_arc if isinstance(plan, DpfArc) else gk.dpf_lt_trie
    for party, key in enumerate(dpf.lt_keygen(rng, alpha, n)):
        dev = [cp.asarray(v) for v in (key.root, key.cw_seed, key.cw_tr, key.cw_leaf, u)]
        _same(walk(party, *dev, plan), dpf.lt_eval(party, key, pts))


def test_ctr_keystream(gk):
    seed = b"gpu-ctr"
    material = hashlib.sha256(b"fusec/dealer-seed/v1" + seed).digest()
    key, nonce = material[:16], material[16:]
    rng = DealerRng(seed)
    _same(gk.ctr_keystream(key, nonce, 0, (1 << 20) + 1), rng.words((1 << 20) + 1))
    nonce = b"\x00" * 8 + b"\xff" * 8
    ref = np.frombuffer(Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(bytes(8 * 1001)), np.uint64)
    _same(gk.ctr_keystream(key, nonce, 0, 1001), ref)


@pytest.mark.parametrize("bits", range(1, 65))
def test_pack_unpack(gk, cp, rnd, bits):
    for count in (1, 255, 257, 100_003):
        v = rnd.integers(0, 2**64, size=count, dtype=np.uint64)
        ref = ring.pack_bits(v, bits)
        _same(gk.pack_bits(cp.asarray(v), bits), ref)
        _same(gk.unpack_bits(cp.asarray(ref), bits, count), ring.unpack_bits(ref, bits, count))
    buf = np.concatenate([np.zeros(5, np.uint8), ref])  # unaligned start, as inside a batched message
    _same(gk.unpack_bits(cp.asarray(buf)[5:], bits, count), ring.unpack_bits(ref, bits, count))


@pytest.mark.parametrize("party", [0, 1])
def test_round_message(gk, cp, rnd, party):
    """A round packed by one kernel and rebuilt by another == the CPU reference, every mode."""
    from types import SimpleNamespace

    from fusec.runtime.backend import Backend
    from fusec.runtime.round_message import RoundMessage

    widths = [1, 2, 7, 8, 13, 37, 50, 63, 64]
    shapes = [(0,), (1,), (3, 5), (100_003,), (2, 3, 11)]
    opens = [SimpleNamespace(share=rnd.integers(0, 2**64, size=shapes[j % 5], dtype=np.uint64),
                             bits=widths[(3 * j) % 9], sender=[None, 0, 1][j % 3]) for j in range(15)]
    layout = RoundMessage.of(opens, party)
    host = [o.share for o in opens]
    dev = [cp.asarray(h) for h in host]
    assert gk.pack_round(layout, dev).get().tobytes() == Backend().pack_round(layout, host)
    peer = rnd.integers(0, 256, size=layout.their_bytes, dtype=np.uint8).tobytes()
    for got, ref in zip(gk.unpack_round(layout, dev, peer), Backend().unpack_round(layout, host, peer)):
        _same(got, ref)


@pytest.mark.parametrize("depth", [0, 13, 50])
def test_dpf_keygen_tree(gk, cp, rnd, depth):
    """The dealer's GGM trees in one kernel == tree.keygen_tree's loop on the CPU."""
    from fusec.runtime import tree

    N = 10_007
    roots = [tree.with_low_bit(_blocks(rnd, N), np.full(N, b, np.uint64)) for b in (0, 1)]
    path = rnd.integers(0, 2**63, size=N, dtype=np.uint64) & ring.mask(max(depth, 1))

    class Drawn:
        left = [r.copy() for r in roots]

        def blocks(self, n):
            return self.left.pop(0)

    want = tree.keygen_tree(Drawn(), path, depth, prg.CpuPrg())
    got = gk.dpf_keygen_tree(cp.asarray(roots[0]), cp.asarray(roots[1]), cp.asarray(path), depth)
    for g, w in zip(got, [want[1], want[2], want[3][0], want[3][1]]):
        _same(g, w)


@pytest.mark.parametrize("n,m,w", [(1, 1, 1), (37, 5, 37), (64, 2, 64), (20, 17, 33)])
def test_dcf_keygen(gk, cp, rnd, n, m, w):
    """The dealer's DCF keys in one kernel == dcf.keygen's loop on the CPU (same root draws)."""
    N = 10_007
    draws = [_blocks(rnd, N) for _ in (0, 1)]

    class Drawn:
        def __init__(self, xp):
            self.left = [xp.asarray(d) for d in draws]

        def blocks(self, count):
            return self.left.pop(0)

    alpha = rnd.integers(0, 2**63, size=N, dtype=np.uint64) & ring.mask(n)
    beta = rnd.integers(0, 2**63, size=(N, m), dtype=np.uint64)
    want = dcf.keygen(Drawn(np), alpha, beta, n, w, prg.CpuPrg())
    from fusec.runtime import tree
    r0 = tree.with_low_bit(draws[0], np.zeros(N, np.uint64))
    r1 = tree.with_low_bit(draws[1], np.ones(N, np.uint64))
    got = gk.dcf_keygen(cp.asarray(r0), cp.asarray(r1), cp.asarray(alpha), cp.asarray(beta & ring.mask(w)), n, w)
    for g, name in zip(got, ("cw_seed", "cw_tr", "cw_v", "cw_final")):
        _same(g, want[0].arrays()[name])


@pytest.mark.parametrize("d,P,bits", [(0, 1, 13), (2, 10, 50), (3, 17, 64)])
def test_packed_lookup(gk, cp, rnd, d, P, bits):
    """The packed lookup's local round in one kernel == the same kernel's host build's
    reference, scalar.PackedLookup's numpy code (E, then scalar.combine)."""
    from fusec.runtime.gates import scalar

    N, m, party = 10_007, ring.mask(bits), 1
    mono = [list(rnd.integers(0, 2**63, size=d + 1, dtype=np.uint64)) for _ in range(P + 1)]
    c_hat = rnd.integers(0, 2, size=(N, P), dtype=np.uint64)
    u, r_out = (rnd.integers(0, 2**63, size=N, dtype=np.uint64) & m for _ in range(2))
    rpow = rnd.integers(0, 2**63, size=(N, d), dtype=np.uint64) & m
    rho_a = rnd.integers(0, 2**63, size=(N, P), dtype=np.uint64) & m
    rho_rpow = rnd.integers(0, 2**63, size=(N, P, d), dtype=np.uint64) & m
    rp = np.concatenate([np.full((N, 1), party, np.uint64), rpow], axis=1)
    corr = np.concatenate([rho_a[:, :, None], rho_rpow], axis=2)
    E = (c_hat[:, :, None] * rp[:, None, :] + (np.uint64(1) - (c_hat << np.uint64(1)))[:, :, None] * corr) & m
    want = (scalar.combine(mono, E, rp, scalar._powers(u, d, m), bits) + r_out) & m
    table = scalar._combine_table(tuple(tuple(int(c) for c in p) for p in mono), bits)
    got = gk.packed_lookup(*(cp.asarray(a) for a in (c_hat, u, rpow, rho_a, rho_rpow, r_out, table)), d, bits, party)
    _same(got, want)


@pytest.mark.parametrize("bits,k,s,w", [(50, 30, 12, 50), (64, 64, 13, 64), (50, 30, 3, 40)])
def test_truncate_narrow(gk, cp, rnd, bits, k, s, w):
    """The free narrow truncation and its widening in one kernel == widen_share on the CPU."""
    from fusec.runtime.gates.truncation import widen_share

    N, m = 100_003, k - s
    u = rnd.integers(0, 2**64, size=N, dtype=np.uint64)
    msb_q = rnd.integers(0, 2**64, size=N, dtype=np.uint64) & ring.mask(w - m)
    offset = rnd.integers(0, 2**64, size=N, dtype=np.uint64) & ring.mask(w)
    for party in (0, 1):
        want = widen_share(party, ring.hi(ring.lo(u & ring.mask(bits), k), s), m, msb_q, offset, w)
        _same(gk.truncate_narrow(cp.asarray(u), cp.asarray(msb_q), cp.asarray(offset), bits, k, s, m, w, party), want)


@pytest.mark.parametrize("va,vb,square", [((30, 12), None, False), ((20, 8), (22, 9), False), ((30, 12), (30, 12), True)])
def test_mul_narrow(gk, cp, rnd, va, vb, square):
    """A product read through narrow views in one kernel == MulNarrow's numpy eval."""
    from fusec.runtime.backend import get_backend
    from fusec.runtime.gates.mul_narrow import MulNarrow, View
    from fusec.runtime.rng import DealerRng

    n, N = 50, 100_003
    views = tuple(None if v is None else View(*v) for v in (va, vb))
    gate = MulNarrow(N, n, *views, square=square)
    masks = [rnd.integers(0, 2**63, size=N, dtype=np.uint64) & ring.mask(n) for _ in range(2)]
    masks[1] = masks[0] if square else masks[1]
    keys = gate.keygen(DealerRng(b"mul-narrow-gpu"), masks)[1:]
    u = [rnd.integers(0, 2**64, size=N, dtype=np.uint64) for _ in range(2)]
    u[1] = u[0] if square else u[1]
    for party in (0, 1):
        want = next(gate.eval(party, keys[party], u, get_backend("cpu"))).share
        dev_key = {k: cp.asarray(v) for k, v in keys[party].items()}
        _same(gk.mul_narrow(cp.asarray(u[0]), cp.asarray(u[1]), dev_key, views, square, n, party), want)


@pytest.mark.parametrize("d,P,bits", [(0, 1, 13), (2, 10, 50), (3, 17, 64)])
def test_spline_lookup(gk, cp, rnd, d, P, bits):
    """The shifted lookup's local work in one kernel == SplineLookup's numpy code."""
    from fusec.runtime.gates import scalar

    N, m, party = 10_007, ring.mask(bits), 1
    mono = [list(rnd.integers(0, 2**63, size=d + 1, dtype=np.uint64)) for _ in range(P + 1)]
    D = rnd.integers(0, 2**63, size=(N, P + 1, d + 1), dtype=np.uint64) & m
    u, r_out = (rnd.integers(0, 2**63, size=N, dtype=np.uint64) & m for _ in range(2))
    a = np.sort(rnd.integers(0, 2**63, size=P, dtype=np.uint64) & m)
    rpow = rnd.integers(0, 2**63, size=(N, d), dtype=np.uint64) & m
    rp = np.concatenate([np.full((N, 1), party, np.uint64), rpow], axis=1)
    E = (D[:, 1:, :] - D[:, :1, :] + (u[:, None] < a[None, :]).astype(np.uint64)[:, :, None] * rp[:, None, :]) & m
    want = (scalar.combine(mono, E, rp, scalar._powers(u, d, m), bits) + r_out) & m
    table = scalar._combine_table(tuple(tuple(int(c) for c in p) for p in mono), bits)
    got = gk.spline_lookup(*(cp.asarray(x) for x in (D, u, a, rpow, r_out, table)), d, bits, party)
    _same(got, want)


@pytest.mark.parametrize("method", ["tiled", "limb", "auto"])
@pytest.mark.parametrize("bits", [1, 37, 50, 64])
@pytest.mark.parametrize("sa,sb", [((65, 130), (130, 67)), ((2, 3, 33, 70), (70, 129)), ((4, 31, 64), (4, 64, 65)),
                                   ((1, 17, 9), (3, 9, 8)), ((128, 768), (768, 96)), ((5, 3072), (3072, 7))])
def test_matmul_mod(gk, cp, rnd, method, bits, sa, sb):
    A = rnd.integers(0, 2**64, size=sa, dtype=np.uint64)
    B = rnd.integers(0, 2**64, size=sb, dtype=np.uint64)
    _same(gk.matmul_mod(cp.asarray(A), cp.asarray(B), bits, method=method), np.matmul(A, B) & ring.mask(bits))


def test_launch_errors_name_the_kernel(gk, cp):
    b = cp.zeros((4, 2), cp.uint64)
    with pytest.raises(GpuKernelError, match="fusec_aes_mmo.*bad block"):  # 4096 threads: over the limit
        gk.launcher.launch_grid("fusec_aes_mmo", "bad block", (1, 1, 1), 4096, (b, b, np.int32(0), np.uint64(4)))
