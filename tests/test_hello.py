"""The authenticated hello and the per-round frame bounds, with real parties over loopback TCP.

Who may make a server claim (burn) a key set: only a peer that proves it holds the other
key file of the same keygen run. The attackers here are hand-written peers on a raw
socket or a real TcpChannel; what they may not do is checked on the honest server's
ledger (the files in its state directory), not on anything the code under test reports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest

from fusec import demo
from fusec.errors import KeyReuseError, PeerError
from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.channel import TcpChannel, TcpListener
from fusec.runtime.dealer import write_keys
from fusec.runtime.hello import pair
from fusec.runtime.keyio import KeyFile, read_header
from fusec.runtime.party import open_keys, run_party

N, BITS, F = 6, 50, 12
WAIT = 30.0


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("FUSEC_STATE_DIR", str(d))
    return d


def ledger(state_dir, key_path, party) -> list[int]:
    d = state_dir / "used" / f"{read_header(key_path).key_set_id}.p{party}"
    return sorted(int(p.name) for p in d.iterdir()) if d.exists() else []


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x, w = rng.uniform(-3, 3, N), rng.uniform(-1, 1, N)
    return x, w, {0: {"w": ring.encode_fixed(w, F, BITS)}, 1: {"x": ring.encode_fixed(x, F, BITS)}}


def in_thread(fn):
    """Start ``fn`` in a thread; the returned join() gives its result or re-raises its error."""
    box = {}

    def go():
        try:
            box["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["err"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()

    def join():
        t.join(WAIT)
        assert not t.is_alive(), "party thread hung"
        if "err" in box:
            raise box["err"]
        return box["ok"]
    return join


def tcp_parties(graph, paths, inp, timeout=10.0):
    """Both servers as run_party over real loopback TCP (P0 listens); errors per party."""
    lst = TcpListener("127.0.0.1", 0)
    res, err = {}, {}

    def party(p):
        try:
            kf, idx = open_keys(graph, p, paths[p])
            with kf:
                ch = lst.accept(timeout, accept_timeout=WAIT) if p == 0 else \
                    TcpChannel.connect("127.0.0.1", lst.port, timeout, retry_for=5)
                with ch:
                    res[p] = run_party(graph, p, kf, idx, ch, inp[p], get_backend("cpu"))
        except Exception as e:  # noqa: BLE001 - surfaced to the test
            err[p] = e

    ts = [threading.Thread(target=party, args=(p,)) for p in (0, 1)]
    [t.start() for t in ts]
    [t.join(WAIT) for t in ts]
    lst.close()
    return res, err


def test_real_parties_over_tcp_pair_and_compute(tmp_path, state_dir):
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path, count=2)
    x, w, inp = inputs()
    res, err = tcp_parties(g, paths, inp)
    assert not err, err
    got = ring.decode_fixed(res[1].outputs["gelu_out"], F, BITS)
    h = x * w
    assert np.max(np.abs(got - 0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2))))) < 2e-3
    assert ledger(state_dir, paths[0], 0) == [0] and ledger(state_dir, paths[1], 1) == [0]


# ---------------------------------------------------------------------- who may burn a set
def _frame(sock) -> bytes:
    hdr = b""
    while len(hdr) < 8:
        hdr += sock.recv(8 - len(hdr))
    (n,) = struct.unpack("<Q", hdr)
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return body


def _send(sock, body: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(body)) + body)


def _honest_listener(graph, path, party=0):
    """An honest server listening on a free port: (port, join)."""
    lst = TcpListener("127.0.0.1", 0)
    kf, idx = open_keys(graph, party, path)

    def serve():
        try:
            with kf, lst.accept(10, accept_timeout=WAIT) as ch:
                return run_party(graph, party, kf, idx, ch, inputs()[2][party], get_backend("cpu"))
        finally:
            lst.close()
    return lst.port, in_thread(serve)


def test_an_echoing_stranger_can_neither_run_nor_burn_a_set(tmp_path, state_dir):
    """Anyone who reaches --listen can read the hello and send it back as party 1 with
    the same layout and key-set id; without the pairing secret its proof fails, and the
    server's ledger stays empty: the next honest run uses set 0."""
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path)
    port, join = _honest_listener(g, paths[0])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        theirs = _frame(s)
        hello = json.loads(theirs[theirs.index(b"\n") + 1:])
        forged = dict(hello, party=1, nonce=os.urandom(32).hex())
        _send(s, b"fusec-hello/2\n" + json.dumps(forged, sort_keys=True).encode())
        assert len(_frame(s)) == 32                         # the server's proof: 32 bytes, nothing more
        _send(s, os.urandom(32))                            # a guess
        with pytest.raises(PeerError, match="could not prove it holds the matching key file"):
            join()
    assert ledger(state_dir, paths[0], 0) == []
    res, err = tcp_parties(g, paths, inputs()[2])
    assert not err and res[0].key_set == res[1].key_set == 0


def test_a_peer_with_a_wrong_pairing_secret_is_refused_by_both(tmp_path, state_dir):
    """A key file with the right key-set id but another pairing secret (forged header,
    checksums valid) passes every file check, then fails the proof on both sides."""
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path / "keys")
    h = read_header(paths[1])
    forged = tmp_path / "forged" / "p1.key"
    forged.parent.mkdir()
    data = bytearray(paths[1].read_bytes())
    data[:h.data_offset] = dataclasses.replace(h, pairing_secret=os.urandom(32)).pack()
    forged.write_bytes(bytes(data))
    assert read_header(forged).key_set_id == h.key_set_id          # it is a valid file of that run
    res, err = tcp_parties(g, (paths[0], forged), inputs()[2])
    assert not res
    for p in (0, 1):
        assert isinstance(err[p], PeerError) and "could not prove" in str(err[p]), err
    assert ledger(state_dir, paths[0], 0) == [] and ledger(state_dir, forged, 1) == []


@pytest.mark.parametrize("stranger", ["huge-prefix", "json-no-marker", "http", "wrong-fields", "silent-close"])
def test_strangers_at_the_hello(tmp_path, state_dir, stranger):
    """Before authentication a frame is at most 1 KiB: a huge length prefix is refused
    from the prefix, at once and without allocating it; garbage is not a fusec party."""
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path)
    port, join = _honest_listener(g, paths[0])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        _frame(s)
        msg = {"huge-prefix": struct.pack("<Q", 1 << 40),
               "json-no-marker": struct.pack("<Q", 12) + b'{"party": 1}',
               "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
               "wrong-fields": struct.pack("<Q", 30) + b'fusec-hello/2\n{"party":true}  ',
               "silent-close": b""}[stranger]
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            s.sendall(msg)
            if stranger == "silent-close":
                s.shutdown(socket.SHUT_WR)
            with pytest.raises(PeerError) as e:
                join()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 16 << 20
    want = {"huge-prefix": f"{1 << 40}-byte frame where at most 1024", "http": "where at most 1024",
            "silent-close": "closed"}.get(stranger, "not a fusec party")
    assert want in str(e.value)
    assert ledger(state_dir, paths[0], 0) == []


def test_huge_frame_mid_run_refused_from_its_prefix(tmp_path, state_dir):
    """An authenticated peer (it has the real p1.key) announces a terabyte in the first
    round: the honest server refuses it from the 8-byte prefix, quickly, without
    allocating, naming the size the schedule expects."""
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path)
    port, join = _honest_listener(g, paths[0])
    kf = KeyFile.open(paths[1], g.layout(), 1)
    with TcpChannel.connect("127.0.0.1", port, 10, retry_for=5) as ch:
        idx = pair(ch, 1, g.layout().digest(), kf.key_set_id, kf.pairing_secret, 0, kf.count)
        assert idx == 0
        ch.exchange(b"", "ready", 0)
        ch._sock.setblocking(True)
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            ch._sock.sendall(struct.pack("<Q", 1 << 40))
            with pytest.raises(PeerError, match=rf"{1 << 40}-byte frame where at most \d+ bytes were expected") as e:
                join()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 16 << 20
    expected = int(str(e.value).split("at most ")[1].split()[0])
    assert 0 < expected < 10_000                          # one round of a 6-element gate graph
    assert ledger(state_dir, paths[0], 0) == [0]          # it was authenticated: that set is spent


def test_parties_out_of_step_agree_on_the_later_set(tmp_path, state_dir):
    """P0 consumed set 0 alone (a run that failed on its side only); the next run skips
    set 0 on both sides instead of P0 refusing or P1 reusing anything."""
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path, count=3)
    KeyFile.open(paths[0], g.layout(), 0).claim(0)
    res, err = tcp_parties(g, paths, inputs()[2])
    assert not err, err
    assert res[0].key_set == res[1].key_set == 1
    assert ledger(state_dir, paths[0], 0) == [0, 1] and ledger(state_dir, paths[1], 1) == [1]
    with pytest.raises(KeyReuseError):
        KeyFile.open(paths[1], g.layout(), 1).claim(1)
