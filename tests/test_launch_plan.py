"""Launch plans (--cuda-graphs): a replayed inference opens exactly what the interpreter opens.

runtime/launch_plan.py records a build's second inference on the GPU as one CUDA graph per
round and replays the graphs for later inferences, with new key sets, new inputs and new
peer bytes in buffers at the recorded addresses. The oracle is the CPU backend evaluating
the same key set on the same input: every message of every round and every output must be
byte-identical, for the interpreted first inference, the recorded second one and the
replayed ones after it. A replay that read a stale key, input or constant would differ.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fusec.errors import GpuKernelError, ParameterError, PeerError

from fusec.build import compile_model, encode_inputs, load_build
from fusec.passes.calibrate import default_feeds
from fusec.passes.options import CompileOptions
from fusec.runtime.backend import get_backend
from fusec.runtime.dealer import write_keys
from fusec.runtime.keyio import KeyFile
from fusec.runtime.launch_plan import LaunchPlan, PlanSegment
from fusec.runtime.protocol import RoundLog
from fusec.runtime.seeded_shares import party_layout
from tests.harness import both_parties, queue_exchanges
from tests.test_device_path import BERT_TINY, _gpu_kind, _host_kernels

SETS = 4      # interpreted, recorded, replayed twice


@pytest.fixture(scope="module", params=["fused", "sigma"])
def bert_build(request, tmp_path_factory):
    """bert-tiny with each gate set: between them every gate kind a transformer uses."""
    out = tmp_path_factory.mktemp(f"bert_tiny_plan_{request.param}")
    compile_model(BERT_TINY, out, CompileOptions(bits=37, gates=request.param), batch=1, seq=8)
    return load_build(out)


@pytest.fixture(scope="module")
def key_dir(bert_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan_keys")
    write_keys(bert_build.gates, out, SETS, seed=b"launch-plan")
    return out


def _run_sets(build, key_dir, backends, graphs: bool):
    """Each key set in turn through both parties on ``backends`` (one per party, kept
    across sets as a serving process keeps its backend); per set the messages both parties
    sent, P1's outputs and P1's round log."""
    layout = build.gates.layout()
    for be in backends:
        be.cuda_graphs = graphs
    results = []
    for j in range(SETS):
        feeds = default_feeds(build.ir, seed=10 + j)
        sent, out, logs, ex = [[], []], [None, None], [RoundLog(), RoundLog()], queue_exchanges()

        def work(p):
            be = backends[p]
            with KeyFile.open(key_dir / f"p{p}.key", layout, p) as kf:
                kf.inflate = not be.seeded_shares_on_device     # as a server reads it for this backend
                raw = kf._read_set(j)
            keys = be.stage_set(layout, raw, seeded_party=None if kf.inflate else p)

            def exchange(data, scope, limit=None):
                sent[p].append(bytes(data))
                return ex[p](data, scope, limit)

            inputs = encode_inputs(build, feeds, p) if p == 1 else {}
            out[p] = build.gates.evaluate(p, keys, inputs, exchange, be, logs[p])

        both_parties(work)
        results.append((sent, out[1], logs[1]))
    return results


def _assert_same(ref, got, what: str) -> None:
    for j, ((sent_a, out_a, _), (sent_b, out_b, _)) in enumerate(zip(ref, got)):
        for p in (0, 1):
            assert len(sent_a[p]) == len(sent_b[p]) > 10, (what, j, p)
            for r, (a, b) in enumerate(zip(sent_a[p], sent_b[p])):
                assert a == b, f"{what}: set {j}, party {p}, round {r + 1}: different bytes"
        assert out_a.keys() == out_b.keys()
        for k in out_a:
            assert np.array_equal(out_a[k], out_b[k]), (what, j, k)


@pytest.mark.gpu
def test_replayed_inferences_open_what_the_cpu_opens(bert_build, key_dir):
    kind = _gpu_kind()
    ref = _run_sets(bert_build, key_dir, [get_backend("cpu"), get_backend("cpu")], graphs=False)
    backends = [kind(bert_build.kernels_source), kind(bert_build.kernels_source)]
    got = _run_sets(bert_build, key_dir, backends, graphs=True)
    _assert_same(ref, got, "cuda graphs")
    for be in backends:
        (plan,) = be._plans.values()
        assert plan.ready and plan.replays == SETS - 2
        assert len(plan.segments) == got[-1][2].rounds + 1      # one graph per round, and the last work
    assert got[-1][2].rounds == got[0][2].rounds
    replayed = got[-1][2]
    assert sum(replayed.compute.values()) > 0 and set(replayed.phases) == {"step", "wire", "unpack"}


@pytest.mark.parametrize("early", [False, True], ids=["stored", "inflated early"])
@pytest.mark.parametrize("where", ["hostkernels", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_set_too_large_to_unpack_is_read_from_one_packed_buffer(bert_build, key_dir, where, early):
    """Where the unpacked set does not fit, every set is copied into one packed buffer and each
    gate unpacks its slot when it starts: the set inflated on the device before the clock, or
    kept in its stored layout, each gate's seeded shares then written from the seed in that
    buffer (on a GPU inside the recorded graphs, so a replay regenerates the next set's
    shares). The same bytes as the CPU."""
    ref = _run_sets(bert_build, key_dir, [get_backend("cpu"), get_backend("cpu")], graphs=False)
    if where == "gpu":
        kind = _gpu_kind()
        backends = [kind(bert_build.kernels_source), kind(bert_build.kernels_source)]
    else:
        backends = [_host_kernels()(), _host_kernels()()]
    for be in backends:
        be._plan_arena = False                      # as after an arena that did not fit
        be.inflate_early = early
    got = _run_sets(bert_build, key_dir, backends, graphs=True)
    _assert_same(ref, got, "packed buffer")
    assert all(be._plan_keys is not None and be._plan_arena is False for be in backends)
    layout = bert_build.gates.layout()
    assert [be._plan_keys.size for be in backends] == [layout.set_nbytes if early else party_layout(layout, p).set_nbytes
                                                       for p in (0, 1)]
    if where == "gpu":
        assert all(plan.ready and plan.replays == SETS - 2 for be in backends for plan in be._plans.values())


def test_without_a_gpu_the_flag_interprets(bert_build, key_dir):
    """The host-built kernels (no CUDA) never record, but stage as a plan needs: every set
    unpacked into the same buffer, by P0 in 4 KiB chunks. The same bytes as the CPU, and no plan."""
    ref = _run_sets(bert_build, key_dir, [get_backend("cpu"), get_backend("cpu")], graphs=False)
    backends = [_host_kernels()(), _host_kernels()()]
    backends[0].stage_chunk_bytes = 4096            # P0 copies and unpacks its sets a few slots at a time
    arenas = []
    for be in backends:
        stage = be._stage_fixed

        def staged(sset, buf, stage=stage, be=be):
            keys = stage(sset, buf)
            big = keys[max(sset.layout.slots, key=lambda slot: slot.nbytes).gate_id]
            arenas.append((id(be._plan_arena), all(np.shares_memory(v, be._plan_arena) for v in big.values() if v.size)))
            return keys
        be._stage_fixed = staged
    got = _run_sets(bert_build, key_dir, backends, graphs=True)
    _assert_same(ref, got, "host kernels")
    assert all(not getattr(be, "_plans", {}) for be in backends)
    assert len(arenas) == 2 * SETS and all(shared for _, shared in arenas)
    assert len({a for a, _ in arenas}) == 2           # one buffer per party, every set unpacked into it


# ---------------------------------------------------------------------------- the replay loop, no GPU
class _Dev(np.ndarray):
    """A device array stand-in: ``set`` fills it as CuPy's does."""

    def set(self, host, stream=None):
        self[...] = host


class _Stream:
    ptr = 7

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


def _fake_cupy(free: int = 60 << 30, held: int = 0, used: int = 0):
    """CuPy's surface the backend's plan bookkeeping touches: a card with ``free`` bytes free,
    a default pool holding ``held`` bytes of which ``used`` are in use."""
    pool = SimpleNamespace(total_bytes=lambda: held, used_bytes=lambda: used, free_all_blocks=lambda: None)
    cuda = SimpleNamespace(Stream=lambda non_blocking=False: _Stream(), MemoryPool=lambda allocator=None: None,
                           Device=lambda: SimpleNamespace(synchronize=lambda: None),
                           get_current_stream=lambda: _Stream(),
                           runtime=SimpleNamespace(memGetInfo=lambda: (free, 80 << 30)))
    return SimpleNamespace(__name__="cupy", cuda=cuda, ndarray=_Dev, asnumpy=lambda a: np.array(a),
                           get_default_memory_pool=lambda: pool)


class _Graph:
    """A recorded segment stand-in: reads its inbox and the input, writes its outbox."""

    def __init__(self, run):
        self.run, self.launches = run, 0

    def launch(self, stream=None):
        self.launches += 1
        self.run()


def _three_segment_plan():
    """input x (4 values) -> round 1 sends x's low bytes, round 2 sends the peer's bytes + 1,
    the last segment leaves the sum of the peer's round-2 bytes in the output."""
    plan = LaunchPlan(_fake_cupy(), owner=None)
    x = np.zeros(4, np.uint64).view(_Dev)
    out = np.zeros(1, np.uint64).view(_Dev)
    in2, in3 = np.zeros(4, np.uint8), np.zeros(4, np.uint8)
    out1, out2 = np.zeros(4, np.uint8), np.zeros(4, np.uint8)

    def seg1():
        out1[:] = (x & 0xFF).astype(np.uint8)

    def seg2():
        out2[:] = in2 + 1

    def seg3():
        out[0] = int(in3.astype(np.uint64).sum())

    plan.inputs = {"x": x}
    plan.outputs = {"y": out}
    plan.segments = [PlanSegment(_Graph(seg1), None, out1, 4, 4, "input"),
                     PlanSegment(_Graph(seg2), in2, out2, 4, 4, "gelu"),
                     PlanSegment(_Graph(seg3), in3, None, 0, -1, "end")]
    plan.ready = True
    return plan


def _echo_plus(k):
    sent = []

    def exchange(data, scope, limit=None):
        sent.append((bytes(data), scope, limit))
        return bytes((b + k) % 256 for b in bytes(data))
    return sent, exchange


def test_replay_feeds_each_segment_the_peer_bytes_of_the_round_before():
    plan = _three_segment_plan()
    sent, exchange = _echo_plus(10)
    log = RoundLog()
    out = plan.replay({"x": np.array([1, 2, 3, 300])}, exchange, log)
    # round 1 sends x mod 256; the peer answers +10; round 2 sends that + 1; the peer +10 again
    assert sent == [(bytes([1, 2, 3, 44]), "input", 4), (bytes([12, 13, 14, 55]), "gelu", 4)]
    assert out["y"].tolist() == [22 + 23 + 24 + 65]
    assert log.rounds == 2 and log.bytes_sent == {"input": 4, "gelu": 4}
    assert set(log.phases) == {"step", "wire", "unpack"}
    out = plan.replay({"x": np.array([5, 5, 5, 5])}, exchange, RoundLog())   # a second replay: new input
    assert out["y"].tolist() == [4 * (5 + 10 + 1 + 10)] and plan.replays == 2


def test_replay_receives_in_place_where_the_exchange_can():
    """An exchange that takes ``into=`` (Channel.exchange) gets the next segment's inbox:
    the bytes land where the next graph reads them, and the result is the same."""
    plan = _three_segment_plan()
    seen = []

    def exchange(data, scope, limit=None, into=None):
        seen.append(into is not None)
        reply = bytes((b + 10) % 256 for b in bytes(data))
        into[:len(reply)] = np.frombuffer(reply, np.uint8)
        return memoryview(into)[:len(reply)]
    out = plan.replay({"x": np.array([1, 2, 3, 300])}, exchange)
    assert seen == [True, True] and out["y"].tolist() == [22 + 23 + 24 + 65]


def test_replay_refuses_a_short_peer_message_naming_the_round():
    plan = _three_segment_plan()
    calls = []

    def exchange(data, scope, limit=None):
        calls.append(scope)
        return b"\0" * (4 if len(calls) == 1 else 3)
    with pytest.raises(PeerError, match=r"round 2 \(gelu\): peer sent 3 bytes in a round where 4 were expected"):
        plan.replay({"x": np.arange(4)}, exchange)


def test_a_peer_that_stalls_mid_replay_is_named_with_its_round():
    plan = _three_segment_plan()
    calls = []

    def exchange(data, scope, limit=None):
        calls.append(scope)
        if len(calls) == 2:
            raise PeerError("timed out after 30 s waiting for the peer", "check the other server")
        return bytes(len(data))
    with pytest.raises(PeerError, match=r"round 2 \(gelu\): timed out after 30 s"):
        plan.replay({"x": np.arange(4)}, exchange)


def test_replay_checks_its_inputs():
    plan = _three_segment_plan()
    with pytest.raises(ParameterError, match="no value given for input 'x'"):
        plan.replay({}, _echo_plus(0)[1])
    with pytest.raises(ParameterError, match="input 'x' has 5 elements, the program expects 4"):
        plan.replay({"x": np.arange(5)}, _echo_plus(0)[1])


def test_a_failing_graph_names_its_round():
    plan = _three_segment_plan()

    def boom():
        raise RuntimeError("cudaErrorIllegalAddress")
    plan.segments[1].graph = _Graph(boom)
    with pytest.raises(GpuKernelError, match=r"replaying round 2 \(gelu\) failed: cudaErrorIllegalAddress"):
        plan.replay({"x": np.arange(4)}, _echo_plus(0)[1])


def test_a_plan_runs_only_on_a_set_staged_for_it_and_only_once():
    """Replays read the keys from the device buffer stage_set fills: an evaluation whose
    keys were not staged there just before (streamed, or a set already evaluated) would run
    on the previous set's keys, i.e. use keys twice. It is refused."""
    from fusec.errors import FusecError
    from fusec.runtime.backend import StagedKeys
    from fusec.runtime.gpu_backend import GpuBackend

    be = GpuBackend.__new__(GpuBackend)       # the backend's bookkeeping, on a stand-in CuPy
    be.xp, be._plans, be._plan_runs, be._plan_refused, be.cuda_graphs = _fake_cupy(), {}, {}, {}, True
    be.device_share = 1.0
    graph = object()

    def staged():
        be._fixed_keys = StagedKeys([])       # what _stage_fixed leaves behind
        return be._fixed_keys

    first = staged()
    assert be.launch_plan(graph, first) is None                   # interpreted
    with pytest.raises(FusecError, match="no unused set was staged"):
        be.launch_plan(graph, first)                              # the same set again: refused
    plan = be.launch_plan(graph, staged())                        # recorded on a fresh set
    assert plan is not None and not plan.ready
    plan.ready = True
    keys = staged()
    assert be.launch_plan(graph, keys) is plan                    # replayed
    with pytest.raises(FusecError, match="no unused set was staged"):
        be.launch_plan(graph, keys)
    with pytest.raises(FusecError, match="no unused set was staged"):
        be.launch_plan(graph, StagedKeys([]))                     # keys from elsewhere (streamed)
    ablation = SimpleNamespace(insecure=True)    # mask-dependent shapes: never recorded, always interpreted
    for _ in range(3):
        assert be.launch_plan(ablation, staged()) is None


def test_a_plan_that_would_not_fit_is_not_recorded_and_every_inference_is_interpreted():
    """A recording needs the interpreted inference's working set again, in a pool that never
    gives a block back; running out mid-recording cannot be undone (the peer has seen the
    rounds before), so BERT-base at batch 8 on an H100 shared by both parties stopped in round
    38. Where the working set CuPy's pool caches after the first inference (here 10 GiB),
    with a margin, exceeds what this party may still allocate, no plan is recorded: every
    later inference is interpreted, and the step records say why. Where it fits, a plan is
    recorded as before."""
    from fusec.runtime.backend import StagedKeys
    from fusec.runtime.gpu_backend import PLAN_FIT_MARGIN, GpuBackend

    gib = 1 << 30

    def backend(free, share=1.0):
        be = GpuBackend.__new__(GpuBackend)
        be.xp = _fake_cupy(free=free, held=40 * gib, used=30 * gib)   # 30 GiB of keys in use, 10 GiB cached
        be._plans, be._plan_runs, be._plan_refused, be.cuda_graphs, be.device_share = {}, {}, {}, True, share
        return be

    def staged(be):
        be._fixed_keys = StagedKeys([])
        return be._fixed_keys

    graph = object()
    tight = backend(free=gib // 2)       # 0.5 GiB free on the card + 10 GiB cached < 10 GiB x margin
    assert 10.5 * gib < 10 * gib * PLAN_FIT_MARGIN
    assert tight.launch_plan(graph, staged(tight)) is None           # the first inference: interpreted
    with pytest.warns(UserWarning, match=r"launch plan was not recorded: the first inference's working set "
                                         r"\(10\.74 GB, x1\.1\) does not fit the 11\.27 GB"):
        assert tight.launch_plan(graph, staged(tight)) is None       # the second: not recorded
    for _ in range(3):
        assert tight.launch_plan(graph, staged(tight)) is None       # nor later: interpreted, no error
    assert not tight._plans
    assert "interpreted" in tight.memory_report()["plan_refused"]

    shared = backend(free=60 * gib, share=0.5)     # room on the card, but not within this party's half
    shared.launch_plan(graph, staged(shared))
    with pytest.warns(UserWarning, match="not recorded"):
        assert shared.launch_plan(graph, staged(shared)) is None

    roomy = backend(free=2 * gib)                  # 2 + 10 GiB >= 10 GiB x 1.1: recorded
    roomy.launch_plan(graph, staged(roomy))
    plan = roomy.launch_plan(graph, staged(roomy))
    assert plan is not None and not plan.ready
    assert "plan_refused" not in roomy.memory_report()


def test_the_gpu_backend_gives_its_pools_cache_back_and_reports_its_memory():
    """release_cache frees the default pool's cached blocks and says how many bytes were
    cached (the dealer's largest gate's working set); memory_report reads the card, the pool
    and the plans' pools."""
    from fusec.runtime.gpu_backend import GpuBackend

    gib = 1 << 30
    freed = []
    be = GpuBackend.__new__(GpuBackend)
    be.xp = _fake_cupy(free=20 * gib, held=12 * gib, used=4 * gib)
    be.xp.get_default_memory_pool().free_all_blocks = lambda: freed.append(True)
    be._plans, be._plan_refused = {}, {}
    assert be.memory_report() == {"card_free": 20 * gib, "card_total": 80 * gib, "pool_held": 12 * gib,
                                  "pool_used": 4 * gib, "plan_pools": 0}
    assert be.release_cache() == 8 * gib and freed == [True]


class _CudaError(Exception):
    def __init__(self, status):
        super().__init__(f"CUDA error {status}")
        self.status = status


class _OutOfMemory(MemoryError):
    def __init__(self, size, total, limit=0):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


def test_the_plans_pool_never_frees_a_block_when_the_card_is_full():
    """A CuPy pool frees every cached block and retries when its allocator fails with
    cudaErrorMemoryAllocation; the plan's cached blocks are still read by the recorded graphs
    (the seq-512 recording hit cudaErrorIllegalAddress that way). The plan's allocator raises
    out of memory as an OutOfMemoryError instead, which the pool does not catch; other CUDA
    errors pass unchanged."""
    status = {"next": None}

    def memory(size):
        if status["next"] is not None:
            raise _CudaError(status["next"])
        return SimpleNamespace(size=size)

    runtime = SimpleNamespace(CUDARuntimeError=_CudaError)     # as cupy_backends: no name for status 2
    mem = SimpleNamespace(Memory=memory, MemoryPointer=lambda m, off: SimpleNamespace(mem=m, ptr=off),
                          OutOfMemoryError=_OutOfMemory)
    cupy = _fake_cupy()
    pool = SimpleNamespace(total_bytes=lambda: 123)
    cupy.cuda.MemoryPool = lambda allocator=None: SimpleNamespace(allocator=allocator, total_bytes=pool.total_bytes)
    cupy.cuda.memory, cupy.cuda.runtime = mem, runtime
    plan = LaunchPlan(cupy, owner=None)
    assert plan.pool.allocator == plan._device_malloc
    assert plan._device_malloc(256).mem.size == 256
    status["next"] = 2
    with pytest.raises(_OutOfMemory, match="allocated so far: 123"):
        plan._device_malloc(1 << 40)
    status["next"] = 700            # cudaErrorIllegalAddress: not a memory shortage, passed on
    with pytest.raises(_CudaError):
        plan._device_malloc(256)


@pytest.mark.gpu
def test_a_full_card_leaves_the_plans_cached_blocks_allocated():
    """On a real card: a block the plan's pool caches stays allocated when a request cannot
    be met (CuPy's own pool would have released it to the driver before failing)."""
    cupy = pytest.importorskip("cupy")
    plan = LaunchPlan(cupy, owner=None)
    with cupy.cuda.using_allocator(plan.pool.malloc):
        a = cupy.empty(1 << 20, np.uint8)
        del a                                   # cached by the pool, as a recorded graph's intermediate is
        held = plan.pool.total_bytes()
        assert held >= 1 << 20
        with pytest.raises(cupy.cuda.memory.OutOfMemoryError):
            cupy.empty(1 << 46, np.uint8)       # 64 TiB: no card has it
    assert plan.pool.total_bytes() == held
