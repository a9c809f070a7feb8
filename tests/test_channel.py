"""Tests of runtime/channel.py: framing, counting, concurrency and every failure mode.

Expected values are derived from the bytes the test itself sends (and, for the wire
format, from what a raw socket actually receives), never copied from the implementation.
"""
from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fusec.errors import ParameterError, PeerError
from fusec.runtime.channel import (ChannelStats, ScopeStats, TcpChannel, TcpListener,
                                   local_channel_pair, parse_address)

WAIT = 15.0     # a test thread that takes longer than this is a hang, not a slow machine


def both(f0, f1):
    """Run f0 and f1 concurrently (one per party); return both results, re-raise errors."""
    with ThreadPoolExecutor(2) as ex:
        a, b = ex.submit(f0), ex.submit(f1)
        return a.result(WAIT), b.result(WAIT)


def tcp_pair(timeout: float = 10.0, **kw) -> tuple[TcpChannel, TcpChannel]:
    """(listening end, connecting end) over 127.0.0.1 on a free port."""
    with TcpListener("127.0.0.1", 0, kw.pop("server_ctx", None)) as lst:
        port = lst.port
        return both(lambda: lst.accept(timeout, accept_timeout=WAIT),
                    lambda: TcpChannel.connect("127.0.0.1", port, timeout, retry_for=5, **kw))


@pytest.fixture
def tcp():
    a, b = tcp_pair()
    yield a, b
    a.close()
    b.close()


def raw_server():
    """A plain listening socket on a free port: the test plays the peer by hand."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(WAIT)
    return srv, srv.getsockname()[1]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- in-process pair ----------------------------------------------------------------------
def test_local_exchange_and_counts():
    p0, p1 = local_channel_pair(timeout=5)
    m0 = [b"alpha", b"", bytes(range(256)) * 10]
    m1 = [b"b", b"xyz" * 1000, b""]

    def run(ch, mine):
        got = [ch.exchange(m, scope="open") for m in mine]
        ch.send(b"tail-" + mine[0], scope="cmp")
        got.append(ch.recv(scope="cmp"))
        return got

    g0, g1 = both(lambda: run(p0, m0), lambda: run(p1, m1))
    assert [bytes(x) for x in g0] == m1 + [b"tail-" + m1[0]]
    assert [bytes(x) for x in g1] == m0 + [b"tail-" + m0[0]]
    s = p0.stats
    assert s["open"] == ScopeStats(bytes_sent=sum(map(len, m0)), bytes_recv=sum(map(len, m1)),
                                   messages_sent=3, messages_recv=3, rounds=3)
    assert s["cmp"] == ScopeStats(len(m0[0]) + 5, len(m1[0]) + 5, 1, 1, 0)
    assert p1.stats["open"].bytes_sent == p0.stats["open"].bytes_recv
    tot = s.total()
    assert tot.bytes_sent == sum(map(len, m0)) + len(m0[0]) + 5 and tot.rounds == 3
    d = json.loads(json.dumps(s.as_dict()))
    assert set(d) == {"open", "cmp"} and d["open"]["rounds"] == 3
    s.reset()
    assert s.total() == ScopeStats() and isinstance(s, ChannelStats)


def test_local_copies_sender_buffer_and_accepts_numpy():
    p0, p1 = local_channel_pair(timeout=5)
    buf = bytearray(b"original")
    p0.send(buf)
    buf[:] = b"XXXXXXXX"
    assert p1.recv() == b"original"
    arr = np.arange(5, dtype=np.uint64)
    p0.send(arr)
    assert np.array_equal(np.frombuffer(p1.recv(), dtype=np.uint64), arr)
    assert p0.stats["other"].bytes_sent == 8 + arr.nbytes


def test_local_timeout_and_close():
    p0, p1 = local_channel_pair(timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(PeerError, match="timed out after 0.3 s"):
        p0.recv()
    assert time.monotonic() - t0 < 3
    p1.close()
    q0, q1 = local_channel_pair(timeout=5)
    with q1:
        pass
    with pytest.raises(PeerError, match="closed"):
        q0.recv()


# --- TCP ----------------------------------------------------------------------------------
def test_tcp_exchange_small_empty_and_large_simultaneously(tcp):
    a, b = tcp
    rng = np.random.default_rng(1)
    big_a, big_b = rng.bytes(200 << 20), rng.bytes(200 << 20)
    msgs_a = [b"\x07", b"", big_a, np.frombuffer(b"numpy!", dtype=np.uint8)]
    msgs_b = [b"\x09", b"", big_b, b""]
    ga, gb = both(lambda: [a.exchange(m, "linear") for m in msgs_a],
                  lambda: [b.exchange(m, "linear") for m in msgs_b])
    assert gb[0] == b"\x07" and gb[1] == b"" and gb[3] == b"numpy!"
    assert ga[0] == b"\x09" and ga[1] == b"" and ga[3] == b""
    assert ga[2] == big_b and gb[2] == big_a      # compares every byte
    n_a = sum(len(bytes(m)) for m in msgs_a)
    n_b = sum(len(m) for m in msgs_b)
    # TCP counts the 8-byte length header of each frame (DESIGN §7: bytes on the wire)
    assert a.stats["linear"] == ScopeStats(n_a + 8 * 4, n_b + 8 * 4, 4, 4, 4)
    assert b.stats["linear"] == ScopeStats(n_b + 8 * 4, n_a + 8 * 4, 4, 4, 4)


@pytest.mark.parametrize("kind", ["tcp", "local"])
def test_recv_into_fills_the_callers_buffer_and_refuses_a_larger_frame(kind):
    """recv_into: frames land in the caller's buffer (on TCP straight from the socket),
    the size comes back, the bytes are counted, and a frame larger than the buffer is
    refused from its length prefix."""
    a, b = tcp_pair() if kind == "tcp" else local_channel_pair(timeout=WAIT)
    try:
        rng = np.random.default_rng(2)
        big = rng.integers(0, 256, 3 << 20, dtype=np.uint8)
        buf = np.zeros(4 << 20, np.uint8)
        a.send(big, "keys")
        a.send(b"tail", "keys")
        assert b.recv_into(buf, "keys") == big.size and np.array_equal(buf[:big.size], big)
        assert b.recv_into(memoryview(buf)[big.size:], "keys") == 4 and bytes(buf[big.size:big.size + 4]) == b"tail"
        assert b.stats["keys"].bytes_recv == big.size + 4 + 2 * b.frame_overhead
        a.send(bytes(9), "keys")
        with pytest.raises(PeerError):
            b.recv_into(bytearray(8), "keys")
        with pytest.raises(ParameterError, match="writable"):
            b.recv_into(b"read-only", "keys")
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["tcp", "local"])
def test_exchange_into_receives_where_the_caller_says(kind):
    """exchange(into=): both frames cross at once, the peer's lands in the given buffer
    (a view of it comes back, sized to the frame), one round is counted, and a frame larger
    than the buffer (or the limit) is refused from its length prefix."""
    a, b = tcp_pair() if kind == "tcp" else local_channel_pair(timeout=WAIT)
    try:
        rng = np.random.default_rng(3)
        x, y = (rng.integers(0, 256, n, dtype=np.uint8) for n in (2 << 20, 3 << 20))
        inbox = np.zeros(4 << 20, np.uint8)
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(a.exchange, x, "gelu", y.size)
            got = b.exchange(y, "gelu", x.size, into=inbox)
            assert np.array_equal(np.frombuffer(other.result(WAIT), np.uint8), y)
        assert len(got) == x.size and np.array_equal(inbox[:x.size], x)
        assert np.shares_memory(np.frombuffer(got, np.uint8), inbox)
        assert b.stats["gelu"].rounds == 1 and b.stats["gelu"].bytes_recv == x.size + b.frame_overhead
        with ThreadPoolExecutor(1) as pool:
            pool.submit(a.exchange, bytes(9), "gelu", 1)
            with pytest.raises(PeerError):
                b.exchange(b"z", "gelu", None, into=bytearray(8))
    finally:
        a.close()
        b.close()


def test_tcp_wire_format_and_counted_bytes_match_the_wire():
    """A raw socket peer sees exactly stats.bytes_sent bytes, framed as 8-byte LE length."""
    srv, port = raw_server()
    with srv:
        ch = TcpChannel.connect("127.0.0.1", port, timeout=5, retry_for=5)
        conn, _ = srv.accept()
        with ch, conn:
            payloads = [b"hello", b"", bytes(range(256)) * 300]
            for p in payloads:
                ch.send(p, scope="rescale")
            wire = recv_exact(conn, ch.stats["rescale"].bytes_sent)
            pos = 0
            for p in payloads:
                (n,) = struct.unpack("<Q", wire[pos:pos + 8])
                assert wire[pos + 8:pos + 8 + n] == p
                pos += 8 + n
            assert pos == len(wire)
            conn.sendall(struct.pack("<Q", 3) + b"abc")
            assert ch.recv("rescale") == b"abc"
            assert ch.stats["rescale"].bytes_recv == 11


def test_tcp_peer_closes(tcp):
    a, b = tcp
    b.close()
    with pytest.raises(PeerError, match="closed the connection"):
        a.recv()
    with pytest.raises(PeerError, match="unusable"):   # the stream stays marked broken
        a.send(b"x")


def test_tcp_peer_closes_mid_frame():
    srv, port = raw_server()
    with srv:
        ch = TcpChannel.connect("127.0.0.1", port, timeout=5, retry_for=5)
        conn, _ = srv.accept()
        conn.sendall(struct.pack("<Q", 100) + b"only part")
        conn.close()
        with ch, pytest.raises(PeerError, match="closed the connection"):
            ch.recv()


def test_tcp_peer_stalls_on_receive():
    a, b = tcp_pair(timeout=0.5)
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(PeerError, match=r"timed out after 0.5 s") as ei:
            a.exchange(b"are you there?")
        assert 0.4 < time.monotonic() - t0 < 3
        assert ei.value.hint


def test_tcp_peer_stalls_on_send():
    """The peer never reads: a big send must time out, not block forever."""
    a, b = tcp_pair(timeout=0.5)
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(PeerError, match="timed out"):
            a.send(bytes(256 << 20))
        assert time.monotonic() - t0 < 5


def test_tcp_large_exchange_with_a_stalled_peer_times_out():
    """A peer that neither reads nor sends ends a large exchange within the timeout."""
    a, b = tcp_pair(timeout=0.5)
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(PeerError, match="timed out"):
            a.exchange(bytes(256 << 20))
        a.close()
        assert time.monotonic() - t0 < 5


def test_tcp_large_exchange_with_a_peer_that_closes():
    a, b = tcp_pair(timeout=5)
    with a:
        b.close()
        t0 = time.monotonic()
        with pytest.raises(PeerError, match="closed the connection|network error"):
            a.exchange(bytes(64 << 20))
        assert time.monotonic() - t0 < 5


def test_connect_nothing_listening():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(PeerError, match=f"127.0.0.1:{port}") as ei:
        TcpChannel.connect("127.0.0.1", port, timeout=1, retry_for=0.5)
    assert 0.4 < time.monotonic() - t0 < 3
    assert "could not connect" in str(ei.value) and ei.value.hint


def test_connect_retries_until_peer_starts():
    port = free_port()
    got = {}

    def late_listener():
        time.sleep(0.4)
        with TcpChannel.listen("127.0.0.1", port, timeout=5, accept_timeout=5) as ch:
            got["msg"] = ch.recv()

    t = threading.Thread(target=late_listener)
    t.start()
    with TcpChannel.connect("127.0.0.1", port, timeout=5, retry_for=5) as ch:
        ch.send(b"late but fine")
    t.join(WAIT)
    assert got["msg"] == b"late but fine"


def test_accept_timeout():
    with TcpListener("127.0.0.1", 0) as lst:
        with pytest.raises(PeerError, match=f"127.0.0.1:{lst.port}"):
            lst.accept(timeout=1, accept_timeout=0.3)


def test_oversized_frame_rejected():
    srv, port = raw_server()
    with srv:
        ch = TcpChannel.connect("127.0.0.1", port, timeout=5, retry_for=5, max_frame=1000)
        conn, _ = srv.accept()
        with ch, conn:
            conn.sendall(struct.pack("<Q", 1001))
            with pytest.raises(PeerError, match="1001-byte frame"):
                ch.recv()


def test_receive_limit_refuses_from_the_length_prefix_without_allocating():
    """A frame announced longer than the caller's limit is refused from its 8-byte prefix:
    neither the announced size nor anything near it is allocated (tracemalloc), at once."""
    import tracemalloc

    srv, port = raw_server()
    with srv:
        ch = TcpChannel.connect("127.0.0.1", port, timeout=5, retry_for=5)
        conn, _ = srv.accept()
        with ch, conn:
            conn.sendall(struct.pack("<Q", 1 << 40))    # a terabyte announced where 100 bytes are due
            tracemalloc.start()
            t0 = time.perf_counter()
            try:
                with pytest.raises(PeerError, match=f"{1 << 40}-byte frame where at most 100 bytes"):
                    ch.exchange(b"ours", "open", 100)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 1 << 20 and time.perf_counter() - t0 < 2.0
            assert recv_exact(conn, 8 + 4) == struct.pack("<Q", 4) + b"ours"   # ours still went out
            with pytest.raises(PeerError, match="unusable"):                # the stream is out of sync now
                ch.recv()
    # a frame exactly at the limit passes; the in-process channel applies the same limit
    a, b = local_channel_pair(timeout=5)
    assert both(lambda: a.exchange(b"12345", "x", 5), lambda: b.exchange(b"", "x", 5)) == (b"", b"12345")
    with pytest.raises(PeerError, match="6-byte frame where at most 5"):
        both(lambda: a.exchange(b"", "x", 5), lambda: b.exchange(b"123456", "x", 0))
    with pytest.raises(ParameterError):
        a.exchange(b"", "x", -1)


@pytest.mark.parametrize("text,expected", [
    (":9000", ("", 9000)), ("9000", ("", 9000)), ("host:9000", ("host", 9000)),
    ("[::1]:9000", ("::1", 9000)), ("10.0.0.2:0", ("10.0.0.2", 0)),
])
def test_parse_address_ok(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:notaport", ":99999", "", "host:", "::1:9000",
                                  "[::1]9000", "a b:1", "-5"])
def test_parse_address_bad(text):
    with pytest.raises(ParameterError):
        parse_address(text)


def test_tls_smoke(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fusec-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cadata=pem.decode())

    a, b = tcp_pair(server_ctx=server_ctx, ssl_context=client_ctx)
    with a, b:
        big_a, big_b = np.random.default_rng(2).bytes(3 << 20), bytes(range(256)) * 9000
        ga, gb = both(lambda: [a.exchange(m) for m in (b"x", big_a, b"")],
                      lambda: [b.exchange(m) for m in (b"", big_b, b"yz")])
        assert ga == [b"", big_b, b"yz"] and gb == [b"x", big_a, b""]
    # a plain-TCP client against a TLS server fails with a PeerError, not a hang
    with TcpListener("127.0.0.1", 0, server_ctx) as lst:
        port = lst.port
        with pytest.raises(PeerError):
            both(lambda: lst.accept(timeout=1, accept_timeout=WAIT),
                 lambda: TcpChannel.connect("127.0.0.1", port, 1, retry_for=5).exchange(b"x", "x", 10))


@pytest.mark.parametrize("kw", [{"timeout": float("nan")}, {"timeout": 0}, {"timeout": -1},
                                {"timeout": float("inf")}, {"retry_for": float("nan")}, {"retry_for": -1},
                                {"retry_for": 1e300}])
def test_connect_refuses_bad_seconds_at_once(kw):
    """A NaN retry time made a deadline that is never reached (a hang); inf overflowed poll()."""
    args = {"timeout": 1.0, "retry_for": 0.0, **kw}
    t0 = time.perf_counter()
    with pytest.raises(ParameterError, match="finite number of seconds"):
        TcpChannel.connect("127.0.0.1", free_port(), **args)
    assert time.perf_counter() - t0 < 1.0
    with TcpListener("127.0.0.1", 0) as lst:
        with pytest.raises(ParameterError):
            lst.accept(timeout=1.0, accept_timeout=float("nan"))
