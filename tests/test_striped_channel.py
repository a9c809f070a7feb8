"""Frames striped over several TCP connections (runtime/striped_channel.py).

The oracle is the sender's own bytes: every frame the peer receives must be exactly them,
whatever the sizes on the two sides (below, at and above the striping threshold, zero,
one side idle), received fresh or into a caller's buffer; ``fusec run --stripes`` then
against onnxruntime."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fusec.errors import ParameterError, PeerError
from fusec.runtime import striped_channel as sc
from fusec.runtime.channel import TcpChannel, TcpListener

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "fusec" / "examples" / "digits_mlp.onnx"


def pair(stripes: int, timeout: float = 10.0, **kw):
    with TcpListener("127.0.0.1", 0) as lst, ThreadPoolExecutor(1) as ex:
        server = ex.submit(sc.accept, lst, timeout)
        client = sc.connect("127.0.0.1", lst.port, stripes, timeout=timeout, **kw)
        return client, server.result(timeout=30)


def both(f0, f1):
    with ThreadPoolExecutor(2) as ex:
        a, b = ex.submit(f0), ex.submit(f1)
        return a.result(timeout=60), b.result(timeout=60)


M = sc.STRIPE_MIN
SIZES = [(0, 0), (10, 5), (M - 1, M), (M, 3), (3 * M + 7, 2 * M + 1), (5 * M, 0), (100, 7 * M + 3), (M + 1, M + 1)]


@pytest.mark.parametrize("stripes", [1, 2, 3])
def test_every_frame_arrives_exactly(stripes):
    c, s = pair(stripes)
    assert type(c) is type(s) is (TcpChannel if stripes == 1 else sc.StripedChannel)
    rng = np.random.default_rng(stripes)
    try:
        for a, b in SIZES:
            x, y = rng.integers(0, 256, a, dtype=np.uint8), rng.integers(0, 256, b, dtype=np.uint8)
            got_c, got_s = both(lambda: c.exchange(x, limit=b), lambda: s.exchange(y, limit=a))
            assert bytes(got_c) == y.tobytes() and bytes(got_s) == x.tobytes(), (a, b)
        # into a caller's buffer (a launch plan's receive), larger than the frame
        x = rng.integers(0, 256, 2 * M + 5, dtype=np.uint8)
        dest = np.zeros(3 * M, np.uint8)
        got, _ = both(lambda: c.exchange(b"\x01", into=dest), lambda: s.exchange(x))
        assert bytes(got) == x.tobytes() and np.shares_memory(np.frombuffer(got, np.uint8), dest)
        # one-way frames too
        both(lambda: c.send(x), lambda: None)
        assert bytes(s.recv(limit=len(x))) == x.tobytes()
        # a frame counts its payload and one 8-byte header, striped or not
        before = c.stats.total().bytes_sent
        both(lambda: c.exchange(x), lambda: s.exchange(b""))
        assert c.stats.total().bytes_sent - before == len(x) + 8
    finally:
        c.close()
        s.close()


def test_oversized_frame_is_refused_from_its_header():
    c, s = pair(3)
    try:
        big = np.zeros(2 * M, np.uint8)
        with pytest.raises(PeerError, match="announced|limit|large"):
            both(lambda: c.exchange(b"x", limit=M), lambda: s.exchange(big))
    finally:
        c.close()
        s.close()


def test_a_peer_that_dies_mid_frame_is_an_error_not_a_hang():
    c, s = pair(3, timeout=5.0)
    s.stripes[2]._sock.close()           # one connection of the peer goes away
    try:
        with pytest.raises(PeerError):
            both(lambda: c.exchange(np.zeros(4 * M, np.uint8)), lambda: s.stripes[0]._sock.close())
    finally:
        c.close()
        s.close()


def test_a_listener_refuses_what_is_not_a_fusec_party():
    with TcpListener("127.0.0.1", 0) as lst, ThreadPoolExecutor(1) as ex:
        server = ex.submit(sc.accept, lst, 5.0)
        ch = TcpChannel.connect("127.0.0.1", lst.port, timeout=5.0)
        ch.send(b"GET / HTTP/1.1\r\n")
        with pytest.raises(PeerError, match="did not open a fusec party connection"):
            server.result(timeout=30)
        ch.close()


@pytest.mark.parametrize("stripes, tls, what", [(0, False, "from 1 to"), (17, False, "from 1 to"),
                                                (2, True, "cannot be combined with TLS")])
def test_bad_stripes_are_one_line(stripes, tls, what):
    with pytest.raises(ParameterError, match=what):
        sc.check_stripes(stripes, tls)


def test_a_party_given_no_stripes_opens_four_connections_and_one_under_tls():
    """The default (--stripes not given): 4 connections on plain TCP, where one connection's
    copies limited the H100 bench's wire; 1 under TLS, which must stay on one socket."""
    from fusec.party_cli import ServerOptions

    assert sc.check_stripes(None, tls=False) == sc.DEFAULT_STRIPES == 4
    assert sc.check_stripes(None, tls=True) == 1
    with TcpListener("127.0.0.1", 0) as lst, ThreadPoolExecutor(1) as ex:
        server = ex.submit(sc.accept, lst, 10.0)
        opts = ServerOptions(party=1, key_path="", listen=None, peer=("127.0.0.1", lst.port), input_path=None,
                             output_path=None, timeout=10.0, connect_retry=5.0, backend="cpu", state_dir=None,
                             tls_cert=None, tls_key=None, tls_ca=None, tls_server_name=None)
        c, s = opts.channel(), server.result(timeout=30)
    try:
        assert isinstance(c, sc.StripedChannel) and len(c.stripes) == len(s.stripes) == 4
    finally:
        c.close()
        s.close()


def test_the_threshold_is_the_connecting_partys(monkeypatch):
    monkeypatch.setenv(sc.STRIPE_MIN_ENV, "64")
    c, s = pair(2)
    try:
        assert c.stripe_min == s.stripe_min == 64
    finally:
        c.close()
        s.close()
    monkeypatch.setenv(sc.STRIPE_MIN_ENV, "none")
    with pytest.raises(ParameterError, match="positive number of bytes"):
        pair(2)


def test_fusec_run_with_stripes_matches_onnxruntime(tmp_path):
    """Two ``fusec run`` processes over 3 connections, every frame striped (threshold 64
    bytes): the revealed output against onnxruntime on the same input."""
    import onnxruntime as ort

    from fusec.run3 import free_port, fusec_cmd

    build, keys, x = tmp_path / "build", tmp_path / "keys", ROOT / "fusec" / "examples" / "digits_sample.npy"
    run = lambda *a: subprocess.run([sys.executable, "-m", "fusec", *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    assert run("compile", DIGITS, "-o", build, "--batch", 8).returncode == 0
    assert run("keygen", build, "-o", keys, "--count", 1).returncode == 0
    env = {**__import__("os").environ, sc.STRIPE_MIN_ENV: "64"}
    port = free_port()
    p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", str(keys / "p0.key"), "--listen",
                                    f"127.0.0.1:{port}", "--input", str(x), "--timeout", "60",
                                    "--stats", str(tmp_path / "s0.json")),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    p1 = subprocess.run(fusec_cmd("run", str(build), "--party", "1", "--keys", str(keys / "p1.key"), "--peer",
                                  f"127.0.0.1:{port}", "--input", str(x), "--timeout", "60", "--stripes", "3",
                                  "--output", str(tmp_path / "y.npz")),
                        capture_output=True, text=True, env=env, timeout=300)
    _, err0 = p0.communicate(timeout=300)
    assert p0.returncode == 0 and p1.returncode == 0, err0 + p1.stderr
    got = np.load(tmp_path / "y.npz")
    got = got[got.files[0]]
    sess = ort.InferenceSession(str(DIGITS))
    want = sess.run(None, {sess.get_inputs()[0].name: np.load(x).astype(np.float32)})[0]
    assert got.shape == want.shape and np.allclose(got, want, atol=0.05, rtol=0.02), np.abs(got - want).max()
    assert json.loads((tmp_path / "s0.json").read_text())["rounds"] > 0
