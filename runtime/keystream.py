"""Key sets streamed from the dealer to the two servers over TCP, never stored on disk.

For deployments that must not keep key material at rest, and for key sets larger than a
disk (BERT-base at batch 8 is 2 x 34 GB per set), ``fusec keygen BUILD --serve HOST:PORT``
generates each set when both servers ask for it and sends every gate's packed bytes as it
is made; a server (``fusec run ... --keys tcp://HOST:PORT``) reads the set into memory and
uses it once. The dealer then holds one gate at a time, not a set.

Conversation, one frame per line (runtime/channel.py framing; JSON where not bytes)::

    server -> dealer  {"fusec_keys": 1, "party": p, "layout": digest}
    dealer -> server  {"key_set_id", "pairing_secret", "count", "set_nbytes", "next"}  or {"error", "hint"}
    per set i, both servers:
    server -> dealer  {"set": i}
    dealer -> server  {"set": i}, the set's bytes in frames (gate by gate), {"end": i, "nbytes": n}

The dealer generates set i only once both servers asked for the same i, so both receive
the same set and neither waits on a set the other does not want. Sets are served in order
and never again: a server that disconnects loses the sets it did not ask for, nothing is
reused. Both servers of a session hold the same key-set id and pairing secret, so their
hello (runtime/hello.py) proves the pairing exactly as with key files.

Keys cross the network: without TLS both ends must be on loopback (:func:`check_plaintext`);
with TLS (the servers' ``--tls-*`` files, the dealer's own certificate from the same CA)
the channel authenticates both ends and protects every byte.
"""
from __future__ import annotations

import ipaddress
import json
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fusec.errors import KeyFileError, ParameterError, PeerError
from fusec.runtime.channel import Channel, TcpChannel
from fusec.runtime.keyio import KeySetReader
from fusec.runtime.layout import KeyLayout
from fusec.runtime.seeded_shares import InflateBehind, party_layout

SCHEME = "tcp://"
PROTOCOL = 1
CONTROL_MAX = 4096          # bytes of a JSON control frame
FRAME_BYTES = 4 << 20       # the dealer joins gates smaller than this into frames of about this size
PAGE = 4096


def is_stream_address(key_path: Any) -> bool:
    """Whether ``--keys`` names a dealer (``tcp://HOST:PORT``) rather than a key file."""
    return str(key_path).startswith(SCHEME)


def parse_stream_address(key_path: str) -> tuple[str, int]:
    from fusec.runtime.channel import parse_address  # noqa: PLC0415

    rest = str(key_path)[len(SCHEME):]
    try:
        host, port = parse_address(rest)
    except ParameterError:
        host, port = "", -1
    if not host or not 1 <= port <= 65535:
        raise ParameterError(f"--keys {key_path!r}: a dealer address is tcp://HOST:PORT with a port in 1..65535, "
                             f"for example --keys tcp://127.0.0.1:9100")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (literal loopback address or localhost)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_plaintext(host: str, tls: bool, flag: str) -> None:
    """Key material leaves the machine only over TLS."""
    if not tls and not is_loopback(host):
        raise ParameterError(f"{flag}: streaming keys to or from {host} without TLS would send key material in the "
                             f"clear", "give --tls-cert, --tls-key and --tls-ca, or use a loopback address")


def _send_json(ch: Channel, obj: dict) -> None:
    ch.send(json.dumps(obj).encode(), "keys")


def _recv_json(ch: Channel, what: str) -> dict:
    raw = ch.recv("keys", CONTROL_MAX)
    try:
        obj = json.loads(bytes(raw))
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise PeerError(f"{what}: expected a key-stream control message, got {len(raw)} other bytes",
                        "both ends must be fusec of the same version (fusec keygen --serve, fusec run --keys tcp://)")
    return obj


# ------------------------------------------------------------------------------------ the server's side
@dataclass
class _Offer:
    key_set_id: str
    pairing_secret: bytes
    count: int
    set_nbytes: int
    next: int


class DealerKeyStream:
    """This server's key sets as the dealer streams them: the interface of
    :class:`~fusec.runtime.keyio.KeyFile` that a server uses (``next_unused``, ``claim``,
    ``key_set_id``, ``pairing_secret``, ``count``, ``close``), with sets held in memory
    only and consumed in order."""

    def __init__(self, ch: Channel, layout: KeyLayout, party: int, offer: _Offer, where: str) -> None:
        self._ch, self._layout, self.party, self.path = ch, layout, party, where
        self._offer = offer
        self._next: int | None = offer.next if offer.next < offer.count else None
        self.inflate = True     # as KeyFile.inflate: False keeps sets in this party's stored layout

    @classmethod
    def connect(cls, key_path: str, layout: KeyLayout, party: int, timeout: float = 120.0,
                retry_for: float = 30.0, ssl_context=None, server_hostname: str | None = None) -> "DealerKeyStream":
        host, port = parse_stream_address(key_path)
        check_plaintext(host, ssl_context is not None, "--keys")
        try:
            ch = TcpChannel.connect(host, port, timeout=timeout, retry_for=retry_for, ssl_context=ssl_context,
                                    server_hostname=server_hostname)
        except PeerError as e:
            raise KeyFileError(f"the dealer at {key_path}: {e.message}",
                               e.hint if "TLS" in e.message else
                               "start `fusec keygen BUILD --serve HOST:PORT` first, or check the address") from None
        try:
            _send_json(ch, {"fusec_keys": PROTOCOL, "party": party, "layout": layout.digest()})
            msg = _recv_json(ch, f"the dealer at {key_path}")
            if "error" in msg:
                raise KeyFileError(f"the dealer at {key_path} refused: {msg['error']}", msg.get("hint"))
            offer = _Offer(str(msg["key_set_id"]), bytes.fromhex(msg["pairing_secret"]), int(msg["count"]),
                           int(msg["set_nbytes"]), int(msg["next"]))
        except (KeyError, TypeError, ValueError):
            ch.close()
            raise PeerError(f"the dealer at {key_path} sent a malformed offer",
                            "both ends must run the same fusec version") from None
        except BaseException:
            ch.close()
            raise
        stored = party_layout(layout, party).set_nbytes
        if offer.set_nbytes != stored:
            ch.close()
            raise KeyFileError(f"the dealer at {key_path} offers sets of {offer.set_nbytes} bytes, this build's "
                               f"layout needs {stored}", "serve keys for this build")
        return cls(ch, layout, party, offer, key_path)

    @property
    def key_set_id(self) -> str:
        return self._offer.key_set_id

    @property
    def pairing_secret(self) -> bytes:
        return self._offer.pairing_secret

    @property
    def count(self) -> int:
        return self._offer.count

    @property
    def set_nbytes(self) -> int:
        """Bytes of a claimed set in memory (the full layout's; the dealer sends
        ``party_layout``'s, runtime/seeded_shares.py; that one where sets are not inflated
        on the host: :attr:`inflate`)."""
        return self._layout.set_nbytes if self.inflate else self._offer.set_nbytes

    def unused_count(self) -> int:
        """Sets the dealer will still serve (they come in order, once)."""
        return 0 if self._next is None else self.count - self._next

    def next_unused(self) -> int | None:
        return self._next

    def claim(self, index: int, out: Callable[[int], np.ndarray | None] | None = None) -> KeySetReader:
        """Ask the dealer for set ``index`` (the next one: sets come in order, once) and
        receive it into ``out(nbytes)`` (e.g. page-locked memory) or a fresh array: this party's
        stored layout into the buffer's tail, then inflated in place into the full layout
        (unless :attr:`inflate` is off: then the reader's ``seeded_party`` says so)."""
        if self._next is None or index != self._next:
            have = "none left" if self._next is None else f"the next is {self._next}"
            raise KeyFileError(f"key set {index} cannot come from the dealer at {self.path}: sets come once, in "
                               f"order ({have})", "start both servers against the same dealer session")
        full, n = self.set_nbytes, self._offer.set_nbytes
        whole = out(full) if out is not None else None
        if whole is None:
            whole = np.empty(full, np.uint8)
            whole[::PAGE] = 0     # fault the pages in now: faults taken inside recv cost 20x (0.12 vs 2.8 GB/s)
        else:
            whole = whole.reshape(-1).view(np.uint8)[:full]
        buf = whole[full - n:]
        _send_json(self._ch, {"set": index})
        head = _recv_json(self._ch, f"the dealer at {self.path}")
        if "error" in head:
            raise KeyFileError(f"the dealer at {self.path} refused set {index}: {head['error']}", head.get("hint"))
        if head.get("set") != index:
            raise PeerError(f"the dealer at {self.path} sent set {head.get('set')!r}, we asked for {index}",
                            "both ends must run the same fusec version")
        with InflateBehind(self._layout, self.party, whole, n) as arrival:
            got = 0
            view = memoryview(buf)
            while got < n:                      # straight into the set's buffer, frame after frame
                size = self._ch.recv_into(view[got:], "keys")
                if not size:
                    raise PeerError(f"the dealer at {self.path} sent an empty frame inside set {index}",
                                    "both ends must run the same fusec version")
                got += size
                arrival.advance(got)
            end = _recv_json(self._ch, f"the dealer at {self.path}")
            if end != {"end": index, "nbytes": n}:
                raise PeerError(f"the dealer at {self.path} ended set {index} with {end!r} after {got} bytes",
                                "both ends must run the same fusec version")
        self._next = index + 1 if index + 1 < self.count else None
        if not self.inflate:
            return KeySetReader(party_layout(self._layout, self.party), whole, index=index,
                                key_set_id=self.key_set_id, seeded_party=self.party)
        return KeySetReader(self._layout, whole, index=index, key_set_id=self.key_set_id)

    def close(self) -> None:
        self._ch.close()

    def __enter__(self) -> "DealerKeyStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DealerKeyStream({self.path!r}, party={self.party}, count={self.count})"


# ------------------------------------------------------------------------------------ the dealer's side
class StreamSetWriter:
    """One server's end of the dealer: the set-writing interface of
    :class:`~fusec.runtime.keyio.KeyFileWriter` (``begin_set``, ``write_gate_packed``,
    ``end_set``) over the server's channel. Gates under :data:`FRAME_BYTES` are joined into
    frames of about that size, larger ones go as they are (no copy); the layout's order
    and sizes are checked as a file writer does.

    A thread of its own sends the frames (at most ``depth`` queued), so the dealer goes on
    generating while both servers' bytes are on the wire; a send error surfaces at the
    next call or at ``end_set``."""

    def __init__(self, ch: Channel, layout: KeyLayout, depth: int = 4) -> None:
        self.ch, self.layout = ch, layout
        self._cur: int | None = None
        self._pos = 0
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._sender, name="fusec-keystream", daemon=True)
        self._thread.start()

    def _sender(self) -> None:
        while (frame := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.ch.send(frame, "keys")
                except BaseException as e:  # noqa: BLE001 - handed to the dealer's thread
                    self._error = e

    def _put(self, frame) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(frame)

    def begin_set(self, index: int) -> None:
        self._cur, self._pos = index, 0
        self._put(json.dumps({"set": index}).encode())

    def write_gate_packed(self, gate_id: str, buf: np.ndarray) -> None:
        slot = self.layout.slots[self._pos]
        if gate_id != slot.gate_id or buf.size != slot.nbytes:
            raise KeyFileError(f"dealer bug: key set {self._cur}: expected gate {slot.gate_id!r} of {slot.nbytes} "
                               f"bytes, got {gate_id!r} of {buf.size}")
        self._pos += 1
        part = np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
        if part.size >= FRAME_BYTES:        # a large gate goes as it is: no copy into a joined frame
            self._flush()
            self._put(memoryview(part))
            return
        self._pending.append(part)
        self._pending_bytes += part.size
        if self._pending_bytes >= FRAME_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_bytes:
            return
        frame = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._put(memoryview(frame))
        self._pending, self._pending_bytes = [], 0

    def end_set(self) -> None:
        """Send the rest and the set's end mark; returns once all of it is on the wire."""
        if self._pos != len(self.layout.slots):
            raise KeyFileError(f"dealer bug: key set {self._cur} ended after {self._pos} of "
                               f"{len(self.layout.slots)} gates")
        try:
            self._flush()
            self._put(json.dumps({"end": self._cur, "nbytes": self.layout.set_nbytes}).encode())
        finally:
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error
        self._cur = None

    def abort(self) -> None:
        """Stop the sender thread without finishing the set (the dealer failed mid-set)."""
        self._error = self._error or KeyFileError("key set abandoned")
        try:
            self._queue.put_nowait(None)
        except queue.Full:      # the thread is stuck in a send: the channel's close ends it
            pass


@dataclass
class ServerHello:
    party: int
    layout: str


def read_hello(ch: Channel, layout: KeyLayout) -> ServerHello | None:
    """A connecting server's hello, checked against the build; None (after telling the
    server why) when it asks for another build or is not a fusec server."""
    try:
        msg = _recv_json(ch, "a server")
        party, digest = msg.get("party"), msg.get("layout")
        proto = msg.get("fusec_keys")
    except PeerError:
        return None
    if proto != PROTOCOL or party not in (0, 1):
        refuse(ch, "not a fusec key-stream hello of this version", "run fusec run --keys tcp://... of this version")
        return None
    if digest != layout.digest():
        refuse(ch, f"this dealer serves another build (layout hash {layout.digest()[:16]}, yours {str(digest)[:16]})",
                "start the dealer with the build directory the servers run")
        return None
    return ServerHello(party, digest)


def refuse(ch: Channel, error: str, hint: str) -> None:
    """Tell a server why the dealer stops serving it, then hang up."""
    try:
        _send_json(ch, {"error": error, "hint": hint})
    except PeerError:
        pass
    ch.close()


def send_offer(ch: Channel, key_set_id: str, secret: bytes, count: int, set_nbytes: int, nxt: int) -> None:
    _send_json(ch, {"key_set_id": key_set_id, "pairing_secret": secret.hex(), "count": count,
                    "set_nbytes": set_nbytes, "next": nxt})


def read_request(ch: Channel) -> int | None:
    """The set a server asks for next, or None when it hung up (its session is over)."""
    try:
        msg = _recv_json(ch, "a server")
    except PeerError:
        return None
    s = msg.get("set")
    return s if isinstance(s, int) and not isinstance(s, bool) else None

