"""The GPU backend's data path, checked on the CPU with a strict stand-in for CuPy.

The same gate code runs on numpy (CPU backend) and on device arrays (GPU backend). These
tests run a compiled model's dealer and both parties on the pretend device
(tests/fakedevice.py, which refuses every implicit host/device crossing, as CuPy does)
and compare with the CPU backend: identical key files for one dealer seed, identical
opened bytes in every round, identical outputs. The real GPU runs the same tests with
FUSEC_TEST_BACKEND=gpu on a GPU machine (tests/test_gpu_kernels.py checks each kernel there).
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import compile_model, encode_inputs, load_build
from fusec.passes.calibrate import default_feeds
from fusec.passes.options import CompileOptions
from fusec.runtime import keygen_chunks
from fusec.runtime.dealer import write_keys
from fusec.runtime.keyio import KeyFile
from fusec.runtime.backend import get_backend
from fusec.runtime.protocol import RoundLog
from fusec.runtime.gates.arith import MatMulPrivate
from fusec.runtime.gates.catalog import library
from fusec.runtime.gates.compare import Select
from fusec.runtime.gates.movement import Rearrange, SumAxis  # noqa: F401
from fusec.runtime.gates.sigma_nonlinear import SigmaInverse, SigmaNegExp, sigma_layernorm_rsqrt
from fusec.ir.spec import OperatorSpec
from fusec.runtime.gates.scalar import ScalarGate
from fusec.runtime.rng import DealerRng
from tests.fakedevice import FakeDeviceBackend, host_kernel_backend
from tests.harness import both_parties, queue_exchanges


def _gpu_kind():
    try:
        from fusec.runtime.gpu_backend import GpuBackend
        GpuBackend()
    except Exception as e:  # no CuPy, no GPU, no driver
        pytest.skip(f"no GPU backend here: {e}")
    return GpuBackend


_HOST_KERNELS: dict[str, type] = {}


def _host_kernels():
    """The GPU backend's code over the host build of the default kernels (needs nvcc)."""
    from fusec.codegen import cuda

    if cuda.nvcc_path() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot build the host kernels")
    if "kind" not in _HOST_KERNELS:
        import tempfile

        src = cuda.render(cuda.default_config())
        _HOST_KERNELS["kind"] = host_kernel_backend(src, cuda.compile_host_library(src, tempfile.mkdtemp()))
    return _HOST_KERNELS["kind"]


DEVICES = [pytest.param(lambda: FakeDeviceBackend, id="fakegpu"),
           pytest.param(_host_kernels, id="hostkernels"),
           pytest.param(_gpu_kind, id="gpu", marks=pytest.mark.gpu)]

BERT_TINY = "tests/data/bert_tiny_legacy.onnx"


@pytest.fixture(scope="module")
def bert_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_tiny_build")
    compile_model(BERT_TINY, out, CompileOptions(bits=37), batch=1, seq=8)
    return load_build(out)


def _key_sets(build, where, backend):
    write_keys(build.gates, where, 1, seed=b"device-path", backend=backend)
    sets = []
    for p in (0, 1):
        with KeyFile.open(where / f"p{p}.key", build.gates.layout(), p) as kf:
            sets.append(kf._read_set(0).tobytes())
    return sets


def _run(build, keys_dir, backend_kind, feeds, landed: list | None = None):
    """Both parties on ``backend_kind``; returns P1's outputs and every message each party sent.
    The exchange takes ``into=`` as a channel does: a backend with a receive buffer gets the
    peer's bytes there, round after round (``landed``: how many rounds did, per party)."""
    sent = [[], []]
    ex = queue_exchanges()
    out = [None, None]
    landed = landed if landed is not None else [0, 0]

    def work(p):
        be = backend_kind()
        with KeyFile.open(keys_dir / f"p{p}.key", build.gates.layout(), p) as kf:
            reader = kf.claim(0)
            keys = {s.gate_id: be.stage_key(reader.read_gate(s.gate_id)) for s in build.gates.layout().slots}

        def exchange(data, scope, limit=None, into=None):
            sent[p].append(bytes(data))
            got = ex[p](data, scope, limit)
            if into is None:
                return got
            landed[p] += 1
            into[:len(got)] = np.frombuffer(bytes(got), np.uint8)
            return memoryview(into)[:len(got)]

        inputs = encode_inputs(build, feeds, p) if p == 1 else {}
        out[p] = build.gates.evaluate(p, keys, inputs, exchange, be, RoundLog())

    both_parties(work)
    return out[1], sent


@pytest.mark.parametrize("device", DEVICES)
def test_device_dealer_writes_the_cpu_dealers_keys(bert_build, tmp_path, device):
    cpu = _key_sets(bert_build, tmp_path / "cpu", get_backend("cpu"))
    dev = _key_sets(bert_build, tmp_path / "dev", device()())
    assert cpu[0] == dev[0] and cpu[1] == dev[1]


@pytest.mark.parametrize("device", DEVICES)
def test_device_dealer_keys_large_gates_in_chunks_as_the_cpu_dealer_does(bert_build, tmp_path, device, monkeypatch):
    """Gates larger than the keygen chunk (here 128 elements: bert-tiny's lookups and
    truncations) are keyed a chunk at a time, each chunk's seeded shares split where it was
    keyed and its keys then leaving the device: the files are still the CPU dealer's, byte for
    byte, and other files than one keygen per gate writes."""
    whole = _key_sets(bert_build, tmp_path / "whole", get_backend("cpu"))
    monkeypatch.setattr(keygen_chunks, "KEYGEN_CHUNK_ELEMENTS", 128)
    cpu = _key_sets(bert_build, tmp_path / "cpu", get_backend("cpu"))
    dev = _key_sets(bert_build, tmp_path / "dev", device()())
    assert cpu[0] == dev[0] and cpu[1] == dev[1]
    assert cpu[0] != whole[0] and len(cpu[0]) == len(whole[0])


@pytest.mark.parametrize("device", DEVICES)
def test_device_run_opens_the_same_bytes_as_the_cpu(bert_build, tmp_path, device, monkeypatch):
    write_keys(bert_build.gates, tmp_path, 1, seed=b"same")
    feeds = default_feeds(bert_build.ir, seed=3)
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state-cpu"))
    out_cpu, sent_cpu = _run(bert_build, tmp_path, type(get_backend("cpu")), feeds)
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state-dev"))  # a second ledger: same keys, to compare
    landed = [0, 0]
    out_dev, sent_dev = _run(bert_build, tmp_path, device(), feeds, landed)
    assert len(sent_cpu[0]) == len(sent_dev[0]) > 10
    if device() is not FakeDeviceBackend:   # the GPU backend's code: every round lands in one reused buffer
        assert landed == [sum(1 for m in sent_dev[1 - p] if m) for p in (0, 1)] and landed[0] > 10
    for p in (0, 1):
        for r, (a, b) in enumerate(zip(sent_cpu[p], sent_dev[p])):
            assert a == b, f"party {p}, round {r}: the device opened different bytes"
    assert out_cpu.keys() == out_dev.keys()
    for k in out_cpu:
        assert isinstance(out_dev[k], np.ndarray) and np.array_equal(out_cpu[k], out_dev[k])


def every_gate(n: int = 50, f: int = 12, E: int = 300):
    gates = [(label, g) for label, g in library(n, f, elements=E) if not isinstance(g, MatMulPrivate)]
    rng = np.random.default_rng(1)
    return gates + [
        ("matmul, private weights", MatMulPrivate((2, 12, 16), (2, 16, 8), n)),
        ("rearrange (gather with fill)", Rearrange([E], np.where(rng.random(E) < 0.1, -1, rng.integers(0, E, E)), n)),
        ("sum over an axis", SumAxis((E // 4, 4), (1,), n)),
        ("SIGMA nExp", SigmaNegExp(E, n, f)),
        ("SIGMA inverse", SigmaInverse(E, n, f, 128.0)),
        ("SIGMA layernorm rsqrt", sigma_layernorm_rsqrt(E, n, f, 1 / 768, 1e-5)),
        ("packed lookup of 300 pieces (a norm's rsqrt shape)", ScalarGate(E, _many_pieces(n, f, 300), "packed")),
    ]


def gate_inputs(gate) -> tuple[list[int], list[int]]:
    """(elements, ring bits) of each of ``gate``'s inputs."""
    in_bits = [1, gate.bits] if isinstance(gate, Select) else [gate.bits] * gate.inputs
    if isinstance(gate, MatMulPrivate):
        sizes = [int(np.prod(s)) for s in (gate.x_shape, gate.w_shape)]
    elif hasattr(gate, "in_elements"):  # a truncation read into a linear map (truncate_linear.py)
        sizes = [gate.in_elements]
    elif hasattr(gate, "x_shape"):
        sizes = [int(np.prod(gate.x_shape))]
    elif hasattr(gate, "shape"):  # reductions (sum, max tree) read a whole shape
        sizes = [int(np.prod(gate.shape))]
    elif isinstance(gate, Rearrange):
        sizes = list(gate.in_sizes)
    else:
        sizes = [gate.elements] * gate.inputs
    return sizes, in_bits


def _many_pieces(n: int, f: int, pieces: int) -> OperatorSpec:
    """A degree-1 spec of many pieces (the compiler packs a layer norm's ~500-piece rsqrt where
    that saves AES): the packed comparison then opens hundreds of bits per element."""
    rng = np.random.default_rng(7)
    cuts = tuple(int(c) for c in np.sort(rng.permutation(np.unique(rng.integers(-(1 << 20), 1 << 20, 2 * pieces)))
                                         [:pieces - 1]))
    coeffs = tuple((int(rng.integers(-1 << 20, 1 << 20)), int(rng.integers(-4, 5))) for _ in range(pieces))
    centers = (0,) + cuts
    return OperatorSpec("many", n, f, f, cuts, coeffs, centers, f, max_error_ulps=0.0)


def _sent_bytes(gate, be_pair, keys, us):
    """Every message each party sent while evaluating ``gate`` on ``be_pair``, and its output."""
    sent = [[], []]
    ex = queue_exchanges()

    def recorder(p):
        def exchange(data, scope, limit=None):
            sent[p].append(bytes(data))
            return ex[p](data, scope, limit)
        return exchange

    from fusec.runtime.protocol import drive
    out = [None, None]

    def work(p):
        be = be_pair[p]
        out[p] = be.asnumpy(drive([gate.eval(p, be.stage_key(keys[p]), [be.asarray(u) for u in us], be)],
                                  recorder(p), p, be)[0])

    both_parties(work)
    return sent, out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label", [label for label, _ in every_gate()])
def test_every_gate_kind_opens_the_same_bytes_on_the_device(label, device):
    gate = dict(every_gate())[label]
    rng = DealerRng(b"every-gate")
    sizes, in_bits = gate_inputs(gate)
    masks = [rng.ring(k, b) for k, b in zip(sizes, in_bits)]
    _, k0, k1 = gate.keygen(rng, masks)
    us = [rng.ring(k, b) for k, b in zip(sizes, in_bits)]
    cpu = type(get_backend("cpu"))
    sent_cpu, out_cpu = _sent_bytes(gate, (cpu(), cpu()), (k0, k1), us)
    kind = device()
    sent_dev, out_dev = _sent_bytes(gate, (kind(), kind()), (k0, k1), us)
    assert sent_cpu == sent_dev
    assert np.array_equal(out_cpu[0], out_dev[0]) and np.array_equal(out_cpu[1], out_dev[1])


def test_key_set_too_big_for_the_gpu_names_the_sizes():
    """Staging refuses a set that cannot fit next to the online phase, before copying."""
    from fusec.errors import FusecError
    from fusec.runtime.device_keys import ONLINE_HEADROOM_BYTES, check_fits

    gib = 1 << 30
    check_fits(10 * gib, 10 * gib + ONLINE_HEADROOM_BYTES, 141 * gib)  # fits exactly
    with pytest.raises(FusecError, match=r"needs 24\.27 GiB .* only 12\.00 GiB of 141\.00 GiB are free") as e:
        check_fits(int(24.27 * gib), 12 * gib, 141 * gib)
    assert "CUDA_VISIBLE_DEVICES" in str(e.value) and "--backend cpu" in str(e.value)


def test_two_parties_on_one_card_each_stage_within_their_share(monkeypatch):
    """FUSEC_GPU_SHARE=0.5: the first party to stage cannot take the whole card (on the H100,
    batch 8's P0 unpacked 58 GB and left P1 11.87 GiB for its 32 GiB set). A party's room is
    its share less what its pool uses; the error then names the share."""
    import types

    from fusec.errors import FusecError
    from fusec.runtime.device_keys import gpu_share_from_env
    from fusec.runtime.gpu_backend import GpuBackend

    gib = 1 << 30
    used = {"n": 0}
    pool = types.SimpleNamespace(total_bytes=lambda: used["n"], used_bytes=lambda: used["n"])
    be = GpuBackend.__new__(GpuBackend)
    be._plans = {}
    be.xp = types.SimpleNamespace(get_default_memory_pool=lambda: pool, cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(memGetInfo=lambda: (79 * gib - used["n"], 80 * gib))))
    assert be._free_bytes() == (79 * gib, 80 * gib)             # alone on the card: all that is free
    be.device_share = 0.5
    assert be._free_bytes() == (40 * gib, 80 * gib)
    used["n"] = 32 * gib                                        # this party's packed set
    assert be._free_bytes() == (8 * gib, 80 * gib)
    be._check_fits(3 * gib)
    with pytest.raises(FusecError, match=r"only 8\.00 GiB of this party's 0\.5 share \(FUSEC_GPU_SHARE\) of 80\.00"):
        be._check_fits(5 * gib)
    plan_pool = types.SimpleNamespace(total_bytes=lambda: 3 * gib)                # a launch plan's own pool
    be._plans = {1: types.SimpleNamespace(pool=plan_pool)}
    assert be._free_bytes() == (5 * gib, 80 * gib)

    for raw, want in (("", 1.0), ("0.5", 0.5), (" 1 ", 1.0)):
        monkeypatch.setenv("FUSEC_GPU_SHARE", raw)
        assert gpu_share_from_env() == want
    for raw in ("half", "0", "1.5", "-0.5", "nan"):
        monkeypatch.setenv("FUSEC_GPU_SHARE", raw)
        with pytest.raises(FusecError, match=r"FUSEC_GPU_SHARE=.* is not a fraction of the GPU's memory in \(0, 1\]"):
            gpu_share_from_env()


def test_cuda_out_of_memory_becomes_a_clear_error():
    from fusec.runtime.device_keys import memory_error

    class OutOfMemoryError(Exception):  # the name CuPy's allocator error has
        pass

    err = memory_error(OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes"))
    assert err is not None and "ran out of memory" in str(err) and "1,073,741,824" in str(err)
    assert memory_error(ValueError("shapes differ")) is None


NEWER_KERNELS = ("fusec_pack_round", "fusec_unpack_round", "fusec_dpf_keygen_tree", "fusec_dcf_keygen",
                 "fusec_packed_lookup", "fusec_spline_lookup", "fusec_truncate_narrow", "fusec_mul_narrow")


def test_a_build_from_before_the_newer_kernels_still_runs(bert_build, tmp_path, monkeypatch):
    """A build directory keeps the kernels.cu it was compiled with: without the round,
    lookup, truncation, product and keygen kernels the GPU backend takes the array code
    (through the host kernels here), and dealer and parties stay byte-identical to the CPU."""
    kind = _host_kernels()

    class OldKernels(kind):
        def __init__(self):
            super().__init__()
            self.kernels._available -= set(NEWER_KERNELS)

    assert not any(OldKernels().kernels.has(k) for k in NEWER_KERNELS)
    cpu = _key_sets(bert_build, tmp_path / "cpu", get_backend("cpu"))
    assert _key_sets(bert_build, tmp_path / "old", OldKernels()) == cpu
    write_keys(bert_build.gates, tmp_path, 1, seed=b"old-build")
    feeds = default_feeds(bert_build.ir, seed=4)
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state-cpu"))
    out_cpu, sent_cpu = _run(bert_build, tmp_path, type(get_backend("cpu")), feeds)
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state-old"))
    out_old, sent_old = _run(bert_build, tmp_path, OldKernels, feeds)
    assert sent_cpu == sent_old
    for k in out_cpu:
        assert np.array_equal(out_cpu[k], out_old[k])


@pytest.mark.parametrize("device", [pytest.param(lambda: (lambda: get_backend("cpu")), id="cpu"),
                                    pytest.param(_host_kernels, id="hostkernels")])
def test_streamed_keys_are_the_staged_keys(bert_build, tmp_path, device):
    """Keys streamed gate by gate inside the clock (--stream-keys) are the same arrays as a
    set staged before it, on the CPU and through the GPU backend's code."""
    write_keys(bert_build.gates, tmp_path, 1, seed=b"stream")
    layout = bert_build.gates.layout()
    with KeyFile.open(tmp_path / "p1.key", layout, 1) as kf:
        raw = kf._read_set(0)
    be = device()()
    staged, streamed = be.stage_set(layout, raw), be.stage_set(layout, raw, stream=True)
    assert list(staged) == list(streamed) == layout.gate_ids
    for g in reversed(layout.gate_ids):                 # any order: each gate loads its own slot
        a, b = staged[g], streamed[g]
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(be.asnumpy(a[name]), be.asnumpy(b[name])), (g, name)


class _OutOfMemory(Exception):
    pass


_OutOfMemory.__name__ = "OutOfMemoryError"      # what CuPy raises; memory_error() goes by name


@pytest.mark.parametrize("free_after_copy_gib,unpack_fails", [(4, False), (64, True), (64, False)])
def test_stage_set_unpacks_per_gate_when_the_unpacked_set_does_not_fit(bert_build, tmp_path, monkeypatch,
                                                                     free_after_copy_gib, unpack_fails):
    """Both parties on one card stage at the same moment: too little free memory for the
    unpacked set, or CUDA running out mid-unpack, must fall back to unpacking each gate when it
    starts (the sigma BERT-base run on an H100 died here), and give the CPU's arrays."""
    import types

    from fusec.runtime.backend import StagedKeys
    from fusec.runtime.gpu_backend import GpuBackend
    from tests import fakedevice

    kind = _host_kernels()
    write_keys(bert_build.gates, tmp_path, 1, seed=b"oom")
    layout = bert_build.gates.layout()
    with KeyFile.open(tmp_path / "p0.key", layout, 0) as kf:
        raw = kf._read_set(0)
    be = kind()
    pool = types.SimpleNamespace(total_bytes=lambda: 0, used_bytes=lambda: 0, free_all_blocks=lambda: None)
    free = iter([64 << 30, free_after_copy_gib << 30])    # the packed set's check, then the unpacked one's
    runtime = types.SimpleNamespace(memGetInfo=lambda: (next(free), 80 << 30))
    be.xp = types.SimpleNamespace(**{k: getattr(fakedevice.fakecupy, k) for k in ("asarray", "ndarray", "zeros", "empty")},
                                  cuda=types.SimpleNamespace(runtime=runtime), get_default_memory_pool=lambda: pool)
    calls = []
    if unpack_fails:
        whole_gate = be.kernels.unpack_round

        def unpack_round(*a, **k):
            if k.get("out") is None:            # one gate's slot, unpacked as the gate starts
                return whole_gate(*a, **k)
            calls.append(1)                     # the whole set, up front
            raise _OutOfMemory("Out of memory allocating 37,719,488,512 bytes")
        monkeypatch.setattr(be.kernels, "unpack_round", unpack_round)
    staged = GpuBackend.stage_set(be, layout, raw)
    cpu = get_backend("cpu").stage_set(layout, raw)
    assert isinstance(staged, StagedKeys) and list(staged) == layout.gate_ids
    assert bool(calls) == unpack_fails
    assert staged.unpacked_up_front == (free_after_copy_gib == 64 and not unpack_fails)
    for g in layout.gate_ids:
        for name, v in cpu[g].items():
            assert np.array_equal(fakedevice.fakecupy.asnumpy(staged[g][name]), v), (g, name)


@pytest.mark.parametrize("chunk", [None, 128], ids=["whole", "chunks"])
def test_keys_packed_on_the_device_are_the_host_bytes(bert_build, monkeypatch, chunk):
    """The dealer's in-memory timing packs keys where it computes (pack_key_device): the
    bytes the CPU's numpy packing gives, through the GPU backend's own code; also for gates
    keyed in chunks, whose keys come back as host arrays."""
    from fusec.runtime.dealer import SetGenerator
    from tests import fakedevice

    monkeypatch.setattr(keygen_chunks, "KEYGEN_CHUNK_ELEMENTS", chunk)
    be = _host_kernels()()
    layout = bert_build.gates.layout()
    slots = {s.gate_id: s for s in layout.slots}
    with be.activate():
        gen = SetGenerator(bert_build.gates, be, be.dealer_rng(b"pack"))
        for gate_id, k0, _ in gen.graph.keygen_stream(gen.rng):
            dev = be.pack_key_device(slots[gate_id], k0)
            assert isinstance(dev, fakedevice.fakecupy.ndarray)
            host = {k: fakedevice.fakecupy.asnumpy(v) for k, v in k0.items()}
            cpu = get_backend("cpu").pack_key(slots[gate_id], host)      # the layout's packing in numpy
            assert np.array_equal(fakedevice.fakecupy.asnumpy(dev), cpu), gate_id
