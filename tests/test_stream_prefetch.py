"""Streamed keys (--stream-keys) prefetched in chunks a bounded window ahead of the gates.

runtime/key_prefetch.py copies chunks of consecutive key slots to the device ahead of the
gates and drops each once its gates have unpacked their slots. What must hold whatever
order the gates ask in: every gate gets exactly its own slot's bytes (the oracle is the
set's bytes cut at the layout's offsets), each load waits on the copy that brought its
bytes, no dropped buffer's memory is reused before the kernels that read it ran, and the
bytes on the device stay under the window. Checked with a recording copy queue, through
the GPU backend's own code on host-built kernels (no GPU), and on a real GPU (``gpu``).
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from fusec.build import compile_model, encode_inputs, load_build
from fusec.passes.calibrate import default_feeds
from fusec.passes.options import CompileOptions
from fusec.runtime.backend import get_backend
from fusec.runtime.dealer import write_keys
from fusec.runtime.key_prefetch import KeyPrefetcher, plan_chunks
from fusec.runtime.keyio import KeyFile
from fusec.runtime.layout import KeyField, KeyLayout
from fusec.runtime.protocol import RoundLog
from tests.harness import both_parties, queue_exchanges
from tests.test_device_path import BERT_TINY, _gpu_kind, _host_kernels


# ---------------------------------------------------------------------------- a recording copy queue
class _Buf(np.ndarray):
    """A device buffer stand-in that can be weakly referenced (to see when it is dropped)."""


class RecordingCopies:
    """Synchronous copies that log every copy, wait and fence, and keep a weak reference to
    each buffer so a test can tell which are still held."""

    def __init__(self, whole: np.ndarray) -> None:
        self.base = whole.ctypes.data
        self.log: list[tuple] = []
        self.live: list[tuple[weakref.ref, int]] = []
        self.ranges: dict[int, tuple[int, int]] = {}    # token -> the set's bytes it copied
        self._tokens = 0

    def copy(self, host):
        buf = np.array(host, copy=True).view(_Buf)
        self._tokens += 1
        start = host.ctypes.data - self.base
        self.ranges[self._tokens] = (start, start + host.nbytes)
        self.live.append((weakref.ref(buf), buf.nbytes))
        self.log.append(("copy", self._tokens, buf.nbytes))
        return buf, self._tokens

    def wait(self, token) -> None:
        self.log.append(("wait", token))

    def fence(self) -> None:
        self.log.append(("fence",))

    def held_bytes(self) -> int:
        gc.collect()
        return sum(n for r, n in self.live if r() is not None)


def _layout(sizes: list[int]) -> KeyLayout:
    """One 64-bit field of ``n`` values per gate: slot ``i`` is ``8 * sizes[i]`` bytes."""
    return KeyLayout([(f"g{i}", "test", n, (KeyField("k", (n,), 64),)) for i, n in enumerate(sizes)])


def _set(layout: KeyLayout, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, layout.set_nbytes, dtype=np.uint8)


SIZES = [3, 0, 40, 7, 1, 120, 16, 16, 16, 2, 0, 64, 5, 9, 200, 1, 33, 8, 8, 8, 70, 4]  # uint64s per slot


def _prefetcher(chunk: int = 256, ahead: int = 768, sizes=SIZES, log=None):
    layout = _layout(sizes)
    host = _set(layout)
    copies = RecordingCopies(host)

    def unpack(slot, raw):
        copies.log.append(("unpack", slot.gate_id, len(raw)))
        if log is not None:
            log.append(copies.held_bytes())
        return {"k": np.array(raw, copy=True)}

    return layout, host, copies, KeyPrefetcher(layout, host, copies, unpack, chunk, ahead)


def _expected(layout, host, gate_id):
    s = layout.slot(gate_id)
    return host[s.offset:s.offset + s.nbytes]


# ---------------------------------------------------------------------------- chunk plan
@pytest.mark.parametrize("chunk", [1, 64, 256, 1000, 1 << 30])
def test_chunks_cover_the_set_in_layout_order(chunk):
    layout = _layout(SIZES)
    chunks = plan_chunks(layout, chunk)
    assert [g for c in chunks for g in c.gate_ids] == layout.gate_ids
    assert chunks[0].start == 0 and chunks[-1].end == layout.set_nbytes
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    for c in chunks:
        assert c.nbytes <= chunk or len(c.gate_ids) == 1


# ---------------------------------------------------------------------------- any order, same bytes
ORDERS = {
    "layout": lambda ids: ids,
    "reversed": lambda ids: ids[::-1],
    "neighbours swapped": lambda ids: [ids[i ^ 1] for i in range(len(ids) - len(ids) % 2)] + ids[len(ids) - len(ids) % 2:],
    "shuffled": lambda ids: list(np.random.default_rng(5).permutation(ids)),
    "first gate last": lambda ids: ids[1:] + ids[:1],
    "each twice": lambda ids: [g for g in ids for _ in (0, 1)],
}


@pytest.mark.parametrize("order", ORDERS, ids=list(ORDERS))
@pytest.mark.parametrize("chunk,ahead", [(256, 768), (1, 0), (10_000, 10_000), (512, 512)])
def test_every_gate_gets_its_own_bytes_in_any_order(order, chunk, ahead):
    layout, host, copies, pf = _prefetcher(chunk, ahead)
    assert copies.log == []                                   # nothing before the first gate asks
    for g in ORDERS[order](layout.gate_ids):
        got = pf.load(g)["k"]
        assert np.array_equal(got, _expected(layout, host, g)), (order, g)
    largest = max(c.nbytes for c in pf.chunks)
    assert pf.stats.peak_ahead_bytes <= max(ahead, largest)
    assert pf.resident_chunks == [] and copies.held_bytes() == 0   # everything dropped at the end


def test_in_layout_order_every_byte_is_copied_once_in_chunks():
    layout, host, copies, pf = _prefetcher(256, 768)
    for g in layout.gate_ids:
        pf.load(g)
    assert pf.stats.lone_copies == 0 and pf.stats.evicted == 0
    assert pf.stats.copied_bytes == layout.set_nbytes == sum(e[2] for e in copies.log if e[0] == "copy")
    assert pf.stats.chunk_copies == len(pf.chunks) < len(layout.gate_ids)


# ---------------------------------------------------------------------------- ordering against the compute stream
@pytest.mark.parametrize("order", ["layout", "shuffled", "first gate last"])
def test_each_unpack_waits_on_the_copy_that_brought_its_bytes(order):
    layout, host, copies, pf = _prefetcher(256, 768)
    for g in ORDERS[order](layout.gate_ids):
        pf.load(g)
    # Replay the log: every unpack directly follows a wait on a copy already made whose
    # bytes hold that gate's slot (a chunk containing it, or the slot alone).
    log, copied, served = copies.log, set(), set()
    for n, e in enumerate(log):
        if e[0] == "copy":
            copied.add(e[1])
        if e[0] == "unpack":
            served.add(e[1])
            slot = layout.slot(e[1])
            if not slot.nbytes:                  # no bytes, nothing to wait for
                continue
            assert log[n - 1][0] == "wait", log[n - 3:n + 1]
            token = log[n - 1][1]
            assert token in copied
            start, end = copies.ranges[token]
            assert start <= slot.offset and slot.offset + slot.nbytes <= end
    assert served == set(layout.gate_ids)


def test_no_copy_follows_a_dropped_buffer_without_a_fence():
    """A dropped buffer's memory goes back to the copy stream's pool: the next copy may
    land in it, so the copy stream must first wait for the unpack that read it."""
    layout, host, copies, pf = _prefetcher(256, 768)
    drops = []                                  # log index of the unpack after which a buffer died
    for g in ORDERS["shuffled"](layout.gate_ids):
        gc.collect()
        dead_before = {id(r) for r, _ in copies.live if r() is None}
        n0 = len(copies.log)
        pf.load(g)
        gc.collect()
        if any(r() is None and id(r) not in dead_before for r, _ in copies.live):
            drops.append(n0 + [e[0] for e in copies.log[n0:]].index("unpack"))
    kinds = [e[0] for e in copies.log]
    checked = 0
    for d in drops:
        nxt = next((i for i in range(d, len(kinds)) if kinds[i] == "copy"), None)
        if nxt is not None:
            assert "fence" in kinds[d:nxt], copies.log[d:nxt + 1]
            checked += 1
    assert pf.stats.lone_copies and checked > 5          # lone slots and whole chunks were dropped


# ---------------------------------------------------------------------------- bounded memory
@pytest.mark.parametrize("order", ["layout", "neighbours swapped", "shuffled", "first gate last"])
def test_device_bytes_stay_within_the_window(order):
    held: list[int] = []
    layout, host, copies, pf = _prefetcher(256, 768, log=held)
    for g in ORDERS[order](layout.gate_ids):
        pf.load(g)
    largest_chunk = max(c.nbytes for c in pf.chunks)
    largest_slot = max(s.nbytes for s in layout.slots)
    # queued chunks (<= the window, or one chunk if larger) plus the slot being unpacked on its own
    assert max(held) <= max(768, largest_chunk) + largest_slot, held


def test_consumed_chunks_are_released():
    layout, host, copies, pf = _prefetcher(256, 768)
    first = pf.chunks[0]
    for g in first.gate_ids:
        pf.load(g)
    assert 0 not in pf.resident_chunks
    gc.collect()
    assert copies.live[0][0]() is None                        # the first chunk's buffer is gone


def test_a_gate_that_starts_late_does_not_stall_the_window():
    """Gate g0 (first chunk) asked last: its chunk is dropped once the window has moved far
    on, the rest still streams in chunks, and g0 gets its bytes from a copy of its own."""
    layout, host, copies, pf = _prefetcher(256, 768, sizes=[4] + [30] * 60)
    ids = layout.gate_ids
    for g in ids[1:] + ids[:1]:
        assert np.array_equal(pf.load(g)["k"], _expected(layout, host, g))
    assert pf.stats.evicted == 1 and pf.stats.lone_copies == 1
    assert pf.stats.chunk_copies == len(pf.chunks)
    assert pf.stats.peak_ahead_bytes <= 768


# ---------------------------------------------------------------------------- the GPU backend's code
@pytest.fixture(scope="module")
def bert_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_tiny_stream")
    compile_model(BERT_TINY, out, CompileOptions(bits=37), batch=1, seq=8)
    return load_build(out)


DEVICES = [pytest.param(_host_kernels, id="hostkernels"),
           pytest.param(_gpu_kind, id="gpu", marks=pytest.mark.gpu)]


def _small_window(be, chunk: int = 4096, ahead: int = 12288):
    be.stream_chunk_bytes, be.stream_ahead_bytes = chunk, ahead
    return be


@pytest.mark.parametrize("order", ["layout", "shuffled", "first gate last"])
@pytest.mark.parametrize("device", DEVICES)
def test_backend_streamed_keys_are_the_staged_keys(bert_build, tmp_path, device, order):
    write_keys(bert_build.gates, tmp_path, 1, seed=b"prefetch")
    layout = bert_build.gates.layout()
    with KeyFile.open(tmp_path / "p0.key", layout, 0) as kf:
        raw = kf._read_set(0)
    be = _small_window(device()())
    staged, streamed = be.stage_set(layout, raw), be.stage_set(layout, raw, stream=True)
    assert not streamed.unpacked_up_front
    for g in ORDERS[order](layout.gate_ids):
        a, b = staged[g], streamed[g]
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(be.asnumpy(a[name]), be.asnumpy(b[name])), (g, name)
    be.synchronize()
    stats = be.last_prefetch.stats
    assert stats.chunk_copies > 10 and be.last_prefetch.resident_chunks == []
    if order == "layout":
        assert stats.lone_copies == 0 and stats.copied_bytes == layout.set_nbytes


@pytest.mark.parametrize("device", DEVICES)
def test_release_keys_lets_go_of_the_host_set(bert_build, tmp_path, device):
    """After the online phase the backend must not keep the streamed set's host bytes:
    the next set is received before a new stream replaces this one, and two 34 GB batch-8
    sets per server ran the H100 host out of memory (P0 killed, status -9)."""
    import weakref

    write_keys(bert_build.gates, tmp_path, 1, seed=b"release")
    layout = bert_build.gates.layout()
    with KeyFile.open(tmp_path / "p0.key", layout, 0) as kf:
        raw = np.array(kf._read_set(0))       # an array of our own: only the stream may keep it
    be = _small_window(device()())
    be._page_locked = lambda host: host       # the stand-in keeps ``raw`` itself, as a too-large set does
    keys = be.stage_set(layout, raw, stream=True)
    for g in layout.gate_ids[:3]:
        keys[g]
    alive = weakref.ref(raw)
    del raw, keys
    be.release_keys()
    assert alive() is None
    assert be.last_prefetch.resident_chunks == []


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_on_streamed_keys_opens_what_the_cpu_opens(bert_build, tmp_path, device, monkeypatch):
    """Both parties evaluate on prefetched keys, gates asking in dataflow order (not layout
    order), with a window of a few small chunks: same messages and outputs as the CPU."""
    write_keys(bert_build.gates, tmp_path, 1, seed=b"prefetch-run")
    feeds = default_feeds(bert_build.ir, seed=4)
    layout = bert_build.gates.layout()
    kind = device()
    prefetchers = []

    def run(make, stream):
        sent, out, ex = [[], []], [None, None], queue_exchanges()

        def work(p):
            be = make()
            with KeyFile.open(tmp_path / f"p{p}.key", layout, p) as kf:
                raw = kf._read_set(0)
            keys = be.stage_set(layout, raw, stream=stream)
            if stream:
                prefetchers.append(be.last_prefetch)

            def exchange(data, scope, limit=None):
                sent[p].append(bytes(data))
                return ex[p](data, scope, limit)

            inputs = encode_inputs(bert_build, feeds, p) if p == 1 else {}
            out[p] = bert_build.gates.evaluate(p, keys, inputs, exchange, be, RoundLog())

        both_parties(work)
        return out[1], sent

    out_cpu, sent_cpu = run(lambda: get_backend("cpu"), False)
    out_dev, sent_dev = run(lambda: _small_window(kind()), True)
    assert len(sent_cpu[0]) == len(sent_dev[0]) > 10
    for p in (0, 1):
        for r, (a, b) in enumerate(zip(sent_cpu[p], sent_dev[p])):
            assert a == b, f"party {p}, round {r}: streamed keys opened different bytes"
    assert out_cpu.keys() == out_dev.keys()
    for k in out_cpu:
        assert np.array_equal(out_cpu[k], out_dev[k])
    for pf in prefetchers:      # dataflow order stays close to layout order: no key byte crosses twice
        assert pf.stats.chunk_copies > 10 and pf.resident_chunks == []
        assert pf.stats.copied_bytes == layout.set_nbytes and pf.stats.evicted == 0, pf.stats


@pytest.mark.gpu
def test_gpu_streams_from_page_locked_memory_on_its_own_stream(bert_build, tmp_path):
    """On a GPU: a set in ordinary memory is moved to the page-locked buffer (else copies
    are synchronous), chunks go on a non-blocking stream, and the bytes are the staged ones."""
    kind = _gpu_kind()
    write_keys(bert_build.gates, tmp_path, 1, seed=b"prefetch-gpu")
    layout = bert_build.gates.layout()
    with KeyFile.open(tmp_path / "p1.key", layout, 1) as kf:
        raw = kf._read_set(0)                         # ordinary (pageable) memory
    be = _small_window(kind())
    assert not be._is_page_locked(raw)
    streamed = be.stage_set(layout, raw, stream=True)
    prefetch = be.last_prefetch
    assert prefetch is streamed._load.__self__
    assert be._is_page_locked(prefetch.host) and np.array_equal(prefetch.host, raw)
    assert be._copy_stream is not None and be._copy_stream.ptr != 0
    assert be._copy_stream.ptr != be.xp.cuda.get_current_stream().ptr
    staged = be.stage_set(layout, raw)
    for g in ORDERS["shuffled"](layout.gate_ids):
        a, b = staged[g], streamed[g]
        for name in a:
            assert np.array_equal(be.asnumpy(a[name]), be.asnumpy(b[name])), (g, name)
    assert prefetch.stats.chunk_copies > 1 and prefetch.resident_chunks == []
    be.synchronize()


@pytest.mark.gpu
def test_gpu_streams_a_set_too_large_to_pin_through_the_bounce_ring(bert_build, tmp_path):
    """On a GPU: a set that stays in ordinary memory (as a 34 GB batch-8 set does) is copied
    through the ring of page-locked buffers, and every gate gets the staged bytes."""
    from fusec.runtime.key_prefetch import BouncedCopies

    write_keys(bert_build.gates, tmp_path, 1, seed=b"bounce-gpu")
    layout = bert_build.gates.layout()
    with KeyFile.open(tmp_path / "p0.key", layout, 0) as kf:
        raw = kf._read_set(0)
    be = _small_window(_gpu_kind()())
    be._page_locked = lambda host: host                  # too large to pin
    streamed = be.stage_set(layout, raw, stream=True)
    assert isinstance(be.last_prefetch.copies, BouncedCopies)
    staged = be.stage_set(layout, raw)
    for g in ORDERS["shuffled"](layout.gate_ids):
        a, b = staged[g], streamed[g]
        for name in a:
            assert np.array_equal(be.asnumpy(a[name]), be.asnumpy(b[name])), (g, name)
    be.synchronize()


# ---------------------------------------------------------------------------- page-locked host memory
def test_a_pageable_set_is_moved_to_the_page_locked_buffer():
    """Asynchronous copies need page-locked memory: a set read into the page-locked buffer
    is used in place, one in ordinary memory is copied there, and one too large for it
    stays where it is (its copies are synchronous). CUDA's answers are stubbed."""
    import types

    from fusec.runtime.gpu_backend import GpuBackend

    pinned_region = np.zeros(1 << 16, np.uint8)             # stands in for page-locked memory
    runtime = types.SimpleNamespace(pointerGetAttributes=lambda ptr: types.SimpleNamespace(type=0))
    be = GpuBackend.__new__(GpuBackend)
    be.xp = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))
    be._key_host = None

    def host_buffer(nbytes):
        if nbytes > pinned_region.nbytes:                   # more than the host may keep page-locked
            return None
        be._key_host = pinned_region
        return pinned_region[:nbytes]

    be.host_buffer = host_buffer
    data = np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8)
    moved = be._page_locked(data)
    assert moved.ctypes.data == pinned_region.ctypes.data and np.array_equal(moved, data)
    again = be._page_locked(pinned_region[:5000])            # already there: used in place
    assert again.ctypes.data == pinned_region.ctypes.data
    big = np.ones(pinned_region.nbytes + 1, np.uint8)
    assert be._page_locked(big) is big                       # too large: ordinary memory
    runtime.pointerGetAttributes = lambda ptr: types.SimpleNamespace(type=1)   # CUDA says page-locked
    elsewhere = np.ones(100, np.uint8)
    assert be._page_locked(elsewhere) is elsewhere


def test_parallel_copy_copies_every_byte():
    from fusec.runtime.device_keys import _parallel_copy

    for n in (0, 7, 4096, 3 * 4096 + 5):
        src = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
        dst = np.zeros(n, np.uint8)
        _parallel_copy(dst, src, part=4096)
        assert np.array_equal(dst, src)


# ---------------------------------------------------------------------------- the CUDA calls, stubbed
class _FakeCuda:
    """Just enough of CuPy's stream/event API to record what CudaCopies asks of CUDA."""

    def __init__(self) -> None:
        import types

        self.log: list[tuple] = []
        self.current = ["compute"]
        log, current = self.log, self.current

        class Stream:
            def __init__(self, name):
                self.name = name

            def __enter__(self):
                current.append(self.name)

            def __exit__(self, *exc):
                current.pop()

            def wait_event(self, ev):
                log.append(("wait", self.name, ev.recorded_on))

        class Event:
            def __init__(self, disable_timing=False):
                self.recorded_on = None

            def record(self, stream):
                self.recorded_on = stream.name
                log.append(("record", stream.name))

        class Array:
            def __init__(self, n):
                self.n = n
                log.append(("alloc", current[-1], n))

            def set(self, host, stream=None):
                log.append(("copy", stream.name, host.nbytes))

        self.copy_stream = Stream("copy")
        self.cuda = types.SimpleNamespace(Event=Event, get_current_stream=lambda: Stream(current[-1]))
        self.empty = lambda n, dtype: Array(n)


def test_cuda_copies_allocate_and_copy_on_the_copy_stream_and_order_both_ways():
    from fusec.runtime.key_prefetch import CudaCopies

    cp = _FakeCuda()
    q = CudaCopies(cp, cp.copy_stream)
    buf, ev = q.copy(np.zeros(100, np.uint8))
    # allocated while the copy stream is current (its pool arena), copied on it, event after
    assert cp.log == [("alloc", "copy", 100), ("copy", "copy", 100), ("record", "copy")]
    assert ev.recorded_on == "copy" and cp.current == ["compute"]
    cp.log.clear()
    q.wait(ev)                                   # the compute stream waits for the copy
    assert cp.log == [("wait", "compute", "copy")]
    cp.log.clear()
    q.fence()                                    # later copies wait for the compute work so far
    assert cp.log == [("record", "compute"), ("wait", "copy", "compute")]


# ---------------------------------------------------------------------------- pageable sets: the bounce ring
class _DevBytes(np.ndarray):
    """A numpy byte array standing in for a device array: ``set`` copies (and logs) the host bytes."""

    log: list = []

    def set(self, host, stream=None):
        _DevBytes.log.append(("copy", stream.name, host.nbytes, host.ctypes.data))
        self[...] = host


class _FakeCudaBytes(_FakeCuda):
    """_FakeCuda whose arrays hold real bytes and whose events can be waited on by the host."""

    def __init__(self) -> None:
        super().__init__()
        log = self.log
        _DevBytes.log = log
        Event = self.cuda.Event

        class WaitableEvent(Event):
            def synchronize(self):
                log.append(("host waits", self.recorded_on))

        self.cuda.Event = WaitableEvent
        self.empty = lambda n, dtype: np.zeros(n, np.uint8).view(_DevBytes)


def test_a_pageable_set_goes_through_a_bounded_ring_of_page_locked_buffers():
    """Every byte arrives; no piece is larger than a ring buffer; only ``slots`` buffers are
    ever made; a buffer is refilled only after the host waited for the copy out of it."""
    from fusec.runtime.key_prefetch import BouncedCopies

    cp, made = _FakeCudaBytes(), []

    def pinned(n):
        made.append(np.zeros(n, np.uint8))
        return made[-1]

    q = BouncedCopies(cp, cp.copy_stream, pinned, slot_bytes=100, slots=2)
    host = np.random.default_rng(7).integers(0, 256, 1000, dtype=np.uint8)
    for lo, hi in ((0, 250), (250, 250), (250, 999), (999, 1000)):
        dev, ev = q.copy(host[lo:hi])
        assert np.array_equal(np.asarray(dev), host[lo:hi]) and ev.recorded_on == "copy"
    assert len(made) == 2 and all(b.size == 100 for b in made)
    copies = [e for e in cp.log if e[0] == "copy"]
    assert all(e[1] == "copy" and e[2] <= 100 for e in copies) and sum(e[2] for e in copies) == 1000
    ring = {b.ctypes.data for b in made}
    assert all(e[3] in ring for e in copies)                     # every device copy reads a ring buffer
    # a ring buffer is refilled (its next copy) only after the host waited for its last one
    waits = [i for i, e in enumerate(cp.log) if e[0] == "host waits"]
    assert len(waits) == len(copies) - 2 and all(cp.log[i + 1][0] == "copy" for i in waits)


def test_streamed_sets_pick_the_copy_queue_by_their_host_memory(monkeypatch):
    """Page-locked sets are copied straight; pageable ones through the (kept) bounce ring."""
    import sys
    import types

    from fusec.runtime.device_keys import DeviceKeys
    from fusec.runtime.key_prefetch import BouncedCopies, CudaCopies

    cp = _FakeCudaBytes()
    cp.cuda.Stream = lambda non_blocking=False: cp.copy_stream
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=lambda n, dtype: np.zeros(n, dtype)))
    keys = DeviceKeys()
    keys.xp = cp
    pinned = np.zeros(10, np.uint8)
    keys._is_page_locked = lambda host: host is pinned
    assert type(keys._copy_queue(pinned)) is CudaCopies
    first = keys._copy_queue(np.zeros(10, np.uint8))
    assert isinstance(first, BouncedCopies) and keys._copy_queue(np.zeros(5, np.uint8)) is first
