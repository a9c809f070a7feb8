"""Where a configuration's key sets go, and whether this machine has room for them.

Key files hold tens of GB for BERT-base: all sets are written up front when they fit
(both parties' files), else each step's sets right before it; a configuration that does
not fit even one step, or whose key set exceeds the memory, is a skip."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fusec.bench import machine
from fusec.bench.failures import BenchError
from fusec.bench.plan import Case
from fusec.bench.util import gb, unique


@dataclass
class KeyPlan:
    """Where a case's key sets go, as key-file directories (each: p0.key, p1.key).

    ``upfront``: all sets before the first step -- one directory with every set (one
    dealer, what ``fusec keygen --count`` writes) or, with several dealers, one directory
    per step so that they run in parallel. ``per-step``: a step's ``per_step`` sets right
    before it (the previous step's deleted first), split over up to ``dealers``
    directories; used when all sets do not fit. ``stream``: no files; a dealer process
    streams each set to the workers when they ask (fusec/bench/stream_dealer.py)."""

    mode: str
    root: Path
    per_step: int
    steps: int
    dealers: int = 1

    def files(self, step: int) -> list[tuple[Path, int]]:
        """The (directory, key sets) a step reads, in order."""
        if self.mode == "stream":
            return []
        if self.mode == "per-step":
            parts = min(self.dealers, self.per_step)
            sizes = [self.per_step // parts + (j < self.per_step % parts) for j in range(parts)]
            return [(self.root / f"step{step}" / f"part{j}", n) for j, n in enumerate(sizes)]
        if self.dealers > 1 and self.steps > 1:
            return [(self.root / f"step{step}", self.per_step)]
        return [(self.root, self.per_step * self.steps)]

    def generated_before(self, step: int) -> list[tuple[Path, int]]:
        """What the dealers write right before ``step`` (nothing when it was written earlier)."""
        if self.mode == "per-step":
            return self.files(step)
        return unique(f for i in range(self.steps) for f in self.files(i)) if step == 0 else []

    def stale(self, step: int) -> Path | None:
        """The directory used up by the step before ``step`` (per-step mode), to delete."""
        return self.root / f"step{step - 1}" if self.mode == "per-step" and step > 0 else None

    @property
    def file_pairs(self) -> int:
        """Key-file pairs over the whole case."""
        return len(unique(f for i in range(self.steps) for f in self.files(i)))

    @property
    def resident(self) -> int:
        """Key sets on disk at once."""
        return 0 if self.mode == "stream" else self.per_step * (self.steps if self.mode == "upfront" else 1)


def plan_keys(mode: str, set_nbytes: int, steps: int, per_step: int, free_bytes: int, root: Path,
              dealers: int = 1) -> KeyPlan:
    """Pick up-front or per-step key generation from the free space (both parties' files);
    ``stream`` needs no disk, and ``auto`` streams when not even one step's files fit."""
    if mode == "stream":
        return KeyPlan("stream", root, per_step, steps, 1)
    need_all, need_step = 2 * set_nbytes * steps * per_step, 2 * set_nbytes * per_step
    room = 0.95 * free_bytes
    if mode == "upfront" or (mode == "auto" and need_all <= room):
        if need_all > room:
            raise BenchError(f"all key sets need {gb(need_all)} (2 parties x {steps * per_step} sets x "
                             f"{gb(set_nbytes)}), {gb(free_bytes)} free in {root}",
                             "use --keys per-step, another --keys-dir, or fewer --repeat / --internal-batch",
                             kind="disk")
        return KeyPlan("upfront", root, per_step, steps, dealers)
    if need_step > room and mode == "auto":
        return KeyPlan("stream", root, per_step, steps, 1)
    if need_step > room:
        raise BenchError(f"one step's key sets need {gb(need_step)} (2 parties x {per_step} sets x "
                         f"{gb(set_nbytes)}), {gb(free_bytes)} free in {root}",
                         "put keys on a larger file system (--keys-dir) or lower --internal-batch", kind="disk")
    return KeyPlan("per-step", root, per_step, steps, dealers)


def free_space(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


#: The memory a machine whose ``MemAvailable`` grows as it is used (a microVM that starts
#: small, e.g. the lent H200s) really has, in GiB: overrides /proc/meminfo.
MEMORY_ENV = "FUSEC_HOST_MEMORY_GIB"


def available_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo (bytes), None where there is none;
    ``$FUSEC_HOST_MEMORY_GIB`` instead where it is set."""
    if os.environ.get(MEMORY_ENV):
        try:
            return int(float(os.environ[MEMORY_ENV]) * 2**30)
        except ValueError:
            raise BenchError(f"{MEMORY_ENV}={os.environ[MEMORY_ENV]!r} is not a number of GiB",
                             f"set it to the machine's memory in GiB, e.g. {MEMORY_ENV}=120") from None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def in_memory_fs(path: Path) -> bool:
    """Whether ``path`` lies on tmpfs/ramfs (e.g. /dev/shm), where key files take RAM."""
    target, best, fstype = str(Path(path).resolve()), "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fs = line.split()[:3]
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, fs
    except (OSError, ValueError):
        return False
    return fstype in ("tmpfs", "ramfs")


def check_memory(set_nbytes: int, plan: KeyPlan, case: Case) -> None:
    """Each party reads a whole key set into memory, and key files on tmpfs take memory
    too: less RAM than that is a sure failure, so it is a skip rather than an
    out-of-memory kill an hour later. (A lower bound: unpacked keys need more.)"""
    avail = available_memory()
    files = 2 * set_nbytes * plan.resident if in_memory_fs(plan.root) else 0
    if avail is not None and 2 * set_nbytes + files > avail:
        raise BenchError(f"{case.name}: needs at least {gb(2 * set_nbytes + files)} of memory (a key set of "
                         f"{gb(set_nbytes)} per party" + (f", plus {gb(files)} of key files in {plan.root}"
                                                           if files else "") + f"); {gb(avail)} is available",
                         "use a machine with more memory, fewer --layers, or a smaller --batch / --internal-batch",
                         kind="memory")


def check_card(stored_nbytes: int, case: Case, card_bytes: int | None = None) -> None:
    """A GPU server keeps its whole key set on the card in its stored layout (seeded shares
    are regenerated there), so a card that holds less than its servers' sets -- both
    parties' with one GPU, each lane's -- is a sure failure: a skip with the sizes, before
    minutes of keygen end in an out-of-memory error. (A lower bound: the online phase and
    the dealer need more.) With keys in the clock (``--stream-keys``) a set goes through a
    ring of small buffers instead and need not fit. ``card_bytes``: the card's memory
    (default: nvidia-smi's)."""
    if case.gpus is None or case.runtime == "keys in clock":     # the CPU backend; keys streamed per gate
        return
    card = machine.card_memory() if card_bytes is None else card_bytes
    servers = (2 if case.gpus == 1 else 1) * case.lanes
    if card is not None and servers * stored_nbytes > card:
        who = "both parties'" if case.gpus == 1 else "one party's"
        raise BenchError(f"{case.name}: {who} key sets need at least {gb(servers * stored_nbytes)} of GPU memory "
                         f"({servers} x {gb(stored_nbytes)} stored per set); the card has {gb(card)}",
                         "use a card with more memory, --gpus 2, fewer --layers, or a smaller --batch",
                         kind="memory")
