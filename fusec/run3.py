"""Run the dealer, P0 and P1 as three processes over loopback TCP (demo and tests)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fusec.errors import FusecError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fusec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusec", *args]


def run_three(dealer: list[str], p0: list[str], p1: list[str], timeout: float = 600.0,
              env: dict | None = None, echo=None) -> tuple[str, str]:
    """Dealer first (offline), then both servers concurrently. Returns (p0 out, p1 out).

    ``echo`` receives the dealer's report line. A failure names every party that failed
    with the end of its output (the first to fail is usually the one with the reason).
    """
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    d = subprocess.run(dealer, capture_output=True, text=True, timeout=timeout, env=env)
    if d.returncode:
        raise FusecError(f"the dealer failed:\n{_tail(d.stdout + d.stderr)}")
    if echo:
        echo(d.stdout.strip())
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for cmd in (p0, p1)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise FusecError(f"a party did not finish within {timeout:.0f} s")
        outs.append(out)
    failed = [f"{name} failed (exit {p.returncode}):\n{_tail(out)}"
              for name, p, out in zip(("P0", "P1"), procs, outs) if p.returncode]
    if failed:
        raise FusecError("\n".join(failed))
    return outs[0], outs[1]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def workdir(path: str | None) -> Path:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        return p
    import tempfile
    return Path(tempfile.mkdtemp(prefix="fusec-"))
