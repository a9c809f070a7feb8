"""One server's online phase: check the key file, meet the peer, evaluate, unmask.

Everything about the key file (and the state directory that records used sets) is
checked before a socket is opened (DESIGN §6). The hello (runtime/hello.py) then checks
that the peer runs the other party of the same layout with the other file of the same
keygen run, and makes it *prove* that with the pairing secret; only then is a key set
claimed (marked used in the ledger) and read, and after evaluation its consumption is
checked to the byte. A peer that cannot prove the pairing cannot burn a key set.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fusec.errors import KeyFileError
from fusec.runtime.backend import Backend
from fusec.runtime.channel import Channel
from fusec.runtime.graph import GateGraph
from fusec.runtime.hello import pair
from fusec.runtime.keyio import KeyFile
from fusec.runtime.keystream import DealerKeyStream, is_stream_address
from fusec.runtime.protocol import RoundLog


@dataclass
class PartyResult:
    outputs: dict[str, np.ndarray]
    key_set: int
    online_seconds: float
    rounds: int
    bytes_sent: int
    scopes: dict = field(default_factory=dict)
    key_load_seconds: float = 0.0
    compute_seconds: dict = field(default_factory=dict)
    wire_seconds: dict = field(default_factory=dict)
    round_phases: dict = field(default_factory=dict)   # RoundLog.phases: step / pack / wire / unpack seconds
    claim_seconds: float = 0.0      # reading the set (unless verified just before), its checksum, the ledger's mark
    hello_seconds: float = 0.0      # the authenticated hello that agrees on the set
    keys_unpacked_late: bool = False   # staged, but each gate's keys unpacked when it starts (did not fit unpacked)
    seeded_shares_late: bool = False   # and its seeded shares written from their seeds then (device_inflate.py)
    online_interval: tuple[float, float] = (0.0, 0.0)   # the online clock's start and end, time.monotonic():
    # one clock for every process on the host, so concurrent servers' intervals can be joined (fusec/bench/lanes.py)


def open_keys(graph: GateGraph, party: int, key_path, state_dir: str | os.PathLike | None = None,
              dealer: dict | None = None, out: Callable[[int], np.ndarray | None] | None = None,
              inflate: bool = True) -> tuple[KeyFile, int]:
    """Validate the key file for this party, check its record of used sets can be kept
    (under ``state_dir``), and pick and verify the next unused key set (into ``out(nbytes)``
    when given: ``Backend.host_buffer``, so the set is staged from page-locked memory and
    that buffer is allocated before the key-load clock; one key file per backend then).

    ``key_path`` ``tcp://HOST:PORT`` is a dealer streaming key sets instead
    (runtime/keystream.py; ``dealer``: keyword arguments of its ``connect``, e.g. TLS):
    sets arrive in order into memory and are never stored, so no record is kept.
    ``inflate`` False: sets stay in this party's stored layout (``not
    Backend.seeded_shares_on_device``: a GPU inflates their seeded shares itself)."""
    if is_stream_address(key_path):
        stream = DealerKeyStream.connect(str(key_path), graph.layout(), party, **(dealer or {}))
        stream.inflate = inflate
        if stream.next_unused() is None:
            stream.close()
            raise KeyFileError(f"the dealer at {key_path} has no key set left", "start the dealer again")
        return stream, stream.next_unused()
    kf = KeyFile.open(key_path, graph.layout(), party, state_dir)
    kf.inflate = inflate
    try:
        kf.ledger.ensure()
        idx = kf.next_unused()
        if idx is None:
            raise KeyFileError(f"all {kf.count} key sets in {key_path} are used",
                               "run the dealer again (fusec keygen --count N) for fresh keys")
        kf.verify_set(idx, out)
    except BaseException:
        kf.close()
        raise
    return kf, idx


def run_party(graph: GateGraph, party: int, kf: KeyFile, idx: int, channel: Channel,
              inputs: dict[str, np.ndarray], be: Backend, scopes: dict[str, str] | None = None,
              sync_scopes: bool = False, stream_keys: bool = False,
              after_stage: Callable[[], None] | None = None) -> PartyResult:
    """Authenticated hello, claim the agreed key set, stage it (timed apart), evaluate
    this party's side.

    ``idx`` is this side's proposal (its next unused set); the set used is the one agreed
    with the peer (:func:`fusec.runtime.hello.pair`), reported as ``PartyResult.key_set``.
    ``scopes`` maps gate ids to profiler scopes (the build's schedule); with
    ``sync_scopes`` the device is synchronized after every gate step so GPU time lands in
    the right scope (slower; for profiles, not for latency figures). With ``stream_keys``
    each gate's keys reach the device when the gate first runs, inside the online clock
    (SIGMA's way of counting), instead of the whole set before it. ``after_stage`` runs once
    the set is on the device and the host buffer it came through is free again, before the
    online clock (a serving loop starts reading the next set there).
    """
    t_hello = time.perf_counter()
    idx = pair(channel, party, graph.layout().digest(), kf.key_set_id, kf.pairing_secret, idx, kf.count)
    t_claim = time.perf_counter()
    reader = kf.claim(idx, be.host_buffer)
    t_load = time.perf_counter()
    claim_seconds, hello_seconds = t_load - t_claim, t_claim - t_hello
    keys = be.stage_set(graph.layout(), reader.read_all_raw(), stream=stream_keys, seeded_party=reader.seeded_party)
    be.synchronize()
    t_load = time.perf_counter() - t_load
    reader.finish()
    if after_stage is not None:
        after_stage()
    log = RoundLog(sync=be.synchronize if sync_scopes else None)
    channel.exchange(b"", "ready", 0)  # both keys staged: the online clock starts together on both sides
    profile = python_profiler()
    start, t0 = time.monotonic(), time.perf_counter()
    outputs = graph.evaluate(party, keys, inputs, channel.exchange, be, log, scopes=scopes)
    dt = time.perf_counter() - t0
    interval = (start, start + dt)
    unpacked_late = not (stream_keys or keys.unpacked_up_front)
    shares_late = keys.shares_late
    del keys
    be.release_keys()       # before the next set is received: a batch-8 set is 34 GB
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.path.join(os.environ[PROFILE_ENV], f"p{party}_set{idx}_{os.getpid()}.prof"))
    return PartyResult(outputs, idx, dt, log.rounds, sum(log.bytes_sent.values()), dict(log.bytes_sent),
                       t_load, dict(log.compute), dict(log.seconds), dict(log.phases),
                       claim_seconds=claim_seconds, hello_seconds=hello_seconds,
                       keys_unpacked_late=unpacked_late, seeded_shares_late=shares_late,
                       online_interval=interval)


PROFILE_ENV = "FUSEC_PYPROFILE"
"""A directory: each online phase is run under cProfile and its stats written there
(a developer's tool for finding the runtime's Python overhead; it slows the run)."""


def python_profiler():
    if not os.environ.get(PROFILE_ENV):
        return None
    import cProfile  # noqa: PLC0415

    prof = cProfile.Profile()
    prof.enable()
    return prof
