"""Frames striped over several TCP connections to one peer (``--stripes N``).

One TCP connection driven by one thread moves a few GB/s: every byte is copied through the
kernel twice (send and receive) on that one core. On the bench's loopback at batch 4,
BERT-base's opens (about 1 GB per party each way) then take as long on the wire as the
card's own work. With N connections, a frame of at least :data:`STRIPE_MIN` bytes goes out
as N contiguous slices, each sent and received by its own thread (socket calls release the
GIL), so the copies run on N cores. Smaller frames -- most rounds at batch 1 -- go whole on
connection 0 through :class:`TcpChannel`'s single-threaded pump: no thread hand-off per round.

Wire format: connection 0 carries every frame's 8-byte length ``L`` (the frame header, as on
one connection). If ``L >= STRIPE_MIN`` the payload is cut by :func:`cuts` and slice i goes on
connection i (slice 0 right after the header); otherwise the payload follows the header on
connection 0. Both ends compute the same cuts from ``L``, so slices carry no header of their
own and a frame costs the same 8 bytes it costs on one connection.

Set-up: the connecting party opens N connections and sends on each, as its first frame, a
preamble (magic, index, N, the striping threshold); the listener learns N from the first, accepts the rest and orders
them by index. N = 1 sends the preamble too, so a listener never has to be told N. TLS stays
on one connection: an ``ssl.SSLSocket`` must not be read and written from two threads.
"""
from __future__ import annotations

import os
import selectors
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from fusec.errors import ParameterError, PeerError
from fusec.runtime.channel import (_HDR, _SMALL, DEFAULT_MAX_FRAME, Channel, TcpChannel, TcpListener,
                                   _oversized)

#: frames below this go whole on connection 0 (a thread hand-off costs tens of microseconds);
#: the connecting party's ``FUSEC_STRIPE_MIN`` (bytes) overrides it for both ends (tests)
STRIPE_MIN = 1 << 20
STRIPE_MIN_ENV = "FUSEC_STRIPE_MIN"
MAX_STRIPES = 16
#: connections when ``--stripes`` is not given and TLS is off. On an H100 shared by both parties
#: (loopback, CUDA MPS) 4 stripes took BERT-base batch 8 from 1.90 to 1.06 s and seq 512 from
#: 1.43 to 1.00 s, where one connection's copies were the wire's limit (bench/results/h100_2026-12-06l)
DEFAULT_STRIPES = 4
_PREAMBLE = struct.Struct("<4sHHQ")
_MAGIC = b"FSTR"


def cuts(size: int, stripes: int) -> list[int]:
    """Slice boundaries of a striped payload: N near-equal contiguous slices."""
    return [size * i // stripes for i in range(stripes + 1)]


def check_stripes(stripes: int | None, tls: bool) -> int:
    """``stripes`` validated (one line naming what is wrong and what to do); None (not given):
    :data:`DEFAULT_STRIPES`, or 1 under TLS."""
    if stripes is None:
        return 1 if tls else DEFAULT_STRIPES
    if isinstance(stripes, bool) or not isinstance(stripes, int) or not 1 <= stripes <= MAX_STRIPES:
        raise ParameterError(f"--stripes must be an integer from 1 to {MAX_STRIPES}, got {stripes!r}",
                             "pick the number of TCP connections to the peer (4 suits a fast link)")
    if tls and stripes > 1:
        raise ParameterError("--stripes above 1 cannot be combined with TLS",
                             "drop --stripes (TLS runs on one connection) or the --tls-* options")
    return stripes


class StripedChannel(Channel):
    """One frame stream over N :class:`TcpChannel` connections (all plain TCP)."""

    frame_overhead = _HDR.size

    def __init__(self, stripes: list[TcpChannel], stripe_min: int = STRIPE_MIN):
        if len(stripes) < 2:
            raise ParameterError("a striped channel needs at least two connections")
        super().__init__(stripes[0].timeout)
        self.stripes = stripes
        self.peer, self.max_frame = stripes[0].peer, stripes[0].max_frame
        self.stripe_min = max(1, int(stripe_min))
        # one sender and one receiver per connection past the first (connection 0: this thread)
        self._pool = ThreadPoolExecutor(max_workers=2 * (len(stripes) - 1), thread_name_prefix="fusec-stripe")
        # each worker waits on its own selector: epoll sets are not shared between threads
        self._wait = [(selectors.DefaultSelector(), selectors.DefaultSelector()) for _ in stripes]
        for (w, r), ch in zip(self._wait, stripes):
            w.register(ch._sock, selectors.EVENT_WRITE)
            r.register(ch._sock, selectors.EVENT_READ)

    def _move(self, i: int, view: memoryview, send: bool) -> None:
        """Send or receive exactly ``view`` on connection i (a worker thread). Waits in slices
        of half a second, so a failure elsewhere (``_stop``) ends it soon."""
        ch, sel = self.stripes[i], self._wait[i][0 if send else 1]
        what = f"{'sending' if send else 'receiving'} on connection {i}"
        last = time.monotonic()
        while len(view) and not self._stop.is_set():
            try:
                n = ch._sock.send(view) if send else ch._sock.recv_into(view)
            except BlockingIOError:
                if not sel.select(0.5) and time.monotonic() - last > self.timeout:
                    raise PeerError(f"timed out after {self.timeout:g} s waiting for the peer {self.peer} ({what})",
                                    "the other party is stalled, crashed or far slower; check it, "
                                    "or raise the timeout") from None
                continue
            except OSError as e:
                raise ch._fail(f"while we were {what}", e) from e
            if n == 0:
                raise ch._fail(f"while we were {what}")
            view, last = view[n:], time.monotonic()

    def _transfer(self, out: memoryview | None, recv: bool, limit: int | None = None,
                  into: memoryview | None = None) -> bytearray | memoryview | None:
        n = len(self.stripes)
        limit = self.max_frame if limit is None else limit
        self._stop = threading.Event()
        work: list[Future] = []
        parts: list[memoryview] = []
        if out is not None:
            head, size = _HDR.pack(len(out)), len(out)
            if size >= self.stripe_min:
                c = cuts(size, n)
                parts = [memoryview(head), out[: c[1]]]
                work += [self._pool.submit(self._move, i, out[c[i]:c[i + 1]], True) for i in range(1, n)]
            else:
                parts = [memoryview(head + out)] if size <= _SMALL else [memoryview(head), out]

        def body_for(size: int):
            """The peer's frame of ``size`` bytes: where it lands, and connection 0's part."""
            if size > limit:
                raise _oversized(f"peer {self.peer}", size, limit)
            body = into[:size] if into is not None else bytearray(size)
            view = memoryview(body)
            if size < self.stripe_min:
                return body, view
            c = cuts(size, n)
            work.extend(self._pool.submit(self._move, i, view[c[i]:c[i + 1]], False) for i in range(1, n))
            return body, view[: c[1]]

        try:
            body = self.stripes[0]._pump(parts, recv, limit, body_for=body_for)
            for f in work:
                f.result()
        except BaseException:
            self._stop.set()        # the workers notice within a second; the stream is out of sync
            for f in work:
                f.exception()
            raise
        return body

    def close(self) -> None:
        if not self.closed:
            for ch in self.stripes:
                ch.close()
            for w, r in self._wait:
                w.close()
                r.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


def connect(host: str, port: int, stripes: int = 1, **kw) -> Channel:
    """Open ``stripes`` connections to a :func:`accept` listener (each: ``TcpChannel.connect``
    with ``kw``) and name each by its preamble. One connection: a plain ``TcpChannel``."""
    check_stripes(stripes, kw.get("ssl_context") is not None)
    stripe_min = _stripe_min()
    chans: list[TcpChannel] = []
    try:
        for i in range(stripes):
            ch = TcpChannel.connect(host, port, **kw)
            chans.append(ch)
            ch.send(_PREAMBLE.pack(_MAGIC, i, stripes, stripe_min), scope="connect")
    except BaseException:
        for ch in chans:
            ch.close()
        raise
    return chans[0] if stripes == 1 else StripedChannel(chans, stripe_min)


def accept(listener: TcpListener, timeout: float = 60.0, accept_timeout: float | None = None,
           max_frame: int = DEFAULT_MAX_FRAME) -> Channel:
    """Accept the peer's connections: the first preamble says how many follow."""
    chans: dict[int, TcpChannel] = {}
    want, stripe_min = None, STRIPE_MIN
    try:
        while want is None or len(chans) < want:
            ch = listener.accept(timeout, accept_timeout, max_frame)
            raw = bytes(ch.recv("connect", limit=_PREAMBLE.size))
            magic, i, n, smin = _PREAMBLE.unpack(raw) if len(raw) == _PREAMBLE.size else (b"", 0, 0, 0)
            if magic != _MAGIC or not 1 <= n <= MAX_STRIPES or i >= n or i in chans or smin < 1 \
                    or (want is not None and (n, smin) != (want, stripe_min)):
                ch.close()
                raise PeerError(f"peer {ch.peer} did not open a fusec party connection (preamble {raw[:8]!r})",
                                "point only the other fusec party (the same fusec version) at --listen")
            if n > 1 and ch._tls:
                ch.close()
                raise PeerError(f"peer {ch.peer} asks for {n} connections over TLS",
                                "run the peer without --stripes (TLS runs on one connection)")
            want, stripe_min, chans[i] = n, smin, ch
    except BaseException:
        for ch in chans.values():
            ch.close()
        raise
    ordered = [chans[i] for i in range(want)]
    return ordered[0] if want == 1 else StripedChannel(ordered, stripe_min)


def _stripe_min() -> int:
    raw = os.environ.get(STRIPE_MIN_ENV)
    if raw is None:
        return STRIPE_MIN
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ParameterError(f"{STRIPE_MIN_ENV}={raw!r} is not a positive number of bytes",
                             f"unset {STRIPE_MIN_ENV} (default {STRIPE_MIN}) or give a positive integer")
    return value
