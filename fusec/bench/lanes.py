"""A batch as several lanes in flight: ``fusec bench --lanes L``.

One true batch of B inferences is one program: each round, every party computes, then
waits for the wire. With both parties' rounds in lock-step nothing overlaps, so the card
idles while bytes travel and the socket idles while the card computes (BENCHMARKS.md,
batch 4: step 0.55 s + wire 0.42 s = online 0.98 s). A server that takes several requests
at once can instead run L independent pairs of workers, each on a build of B / L, with
their own connection, key sets and GPU context: while one lane waits for its peer's
bytes, another's kernels run. Each lane is an ordinary secure inference (its own fresh
masks and single-use keys), so per-inference key and bytes do not change with L.

The time of a step is the measure of the *union* of every lane's online intervals, both
parties' (each worker stamps its online clock with ``time.monotonic``, one clock for all
processes on the host): time in which at least one lane was online. Key staging between
a lane's sets counts only where another lane was online meanwhile. Everything else
merges as between the two parties (bytes add up, times and rounds are the larger).
"""
from __future__ import annotations

from fusec.bench.merge import merge_parties, merge_records, merge_value
from fusec.bench.util import unique


def union_seconds(intervals: list) -> float:
    """The total length covered by ``[start, end]`` intervals (overlaps counted once)."""
    total, reach = 0.0, None
    for start, end in sorted((float(s), float(e)) for s, e in intervals):
        if reach is None or start > reach:
            total, reach = total + (end - start), end
        elif end > reach:
            total, reach = total + (end - reach), end
    return total


def _lane_phases(x: dict | None, y: dict | None) -> dict:
    """Two lanes' per-party round phases: each phase the larger lane's."""
    x, y = x or {}, y or {}
    return {p: {ph: merge_value(ph, x.get(p, {}).get(ph), y.get(p, {}).get(ph))
                for ph in unique([*x.get(p, {}), *y.get(p, {})])}
            for p in unique([*x, *y])}


def merge_lanes(records: list[tuple[dict, dict]]) -> dict:
    """One step of L lanes (each lane's P0 and P1 records) -> one step of the batch."""
    lanes = [merge_parties(r0, r1) for r0, r1 in records]
    out = lanes[0]
    for more in lanes[1:]:
        out = merge_records(out, more, _lane_phases)
    intervals = [iv for pair in records for rec in pair for iv in rec.get("online_intervals", [])]
    out["lane_online_seconds"] = max(s["online_seconds"] for s in lanes)   # the slowest lane on its own clock
    out["online_seconds"] = union_seconds(intervals)
    return out
