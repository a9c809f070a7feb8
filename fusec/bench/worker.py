"""The party worker of ``fusec bench``: one server per party that stays up for a whole configuration.

``python -m fusec.bench serve BUILD --party P (--listen HOST:PORT | --peer HOST:PORT)``
(see :mod:`fusec.bench.cli`). The build is loaded, the backend initialised and the TCP
connection made once, so a warm-up step really warms what the timed steps use. The
worker reads commands from stdin, one JSON object per line, and answers on stdout, one
JSON object per line (anything else it prints goes to stderr, so the answers cannot be
corrupted by a stray ``print``):

- on start: ``{"event": "listening", "port": N}`` (party 0, before it accepts: the
  bench learns the port without racing for a free one), then
  ``{"event": "ready", "setup_seconds": ...}`` once connected;
- ``{"cmd": "step", "step": i, "warmup": bool, "keys": [PATH, ...], "sets": B}``: evaluate
  the next ``B`` unused key sets of the files, in order, back to back over the open
  connection, answer ``{"event": "done", "step": i, "record": {...}}`` (see
  :meth:`Server.run_step`);
- ``{"cmd": "quit"}``: write every step record to ``--out`` and answer ``{"event": "bye"}``.

A failure answers ``{"event": "error", "message": ...}``, prints the message (and, for a
bug, the traceback) to stderr and exits non-zero; the bench (:mod:`fusec.bench.pair`)
kills the peer.

Each key set goes through :func:`fusec.runtime.party.run_party` unchanged -- the same
key checks, claim (mark-then-use), staging and evaluation as ``fusec run``, with the
build's profiler scopes -- on the one channel; only its per-set handshake (a few hundred
bytes, outside its online timer) repeats. Every per-scope dict of its result (bytes
sent, compute seconds, wire seconds, whatever is added later) is kept, summed over the
step's key sets."""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from fusec.errors import FusecError, KeyFileError

PROTOCOL = 1


def _answer_stream() -> IO[str]:
    """A private copy of stdout for the JSON answers; fd 1 then points at stderr, so
    prints from any library end up in the log instead of in the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return out


def _say(out: IO[str], **msg: Any) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


def result_scopes(res: Any) -> dict[str, dict[str, float]]:
    """``scope -> {metric: value}`` from every per-scope ``dict`` of a PartyResult
    (``scopes`` holds bytes sent and is called ``bytes_sent`` here; ``compute_seconds``,
    ``wire_seconds``, ...), so metrics the runtime adds later arrive without a change here."""
    per_metric = {("bytes_sent" if k == "scopes" else k): v for k, v in vars(res).items()
                  if isinstance(v, dict) and k not in ("outputs", "round_phases")}
    scopes: dict[str, dict[str, float]] = {}
    for metric, by_scope in per_metric.items():
        for scope, value in by_scope.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scopes.setdefault(scope, {})[metric] = value
    return scopes


def add_scopes(total: dict, more: dict) -> None:
    """Accumulate per-scope metrics in place (several key sets in one step)."""
    for scope, metrics in more.items():
        acc = total.setdefault(scope, {})
        for k, v in metrics.items():
            acc[k] = acc.get(k, 0) + v


@dataclass
class StepRecord:
    """What one party measured for one step (``sets`` key sets back to back).

    ``online_seconds`` is the sum of ``run_party``'s online timers (evaluation only);
    ``stage_seconds`` the sum of its key staging (``key_load_seconds`` of its result:
    unpacking, or the copy to the device); ``key_load_seconds`` is everything in the
    step's wall time that is not online: per-set handshake (``hello_seconds``), claim
    (``claim_seconds``: read, checksum, mark used) and staging.
    ``bytes_sent`` is the protocol's payload (RoundLog); ``wire_bytes_sent`` what the
    channel counted, with frame headers and the per-set handshakes.
    """

    step: int
    warmup: bool
    key_files: list[str]
    sets: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0
    stage_seconds: float = 0.0
    online_seconds: float = 0.0
    claim_seconds: float = 0.0      # read + checksum + ledger mark of its sets (runtime/party.py)
    hello_seconds: float = 0.0
    key_load_seconds: float = 0.0
    rounds: int = 0
    bytes_sent: int = 0
    wire_bytes_sent: int = 0
    scopes: dict = field(default_factory=dict)
    round_phases: dict = field(default_factory=dict)   # step / pack / wire / unpack seconds (RoundLog.phases)
    keys_unpacked_late: bool = False   # some set's keys unpacked gate by gate inside the clock (runtime/party.py)
    seeded_shares_late: bool = False   # and its seeded shares regenerated there too
    online_intervals: list = field(default_factory=list)  # each set's [start, end] of its online clock (monotonic)
    memory: dict = field(default_factory=dict)    # device memory after the step (Backend.memory_report; GPU only)


class Server:
    """One party's long-lived state: build, backend, channel, open key files, inputs."""

    def __init__(self, build_dir: str, party: int, backend: str, seed: int) -> None:
        from fusec.build import load_build
        from fusec.runtime.backend import get_backend

        self.build = load_build(build_dir)
        self.party = party
        self.seed = seed
        self.be = get_backend(backend, self.build.kernels_source)
        self.owner = party in {owner for _, owner in self.build.low.inputs.values()}
        self._inputs: dict[int, dict] = {}
        self._keys: dict[str, Any] = {}
        self.channel = None
        self.records: list[StepRecord] = []
        self.stream_keys = False    # keys gate by gate inside the online clock (runtime/party.py)

    def inputs(self, j: int) -> dict:
        """The encoded input of the ``j``-th key set of a step (random valid values,
        e.g. token ids inside the vocabulary); encoded once, outside every timer."""
        if not self.owner:
            return {}
        if j not in self._inputs:
            from fusec.build import encode_inputs
            from fusec.passes.calibrate import default_feeds

            self._inputs[j] = encode_inputs(self.build, default_feeds(self.build.ir, self.seed + j), self.party)
        return self._inputs[j]

    def key_file(self, path: str):
        """The open key file at ``path`` (opened and checked once, on first use)."""
        if path not in self._keys:
            from fusec.runtime.party import open_keys

            self._keys[path], _ = open_keys(self.build.gates, self.party, path, out=self.be.host_buffer,
                                             inflate=not self.be.seeded_shares_on_device)
        return self._keys[path]

    def release_used_up(self) -> None:
        """Close key files with no unused set left, so the bench may delete them."""
        for path, kf in list(self._keys.items()):
            if kf.next_unused() is None:
                kf.close()
                del self._keys[path]

    @staticmethod
    def next_set(files: list) -> tuple[Any, int]:
        """The first of ``files`` with an unused key set, and that set's index."""
        for kf in files:
            idx = kf.next_unused()
            if idx is not None:
                return kf, idx
        raise KeyFileError(f"no unused key set left in {', '.join(str(kf.path) for kf in files)}",
                           "the bench generates (warm-up + repeat) x internal batch sets; report this as a bug")

    def run_set(self, files: list, j: int) -> Any:
        """One key set through ``run_party`` (as ``fusec run`` calls it)."""
        from fusec.runtime.party import run_party

        kf, idx = self.next_set(files)
        return run_party(self.build.gates, self.party, kf, idx, self.channel, self.inputs(j), self.be,
                         scopes=self.build.scopes, stream_keys=self.stream_keys)

    def run_step(self, step: int, warmup: bool, keys: list[str], sets: int) -> StepRecord:
        """Evaluate ``sets`` consecutive key sets; the wall clock covers all of them."""
        files = [self.key_file(k) for k in keys]       # opened and checked before timing
        rec = StepRecord(step, warmup, list(keys))
        wire0 = self.channel.stats.total().bytes_sent
        t0 = time.perf_counter()
        for j in range(sets):
            res = self.run_set(files, j)
            rec.sets.append(res.key_set)
            rec.online_seconds += res.online_seconds
            rec.stage_seconds += getattr(res, "key_load_seconds", 0.0)
            rec.claim_seconds += getattr(res, "claim_seconds", 0.0)
            rec.hello_seconds += getattr(res, "hello_seconds", 0.0)
            rec.rounds += res.rounds
            rec.keys_unpacked_late |= getattr(res, "keys_unpacked_late", False)
            rec.seeded_shares_late |= getattr(res, "seeded_shares_late", False)
            rec.online_intervals.append(list(res.online_interval))
            rec.bytes_sent += res.bytes_sent
            add_scopes(rec.scopes, result_scopes(res))
            for phase, secs in getattr(res, "round_phases", {}).items():
                rec.round_phases[phase] = rec.round_phases.get(phase, 0.0) + secs
        rec.wall_seconds = time.perf_counter() - t0
        rec.wire_bytes_sent = self.channel.stats.total().bytes_sent - wire0
        rec.key_load_seconds = rec.wall_seconds - rec.online_seconds
        rec.memory = self.be.memory_report()
        self.records.append(rec)
        self.release_used_up()
        return rec

    def close(self) -> None:
        for kf in self._keys.values():
            kf.close()
        self._keys.clear()
        if self.channel is not None:
            self.channel.close()


def _connect(server: Server, listen: str | None, peer: str | None, timeout: float, retry: float,
             out: IO[str], tls: tuple = (None, None, None, None), net: Any = None, stripes: int | None = None) -> None:
    """``tls``: (cert, key, ca, server name) as ``fusec run``'s --tls-* (runtime/tls.py);
    ``net``: an emulated link (runtime/shaping.py NetSetting) or None; ``stripes``: TCP
    connections (the connecting worker's; runtime/striped_channel.py)."""
    from fusec.runtime import striped_channel
    from fusec.runtime.channel import TcpListener, parse_address
    from fusec.runtime.shaping import shape
    from fusec.runtime.tls import TlsFiles

    files = TlsFiles.from_options(*tls[:3])
    if files is not None:
        files.check()
    stripes = striped_channel.check_stripes(stripes, files is not None)     # None: the default count
    if listen:
        with TcpListener(*parse_address(listen), files.server_context() if files else None) as lst:
            _say(out, event="listening", port=lst.port)
            server.channel = striped_channel.accept(lst, timeout)
    else:
        server.channel = striped_channel.connect(*parse_address(peer), stripes, timeout=timeout, retry_for=retry,
                                                 ssl_context=files.client_context() if files else None,
                                                 server_hostname=tls[3])
    server.channel = shape(server.channel, net)


def _command_loop(server: Server, out: IO[str], out_path: Path | None) -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("cmd") == "step":
            keys = [cmd["keys"]] if isinstance(cmd["keys"], str) else list(cmd["keys"])
            rec = server.run_step(int(cmd["step"]), bool(cmd.get("warmup")), keys, int(cmd["sets"]))
            _say(out, event="done", step=rec.step, record=asdict(rec))
        elif cmd.get("cmd") == "quit":
            break
        else:
            raise FusecError(f"unknown bench command {cmd!r}", "the bench and its workers must be the same version")
    if out_path is not None:
        doc = {"protocol": PROTOCOL, "party": server.party, "build": str(server.build.path),
               "steps": [asdict(r) for r in server.records]}
        out_path.write_text(json.dumps(doc, indent=1))
    _say(out, event="bye")


def serve(build: str, party: int, listen: str | None, peer: str | None, backend: str = "cpu",
          timeout: float = 600.0, connect_retry: float = 120.0, seed: int = 0, out_path: str | None = None,
          tls: tuple = (None, None, None, None), net: Any = None, stream_keys: bool = False,
          cuda_graphs: bool = False, stripes: int | None = None) -> int:
    """Run one worker until ``quit`` (or a failure); returns the exit status (0, 2: a user
    error, 1: a bug). ``stream_keys``: see ``run_party``; ``cuda_graphs``: the GPU backend's
    launch plans (runtime/launch_plan.py)."""
    out = _answer_stream()
    if (listen is None) == (peer is None):
        _say(out, event="error", message="give exactly one of --listen and --peer")
        return 2
    server = None
    try:
        t0 = time.perf_counter()
        server = Server(build, party, backend, seed)
        server.stream_keys = stream_keys
        if cuda_graphs:
            server.be.cuda_graphs = True
        server.inputs(0)
        _connect(server, listen, peer, timeout, connect_retry, out, tls, net, stripes)
        _say(out, event="ready", setup_seconds=time.perf_counter() - t0)
        _command_loop(server, out, Path(out_path) if out_path else None)
        return 0
    except FusecError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        _say(out, event="error", message=str(e))
        return 2
    except BaseException as e:  # noqa: BLE001 - a bug or a resource failure: keep the traceback
        traceback.print_exc()
        _say(out, event="error", message=f"{type(e).__name__}: {e}")
        return 1
    finally:
        if server is not None:
            server.close()
