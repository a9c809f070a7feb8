"""Merging the two parties' records of a step, and the medians over the timed steps (DESIGN §7).

Per step, a latency is the slower party's (``max``), bytes are both parties' sends added
(``sum``), rounds the larger count (``max``); then each metric's median over the timed
steps. The same rules apply to every per-scope metric (any key with ``bytes`` in its name
is summed, anything else is a max), so metrics the runtime adds later are merged without
touching this file."""
from __future__ import annotations

import statistics
from typing import Any, Callable

from fusec.bench.failures import BenchError
from fusec.bench.util import unique


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def merge_value(key: str, a: Any, b: Any) -> Any:
    """Both parties' values of one metric: bytes add up, everything else (latencies,
    rounds) is the larger. A metric one party lacks (None) is the other's."""
    if a is None or b is None:
        return b if a is None else a
    return a + b if "bytes" in key else max(a, b)


def merge_scopes(a: dict | None, b: dict | None) -> dict:
    """Two records' per-scope metrics, by the same rules as the metrics themselves."""
    a, b = a or {}, b or {}
    return {scope: {m: merge_value(m, a.get(scope, {}).get(m), b.get(scope, {}).get(m))
                    for m in unique([*a.get(scope, {}), *b.get(scope, {})])}
            for scope in unique([*a, *b])}


def merge_records(a: dict, b: dict, phases: Callable[[Any, Any], dict]) -> dict:
    """Two records of one step by the module's rules; ``phases`` merges their round phases."""
    out: dict[str, Any] = {"step": a.get("step"), "warmup": bool(a.get("warmup"))}
    for key in unique([*a, *b]):
        x, y = a.get(key), b.get(key)
        if key == "scopes":
            out[key] = merge_scopes(x, y)
        elif key in ("keys_unpacked_late", "seeded_shares_late"):
            out[key] = bool(x) or bool(y)
        elif key == "round_phases":
            out[key] = phases(x, y)
        elif key == "memory":       # each record's device memory as it reported it (GPU only)
            out[key] = [m for m in (x, y) if m]
        elif key not in out and (is_number(x) or is_number(y)):
            out[key] = merge_value(key, x, y)
    return out


def merge_parties(p0: dict, p1: dict) -> dict:
    """One step as both parties saw it -> one step of the protocol (see the module doc).
    Round phases are kept per party: their difference is the waiting."""
    return merge_records(p0, p1, lambda a, b: {f"p{p}": ph for p, ph in ((0, a), (1, b)) if ph})


def _median(values: list) -> Any:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _scaled(metrics: dict, by: float, keep: tuple[str, ...] = ()) -> dict:
    return {k: (v if k in keep or v is None else v / by) for k, v in metrics.items()}


def summarize(steps: list[dict], batch: int, internal_batch: int, seq: int) -> dict:
    """Median over the timed (non-warm-up) merged steps, per step, per batch (one key set)
    and per inference; tokens/s; per-scope medians per batch."""
    timed = [s for s in steps if not s.get("warmup")]
    if not timed:
        raise BenchError("no timed step to summarize", "use --repeat >= 1")
    keys = unique(k for s in timed for k, v in s.items() if is_number(v) and k != "step")
    per_step = {k: _median([s.get(k) for s in timed]) for k in keys}
    scope_names = unique(sc for s in timed for sc in s.get("scopes", {}))
    scopes = {}
    for sc in scope_names:
        metrics = unique(m for s in timed for m in s.get("scopes", {}).get(sc, {}))
        med = {m: _median([s.get("scopes", {}).get(sc, {}).get(m, 0) for s in timed]) for m in metrics}
        scopes[sc] = _scaled(med, internal_batch)
    per_batch = _scaled(per_step, internal_batch)
    per_inference = _scaled(per_batch, batch, keep=("rounds",))
    secs = per_step.get("online_seconds")
    return {"steps_timed": len(timed), "per_step": per_step, "per_batch": per_batch, "per_inference": per_inference,
            "tokens_per_second": batch * internal_batch * seq / secs if secs else None,
            "scopes_per_batch": scopes, "round_phases_per_batch": _phases(timed, internal_batch),
            "keys_unpacked_late": any(s.get("keys_unpacked_late", False) for s in timed),
            "seeded_shares_late": any(s.get("seeded_shares_late", False) for s in timed),
            "plan_refused": next(iter(_plan_notes(steps)), None)}


def _plan_notes(steps: list[dict]) -> list[str]:
    """Why a worker recorded no launch plan (GpuBackend: it would not have fit), from the
    steps' memory records (a list per party, nested once more per lane)."""
    notes, todo = [], [m for s in steps for m in s.get("memory") or []]
    while todo:
        m = todo.pop(0)
        if isinstance(m, list):
            todo += m
        elif isinstance(m, dict) and m.get("plan_refused") and m["plan_refused"] not in notes:
            notes.append(m["plan_refused"])
    return notes


def _phases(timed: list[dict], internal_batch: int) -> dict[str, dict[str, float]]:
    """Per party, the median over the timed steps of each round phase (runtime/protocol.py's
    RoundLog.phases: step, pack, wire, unpack), per batch."""
    parties = unique(p for s in timed for p in s.get("round_phases", {}))
    return {p: {ph: _median([s.get("round_phases", {}).get(p, {}).get(ph) for s in timed]) / internal_batch
                for ph in unique(ph for s in timed for ph in s.get("round_phases", {}).get(p, {}))}
            for p in parties}


def scope_metric(metrics: dict, kind: str) -> float:
    """A scope's seconds (``kind='seconds'``) or bytes (``'bytes'``) under whatever key the
    runtime used (``seconds``, ``bytes_sent``, ...); 0 when it reports none."""
    return sum(v for k, v in metrics.items() if kind in k and v is not None)
