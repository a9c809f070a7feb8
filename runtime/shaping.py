"""Network emulation inside the channel: ``--net lan|wan|BANDWIDTH,RTT`` (issue 14, item 5).

Both parties run on one machine over loopback, where a round costs a few tens of
microseconds; a real link adds, per direction, half the round-trip time plus the time to
push the frame through its bandwidth. :class:`ShapedChannel` wraps either party's
:class:`~fusec.runtime.channel.Channel` and makes every frame reach the peer **no earlier
than** ::

    arrival = max(send time, this direction's link free) + frame bits / bandwidth + RTT / 2

with the bandwidth a FIFO per direction (a frame waits for the ones before it), as on a
real full-duplex link. So one exchange, both parties sending at once, costs
``RTT/2 + size/bandwidth`` (each direction's delay runs in parallel), not twice that.

How: the *sender* stamps the arrival time it computed into a 16-byte header in front of
the frame (its own FIFO decides it); the *receiver* takes the frame off the real channel
and waits until the stamp before handing it on. Waiting on the receiver's side, not
sleeping before the send, is what a real link does when one party is late: the late
party's receive does not pay the latency again for a frame that has long arrived, and
its own send is not held back. The cost of the design, each stated where it matters:

- **One machine only.** The stamp is a ``time.monotonic()`` reading, the same clock in
  every process of one Linux host; across machines there is a real network to measure.
  A stamp further ahead than the channel's timeout is refused, so a bad clock cannot
  make a party wait forever.
- **Both parties need the same ``--net``** (the emulation is symmetric: each party models
  its own sending direction). The header carries a magic and a fingerprint of the
  setting, so a shaped party facing an unshaped peer, or one emulating another network,
  fails with one line at the first frame (the hello), never silently.
- The header is **not counted**: :attr:`stats` holds exactly what the unshaped channel
  would (payload plus the inner channel's frame overhead), so byte figures of shaped
  and unshaped runs compare. The bandwidth delay is charged on the same bytes.
- Emulation adds delay only: when loopback itself is slower than the emulated link
  (a frame of hundreds of MB at 10 Gbit/s), the real transfer time stands.
"""
from __future__ import annotations

import math
import re
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable

from fusec.errors import ParameterError, PeerError
from fusec.runtime.channel import _HDR as _TCP_HDR
from fusec.runtime.channel import _SMALL, Channel, TcpChannel

_SHAPED_HDR = struct.Struct("<4sId")        # magic, fingerprint of the setting, arrival (monotonic seconds)
_MAGIC = b"fNet"
_SPIN = 3e-4                                # time.sleep overshoots by ~0.1 ms: the last stretch polls
_HELP = "use --net lan (1 Gbit/s, 0.5 ms RTT), wan (400 Mbit/s, 4 ms RTT), none, or BANDWIDTH,RTT such as 10gbit,0.2ms"


@dataclass(frozen=True)
class NetSetting:
    """An emulated link: bandwidth per direction (bits/s) and round-trip time (s)."""

    name: str
    bandwidth_bps: float
    rtt_s: float

    def frame_seconds(self, nbytes: int) -> float:
        """Time to push ``nbytes`` through the link."""
        return nbytes * 8 / self.bandwidth_bps

    def one_way_seconds(self, nbytes: int) -> float:
        """An idle link's delay for one frame: RTT / 2 plus its transmission time."""
        return self.rtt_s / 2 + self.frame_seconds(nbytes)

    @property
    def spec(self) -> str:
        """What :func:`parse_net` reads back (the workers' ``--net`` argument)."""
        return self.name

    @property
    def fingerprint(self) -> int:
        return zlib.crc32(f"{self.bandwidth_bps!r},{self.rtt_s!r}".encode())

    def describe(self) -> str:
        """E.g. ``lan (emulated: 1 Gbit/s, 0.5 ms RTT)``."""
        return f"{self.name} (emulated: {format_bandwidth(self.bandwidth_bps)}, {self.rtt_s * 1e3:g} ms RTT)"

    def as_dict(self) -> dict:
        """The JSON record of a shaped run (bench config, ``fusec run --stats``)."""
        return {"name": self.name, "bandwidth_bps": self.bandwidth_bps, "rtt_seconds": self.rtt_s,
                "description": self.describe(), "emulated": "fusec ShapedChannel on loopback (runtime/shaping.py)"}


NET_PRESETS: dict[str, NetSetting] = {
    "lan": NetSetting("lan", 1e9, 0.5e-3),
    "wan": NetSetting("wan", 400e6, 4e-3),
}
_NONE = ("", "none", "off")
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUM = r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
_BW_RE = re.compile(_NUM + r"\s*([kKmMgGtT]?)(bit|bit/s|bps)")
_RTT_RE = re.compile(_NUM + r"\s*(s|ms|us|µs|ns)")
MAX_BANDWIDTH = 1e13        # 10 Tbit/s: more is a typo
MAX_RTT = 10.0


def format_bandwidth(bps: float) -> str:
    for unit, scale in (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"


def parse_net(text: str | None, flag: str = "--net") -> NetSetting | None:
    """``none`` -> None; ``lan``, ``wan``; ``BANDWIDTH,RTT`` (bits per second with k/m/g/t
    and ``bit``, ``bit/s`` or ``bps``: ``10gbit``, ``400Mbps``; a time with s, ms, us or
    ns: ``0.2ms``). Anything else is one :class:`ParameterError` line."""
    raw = "" if text is None else str(text).strip()
    low = raw.lower()
    if low in _NONE:
        return None
    if low in NET_PRESETS:
        return NET_PRESETS[low]
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != 2:
        raise ParameterError(f"{flag} {raw!r} is not a network setting; {_HELP}")
    bw_m, rtt_m = _BW_RE.fullmatch(parts[0]), _RTT_RE.fullmatch(parts[1])
    if bw_m is None:
        raise ParameterError(f"{flag} {raw!r}: bandwidth {parts[0]!r} is not bits per second with a unit "
                             f"(kbit, mbit, gbit, Mbps, Gbps, ...); {_HELP}")
    if rtt_m is None:
        raise ParameterError(f"{flag} {raw!r}: round-trip time {parts[1]!r} is not a time with a unit "
                             f"(s, ms, us, ns); {_HELP}")
    bw = float(bw_m.group(1)) * _PREFIX[bw_m.group(2).lower()]
    rtt = float(rtt_m.group(1)) * _TIME_UNIT[rtt_m.group(2)]
    if not (math.isfinite(bw) and 0 < bw <= MAX_BANDWIDTH):
        raise ParameterError(f"{flag} {raw!r}: the bandwidth must be positive and at most "
                             f"{format_bandwidth(MAX_BANDWIDTH)}; {_HELP}")
    if not (math.isfinite(rtt) and 0 <= rtt <= MAX_RTT):
        raise ParameterError(f"{flag} {raw!r}: the round-trip time must be from 0 to {MAX_RTT:g} s; {_HELP}")
    return NetSetting(f"{parts[0]},{parts[1]}", bw, rtt)


def _wait_until(deadline: float, clock: Callable[[], float]) -> None:
    """Sleep, then spin through the last fraction of a millisecond: ``time.sleep`` (even
    ``sleep(0)``, through the kernel's timer slack) overshoots by 0.05-0.1 ms a frame, a
    fifth to a third of a LAN round; the spin lands within microseconds."""
    while True:
        left = deadline - clock()
        if left <= 0:
            return
        if left > _SPIN:
            time.sleep(left - _SPIN)


def _send_tcp(ch: TcpChannel, hdr: bytes, out: memoryview | None, recv: bool, limit: int | None):
    """TcpChannel's frame with our header between its length prefix and the payload,
    without copying a large payload (TcpChannel._transfer's layout, one part more)."""
    parts: list[memoryview] = []
    if out is not None:
        head = _TCP_HDR.pack(len(hdr) + len(out)) + hdr
        parts = [memoryview(head + out)] if len(out) <= _SMALL else [memoryview(head), out]
    return ch._pump(parts, recv, ch.max_frame if limit is None else limit)


def _send_any(ch: Channel, hdr: bytes, out: memoryview | None, recv: bool, limit: int | None):
    """Any other channel (LocalChannel: in-process, copies anyway)."""
    return ch._transfer(None if out is None else memoryview(hdr + out), recv, limit)


_SENDERS: dict[type, Callable] = {TcpChannel: _send_tcp}


class ShapedChannel(Channel):
    """``inner`` with an emulated link in front of the peer (see the module doc): frames
    sent arrive no earlier than ``send + queueing + size / bandwidth + RTT / 2``.

    ``waited_seconds`` is the total this side spent holding frames back (a check that
    the emulation, not the machine, set the pace)."""

    def __init__(self, inner: Channel, net: NetSetting, clock: Callable[[], float] = time.monotonic):
        super().__init__(inner.timeout)
        self.inner, self.net, self._clock = inner, net, clock
        self.frame_overhead = inner.frame_overhead      # count what the unshaped channel would
        self._send = next((f for t, f in _SENDERS.items() if isinstance(inner, t)), _send_any)
        self._link_free = 0.0                           # when our direction finishes its last frame
        self.waited_seconds = 0.0

    def _stamp(self, nbytes: int) -> bytes:
        start = max(self._clock(), self._link_free)
        self._link_free = start + self.net.frame_seconds(nbytes + self.frame_overhead)
        return _SHAPED_HDR.pack(_MAGIC, self.net.fingerprint, self._link_free + self.net.rtt_s / 2)

    def _transfer(self, out: memoryview | None, recv: bool, limit: int | None = None,
                  into: memoryview | None = None) -> bytearray | None:
        hdr = self._stamp(len(out)) if out is not None else b""     # ``into``: not here (a copy follows)
        got = self._send(self.inner, hdr, out, recv, None if limit is None else limit + _SHAPED_HDR.size)
        if not recv:
            return None
        arrival = self._check(got)
        del got[:_SHAPED_HDR.size]                      # O(1) at the front of a bytearray: no copy
        now = self._clock()
        if arrival - now > self.timeout:
            raise PeerError(f"the peer stamped a frame to arrive {arrival - now:.1f} s from now, beyond the "
                            f"{self.timeout:g} s timeout",
                            "--net emulates a link on one machine (one clock): run both parties on it")
        if arrival > now:
            _wait_until(arrival, self._clock)
            self.waited_seconds += self._clock() - now
        return got

    def _check(self, got: bytearray) -> float:
        if len(got) < _SHAPED_HDR.size or got[:4] != _MAGIC:
            raise PeerError(f"the peer's frames carry no network emulation: this party runs with --net "
                            f"{self.net.name}, the peer without",
                            "start both parties with the same --net (the emulation is symmetric)")
        _, fp, arrival = _SHAPED_HDR.unpack_from(got)
        if fp != self.net.fingerprint:
            raise PeerError(f"the peer emulates another network than --net {self.net.name}",
                            "start both parties with the same --net")
        if not math.isfinite(arrival):
            raise PeerError("the peer sent a frame with a corrupt network-emulation stamp")
        return arrival

    def close(self) -> None:
        self.inner.close()
        super().close()


def shape(channel: Channel, net: NetSetting | None) -> Channel:
    """``channel`` as is when ``net`` is None, else wrapped in a :class:`ShapedChannel`."""
    return channel if net is None else ShapedChannel(channel, net)
