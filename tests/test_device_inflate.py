"""Seeded shares regenerated on the device (runtime/device_inflate.py), checked on the CPU
through the host build of the kernels.

The oracles: the host's own inflation (runtime/seeded_shares.py, tested against numpy's cut
of the PRG stream in tests/test_seeded_shares.py) for the bytes, and the CPU backend's keys
and outputs on the same key files for every staging path a GPU server takes.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from fusec.runtime.backend import StagedKeys, get_backend
from fusec.runtime.dealer import write_keys
from fusec.runtime.device_inflate import StoredSet, inflate_run
from fusec.runtime.keyio import KeyFile
from fusec.runtime.layout import KeyField, KeyLayout
from fusec.runtime.seeded_shares import inflated, party_layout, seeded_parties
from tests.fakedevice import fakecupy
from tests.test_device_path import BERT_TINY, _gpu_kind, _host_kernels
from tests.test_seeded_shares import _random_layout


@pytest.fixture(scope="module")
def bert_build(tmp_path_factory):
    from fusec.build import compile_model, load_build
    from fusec.passes.options import CompileOptions

    out = tmp_path_factory.mktemp("bert_tiny_build")
    compile_model(BERT_TINY, out, CompileOptions(bits=37), batch=1, seq=8)
    return load_build(out)


@pytest.mark.parametrize("where", ["hostkernels", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("seed", range(4))
def test_the_device_writes_the_hosts_inflated_bytes(seed, where):
    """Random layouts (fields of 1 to 64 bits, empty ones, 60% shares), random stored bytes:
    the device's inflation of the whole set, and of runs of one slot, equals the host's byte
    for byte (padding included)."""
    be = _host_kernels()() if where == "hostkernels" else _gpu_kind()()
    xp = be.xp
    rng = np.random.default_rng(seed)
    layout = _random_layout(rng, 40)
    for p in (0, 1):
        sset = StoredSet(layout, p)
        assert sset.seeded == {g for g, q in seeded_parties(layout).items() if q == p} and sset.seeded
        raw = rng.integers(0, 256, party_layout(layout, p).set_nbytes, dtype=np.uint8)
        want = inflated(layout, p, raw)
        whole = xp.zeros(layout.set_nbytes, np.uint8)
        inflate_run(be.kernels, sset, sset.pairs(), xp.asarray(raw), whole)
        assert np.array_equal(be.asnumpy(whole), want), (seed, p)
        for full, st in sset.pairs():
            one = xp.full(full.nbytes, 0xA5, np.uint8)
            inflate_run(be.kernels, sset, [(full, st)], xp.asarray(raw[st.offset:st.end]), one)
            assert np.array_equal(be.asnumpy(one), want[full.offset:full.end]), (seed, p, full.gate_id)


def test_a_party_without_seeds_keeps_its_layout():
    layout = KeyLayout([("g0", "k", 1, (KeyField("r", (300,), 50, share=True), KeyField("cw", (3,), 64)))])
    owner = seeded_parties(layout)[layout.slots[0].gate_id]
    other = StoredSet(layout, 1 - owner)
    assert not other.seeded and other.stored is layout
    assert StoredSet(layout).stored is layout and not StoredSet(layout).seeded


def _stored_and_cpu(build, where, party):
    """``party``'s set 0 as a GPU server claims it (stored layout, not inflated) and the CPU
    backend's keys of the same set (inflated on the host)."""
    layout = build.gates.layout()
    with KeyFile.open(where / f"p{party}.key", layout, party, where / "state-a") as kf:
        kf.inflate = False
        assert kf.set_nbytes == party_layout(layout, party).set_nbytes < layout.set_nbytes
        reader = kf.claim(0)
        assert reader.seeded_party == party and reader.layout == party_layout(layout, party)
        stored = reader.read_all_raw().copy()
        reader.finish()
    with KeyFile.open(where / f"p{party}.key", layout, party, where / "state-b") as kf:
        cpu = get_backend("cpu").stage_set(layout, kf.claim(0).read_all_raw())
    return stored, cpu


PATHS = ["up front", "up front in small chunks", "streamed", "plan arena", "plan, stored, unpacked late",
         "plan, inflated early, unpacked late", "stored, unpacked late", "inflated early, unpacked late"]


@pytest.mark.parametrize("path", PATHS)
def test_every_staging_path_of_a_stored_set_gives_the_cpus_keys(bert_build, tmp_path, path):
    """A set kept in its stored layout and inflated on the device where each staging path
    unpacks it (before the clock, chunk by chunk; per gate from a streamed window; into a launch
    plan's arena; per gate from the plan's fixed buffer or the whole set on the card, inflated
    there before the clock or as each gate starts) gives every gate the arrays the CPU inflates
    and unpacks on the host."""
    write_keys(bert_build.gates, tmp_path, 1, seed=b"device-inflate")
    layout = bert_build.gates.layout()
    for p in (0, 1):
        stored, cpu = _stored_and_cpu(bert_build, tmp_path, p)
        be = _host_kernels()()
        be.stage_chunk_bytes = 4096 if "small" in path or "early" in path else be.stage_chunk_bytes
        be.inflate_early = "early" in path
        if path.startswith("plan"):
            be.cuda_graphs = True
            if "late" in path:
                be._plan_arena = False
        if path.endswith("unpacked late") and not path.startswith("plan"):
            sset, host = be.stored_set(layout, stored, p)
            sset, dev = be._packed_on_device(sset, host, be.inflate_early)
            assert dev.size == (layout.set_nbytes if be.inflate_early else stored.size)
            if be.inflate_early:            # the whole set, inflated on the device: the host's bytes
                assert not sset.seeded and np.array_equal(fakecupy.asnumpy(dev), inflated(layout, p, stored))
            staged = StagedKeys(layout.gate_ids, load=be._late_unpack(sset, dev))
        else:
            staged = be.stage_set(layout, stored, stream=path == "streamed", seeded_party=p)
            # the bench's footnote: shares written inside the clock
            assert staged.shares_late == (path in ("streamed", "plan, stored, unpacked late")), path
        if "plan" in path and "late" in path:
            assert be._plan_keys.size == (layout.set_nbytes if be.inflate_early else stored.size)
        assert list(staged) == layout.gate_ids
        for g in reversed(layout.gate_ids):          # any order: each gate inflates its own slot
            got = staged[g]
            assert got.keys() == cpu[g].keys(), (path, p, g)
            for name, v in cpu[g].items():
                assert np.array_equal(fakecupy.asnumpy(got[name]), v), (path, p, g, name)


def test_a_plans_buffer_keeps_the_layout_it_was_made_for(bert_build, tmp_path):
    """A recorded plan reads its keys at fixed addresses: once its buffer holds inflated sets,
    later sets go there inflated too, whatever the memory free says then (and the same for
    stored sets)."""
    write_keys(bert_build.gates, tmp_path, 2, seed=b"sticky")
    layout = bert_build.gates.layout()
    for first in (True, False):
        be = _host_kernels()()
        be.cuda_graphs, be._plan_arena, be.inflate_early = True, False, first
        with KeyFile.open(tmp_path / "p0.key", layout, 0, tmp_path / f"state-{first}") as kf:
            kf.inflate = False
            sets = [kf._read_set(j).copy() for j in (0, 1)]
            kf.inflate = True
            cpu = [get_backend("cpu").stage_set(layout, kf._read_set(j)) for j in (0, 1)]
        be.stage_set(layout, sets[0], seeded_party=0)
        buf = be._plan_keys
        be.inflate_early = not first
        staged = be.stage_set(layout, sets[1], seeded_party=0)
        assert be._plan_keys is buf and buf.size == (layout.set_nbytes if first else sets[1].size)
        for g in layout.gate_ids:
            for name, v in cpu[1][g].items():
                assert np.array_equal(fakecupy.asnumpy(staged[g][name]), v), (first, g, name)


def test_a_set_is_inflated_early_where_it_fits_with_the_online_phases_room(monkeypatch):
    """By the memory free: the full set, a third of it for the online phase (activations and
    launch-plan pools took a third of BERT-base's set at batch 8 and seq 512) and a chunk to
    stage it through."""
    layout = KeyLayout([("g0", "k", 1, (KeyField("r", (3000,), 50, share=True), KeyField("cw", (3,), 64)))])
    be = _host_kernels()()
    sset = StoredSet(layout, seeded_parties(layout)["g0"])
    full = layout.set_nbytes
    be.xp = type("CudaXp", (), {"cuda": None})()
    monkeypatch.setattr(type(be), "synchronize", lambda self: None)
    be.stage_chunk_bytes = 1000
    for free, want in ((full * 4 // 3 + 1008, True), (full * 4 // 3 + 992, False)):
        monkeypatch.setattr(type(be), "_free_bytes", lambda self, free=free: (free, 80 << 30))
        assert be._inflate_early(sset) is want, free
    be.inflate_early = False
    monkeypatch.setattr(type(be), "_free_bytes", lambda self: (1 << 40, 80 << 30))
    assert be._inflate_early(sset) is False
    be.inflate_early = True
    assert be._inflate_early(StoredSet(layout)) is False        # nothing seeded: nothing to inflate


def test_a_gpu_server_claims_its_set_stored_and_opens_the_cpus_outputs(bert_build, tmp_path):
    """Both servers on the GPU backend's code (host kernels) claim their sets as a GPU server
    does (``open_keys(inflate=not be.seeded_shares_on_device)``: the stored layout, read into
    its own bytes) and run the online phase: the outputs are the CPU servers'."""
    from fusec.build import encode_inputs
    from fusec.passes.calibrate import default_feeds
    from fusec.runtime.channel import local_channel_pair
    from fusec.runtime.party import open_keys, run_party

    paths = write_keys(bert_build.gates, tmp_path, 1, seed=b"server")
    feeds = default_feeds(bert_build.ir, seed=5)
    outs = {}
    for kind in ("cpu", "device"):
        c0, c1 = local_channel_pair(timeout=60.0)
        res, errors = {}, []

        def go(p, ch, kind=kind):
            try:
                be = get_backend("cpu") if kind == "cpu" else _host_kernels()()
                assert be.seeded_shares_on_device == (kind == "device")
                kf, idx = open_keys(bert_build.gates, p, paths[p], tmp_path / kind,
                                    inflate=not be.seeded_shares_on_device)
                with kf:
                    assert kf.set_nbytes == (party_layout(bert_build.gates.layout(), p).set_nbytes
                                             if kind == "device" else bert_build.gates.layout().set_nbytes)
                    inputs = encode_inputs(bert_build, feeds, p) if p == 1 else {}
                    res[p] = run_party(bert_build.gates, p, kf, idx, ch, inputs, be)
            except BaseException as e:  # noqa: BLE001 - reported on the test's thread
                errors.append(e)
                ch.close()
        ts = [threading.Thread(target=go, args=(p, c)) for p, c in ((0, c0), (1, c1))]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert not errors, errors
        outs[kind] = res[1].outputs
    assert outs["cpu"].keys() == outs["device"].keys()
    for k, v in outs["cpu"].items():
        np.testing.assert_array_equal(outs["device"][k], v)


def test_early_inflation_stages_through_a_pool_given_back_after(bert_build, tmp_path):
    """The staging chunks of an early inflation come from a memory pool of their own, whose
    blocks go back to the card once the set is inflated (a chunk left cached in the party's
    pool starved the dealer sharing the card); the inflated set itself stays in the party's."""
    import contextlib
    import types

    write_keys(bert_build.gates, tmp_path, 1, seed=b"transient")
    layout = bert_build.gates.layout()
    stored, _ = _stored_and_cpu(bert_build, tmp_path, 0)
    events, current = [], [None]

    class Pool:
        def malloc(self, n):
            events.append(("malloc", n))

        def free_all_blocks(self):
            events.append(("free", current[0]))

    @contextlib.contextmanager
    def using_allocator(alloc):
        current[0] = alloc
        events.append("enter")
        yield
        events.append("leave")
        current[0] = None

    def empty(n, dtype):
        events.append(("empty", int(n), current[0] is not None))
        return fakecupy.empty(n, dtype)

    be = _host_kernels()()
    be.stage_chunk_bytes = 4096
    be.xp = types.SimpleNamespace(asarray=fakecupy.asarray, ndarray=fakecupy.ndarray, zeros=fakecupy.zeros,
                                  empty=empty, cuda=types.SimpleNamespace(MemoryPool=Pool,
                                                                          using_allocator=using_allocator))
    sset, host = be.stored_set(layout, stored, 0)
    _, dev = be._packed_on_device(sset, host, True)
    assert np.array_equal(fakecupy.asnumpy(dev), inflated(layout, 0, stored))
    allocs = [e for e in events if e[0] == "empty"]
    assert allocs[0] == ("empty", layout.set_nbytes, False)          # the set: the party's own pool
    assert len(allocs) > 1 and all(inside for _, _, inside in allocs[1:])   # chunks: the transient pool
    assert events[-2:] == ["leave", ("free", None)]
