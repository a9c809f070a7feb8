"""Run the dealer, P0 and P1 as three processes over loopback TCP (demo and tests)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fusec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusec", *args]


def run_three(dealer: list[str], p0: list[str], p1: list[str], timeout: float = 600.0,
              env: dict | None = None) -> tuple[str, str]:
    """Dealer first (offline), then both servers concurrently. Returns (p0 out, p1 out)."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    d = subprocess.run(dealer, capture_output=True, text=True, timeout=timeout, env=env)
    if d.returncode:
        raise RuntimeError(f"dealer failed:\n{d.stdout}{d.stderr}")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for cmd in (p0, p1)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError("a party did not finish in time")
        outs.append(out)
    for name, p, out in zip(("P0", "P1"), procs, outs):
        if p.returncode:
            raise RuntimeError(f"{name} failed (exit {p.returncode}):\n{out}")
    return outs[0], outs[1]


def workdir(path: str | None) -> Path:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        return p
    import tempfile
    return Path(tempfile.mkdtemp(prefix="fusec-"))
