"""Driving gate evaluations: batched opens, one message per round.

Every gate's eval is a generator that yields :class:`~fusec.runtime.gates.base.Open`
requests. :func:`drive` advances all the generators it is given until each is blocked on
an open (or done), packs every pending share to its ring width into *one* message, swaps
it with the peer, and hands each generator its reconstructed value. Both parties run the
same deterministic schedule, so the messages line up without any framing per open; a
length mismatch means the two sides run different programs and is reported as such.

The schedule also fixes the exact size of the peer's message in every round; it is given
to the exchange as the receive limit, so a longer frame is refused from its length
prefix before anything is allocated for it (runtime/channel.py), and a shorter one when
it is unpacked.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, NoReturn


from fusec.errors import FusecError, GpuKernelError, PeerError
from fusec.runtime.channel import receives_in_place
from fusec.runtime.device_keys import memory_error
from fusec.runtime.gates.base import EvalGen, Open
from fusec.runtime.round_message import RoundMessage

Exchange = Callable[[bytes, str, int], bytes]
"""``exchange(ours, scope, expect)``: send our message, return the peer's, which must
not be longer than ``expect`` bytes (the channel refuses a longer one unread)."""


@dataclass
class RoundLog:
    """What one party saw of the rounds it took part in (bytes it sent, per scope)."""

    rounds: int = 0
    bytes_sent: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)   # pack + exchange + unpack, per open scope
    phases: dict[str, float] = field(default_factory=dict)    # the same rounds split: step / pack / wire / unpack
    compute: dict[str, float] = field(default_factory=dict)   # local gate work, per gate scope
    sync: Callable[[], None] | None = None                    # device sync before each compute reading

    def add(self, scope: str, nbytes: int, secs: float) -> None:
        self.rounds += 1
        self.bytes_sent[scope] = self.bytes_sent.get(scope, 0) + nbytes
        self.seconds[scope] = self.seconds.get(scope, 0.0) + secs

    def add_compute(self, scope: str, secs: float) -> None:
        self.compute[scope] = self.compute.get(scope, 0.0) + secs

    def add_phase(self, phase: str, secs: float) -> None:
        """Where a round's time goes: ``step`` (advancing the gates: Python and kernel
        launches), ``pack`` (the pack kernel and the copy to the host, which waits for the
        device's queued work), ``wire`` (the exchange, including waiting for the peer),
        ``unpack`` (the copy back and the unpack kernels)."""
        self.phases[phase] = self.phases.get(phase, 0.0) + secs


def timed(gen: EvalGen, scope: str, log: RoundLog) -> EvalGen:
    """``gen`` with the time of each of its local steps charged to ``scope`` in ``log``."""
    step = gen.__next__
    while True:
        t0 = time.perf_counter()
        try:
            req = step()
        except StopIteration as stop:
            _charge(log, scope, t0)
            return stop.value
        _charge(log, scope, t0)
        value = yield req
        step = lambda: gen.send(value)  # noqa: E731  (value is bound per step)


def _charge(log: RoundLog, scope: str, t0: float) -> None:
    if log.sync is not None:
        log.sync()
    log.add_compute(scope, time.perf_counter() - t0)


def drive(gens: Iterable[EvalGen], exchange: Exchange, party: int, be, log: RoundLog | None = None,
          on_done: Callable[[int, object], Iterable[EvalGen]] | None = None,
          describe: Callable[[int], str] | None = None) -> list:
    """Run generators to completion with batched opens; return their results in order.

    A generator yields an :class:`Open` (and receives the value) or a list of them
    (and receives the list of values).

    ``on_done(i, result)`` may return new generators that become runnable when
    generator ``i`` finishes (dataflow scheduling). With ``on_done`` the results are handed
    to it and not kept here (the list holds None): the caller keeps what is still read, so
    a model's dead activations are freed as it runs.
    ``describe(i)`` names generator ``i`` (its gate) in the error when a kernel fails.
    """
    with be.activate():
        return _drive(gens, exchange, party, be, log, on_done, describe or (lambda i: f"#{i}"))


def _drive(gens, exchange: Exchange, party: int, be, log: RoundLog | None, on_done, describe) -> list:
    gens = list(gens)
    results: list = [None] * len(gens)
    inbox: dict[int, object] = {i: None for i in range(len(gens))}
    started = set()
    active = list(range(len(gens)))
    round_no = 0
    clock = time.perf_counter
    in_place = receives_in_place(exchange)      # the peer's bytes land in the backend's receive buffer
    be.segment_start()      # a recording backend captures the work between exchanges (runtime/launch_plan.py)
    while active:
        t_step = clock()
        waiting: list[tuple[int, Open]] = []
        queue = list(active)
        active = []
        while queue:
            i = queue.pop(0)
            try:
                req = next(gens[i]) if i not in started else gens[i].send(inbox[i])
                started.add(i)
                waiting.append((i, req))
            except StopIteration as stop:
                started.add(i)
                gens[i] = inbox[i] = None       # a finished gate's opens and frame: free them
                if on_done is None:
                    results[i] = stop.value
                for g in (on_done(i, stop.value) if on_done else ()):
                    gens.append(g)
                    results.append(None)
                    queue.append(len(gens) - 1)
            except Exception as e:      # a kernel or a device allocation: one line naming where (no traceback)
                _raise_located(e, f"gate {describe(i)}, round {round_no + 1}")
        if not waiting:
            break
        # a generator may yield one Open or a list of Opens (independent sub-steps of a
        # composite gate in the same round); flatten for the message, regroup after
        reqs = [r for _, req in waiting for r in (req if isinstance(req, list) else [req])]
        scope = reqs[0].scope
        t0 = clock()
        layout = RoundMessage.of(reqs, party)
        shares = [r.share for r in reqs]
        round_no += 1
        where = f"round {round_no} ({scope}, {len(reqs)} opens)"
        try:
            mine = be.pack_round(layout, shares)
            be.segment_finish(layout.our_bytes, layout.their_bytes, scope)
        except Exception as e:
            _raise_located(e, f"{where}, packing the opens")
        need = layout.their_bytes
        try:
            t1 = clock()
            inbox_buf = be.receive_buffer(need) if in_place and need else None
            theirs = exchange(mine, scope, need) if inbox_buf is None else exchange(mine, scope, need, into=inbox_buf)
            t2 = clock()
            if len(theirs) != need:
                raise PeerError(f"peer sent {len(theirs)} bytes in a round where {need} were expected",
                                "both parties must run the same build with key files from the same keygen run")
            be.segment_start()
            vals = be.unpack_round(layout, shares, theirs)
        except PeerError as e:      # say where the run stopped: a stall mid-program names its round
            raise PeerError(f"{where}: {e.message}", e.hint) from None
        except Exception as e:
            _raise_located(e, f"{where}, unpacking the peer's opens")
        if log is not None:
            t3 = clock()
            log.add(scope, len(mine), t3 - t0)
            for phase, secs in (("step", t0 - t_step), ("pack", t1 - t0), ("wire", t2 - t1), ("unpack", t3 - t2)):
                log.add_phase(phase, secs)
        pos = 0
        for i, req in waiting:
            if isinstance(req, list):
                inbox[i] = vals[pos:pos + len(req)]
                pos += len(req)
            else:
                inbox[i] = vals[pos]
                pos += 1
            active.append(i)
    be.segment_finish(0, -1, "end")
    return results


def _raise_located(e: Exception, where: str) -> NoReturn:
    """Raise ``e`` re-worded to say where in the program it happened: a kernel failure or a
    device allocation becomes one line naming the gate or the round and the step (no
    traceback); anything else goes on as it is (a bug: its traceback is wanted)."""
    if isinstance(e, GpuKernelError):
        raise GpuKernelError(f"{where}: {e.message}", e.hint) from e
    mem = memory_error(e)
    if mem is None:
        raise e
    raise FusecError(f"{where}: {mem.message}", mem.hint) from e
