"""P0 and P1 of a configuration as two long-lived worker processes, and the bench's side
of their protocol (:mod:`fusec.bench.worker` is the other side).

Every wait is bounded by the timeout; on any failure both workers are killed and a
:class:`~fusec.bench.failures.BenchError` names the configuration and carries the
failing party's stderr tail."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from fusec.runtime.device_keys import GPU_SHARE_ENV
from fusec.runtime.keyio import IO_THREADS_ENV
from fusec.bench.failures import BenchError, classify_failure
from fusec.bench.machine import gpu_names
from fusec.bench.plan import Case
from fusec.bench.stage import module_argv
from fusec.bench.util import tail


def party_envs(backend: str, gpus: int | None, lanes: int = 1) -> tuple[dict, dict]:
    """Environment per party: with 2 GPUs party p sees only GPU p; with 1 both see GPU 0
    (of whatever CUDA_VISIBLE_DEVICES already selects). With ``lanes`` pairs of workers on
    the same cards, each worker may take its share of a card's memory."""
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # both workers share this host: each reads and checks its key sets with half its CPUs
    # (checksums bound a set's load; 8 threads each beat 16 each on the 16-CPU H100 host)
    base.setdefault(IO_THREADS_ENV, str(max(1, (os.cpu_count() or 2) // 2)))
    if backend != "gpu":
        return base, dict(base)
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] \
        or [str(i) for i in range(len(gpu_names()))]
    if len(visible) < (gpus or 1):
        raise BenchError(f"{gpus} GPU(s) asked for, {len(visible)} visible here ({', '.join(visible) or 'none'})",
                         "run on a machine with more GPUs or set CUDA_VISIBLE_DEVICES", kind="machine")
    pick = (visible[0], visible[1] if gpus == 2 else visible[0])
    workers_per_card = lanes * (2 if pick[0] == pick[1] else 1)
    if workers_per_card > 1:    # e.g. one card, two parties: each may take half its memory
        base.setdefault(GPU_SHARE_ENV, f"{1 / workers_per_card:g}")
    return {**base, "CUDA_VISIBLE_DEVICES": pick[0]}, {**base, "CUDA_VISIBLE_DEVICES": pick[1]}


class PartyPair:
    """P0 and P1 of one configuration as two long-lived ``python -m fusec.bench serve``
    processes. Every wait is bounded; on any failure both are killed and a BenchError
    names the configuration and carries the failing party's stderr tail."""

    def __init__(self, case: Case, build: Path, backend: str, run_dir: Path, timeout: float, seed: int = 0,
                 party_argv: list[str] | tuple = ()):
        self.case, self.build, self.backend, self.timeout, self.seed = case, build, backend, timeout, seed
        self.party_argv = list(party_argv)      # e.g. --tls-*: the same for both workers
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.outs = [run_dir / "p0.json", run_dir / "p1.json"]
        self.logs = [run_dir / "p0.log", run_dir / "p1.log"]
        self.procs: list[subprocess.Popen] = []
        self._q: queue.Queue = queue.Queue()

    # -- process management
    def _spawn(self, party: int, endpoint: list[str], env: dict) -> None:
        argv = module_argv("fusec.bench", "serve", str(self.build), "--party", str(party), *endpoint,
                           "--backend", self.backend, "--timeout", str(self.timeout), "--seed", str(self.seed),
                           "--out", str(self.outs[party]), *self.party_argv)
        with open(self.logs[party], "w") as err:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                 env=env, bufsize=1)
        self.procs.append(p)
        threading.Thread(target=self._read, args=(party, p), daemon=True).start()

    def _read(self, party: int, p: subprocess.Popen) -> None:
        with p.stdout:
            for line in p.stdout:
                try:
                    self._q.put((party, json.loads(line)))
                except ValueError:
                    continue                        # not an answer: ignore
        self._q.put((party, None))                  # end of output: the process is gone

    def start(self, envs: tuple[dict, dict] | None = None) -> None:
        """P0 listens on a port of its choosing and says which; P1 connects; both load the
        build and answer 'ready'. ``envs``: each party's environment (its GPU)."""
        env0, env1 = envs or party_envs(self.backend, None)
        self._spawn(0, ["--listen", "127.0.0.1:0"], env0)
        port = self._await("listening", (0,))[0]["port"]
        self._spawn(1, ["--peer", f"127.0.0.1:{port}"], env1)
        self._await("ready", (0, 1))

    def kill(self) -> None:
        """Kill whichever worker still runs (only these two processes) and reap both."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                p.stdin.close()
            except OSError:
                pass

    def __enter__(self) -> "PartyPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- talking to them
    def _send(self, msg: Callable[[int], dict]) -> None:
        for party, p in enumerate(self.procs):
            try:
                p.stdin.write(json.dumps(msg(party)) + "\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                self._fail(party, "exited before it got its next command", rc=p.poll())

    def _fail(self, party: int, what: str, kind: str | None = None, rc: int | None = None) -> None:
        """Kill both, raise with both stderr tails. ``rc``: the failing party's own exit
        status (never one our kill caused), which tells an OOM kill from a bug."""
        if party < len(self.procs) and kind is None:
            try:
                self.procs[party].wait(timeout=5)       # it is exiting: let it finish its log
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        texts = [log.read_text(errors="replace") if log.exists() else "" for log in self.logs]
        kind = kind or classify_failure(rc, texts[party])
        parts = [f"{self.case.name}: P{party} {what}"]
        for q, text in enumerate(texts[:len(self.procs)]):
            if text.strip():
                parts.append(f"--- P{q} stderr (last lines) ---\n{tail(text)}")
        raise BenchError("\n".join(parts), f"full logs: {self.logs[0].parent}", kind=kind)

    def _await(self, event: str, parties: tuple[int, ...]) -> dict[int, dict]:
        got: dict[int, dict] = {}
        deadline = time.monotonic() + self.timeout
        while len(got) < len(parties):
            left = deadline - time.monotonic()
            if left <= 0:
                late = [p for p in parties if p not in got][0]
                self._fail(late, f"sent no '{event}' within {self.timeout:g} s (killed both workers)", "timeout")
            try:
                party, msg = self._q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg is None and (party in got or party not in parties):
                continue                            # a worker that answered may exit (after 'bye')
            if msg is None:
                rc = self.procs[party].wait(timeout=30)
                self._fail(party, f"exited (status {rc}) while the bench waited for '{event}'", rc=rc)
            elif msg.get("event") == "error":
                self._fail(party, f"failed: {msg.get('message')}")
            elif msg.get("event") == event and party in parties:
                got[party] = msg
        return got

    def step(self, step: int, warmup: bool, key_dirs: list[Path], sets: int) -> tuple[dict, dict]:
        """One step on both parties (``sets`` key sets from the files in ``key_dirs``, in
        order, or from a key-stream dealer's ``tcp://`` address); returns their records."""
        self.send_step(step, warmup, key_dirs, sets)
        return self.await_step()

    def send_step(self, step: int, warmup: bool, key_dirs: list[Path], sets: int) -> None:
        """Start a step on both parties without waiting (lanes start theirs together)."""
        self._send(lambda party: {"cmd": "step", "step": step, "warmup": warmup, "sets": sets,
                                  "keys": [d if str(d).startswith("tcp://") else str(Path(d) / f"p{party}.key")
                                           for d in key_dirs]})

    def await_step(self) -> tuple[dict, dict]:
        """Both parties' records of the step :meth:`send_step` started."""
        got = self._await("done", (0, 1))
        return got[0]["record"], got[1]["record"]

    def finish(self) -> list[Path]:
        """Ask both to write their JSON and exit; returns the files."""
        self._send(lambda party: {"cmd": "quit"})
        self._await("bye", (0, 1))
        for party, p in enumerate(self.procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._fail(party, "did not exit after writing its results", "timeout")
        return self.outs
