"""Launch plans (--cuda-graphs): a replayed inference opens exactly what the interpreter opens.

runtime/launch_plan.py records a build's second inference on the GPU as one CUDA graph per
round and replays the graphs for later inferences, with new key sets, new inputs and new
peer bytes in buffers at the recorded addresses. The oracle is the CPU backend evaluating
the same key set on the same input: every message of every round and every output must be
byte-identical, for the interpreted first inference, the recorded second one and the
replayed ones after it. A replay that read a stale key, input or constant would differ.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import compile_model, encode_inputs, load_build
from fusec.passes.calibrate import default_feeds
from fusec.passes.options import CompileOptions
from fusec.runtime.backend import get_backend
from fusec.runtime.dealer import write_keys
from fusec.runtime.keyio import KeyFile
from fusec.runtime.protocol import RoundLog
from tests.harness import both_parties, queue_exchanges
from tests.test_device_path import BERT_TINY, _gpu_kind, _host_kernels

SETS = 4      # interpreted, recorded, replayed twice


@pytest.fixture(scope="module")
def bert_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_tiny_plan")
    compile_model(BERT_TINY, out, CompileOptions(bits=37), batch=1, seq=8)
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
                raw = kf._read_set(j)
            keys = be.stage_set(layout, raw)

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


def test_without_a_gpu_the_flag_interprets(bert_build, key_dir):
    """The host-built kernels (no CUDA) never record: the same bytes as the CPU, no plan."""
    ref = _run_sets(bert_build, key_dir, [get_backend("cpu"), get_backend("cpu")], graphs=False)
    backends = [_host_kernels()(), _host_kernels()()]
    got = _run_sets(bert_build, key_dir, backends, graphs=True)
    _assert_same(ref, got, "host kernels")
    assert all(not getattr(be, "_plans", {}) for be in backends)
