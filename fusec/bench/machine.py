"""Where the numbers come from: GPUs, CPU model, cores, memory and library versions."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_names() -> list[str]:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def card_memory() -> int | None:
    """The memory of the smallest GPU here in bytes (nvidia-smi's ``memory.total``), None
    where nvidia-smi is missing or says nothing: the bound :func:`fusec.bench.keys.check_card`
    holds a configuration's key sets to."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        sizes = [int(float(line)) * 2**20 for line in r.stdout.split() if line.strip()] if r.returncode == 0 else []
    except ValueError:
        return None
    return min(sizes) if sizes else None


def cuda_mps(proc: Path = Path("/proc")) -> bool:
    """Whether CUDA's Multi-Process Service runs here: both parties' kernels then share the
    card at once instead of taking turns (a context switch each time one party's round
    starts), which is nearer two servers with a card each than plain time slicing.

    A daemon that has quit but is not yet reaped (a zombie) still has its name: it counted
    as running, so a bench started within seconds of the last one's ``quit`` started no
    daemon, ran without MPS (0.31-0.33 s for BERT-base on an H100, against 0.20-0.23 s) and
    recorded MPS all the same (H100, 2026-12-07). Only a live process counts now."""
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith("nvidia-cuda-mps") and _alive(comm.parent):
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def _alive(pid_dir: Path) -> bool:
    """Not a zombie (Z) or dead (X): the state after the command's closing parenthesis in ``stat``."""
    stat = (pid_dir / "stat").read_text()
    return stat[stat.rindex(")") + 2] not in "ZX"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("fusec", "numpy", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine_info() -> dict:
    """Where the numbers come from: GPUs (nvidia-smi), CPU model, cores, memory, versions."""
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {"host": platform.node(), "gpus": gpu_names(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "memory_bytes": mem, "os": platform.platform(), "versions": _versions(),
            "cuda_mps": cuda_mps()}
