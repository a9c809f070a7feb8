"""What the two server commands, ``fusec run`` and ``fusec demo run``, share: one
:func:`party_options` decorator and the :class:`ServerOptions` it hands the command.

A server claims a key set (marks it used for good) once the peer has proven its pairing,
so every mistake it can see on its own is refused before that, and before it connects:
numbers (timeouts, ports: finite, in range), the output and stats paths (directory
exists and is writable, a name ``fusec run`` will really write), the TLS files. Each is
one line naming the option, the value and what to give instead, with exit status 2 (the
errors are :class:`~fusec.errors.ParameterError`, which ``fusec.cli.main`` prints).
"""
from __future__ import annotations

import functools
import math
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from fusec.errors import ParameterError

MAX_SECONDS = 7 * 24 * 3600     # a week: more is a typo, and select() overflows near 2**31 ms


class _Seconds(click.ParamType):
    """A finite number of seconds in (0, MAX] (or [0, MAX] with ``zero_ok``)."""

    name = "SECONDS"

    def __init__(self, zero_ok: bool = False) -> None:
        self.zero_ok = zero_ok

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        flag = param.opts[0] if param is not None else "seconds"
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        low_ok = v >= 0 if self.zero_ok else v > 0
        if not (math.isfinite(v) and low_ok and v <= MAX_SECONDS):
            bound = ">= 0" if self.zero_ok else "> 0"
            raise ParameterError(f"{flag} {value!r} is not a number of seconds {bound} and at most "
                                 f"{MAX_SECONDS} (a week); for example {flag} 60")
        return v


class _Party(click.ParamType):
    name = "0|1"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if str(value).strip() not in ("0", "1"):
            raise ParameterError(f"--party {value!r}: a server is party 0 or party 1 "
                                 f"(usually 0 listens, 1 connects with --peer)")
        return int(value)


class _Address(click.ParamType):
    """HOST:PORT, :PORT or PORT with a port in 1..65535 (one line when it is not)."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        from fusec.runtime.channel import parse_address  # noqa: PLC0415

        flag = param.opts[0] if param is not None else "address"
        try:
            host, port = parse_address(value)
        except ParameterError:
            port = -1
        if not 1 <= port <= 65535:
            raise ParameterError(f"{flag} {value!r} is not an address: use HOST:PORT, :PORT or [IPv6]:PORT "
                                 f"with a port in 1..65535, for example {flag} 127.0.0.1:9000")
        return host, port


class _Net(click.ParamType):
    """``--net``: none, lan, wan or BANDWIDTH,RTT (runtime/shaping.py), one line when bad."""

    name = "lan|wan|BW,RTT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        from fusec.runtime.shaping import NetSetting, parse_net  # noqa: PLC0415

        return value if isinstance(value, NetSetting) or value is None else parse_net(value)


net_type = _Net()
address_type = _Address()
seconds_type = _Seconds()
NET_HELP = ("emulate a network on loopback (both parties need the same): lan = 1 Gbit/s, 0.5 ms RTT; "
            "wan = 400 Mbit/s, 4 ms RTT; or BANDWIDTH,RTT such as 10gbit,0.2ms (default: none)")


class _KeySetCount(click.ParamType):
    """``--count`` of a dealer: 1 .. 2**32 - 1 key sets (the key file's u32)."""

    name = "K"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if not (text.isdigit() and 1 <= int(text) <= 2**32 - 1):
            raise ParameterError(f"--count {value!r}: the number of key sets (one per inference) must be an "
                                 f"integer from 1 to {2**32 - 1}")
        return int(text)


key_set_count = _KeySetCount()


def check_writable(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` can be written as a file: its directory exists and is writable, it is not
    a directory itself, and it ends in one of ``suffixes`` (numpy would add its own)."""
    p = Path(path)
    if suffixes and p.suffix not in suffixes:
        raise ParameterError(f"{flag} {p}: the name must end in {' or '.join(suffixes)}")
    parent = p.parent
    if not parent.is_dir():
        raise ParameterError(f"{flag} {p}: the directory {parent} does not exist; create it first")
    if p.exists() and not p.is_file():
        raise ParameterError(f"{flag} {p} exists and is not a regular file; pass a file name")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ParameterError(f"{flag} {p} is not writable; pass a path in a directory you can write")
    return p


@dataclass
class ServerOptions:
    """One server's command-line options, checked by :meth:`prepare`."""

    party: int
    key_path: str
    listen: tuple[str, int] | None
    peer: tuple[str, int] | None
    input_path: str | None
    output_path: str | None
    timeout: float
    connect_retry: float
    backend: str
    state_dir: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    tls_server_name: str | None
    net: Any = None                 # runtime.shaping.NetSetting: an emulated link (--net), None: none
    stripes: int | None = None      # TCP connections to the peer (--stripes; None: 4, 1 under TLS)
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)
    _tls: Any = field(default=None, repr=False)     # runtime.tls.TlsFiles, also for a dealer's key stream

    def prepare(self, output_suffixes: tuple[str, ...] = (), extra_outputs: dict[str, str | None] | None = None
                ) -> "ServerOptions":
        """Everything that can be checked alone, before the build is loaded or a key set
        claimed: one endpoint, writable outputs, usable TLS files."""
        from fusec.runtime.tls import TlsFiles  # noqa: PLC0415

        if (self.listen is None) == (self.peer is None):
            raise ParameterError("give exactly one of --listen and --peer (party 0 usually listens, "
                                 "party 1 connects with --peer)")
        if self.output_path:
            check_writable(self.output_path, "--output", output_suffixes)
        for flag, path in (extra_outputs or {}).items():
            if path:
                check_writable(path, flag)
        tls = TlsFiles.from_options(self.tls_cert, self.tls_key, self.tls_ca)
        if tls is None and self.tls_server_name:
            raise ParameterError("--tls-server-name needs --tls-cert, --tls-key and --tls-ca")
        if tls is not None:
            tls.check()
            self._ssl = tls.server_context() if self.listen else tls.client_context()
            self._tls = tls
        return self

    def open_keys(self, graph, out=None, inflate: bool = True):
        """The key file checked, its record of used sets writable, the next set verified
        (into ``out(nbytes)`` when given: the backend's page-locked buffer); or (``--keys
        tcp://HOST:PORT``) connected to the dealer streaming the key sets. ``inflate``: as
        runtime.party.open_keys's."""
        from fusec.runtime.party import open_keys  # noqa: PLC0415

        dealer = {"timeout": self.timeout, "retry_for": self.connect_retry,
                  "ssl_context": self._tls.client_context() if self._tls else None}   # name: the dealer's host
        return open_keys(graph, self.party, self.key_path, self.state_dir, dealer=dealer, out=out,
                         inflate=inflate)

    def channel(self):
        """Listen for or connect to the peer (TLS when configured; --net: behind an emulated link)."""
        from fusec.runtime import striped_channel  # noqa: PLC0415
        from fusec.runtime.channel import TcpListener  # noqa: PLC0415
        from fusec.runtime.shaping import shape  # noqa: PLC0415

        stripes = striped_channel.check_stripes(self.stripes, self._ssl is not None)
        if self.listen is not None:
            with TcpListener(*self.listen, self._ssl) as lst:
                ch = striped_channel.accept(lst, timeout=self.timeout)
        else:
            ch = striped_channel.connect(*self.peer, stripes, timeout=self.timeout,
                                         retry_for=self.connect_retry, ssl_context=self._ssl,
                                         server_hostname=self.tls_server_name)
        if self.net is not None:
            click.echo(f"network: {self.net.describe()}", err=True)
        return shape(ch, self.net)


_FIELDS = ("party", "key_path", "listen", "peer", "input_path", "output_path", "timeout", "connect_retry",
           "backend", "state_dir", "tls_cert", "tls_key", "tls_ca", "tls_server_name", "net", "stripes")


def tls_options(f: Callable) -> Callable:
    """``--tls-cert/--tls-key/--tls-ca/--tls-server-name`` (also for commands that start servers)."""
    file = click.Path(dir_okay=False)
    opts = [
        click.option("--tls-cert", "tls_cert", type=file, help="this server's certificate (PEM), signed by --tls-ca"),
        click.option("--tls-key", "tls_key", type=file, help="its private key (PEM, unencrypted)"),
        click.option("--tls-ca", "tls_ca", type=file,
                     help="the CA both servers' certificates are signed by (mutual TLS; nothing else is trusted)"),
        click.option("--tls-server-name", "tls_server_name",
                     help="the name the listener's certificate must carry (default: the host in --peer)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def tls_argv(tls_cert: str | None, tls_key: str | None, tls_ca: str | None, tls_server_name: str | None) -> list[str]:
    """:func:`tls_options` checked now (files usable, certificate valid) and turned back
    into ``fusec run`` arguments, for commands that start both servers (``verify``)."""
    from fusec.runtime.tls import TlsFiles  # noqa: PLC0415

    files = TlsFiles.from_options(tls_cert, tls_key, tls_ca)
    if files is None:
        if tls_server_name:
            raise ParameterError("--tls-server-name needs --tls-cert, --tls-key and --tls-ca")
        return []
    files.check()
    files.server_context()                  # the key matches the certificate
    argv = ["--tls-cert", str(files.cert.resolve()), "--tls-key", str(files.key.resolve()),
            "--tls-ca", str(files.ca.resolve())]
    return argv + (["--tls-server-name", tls_server_name] if tls_server_name else [])


def party_options(f: Callable) -> Callable:
    """The options of one server (``run`` and ``demo run``); the command receives them
    as ``server: ServerOptions`` instead of one argument each."""
    opts = [
        click.option("--party", type=_Party(), required=True, help="0 or 1"),
        click.option("--keys", "key_path", required=True, type=click.Path(),
                     help="this party's key file, or tcp://HOST:PORT of a dealer streaming key sets "
                          "(fusec keygen --serve)"),
        click.option("--listen", type=_Address(), help="HOST:PORT (or :PORT) to accept the peer on"),
        click.option("--peer", type=_Address(), help="HOST:PORT of the listening peer"),
        click.option("--input", "input_path", type=click.Path(dir_okay=False), help="this party's private input"),
        click.option("--output", "output_path", type=click.Path(), help="write the received output(s) here"),
        click.option("--timeout", type=_Seconds(), default=120.0, show_default=True,
                     help="seconds without progress before giving up"),
        click.option("--connect-retry", type=_Seconds(zero_ok=True), default=30.0, show_default=True,
                     help="seconds to keep retrying --peer while it starts"),
        click.option("--backend", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"])),
        click.option("--state-dir", "state_dir", type=click.Path(file_okay=False), envvar="FUSEC_STATE_DIR",
                     help="where this server records the key sets it used (default: $XDG_STATE_HOME/fusec "
                          "or ~/.local/state/fusec); keep it as long as the key files"),
        click.option("--net", type=net_type, default=None, help=NET_HELP),
        click.option("--stripes", type=click.IntRange(1, 16), default=None, show_default="4; 1 with TLS",
                     help="TCP connections to the peer: frames of 1 MiB or more go as one slice per connection, "
                          "each moved by its own thread (the connecting party's choice; the listener follows; "
                          "TLS runs on one)"),
    ]

    @functools.wraps(f)
    def command(*args: Any, **kw: Any) -> Any:
        server = ServerOptions(**{name: kw.pop(name) for name in _FIELDS})
        return f(*args, server=server, **kw)

    command = tls_options(command)
    for o in reversed(opts):
        command = o(command)
    return command
