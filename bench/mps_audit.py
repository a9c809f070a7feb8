"""Which earlier `fusec bench --mps` runs really ran under CUDA MPS.

Until 2026-12-07 (twentieth session) a bench started within a second or two of the previous
bench's ``quit`` took the dying daemon (a zombie with the daemon's name) for a running one,
started none, and ran without MPS while recording ``machine.cuda_mps: true``
(fusec/bench/machine.py). The MPS control log each call brought back
(``mps_log.tgz``, the lease's daemons appended) says when each daemon started; a run ran
under MPS only if a daemon started at its own start (its JSON's ``date``, to the second).

    python bench/mps_audit.py bench/results            # one line per run: under MPS or not
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import sys
import tarfile
from pathlib import Path

START = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d+ Control +\d+\] Starting control daemon", re.M)


def daemon_starts(tgz: Path) -> list[dt.datetime]:
    with tarfile.open(tgz) as t:
        member = next((m for m in t.getmembers() if m.name.endswith("control.log")), None)
        if member is None:
            return []
        text = io.TextIOWrapper(t.extractfile(member), encoding="utf-8", errors="replace").read()
    return [dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc) for s in START.findall(text)]


def audit(root: Path) -> list[dict]:
    rows = []
    for tgz in sorted(root.rglob("mps_log.tgz")):
        starts = daemon_starts(tgz)
        for f in sorted(tgz.parent.rglob("*.json")):
            doc = json.loads(f.read_text())
            if not doc.get("machine", {}).get("cuda_mps") or "date" not in doc:
                continue
            began = dt.datetime.fromisoformat(doc["date"])
            under = any(-2 <= (s - began).total_seconds() <= 5 for s in starts)
            online = [r.get("online", {}).get("per_step", {}).get("online_seconds") for r in doc.get("results", [])]
            rows.append({"run": str(f.relative_to(root)), "started": doc["date"], "under_mps": under,
                         "online_seconds": online})
    return rows


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    for r in audit(root):
        secs = ", ".join(f"{s:.3f} s" for s in r["online_seconds"] if s)
        print(f"{'MPS   ' if r['under_mps'] else 'NO MPS'}  {r['run']}  ({r['started']}; {secs})")


if __name__ == "__main__":
    main()
