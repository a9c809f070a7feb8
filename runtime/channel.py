"""Byte channel between the two parties P0 and P1 (DESIGN.md §7).

The protocol is a sequence of length-prefixed frames. A frame on TCP is an 8-byte
little-endian payload length followed by the payload; the peer is trusted to be a fusec
party but not to be well-behaved, so every frame length is bounded (``max_frame``) and
every blocking step has a timeout: a dead or stalled peer must surface as a
:class:`PeerError` that says what to do, never as a hang.

Every receive can be given a ``limit``: the exact or largest payload the caller expects
at that step (the schedule knows each round's size; a hello is a few hundred bytes). A
frame whose length prefix is over the limit is refused from the prefix alone, before a
byte of it is allocated, so a peer (or anyone who reaches ``--listen``) cannot make a
server allocate gigabytes by announcing them.

Counting: every frame is recorded in :attr:`Channel.stats` under a profiling scope.
Bytes are what goes on the wire above TLS: for :class:`TcpChannel` the payload plus the
8-byte header (``frame_overhead``); for :class:`LocalChannel` the payload only (there is
no wire). TLS record overhead is not counted. ``exchange`` is the unit of a round.

A channel is used by one thread at a time; it is not safe to call it concurrently.
"""
from __future__ import annotations

import abc
import inspect
import queue
import re
import selectors
import socket
import ssl
import struct
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Union

import numpy as np

from fusec.errors import ParameterError, PeerError

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]
_HDR = struct.Struct("<Q")
DEFAULT_MAX_FRAME = 64 << 30
_SMALL = 1 << 16                # payloads up to this go out in one send with their header
_SOCK_BUF = 4 << 20


def receives_in_place(exchange: Callable) -> bool:
    """Whether ``exchange`` takes ``into=`` (:meth:`Channel.exchange`: the peer's frame lands
    in a buffer the caller chose) or only returns the frame (a test's queue, a wrapper)."""
    try:
        return "into" in inspect.signature(exchange).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class ScopeStats:
    """Traffic of one profiling scope, as seen by this party."""
    bytes_sent: int = 0
    bytes_recv: int = 0
    messages_sent: int = 0
    messages_recv: int = 0
    rounds: int = 0

    def __iadd__(self, other: ScopeStats) -> ScopeStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


class ChannelStats(dict):
    """``scope -> ScopeStats``; a scope appears on first use."""

    def __missing__(self, scope: str) -> ScopeStats:
        self[scope] = s = ScopeStats()
        return s

    def total(self) -> ScopeStats:
        t = ScopeStats()
        for s in self.values():
            t += s
        return t

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: asdict(v) for k, v in self.items()}

    def reset(self) -> None:
        self.clear()


def _as_view(data: Buffer) -> memoryview:
    """A flat byte view of ``data`` without copying (numpy arrays of any dtype allowed)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return memoryview(data).cast("B")
    except TypeError as e:
        raise ParameterError(f"cannot send {type(data).__name__}: {e}",
                             "pass bytes, a memoryview or a contiguous host numpy array") from e


class Channel(abc.ABC):
    """One party's end of a reliable, ordered, full-duplex frame stream to the peer."""

    frame_overhead = 0      # bytes counted per frame on top of the payload

    def __init__(self, timeout: float = 60.0):
        self.timeout = _seconds("timeout", timeout)
        self.stats = ChannelStats()
        self.closed = False
        self._broken: str | None = None     # why the stream can no longer be trusted

    @abc.abstractmethod
    def _transfer(self, out: memoryview | None, recv: bool, limit: int | None = None,
                  into: memoryview | None = None) -> bytearray | memoryview | None:
        """Send frame ``out`` (if any) while receiving one frame (if ``recv``), into ``into``
        where the channel can (then the result is a view of it)."""

    def _run(self, out: memoryview | None, recv: bool, limit: int | None = None, into: memoryview | None = None):
        """A transfer; after a failure the stream is out of sync, so the channel stays broken."""
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
                raise ParameterError(f"receive limit must be a non-negative int, got {limit!r}")
            limit = int(limit)
        if self._broken is not None:
            raise PeerError(f"channel is unusable: {self._broken}",
                            "a failed send/receive leaves the stream out of sync; reconnect")
        try:
            return self._transfer(out, recv, limit, into)
        except PeerError as e:
            self._broken = e.message
            raise

    def _count(self, scope: str, sent: int | None, recv: int | None, rounds: int = 0) -> None:
        s = self.stats[scope]
        if sent is not None:
            s.bytes_sent += sent + self.frame_overhead
            s.messages_sent += 1
        if recv is not None:
            s.bytes_recv += recv + self.frame_overhead
            s.messages_recv += 1
        s.rounds += rounds

    def send(self, data: Buffer, scope: str = "other") -> None:
        """Send one frame. If both parties may send large frames at once, use ``exchange``."""
        view = _as_view(data)
        self._run(view, False)
        self._count(scope, len(view), None)

    def recv(self, scope: str = "other", limit: int | None = None) -> bytearray:
        """Receive one frame of at most ``limit`` bytes (default: the channel's maximum).
        Returns a (writable) bytearray: no extra copy of large frames."""
        got = self._run(None, True, limit)
        self._count(scope, None, len(got))
        return got

    def recv_into(self, out: Buffer, scope: str = "other") -> int:
        """Receive one frame of at most ``len(out)`` bytes into ``out`` (a writable buffer)
        and return its size: on TCP straight from the socket, with no frame-sized buffer
        in between (key sets streamed by the dealer are tens of GB)."""
        view = _as_view(out)
        if view.readonly:
            raise ParameterError("recv_into needs a writable buffer")
        got = self._run(None, True, len(view), into=view)
        n = len(got)
        if not (isinstance(got, memoryview) and got.obj is view.obj):
            view[:n] = got
        self._count(scope, None, n)
        return n

    def exchange(self, data: Buffer, scope: str = "other", limit: int | None = None,
                 into: Buffer | None = None) -> bytearray | memoryview:
        """Send our frame and receive the peer's (at most ``limit`` bytes) concurrently;
        counts one round. ``into``: a writable buffer the peer's frame is received into (on
        TCP straight from the socket; at most its size), returned as a view of it: a replayed
        launch plan receives each round where its next graph reads it, with no frame-sized
        allocation and no copy."""
        view = _as_view(data)
        if into is None:
            got = self._run(view, True, limit)
            self._count(scope, len(view), len(got), rounds=1)
            return got
        dest = _as_view(into)
        if dest.readonly:
            raise ParameterError("exchange needs a writable buffer to receive into")
        got = self._run(view, True, len(dest) if limit is None else min(int(limit), len(dest)), into=dest)
        n = len(got)
        if not (isinstance(got, memoryview) and got.obj is dest.obj):
            dest[:n] = got
        self._count(scope, len(view), n, rounds=1)
        return dest[:n]

    def close(self) -> None:
        """Release the connection (idempotent); the peer's next receive fails "closed"."""
        self.closed = True
        self._broken = self._broken or "channel was closed"

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- in-process pair ----------------------------------------------------------------------
_CLOSED = object()


class LocalChannel(Channel):
    """In-process end of a pair for tests: P0 and P1 run in two threads."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue, timeout: float = 30.0):
        super().__init__(timeout)
        self._in, self._out = inbox, outbox

    def _transfer(self, out: memoryview | None, recv: bool, limit: int | None = None,
                  into: memoryview | None = None) -> bytearray | None:
        if out is not None:                  # queues are unbounded: sending never blocks
            self._out.put(bytearray(out))   # copy: the caller may reuse its buffer
        if not recv:
            return None
        try:
            got = self._in.get(timeout=self.timeout)
        except queue.Empty:
            raise PeerError(f"timed out after {self.timeout:g} s waiting for the peer",
                            "the other party thread stalled or died; check its traceback"
                            ) from None
        if got is _CLOSED:
            raise PeerError("peer closed the connection", "see the other party's error")
        if limit is not None and len(got) > limit:
            raise _oversized("peer", len(got), limit)
        return got

    def close(self) -> None:
        if not self.closed:
            self._out.put(_CLOSED)
        super().close()


def local_channel_pair(timeout: float = 30.0) -> tuple[LocalChannel, LocalChannel]:
    """Two connected in-process channels (party 0's, party 1's)."""
    a: queue.Queue = queue.Queue()
    b: queue.Queue = queue.Queue()
    return LocalChannel(a, b, timeout), LocalChannel(b, a, timeout)


# --- TCP ----------------------------------------------------------------------------------
def parse_address(s: str) -> tuple[str, int]:
    """``":9000"``, ``"9000"``, ``"host:9000"``, ``"[::1]:9000"`` -> (host, port). An empty
    host means all interfaces for listen and localhost for connect."""
    text = str(s).strip()
    m = re.fullmatch(r"\[([^\[\]\s]+)\]:([0-9]+)|([^\[\]\s:]*):([0-9]+)|([0-9]+)", text)
    if m is None:
        raise ParameterError(f"bad address {s!r}", "use PORT, :PORT, HOST:PORT or [IPv6]:PORT")
    host = m.group(1) or m.group(3) or ""
    port = int(m.group(2) or m.group(4) or m.group(5))
    if port > 65535:
        raise ParameterError(f"bad port {port} in address {s!r}", "ports are 0..65535")
    return host, port


_TLS_HINT = ("both servers need --tls-cert/--tls-key/--tls-ca, certificates signed by that CA and valid "
             "now, the listener's for the host name in --peer (or --tls-server-name)")
_TLS_ALERTS = {   # OpenSSL's reason for an alert the peer sent us: what it means for the user
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the CA that signed our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer refused our certificate as expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused our certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer refused the TLS handshake",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (is it started without --tls-*?)",
    "HTTP_REQUEST": "the peer does not speak TLS",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer could not verify our certificate's signature",
}


def _tls_failed(peer: str, e: BaseException) -> PeerError:
    """One line for a failed TLS handshake: whose certificate, and why."""
    if isinstance(e, ssl.SSLCertVerificationError):
        why = (e.verify_message or str(e)).rstrip(".")
        return PeerError(f"TLS: the certificate of {peer} was refused: {why}", _TLS_HINT)
    reason = getattr(e, "reason", None)
    if reason in _TLS_ALERTS:
        return PeerError(f"TLS with {peer} failed: {_TLS_ALERTS[reason]}", _TLS_HINT)
    if isinstance(e, (ConnectionError, ssl.SSLEOFError, socket.timeout)):
        return PeerError(f"TLS with {peer} failed: the peer closed the connection during the handshake "
                         f"({e.__class__.__name__})", _TLS_HINT)
    return PeerError(f"TLS handshake with {peer} failed: {e}", _TLS_HINT)


_MAX_SECONDS = 30 * 24 * 3600   # select()/poll() take milliseconds in a C int


def _seconds(what: str, value: float, zero_ok: bool = False) -> float:
    """A finite, positive (or zero) number of seconds: NaN would make a deadline that is
    never reached, infinity overflows poll()."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v == v and (v >= 0 if zero_ok else v > 0) and v <= _MAX_SECONDS):
        raise ParameterError(f"{what} must be a finite number of seconds {'>= 0' if zero_ok else '> 0'} "
                             f"(at most {_MAX_SECONDS}), got {value!r}")
    return v


def _oversized(who: str, size: int, limit: int) -> PeerError:
    return PeerError(f"{who} announced a {size}-byte frame where at most {limit} bytes were "
                     f"expected; refused before reading it",
                     "the peer is not a fusec party of this build and version, or the stream "
                     "is corrupt")


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames are latency-bound
    if sys.platform.startswith("linux"):
        return  # autotuning grows buffers to tcp_rmem max; SO_RCVBUF would switch it off
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)
        except OSError:
            pass


class TcpChannel(Channel):
    """Frames over one TCP (optionally TLS) connection; non-blocking socket + selector,
    so a send and a receive progress together and a stall is noticed after ``timeout``."""

    frame_overhead = _HDR.size

    def __init__(self, sock: socket.socket, peer: str, timeout: float = 60.0,
                 max_frame: int = DEFAULT_MAX_FRAME):
        super().__init__(timeout)
        self.peer, self.max_frame = peer, int(max_frame)
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._heard = False     # a frame header came in (TLS: the peer accepted our certificate)
        sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._events = selectors.EVENT_READ
        self._sel.register(sock, self._events)

    @classmethod
    def listen(cls, host: str, port: int, timeout: float = 60.0,
               accept_timeout: float | None = None, ssl_context: ssl.SSLContext | None = None,
               max_frame: int = DEFAULT_MAX_FRAME) -> TcpChannel:
        """Bind, accept exactly one peer, stop listening. Use TcpListener to learn port 0."""
        with TcpListener(host, port, ssl_context) as lst:
            return lst.accept(timeout, accept_timeout, max_frame)

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 60.0, retry_for: float = 30.0,
                ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                max_frame: int = DEFAULT_MAX_FRAME) -> TcpChannel:
        """Connect, retrying refused/unreachable for ``retry_for`` s: the peer may start later."""
        host = host or "localhost"
        timeout, retry_for = _seconds("timeout", timeout), _seconds("connect retry", retry_for, zero_ok=True)
        addr, deadline, last = _fmt(host, port), time.monotonic() + retry_for, None
        while True:
            left = deadline - time.monotonic()
            try:
                sock = socket.create_connection((host, port), timeout=max(0.1, min(timeout, left)))
                break
            except socket.gaierror as e:
                raise PeerError(f"could not connect to {addr}: cannot resolve host ({e})",
                                "check the host name in --peer") from e
            except OSError as e:
                last = e
            if left <= 0:
                raise PeerError(f"could not connect to {addr} after {retry_for:g} s ({last})",
                                "start the other party (with --listen) first, check host, port "
                                "and firewall, or allow more time to connect") from last
            time.sleep(min(0.1, max(0.0, left)))
        sock.settimeout(timeout)    # for the TLS handshake; the channel goes non-blocking
        _tune(sock)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            except (ssl.SSLError, OSError) as e:
                sock.close()
                raise _tls_failed(addr, e) from None
        return cls(sock, addr, timeout, max_frame)

    # --- the pump -----------------------------------------------------------------------
    def _fail(self, what: str, e: BaseException | None = None) -> PeerError:
        if isinstance(e, ssl.SSLError) and getattr(e, "reason", None) in _TLS_ALERTS:
            return _tls_failed(self.peer, e)   # TLS 1.3: a refused client certificate shows here
        if isinstance(e, (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)) or e is None:
            if self._tls and not self._heard:   # TLS 1.3: its alert may be lost in the reset
                return PeerError(f"peer {self.peer} closed the TLS connection before its first message: "
                                 f"it may have refused our certificate (see its log)", _TLS_HINT)
            return PeerError(f"peer {self.peer} closed the connection {what}",
                             "the other party stopped; see its log for the reason")
        return PeerError(f"network error {what} with peer {self.peer}: {e}",
                         "check the connection between the parties and retry")

    def _pump(self, out: list[memoryview], recv: bool, limit: int | None = None, into: memoryview | None = None,
              body_for: Callable[[int], tuple[Buffer, memoryview]] | None = None):
        """Send ``out`` and/or receive one frame, whichever can progress; wait only when
        neither can. Returns the received payload (or None): a view of ``into`` if given.
        ``body_for(size)``, called once the header is in: (the payload returned, the part of
        it that arrives on this connection) -- a striped channel's (runtime/striped_channel.py)."""
        sock, tls = self._sock, self._tls
        limit = self.max_frame if limit is None else limit
        out = [v for v in out if len(v)]
        hdr = bytearray(_HDR.size)
        body: bytearray | None = None
        rv: memoryview | None = memoryview(hdr) if recv else None
        while out or rv is not None:
            need, moved = 0, False
            if out:
                try:
                    n = sock.send(out[0][: 1 << 20] if tls else out[0])
                    out[0], moved = out[0][n:], True
                    if not len(out[0]):
                        out.pop(0)
                except (BlockingIOError, ssl.SSLWantWriteError):
                    need |= selectors.EVENT_WRITE
                except ssl.SSLWantReadError:
                    need |= selectors.EVENT_READ
                except OSError as e:
                    raise self._fail("while we were sending", e) from e
            if rv is not None:
                try:
                    n = sock.recv_into(rv, min(len(rv), 1 << 20) if tls else len(rv))
                except (BlockingIOError, ssl.SSLWantReadError):
                    need |= selectors.EVENT_READ
                except ssl.SSLWantWriteError:
                    need |= selectors.EVENT_WRITE
                except OSError as e:
                    raise self._fail("while we were receiving", e) from e
                else:
                    if n == 0:
                        raise self._fail("while we were waiting for data")
                    rv, moved = rv[n:], True
                    if not len(rv) and body is None:
                        (size,) = _HDR.unpack(hdr)
                        if size > limit:
                            raise _oversized(f"peer {self.peer}", size, limit)
                        if body_for is not None:
                            body, rv = body_for(size)
                        else:
                            body = into[:size] if into is not None else bytearray(size)
                            rv = memoryview(body)
                        rv = rv if len(rv) else None
                        self._heard = True
                    elif not len(rv):
                        rv = None
            if moved:
                continue
            if need != self._events:
                self._sel.modify(sock, need)
                self._events = need
            if not self._sel.select(self.timeout):
                raise PeerError(f"timed out after {self.timeout:g} s waiting for the peer "
                                f"{self.peer} ({'receiving' if rv is not None else 'sending'})",
                                "the other party is stalled, crashed or far slower; check it, "
                                "or raise the timeout")
        return body

    def _transfer(self, out: memoryview | None, recv: bool, limit: int | None = None,
                  into: memoryview | None = None) -> bytearray | memoryview | None:
        parts: list[memoryview] = []
        if out is not None:
            head = _HDR.pack(len(out))     # small frames: one segment, one syscall
            parts = [memoryview(head + out)] if len(out) <= _SMALL else [memoryview(head), out]
        return self._pump(parts, recv, limit, into)

    def close(self) -> None:
        if not self.closed:
            self._sel.close()
            self._sock.close()
        super().close()


class TcpListener:
    """A bound listening socket; ``port`` is known before a peer connects (port 0)."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None):
        self.host, self._ctx = host, ssl_context
        try:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.create_server((host, port), family=fam, backlog=16)   # striped: up to 16 at once
        except OSError as e:
            raise PeerError(f"cannot listen on {_fmt(host, port)}: {e}",
                            "pick a free port (or 0) and a local address") from e
        self.port: int = self._sock.getsockname()[1]

    def accept(self, timeout: float = 60.0, accept_timeout: float | None = None,
               max_frame: int = DEFAULT_MAX_FRAME) -> TcpChannel:
        """Wait up to ``accept_timeout`` (default ``timeout``) s for the peer to connect."""
        wait = _seconds("accept timeout", timeout if accept_timeout is None else accept_timeout)
        self._sock.settimeout(wait)
        where = _fmt(self.host, self.port)
        try:
            sock, addr = self._sock.accept()
        except socket.timeout:
            raise PeerError(f"timed out after {wait:g} s waiting for the peer to connect to "
                            f"{where}", "start the other party with --peer pointing here, "
                            "or raise the accept timeout") from None
        sock.settimeout(timeout)
        _tune(sock)
        peer = _fmt(addr[0], addr[1])
        if self._ctx is not None:
            try:
                sock = self._ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as e:
                sock.close()
                raise _tls_failed(peer, e) from None
        return TcpChannel(sock, peer, timeout, max_frame)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
