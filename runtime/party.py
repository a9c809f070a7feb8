"""One server's online phase: check the key file, meet the peer, evaluate, unmask.

Everything about the key file is checked before a socket is opened (DESIGN §6); the
handshake then checks the peer runs the other party of the same layout with the same
key-set id and wants the same key set; only then is the set claimed (marked used on
disk) and read, and after evaluation its consumption is checked to the byte.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fusec.errors import KeyFileError, PeerError
from fusec.runtime.backend import Backend
from fusec.runtime.channel import Channel
from fusec.runtime.graph import GateGraph
from fusec.runtime.keyfile import KeyFile
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


def open_keys(graph: GateGraph, party: int, key_path) -> tuple[KeyFile, int]:
    """Validate the key file for this party and pick the next unused key set."""
    kf = KeyFile.open(key_path, graph.layout(), party)
    idx = kf.next_unused()
    if idx is None:
        raise KeyFileError(f"all {kf.count} key sets in {key_path} are used",
                           "run the dealer again (fusec keygen --count N) for fresh keys")
    kf.verify_set(idx)
    return kf, idx


def run_party(graph: GateGraph, party: int, kf: KeyFile, idx: int, channel: Channel,
              inputs: dict[str, np.ndarray], be: Backend, scopes: dict[str, str] | None = None,
              sync_scopes: bool = False) -> PartyResult:
    """Handshake, claim the key set, stage it (timed apart), evaluate this party's side.

    ``scopes`` maps gate ids to profiler scopes (the build's schedule); with
    ``sync_scopes`` the device is synchronized after every gate step so GPU time lands in
    the right scope (slower; for profiles, not for latency figures).
    """
    me = {"party": party, "layout": graph.layout().digest(), "key_set_id": kf.key_set_id, "set": idx}
    peer = channel.handshake(me)
    if peer.get("party") != 1 - party:
        raise PeerError(f"the peer says it is party {peer.get('party')}, expected party {1 - party}",
                        "start one server with --party 0 and the other with --party 1")
    if peer.get("layout") != me["layout"]:
        raise PeerError("the peer runs a different build (layout hash differs)",
                        "both servers must use the same build directory and matching key files")
    if peer.get("key_set_id") != me["key_set_id"]:
        raise PeerError("the peer's key file comes from another keygen run",
                        "give each server its file from the same `fusec keygen` output")
    if peer.get("set") != idx:
        raise PeerError(f"key files out of step: this party would use key set {idx}, the peer key set {peer.get('set')}",
                        "a run failed on one side only; generate fresh keys for both servers")
    reader = kf.claim(idx)
    t_load = time.perf_counter()
    keys = be.stage_set(graph.layout(), reader.read_all_raw())
    be.synchronize()
    t_load = time.perf_counter() - t_load
    reader.finish()
    log = RoundLog(sync=be.synchronize if sync_scopes else None)
    channel.exchange(b"", "ready")  # both keys staged: the online clock starts together on both sides
    t0 = time.perf_counter()
    outputs = graph.evaluate(party, keys, inputs, channel.exchange, be, log, scopes=scopes)
    dt = time.perf_counter() - t0
    return PartyResult(outputs, idx, dt, log.rounds, sum(log.bytes_sent.values()), dict(log.bytes_sent),
                       t_load, dict(log.compute), dict(log.seconds))
