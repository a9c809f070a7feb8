"""Amdahl reconciliation (issue 14, item 2): do the per-gate speed-ups explain the end-to-end one?

Per configuration measured with both gate sets (model, seq, batch, GPUs, network):

- ``f`` = the nonlinear share of the **sigma** build's online time: the seconds of its
  nonlinear profiler scopes (compute + wire, the slower party's, per batch) over its
  online time. *Nonlinear* is every scope except :data:`LINEAR_SCOPES` (``linear``: the
  public-weight and attention matmuls; ``input``: sharing the input); the time in no
  scope counts as not nonlinear.
- ``s`` = the speed-up of the fused gates on that nonlinear part, from one of two sources,
  named in the output:

  * ``microbench``: per-gate speed-ups measured alone on the same machine, recorded in the
    bench JSON as ``gate_microbench = {"source": "...", "speedups": {scope: sigma time /
    fused time}}`` (``fusec bench --gate-speedups FILE`` copies FILE there; a key
    ``nonlinear`` applies to every nonlinear scope). Scopes it does not name fall back to:
  * ``scope times``: sigma's over fused's seconds of the same scopes in this very run.

  Per scope group ``i`` (each microbenchmarked scope alone, the rest together) with share
  ``f_i`` of sigma's online time, ``1 / predicted = (1 - f) + sum_i f_i / s_i``, and
  ``s = f / sum_i f_i / s_i`` (the one number that gives the same prediction).
- ``predicted = 1 / ((1 - f) + f / s)`` next to ``measured = sigma online / fused online``.

With ``s`` from the scope times alone the prediction is an identity up to what changed
*outside* the nonlinear scopes (``other_ratio``: sigma's over fused's linear + unscoped
time): a gap then means the builds differ there (scheduling, overlap of compute with the
wire, the unscoped rest), which is what the one-sentence explanation has to name.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fusec.bench.merge import scope_metric
from fusec.bench.util import run_command
from fusec.errors import FusecError

LINEAR_SCOPES = ("linear", "input")
NONLINEAR_KEY = "nonlinear"


@dataclass(frozen=True)
class Amdahl:
    """One configuration's reconciliation (times per batch, seconds)."""

    f: float                    # nonlinear share of sigma's online time
    s: float                    # speed-up of the nonlinear part (see ``source``)
    predicted: float            # 1 / ((1 - f) + f / s)
    measured: float             # sigma online / fused online
    source: str                 # "microbench", "scope times" or "microbench (a, b) + scope times (rest)"
    sigma_online: float
    fused_online: float
    sigma_nonlinear: float
    fused_nonlinear: float
    other_ratio: float | None   # sigma / fused of the time outside the nonlinear scopes

    @property
    def gap(self) -> float:
        """measured / predicted - 1 (positive: the build does better than its gates explain)."""
        return self.measured / self.predicted - 1

    def as_dict(self) -> dict:
        return {**asdict(self), "gap": self.gap}


def nonlinear_seconds(scopes: dict[str, dict], online: float) -> dict[str, float]:
    """Per nonlinear scope, its seconds (every ``*seconds*`` metric: compute + wire). Each
    scope's time is the slower party's, so all scopes together can exceed the online time a
    little; then every scope is scaled down alike so that they add up to the online time."""
    secs = {sc: scope_metric(m, "seconds") for sc, m in scopes.items()}
    total = sum(secs.values())
    scale = online / total if total > online > 0 else 1.0
    return {sc: v * scale for sc, v in secs.items() if sc not in LINEAR_SCOPES}


def predict(f: float, s: float) -> float:
    """Amdahl's law: the whole speeds up 1 / ((1 - f) + f / s) when a share f speeds up s."""
    if not (0 <= f <= 1) or not s > 0:
        raise ValueError(f"Amdahl needs 0 <= f <= 1 and s > 0, got f={f}, s={s}")
    denominator = (1.0 - f) + (f / s if math.isfinite(s) else 0.0)
    return 1.0 / denominator if denominator > 0 else math.inf


def reconcile(sigma: dict, fused: dict, microbench: dict | None = None) -> Amdahl | None:
    """The reconciliation of one measured pair of bench records (``None`` when a record
    lacks the numbers: no online time or no nonlinear scope time)."""
    ts, tf = (r["online"]["per_batch"]["online_seconds"] for r in (sigma, fused))
    nl_s = nonlinear_seconds(sigma["online"]["scopes_per_batch"], ts)
    nl_f = nonlinear_seconds(fused["online"]["scopes_per_batch"], tf)
    total_s, total_f = sum(nl_s.values()), sum(nl_f.values())
    if not ts or not tf or total_s <= 0 or total_f <= 0:
        return None
    f = total_s / ts
    bench = dict((microbench or {}).get("speedups") or {})
    if NONLINEAR_KEY in bench:
        bench = {sc: bench[NONLINEAR_KEY] for sc in nl_s}
    named = [sc for sc in nl_s if sc in bench]
    inverse = sum(nl_s[sc] / ts / float(bench[sc]) for sc in named)       # sum_i f_i / s_i, microbenchmarked
    rest_s = sum(v for sc, v in nl_s.items() if sc not in named)
    rest_f = sum(v for sc, v in nl_f.items() if sc not in named)
    if rest_s > 0 and rest_f > 0:
        inverse += rest_s / ts / (rest_s / rest_f)                          # the rest: its own time ratio
    source = ("scope times" if not named else "microbench" if rest_s <= 0
              else f"microbench ({', '.join(named)}) + scope times (rest)")
    s = f / inverse if inverse > 0 else math.inf
    other_s, other_f = ts - total_s, tf - total_f
    return Amdahl(f=f, s=s, predicted=predict(f, s), measured=ts / tf, source=source, sigma_online=ts,
                  fused_online=tf, sigma_nonlinear=total_s, fused_nonlinear=total_f,
                  other_ratio=other_s / other_f if other_f > 0 else None)


def _key(rec: dict) -> tuple:
    c = rec["config"]
    net = (c.get("net") or {}).get("name") if c.get("net") else None
    return (c.get("label", c["model"]), c["seq"], c["batch"], c.get("gpus"), net, c.get("runtime", "interpreted"),
            c.get("lanes", 1), c.get("stripes", 1))


def reconcile_all(results: list[dict], microbench: dict | None = None) -> list[tuple[tuple, Amdahl]]:
    """``((model, seq, batch, gpus, net, runtime, lanes, stripes), Amdahl)`` for every configuration measured
    with both (padded) gate sets under one runtime, in the order of the results."""
    by: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if "online" in r and r["config"].get("padded", True):
            by.setdefault(_key(r), {})[r["config"]["gates"]] = r
    out = []
    for key, gates in by.items():
        if "sigma" in gates and "fused" in gates:
            a = reconcile(gates["sigma"], gates["fused"], microbench)
            if a is not None:
                out.append((key, a))
    return out


def markdown(results: list[dict], microbench: dict | None = None) -> list[str]:
    """The reconciliation table (empty when no configuration has both gate sets)."""
    rows = reconcile_all(results, microbench)
    if not rows:
        return []
    cells = []
    for (model, seq, batch, gpus, net, runtime, lanes, stripes), a in rows:
        cells.append([model, str(seq), str(batch) + (f" ({lanes} lanes)" if lanes > 1 else ""), "-" if gpus is None else str(gpus),
                      (net or "-") + (f", {stripes} conn." if stripes > 1 else ""), runtime,
                      f"{a.f:.1%}", f"{a.s:.2f}x" if math.isfinite(a.s) else "inf", a.source,
                      f"{a.predicted:.2f}x", f"{a.measured:.2f}x", f"{a.gap:+.1%}",
                      "-" if a.other_ratio is None else f"{a.other_ratio:.2f}x"])
    from fusec.bench.markdown import table   # noqa: PLC0415 (markdown imports this module)

    src = (microbench or {}).get("source")
    head = ["model", "seq", "batch", "GPUs", "network", "runtime", "f (nonlinear share, sigma)", "s (nonlinear speed-up)",
            "s from", "predicted", "measured", "measured / predicted", "linear + rest, sigma / fused"]
    return ["", "Amdahl reconciliation (per batch): f = the nonlinear scopes' share of the sigma build's online "
                f"time (every scope but {', '.join(LINEAR_SCOPES)}; time in no scope counts as linear), s = the "
                "fused gates' speed-up on that part, predicted = 1 / ((1 - f) + f / s), measured = sigma / fused "
                "online time. With s from the scope times, a gap is what changed outside the nonlinear scopes "
                "(last column: scheduling, overlap, unscoped time)"
                + (f"; gate micro-benchmark: {src}" if src else "; no gate micro-benchmark recorded") + ".", "",
            *table(head, "lrrrllrrlrrrr", cells)]


def load_gate_speedups(path: str | Path) -> dict:
    """A ``--gate-speedups`` file: ``{"source": "...", "speedups": {scope: s > 0}}``,
    checked (one line naming what is wrong)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise FusecError(f"--gate-speedups {p}: cannot read it as JSON ({e.__class__.__name__}: {e})") from None
    sp = doc.get("speedups") if isinstance(doc, dict) else None
    if not isinstance(sp, dict) or not sp or not isinstance(doc.get("source", ""), str):
        raise FusecError(f"--gate-speedups {p}: expected {{\"source\": \"how it was measured\", \"speedups\": "
                         f"{{\"gelu\": 2.0, ...}}}} (sigma time / fused time per profiler scope, or \"nonlinear\")")
    for k, v in sp.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise FusecError(f"--gate-speedups {p}: the speed-up of {k!r} must be a positive number, got {v!r}")
        if k in LINEAR_SCOPES:
            raise FusecError(f"--gate-speedups {p}: {k!r} is not a nonlinear scope (f and s are about the "
                             f"nonlinear part)")
    return {"source": doc.get("source", str(p)), "speedups": {k: float(v) for k, v in sp.items()}}


def main(argv: list[str] | None = None) -> None:
    """``python -m fusec.bench.amdahl RESULTS.json... [--gate-speedups F]``: the table over
    several bench JSON files (e.g. a fused and a sigma run), on stdout."""
    import click

    @click.command(name="python -m fusec.bench.amdahl")
    @click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
    @click.option("--gate-speedups", type=click.Path(exists=True, dir_okay=False),
                  help="per-gate speed-ups measured alone (default: the files' gate_microbench, if any)")
    def cmd(files, gate_speedups):
        from fusec.bench.util import load_results

        results, docs = load_results(files)
        micro = load_gate_speedups(gate_speedups) if gate_speedups else next(
            (d["gate_microbench"] for d in docs if d.get("gate_microbench")), None)
        lines = markdown(results, micro)
        click.echo("\n".join(lines).strip() if lines else "no configuration measured with both gate sets")

    status = run_command(cmd, argv, "python -m fusec.bench.amdahl")
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
