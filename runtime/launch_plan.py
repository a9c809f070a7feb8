"""A launch plan: each round's local work captured once as a CUDA graph, then replayed.

The online phase's shape never depends on masks or inputs: every inference of a build
launches the same kernels on the same sizes in the same order, and opens the same number
of bytes in every round (the keystream layout fixes it at compile time). Only data changes
between inferences: the key set, the input, the peer's bytes. So the GPU backend records
the work between two exchanges once (the unpack of the peer's bytes, every gate's local
steps, the pack of the next message) as a CUDA graph over buffers at fixed addresses, and
later inferences replay the graphs: per round one graph launch, one wait and one exchange,
with no Python per gate.

What makes a replay compute what the interpreter computes:

* Per-inference data lives where the plan put it: the key set in one device buffer that
  every set is copied into (each gate's fields are unpacked inside the graphs), the inputs
  in the recorded device arrays, the peer's bytes in a page-locked inbox the graphs copy
  from, our bytes in a page-locked outbox the graphs copy to.
* Everything else a recorded kernel reads is public and fixed: host data the recording
  uploads (descriptor tables of device addresses, gate constants) is copied at once, outside
  the capture, into device arrays the plan keeps for good (:class:`CaptureModule`), never
  through a staging buffer that a later replay would read after it was reused.
* The recording allocates from a memory pool of its own that nothing else uses and that
  never releases a block (not even when the card is full: :meth:`LaunchPlan._device_malloc`),
  so an address a graph reads or writes is never handed to other code.
* Work that reads a device value back on the host mid-round cannot be captured: CUDA
  refuses it and the recording stops with an error naming the gate and the round.

The CPU backend never records; it interprets the same program as the bit-exact reference,
and so does the GPU backend for a build's first inference (kernels compiled, pools grown).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fusec.errors import GpuKernelError, ParameterError, PeerError
from fusec.runtime.channel import receives_in_place

#: cudaErrorMemoryAllocation in the CUDA runtime's cudaError_t (cupy_backends names no constant for it)
CUDA_ERROR_MEMORY_ALLOCATION = 2


@dataclass
class PlanSegment:
    """The work between two exchanges: its graph, the inbox view it copies the peer's last
    message from (None: the first segment), and the outbox view it leaves our next message
    in, with the exchange that follows (``expect`` < 0: the last segment, no exchange)."""

    graph: Any
    inbox: np.ndarray | None
    outbox: np.ndarray | None
    send: int
    expect: int
    scope: str


class CaptureModule:
    """CuPy while a plan records, except for host data.

    ``asarray``/``array``/``ascontiguousarray`` of host data (numpy arrays, lists, scalars)
    upload it now, on a side stream outside the capture, into an array the plan keeps, so
    the graph reads the value the recording saw, at an address nobody reuses. CuPy's own
    upload would go through a page-locked staging buffer that later uploads recycle. Only
    public, fixed data may arrive this way (inputs and the peer's bytes have their own
    buffers), which is why nothing of an inference's data is ever given to it."""

    def __init__(self, cupy: Any, side: Any, keep: list) -> None:
        self._cupy, self._side, self._keep = cupy, side, keep
        self.__name__ = cupy.__name__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cupy, name)

    def asarray(self, a, dtype=None, order=None, **kw):
        if isinstance(a, self._cupy.ndarray):
            return self._cupy.asarray(a, dtype=dtype, order=order, **kw)
        return self.upload(np.asarray(a, dtype=dtype))

    asanyarray = asarray

    def ascontiguousarray(self, a, dtype=None, **kw):
        if isinstance(a, self._cupy.ndarray):
            return self._cupy.ascontiguousarray(a, dtype=dtype, **kw)
        return self.upload(np.asarray(a, dtype=dtype))

    def array(self, a, dtype=None, copy=True, order="K", ndmin=0, **kw):
        if isinstance(a, self._cupy.ndarray):
            return self._cupy.array(a, dtype=dtype, copy=copy, order=order, ndmin=ndmin, **kw)
        return self.upload(np.array(a, dtype=dtype, ndmin=ndmin))

    def upload(self, host: np.ndarray) -> Any:
        cp, host = self._cupy, np.ascontiguousarray(host)
        with self._side:
            dev = cp.empty(host.shape, host.dtype)
        if host.nbytes:     # a synchronous copy on the legacy stream: the capturing stream is non-blocking
            cp.cuda.runtime.memcpy(dev.data.ptr, host.ctypes.data, host.nbytes, cp.cuda.runtime.memcpyHostToDevice)
        self._keep.append(dev)
        return dev


class LaunchPlan:
    """One build's recorded online phase on one device (see the module docstring)."""

    def __init__(self, cupy: Any, owner: Any) -> None:
        self.cupy = cupy
        self.owner = owner                   # the gate graph recorded (kept: ids are not reused)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.side = cupy.cuda.Stream(non_blocking=True)
        self.pool = cupy.cuda.MemoryPool(allocator=self._device_malloc)
        self.keep: list = []                 # device and page-locked buffers the graphs use, kept for good
        self.module = CaptureModule(cupy, self.side, self.keep)
        self.segments: list[PlanSegment] = []
        self.inputs: dict[str, Any] = {}     # input node id -> the device array the graphs read it from
        self.outputs: dict[str, Any] = {}    # output node id -> the device array the graphs leave it in
        self.ready = False
        self.capturing = False
        self.replays = 0
        self._event_pairs: list | None = None
        self._inbox: np.ndarray | None = None
        self._outbox: np.ndarray | None = None
        self._seg_in: np.ndarray | None = None
        self._seg_out: np.ndarray | None = None

    def _device_malloc(self, size: int) -> Any:
        """cudaMalloc for the plan's pool, out of memory raised as CuPy's OutOfMemoryError.

        A CuPy pool whose allocator fails with ``cudaErrorMemoryAllocation`` frees every block
        it caches and retries. The plan's cached blocks are not free: the recorded graphs still
        read and write them (intermediates of earlier rounds, and of the round being captured).
        Freed, the driver may hand them to other code, or unmap them. Recording BERT-base at
        seq 512 on an H100 shared by both parties (31 GB of key each) failed that way in
        round 30 with cudaErrorIllegalAddress. The pool does not catch an OutOfMemoryError
        from here, so it never releases a block; the recording stops with "out of memory"."""
        memory, runtime = self.cupy.cuda.memory, self.cupy.cuda.runtime
        try:
            return memory.MemoryPointer(memory.Memory(size), 0)
        except runtime.CUDARuntimeError as e:
            if e.status != CUDA_ERROR_MEMORY_ALLOCATION:
                raise
            raise memory.OutOfMemoryError(size, self.pool.total_bytes()) from None

    # ------------------------------------------------------------------ recording
    def input(self, node_id: str, x: Any) -> Any:
        """The device array an input is read from (filled now; refilled before each replay)."""
        host = np.ascontiguousarray(np.asarray(x, np.uint64).reshape(-1))
        dev = self.module.upload(host)
        self.inputs[node_id] = dev
        return dev

    def reserve(self, nbytes: int = 64 << 20) -> None:
        """Page-locked inbox and outbox before the recording (a buffer grown inside a capture
        is new, and only the segments recorded after that use it)."""
        self._inbox, self._outbox = self._pinned(self._inbox, nbytes), self._pinned(self._outbox, nbytes)

    def begin(self) -> None:
        """Start capturing a segment (no-op while one is being captured)."""
        if self.capturing:
            return
        self._seg_in = self._seg_out = None
        self.stream.begin_capture()
        self.capturing = True

    def receive(self, peer) -> Any:
        """Inside a capture: the peer's bytes into the inbox now, and a captured copy of the
        inbox to the device (a replay refills the inbox before launching the graph)."""
        data = np.frombuffer(peer, np.uint8) if isinstance(peer, (bytes, bytearray, memoryview)) \
            else np.asarray(peer, np.uint8).reshape(-1)
        n = int(data.size)
        self._inbox = self._pinned(self._inbox, n)
        view = self._seg_in = self._inbox[:n]
        view[:] = data
        dev = self.cupy.empty(n, np.uint8)
        if n:
            self._copy(dev.data.ptr, view.ctypes.data, n, self.cupy.cuda.runtime.memcpyHostToDevice)
        return dev

    def send(self, msg: Any) -> np.ndarray:
        """Inside a capture: a captured copy of our message into the outbox, whose bytes are
        there once the segment has run."""
        n = int(msg.size)
        self._outbox = self._pinned(self._outbox, n)
        view = self._seg_out = self._outbox[:n]
        if n:
            self._copy(view.ctypes.data, msg.data.ptr, n, self.cupy.cuda.runtime.memcpyDeviceToHost)
        return view

    def finish(self, send: int, expect: int, scope: str) -> None:
        """End the segment's capture, keep its graph and run it (the recording computes too)."""
        graph = self.stream.end_capture()
        self.capturing = False
        self.segments.append(PlanSegment(graph, self._seg_in, self._seg_out, send, expect, scope))
        graph.launch(self.stream)
        self.stream.synchronize()

    def abort(self) -> None:
        """A recording failed: leave the stream usable; the plan is never replayed."""
        if self.capturing:
            try:
                self.stream.end_capture()
            except Exception:  # noqa: BLE001 - an invalidated capture ends with an error; it is over either way
                pass
            self.capturing = False
        self.ready = False

    # ------------------------------------------------------------------ replay
    def replay(self, inputs: dict[str, np.ndarray], exchange: Callable, log: Any = None) -> dict[str, np.ndarray]:
        """One inference: refill the inputs, then per segment: the peer's last bytes into its
        inbox, launch, wait, exchange its outbox. Returns the outputs this party receives."""
        cp, clock = self.cupy, time.perf_counter
        for node_id, dev in self.inputs.items():
            if node_id not in inputs:
                raise ParameterError(f"no value given for input {node_id!r}")
            host = np.ascontiguousarray(np.asarray(inputs[node_id], np.uint64).reshape(-1))
            if host.size != dev.size:
                raise ParameterError(f"input {node_id!r} has {host.size} elements, the program expects {dev.size}")
            dev.set(host, stream=self.stream)
        cp.cuda.Device().synchronize()      # staged keys and the inputs are in place
        self.replays += 1
        in_place = receives_in_place(exchange)
        events = self._events() if log is not None else None
        theirs: Any = None
        landed = False                      # the peer's last bytes were received into this segment's inbox
        segments = self.segments
        for k, seg in enumerate(segments):
            t0 = clock()
            if seg.inbox is not None and not landed:
                seg.inbox[:] = np.frombuffer(theirs, np.uint8) if isinstance(theirs, (bytes, bytearray, memoryview)) \
                    else np.asarray(theirs, np.uint8).reshape(-1)
            t1 = clock()
            try:
                if events:
                    events[k][0].record(self.stream)
                seg.graph.launch(self.stream)
                if events:
                    events[k][1].record(self.stream)
                self.stream.synchronize()
            except Exception as e:  # noqa: BLE001 - a CUDA error, named with its segment
                raise GpuKernelError(f"replaying round {k + 1} ({seg.scope}) failed: {e}",
                                     "rerun without --cuda-graphs to find the gate") from e
            t2 = clock()
            if events:      # the segment's time on the device, charged to the open it ends with
                log.add_compute(seg.scope if seg.expect >= 0 else "other",
                                cp.cuda.get_elapsed_time(*events[k]) / 1e3)
            if seg.expect < 0:
                if log is not None:
                    log.add_phase("unpack", t1 - t0)
                    log.add_phase("step", t2 - t1)
                break
            mine = seg.outbox if seg.outbox is not None else b""
            nxt = segments[k + 1].inbox if k + 1 < len(segments) else None
            landed = in_place and nxt is not None and nxt.size == seg.expect
            try:
                theirs = exchange(mine, seg.scope, seg.expect, into=nxt) if landed \
                    else exchange(mine, seg.scope, seg.expect)
            except PeerError as e:      # a stall or a broken peer mid-program: say which round
                raise PeerError(f"round {k + 1} ({seg.scope}): {e.message}", e.hint) from None
            t3 = clock()
            if len(theirs) != seg.expect:
                raise PeerError(f"round {k + 1} ({seg.scope}): peer sent {len(theirs)} bytes in a round where "
                                f"{seg.expect} were expected",
                                "both parties must run the same build with key files from the same keygen run")
            if log is not None:
                log.add(seg.scope, seg.send, t3 - t0)
                for phase, secs in (("unpack", t1 - t0), ("step", t2 - t1), ("wire", t3 - t2)):
                    log.add_phase(phase, secs)
        return {node_id: cp.asnumpy(dev) for node_id, dev in self.outputs.items()}

    def _events(self) -> list | None:
        """A pair of CUDA events per segment (made once), timing each graph on the device;
        None where the array module has none. On a card two parties share, a graph's device
        time includes the slices the other party's kernels ran in."""
        if not hasattr(self.cupy.cuda, "Event"):
            return None
        if self._event_pairs is None:
            ev = self.cupy.cuda.Event
            self._event_pairs = [(ev(), ev()) for _ in self.segments]
        return self._event_pairs

    # ------------------------------------------------------------------ buffers
    def _pinned(self, buf: np.ndarray | None, n: int) -> np.ndarray:
        """A page-locked buffer of at least ``n`` bytes; a grown one is new, and the old one
        stays alive for the segments recorded with it."""
        if buf is not None and buf.size >= n:
            return buf
        import cupyx  # noqa: PLC0415

        buf = cupyx.empty_pinned(max(n, 8 << 20, 0 if buf is None else 2 * buf.size), np.uint8)
        self.keep.append(buf)
        return buf

    def _copy(self, dst: int, src: int, n: int, kind: int) -> None:
        self.cupy.cuda.runtime.memcpyAsync(dst, src, n, kind, self.stream.ptr)
