"""The sweeps of issue 14 (item 3) as one markdown section, from several ``fusec bench`` files::

    python -m fusec.bench.sweep RESULTS.json [MORE.json ...] [--source-depth 1]

A device call fits only a few configurations (each call may also land on another machine),
so a sweep arrives as several JSON files. This joins them into the tables a reader wants:

* **batch sweep** per model and sequence length: per batch and per inference, online time,
  tokens/s and its ratio to the same gates' batch 1 *on the same card*, bytes, rounds,
  keygen, key per party, and sigma / fused where both ran on the same card;
* **sequence sweep** per model at its smallest batch;
* **per inference across batches**: whether key and bytes per inference stay within 1% of
  the smallest batch's, and where they do not, the rounds beside them. The compiler prices
  a round against the key and AES a construction saves over the *whole* batch
  (passes/pricing.py), so a larger batch may buy AES with rounds: per-inference key then
  falls, by design, and the rounds say so;
* **skipped** configurations, with the key per inference the compile said they needed;
* **AES/s on the card** outside the wire (:attr:`Row.aes_rate`), to hold against the card's
  AES ceiling (ANCHORS.md): where it is near, only a second card makes the step shorter.

Every row names its card and the file's folder (its device call), because timings compare
only within one machine: ratios are taken between rows of one card only. Give it the files of
one build: a record does not say which commit compiled it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

from fusec.bench.failures import reason
from fusec.bench.markdown import net_name, table
from fusec.bench.util import gb, load_results, run_command, secs
from fusec.runtime.striped_channel import DEFAULT_STRIPES

#: per-inference key and bytes count as constant across batch sizes within this (issue 14)
CONSTANT_WITHIN = 0.01


@dataclass(frozen=True)
class Row:
    """One configuration of one file: its record, the card it ran on and the file's folder."""

    rec: dict
    card: str
    source: str

    @property
    def c(self) -> dict:
        return self.rec["config"]

    @property
    def ran(self) -> bool:
        return "online" in self.rec

    def per(self, unit: str, what: str) -> float | None:
        """``online.per_batch|per_inference[what]`` (None where the record lacks it)."""
        return (self.rec.get("online") or {}).get(unit, {}).get(what)

    @property
    def key_per_inference(self) -> float | None:
        kg = (self.rec.get("keygen") or {}).get("per_inference", {}).get("key_bytes_per_party")
        if kg is None and (self.rec.get("compile") or {}).get("key_bytes_per_set") is not None:
            kg = self.rec["compile"]["key_bytes_per_set"] / max(int(self.c.get("batch") or 1), 1)
        return kg

    @property
    def rounds(self) -> float | None:
        return self.per("per_batch", "rounds") or (self.rec.get("compile") or {}).get("rounds_planned")

    @property
    def aes_rate(self) -> float | None:
        """AES blocks per second on one card outside the wire: the servers on it (both parties
        with one GPU; each lane's) times a set's AES per party (the build's report), over the
        slower party's time in its round phases other than the wire. Against the card's AES
        ceiling (ANCHORS.md) it says how busy the card was."""
        aes = (self.rec.get("compile") or {}).get("aes_per_set")
        phases = (self.rec.get("online") or {}).get("round_phases_per_batch") or {}
        busy = [sum(v for k, v in ph.items() if k != "wire") for ph in phases.values()]
        if not aes or not busy or not max(busy):
            return None
        return (2 if self.c.get("gpus") == 1 else 1) * self.c.get("lanes", 1) * aes / max(busy)

    def group(self) -> tuple:
        """What makes rows comparable: model, gates, runtime, GPUs, network, lanes and card."""
        c = self.c
        return (c.get("label", c["model"]), c["gates"], c.get("padded", True), c.get("runtime"), c.get("gpus"),
                net_name(c), c.get("lanes", 1), self.card, tuple(c.get("compile_args") or ()), c.get("stripes"))

    @property
    def gates(self) -> str:
        """The gate set, and the compile options the bench added (``--compile-arg``)."""
        c = self.c
        label = c["gates"] if c.get("padded", True) else f"{c['gates']} (no padding, INSECURE)"
        return " ".join([label, *(c.get("compile_args") or ())])


def card_name(doc: dict) -> str:
    """The card a file's runs used ("NVIDIA H100 80GB HBM3, 81559 MiB" -> "H100 80GB HBM3"), or "CPU"."""
    gpus = (doc.get("machine") or {}).get("gpus") or []
    return gpus[0].split(",")[0].removeprefix("NVIDIA ").strip() if gpus else "CPU"


def load_rows(paths: list[Path], source_depth: int = 1) -> list[Row]:
    """Every configuration of every file, tagged with its card and the last ``source_depth``
    folders of its path; a configuration measured in two files of one card keeps the later."""
    rows: dict[tuple, Row] = {}
    for p in paths:
        results, (doc,) = load_results([p])
        source = "/".join(p.resolve().parent.parts[-source_depth:]) if source_depth else p.name
        for rec in results:
            row = Row(rec, card_name(doc), source)
            key = (row.c.get("name"), row.c.get("stripes"), row.card)
            if row.ran or key not in rows or not rows[key].ran:
                rows[key] = row
    return list(rows.values())


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _find(rows: list[Row], group: tuple, seq: int, batch: int, gates: str | None = None) -> Row | None:
    """The measured row of ``group`` (with ``gates`` in place of its own, when given) at ``seq`` and ``batch``."""
    want = group if gates is None else (group[0], gates, *group[2:])
    return next((r for r in rows if r.ran and r.group() == want and r.c["seq"] == seq and r.c["batch"] == batch), None)


def _cells(r: Row, rows: list[Row], base: Row | None) -> list[str]:
    c = r.c
    stripes = c.get("stripes")
    runtime = (c.get("runtime") or "-") + (f", {stripes} connection{'s' * (stripes > 1)}"
                                           if stripes not in (None, DEFAULT_STRIPES) else "")
    head = [c.get("label", c["model"]), str(c["seq"]), str(c["batch"]), r.gates, runtime, r.card, r.source]
    if not r.ran:
        return head + [f"skipped ({r.rec.get('skip_kind')})", "-", "-", "-", "-", "-",
                       "-" if r.rounds is None else f"{r.rounds:.0f}", "-", gb(r.key_per_inference), "-", "-"]
    tps = r.rec["online"].get("tokens_per_second")
    base_tps = base.rec["online"].get("tokens_per_second") if base else None
    fused = _find(rows, r.group(), c["seq"], c["batch"], "fused") if c["gates"] == "sigma" else None
    sigma = _find(rows, r.group(), c["seq"], c["batch"], "sigma") if c["gates"] == "fused" else None
    vs_other = (_ratio(r.per("per_batch", "online_seconds"), fused.per("per_batch", "online_seconds")) if fused else
                _ratio(sigma.per("per_batch", "online_seconds"), r.per("per_batch", "online_seconds")) if sigma else "-")
    return head + [secs(r.per("per_batch", "online_seconds")), secs(r.per("per_inference", "online_seconds")),
                   "-" if tps is None else f"{tps:,.1f}", "1" if base is r else _ratio(tps, base_tps),
                   vs_other, gb(r.per("per_inference", "bytes_sent")), f"{r.rounds:.0f}",
                   secs(((r.rec.get("keygen") or {}).get("per_inference") or {}).get("seconds")),
                   gb(r.key_per_inference), "-" if r.aes_rate is None else f"{r.aes_rate / 1e9:.1f} G", _late(r)]


def _late(r: Row) -> str:
    """How the key set met the online clock (the bench's footnotes, in words)."""
    on = r.rec.get("online") or {}
    if on.get("plan_refused"):
        return "interpreted (plan refused)"
    return "unpacked per gate" if on.get("keys_unpacked_late") else "staged"


HEADER = ["model", "seq", "batch", "gates", "runtime", "card", "call", "online / batch", "online / inference", "tokens/s",
          "vs {vs}", "sigma / fused", "bytes / inference", "rounds", "keygen / inference", "key / inference / party",
          "AES/s on the card", "keys"]


def _sweep_table(rows: list[Row], pick: Callable[[Row], bool], vs: str,
                 base_of: Callable[[Row], Row | None]) -> list[str]:
    """The rows ``pick`` keeps, each against ``base_of`` it (the column "vs ``vs``")."""
    chosen = sorted((r for r in rows if pick(r)), key=lambda r: (r.group()[0], r.card, r.c["gates"], str(r.group()),
                                                                 r.c["seq"], r.c["batch"]))
    if not chosen:
        return []
    body = [_cells(r, rows, base_of(r)) for r in chosen]
    return table([h.format(vs=vs) for h in HEADER], "lrrllll" + "r" * 10 + "l", body)


def constancy(rows: list[Row]) -> list[str]:
    """Per (model, seq, gates, runtime, card) measured at several batches: whether key and bytes
    per inference stay within :data:`CONSTANT_WITHIN` of the smallest batch's, and the rounds
    where they do not (the compiler's round pricing is per batch)."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.ran:
            groups.setdefault((*r.group(), r.c["seq"]), []).append(r)
    lines = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len({r.c["batch"] for r in rs}) < 2:
            continue
        rs.sort(key=lambda r: r.c["batch"])
        b0 = rs[0]
        what = f"{key[0]} seq {key[-1]} {rs[0].gates} ({rs[0].c.get('runtime')}) on the {key[7]}"
        off = []
        for r in rs[1:]:
            for name, get in (("key", lambda x: x.key_per_inference),
                              ("bytes", lambda x: x.per("per_inference", "bytes_sent"))):
                a, b = get(r), get(b0)
                if a and b and abs(a / b - 1) > CONSTANT_WITHIN:
                    off.append(f"{name} {(a / b - 1) * 100:+.1f}% at batch {r.c['batch']} ({r.rounds:.0f} rounds "
                               f"against {b0.rounds:.0f})")
        batches = ", ".join(str(r.c["batch"]) for r in rs)
        if not off:
            lines.append(f"- {what}: key and bytes per inference within {CONSTANT_WITHIN:.0%} across batches {batches}.")
        else:
            lines.append(f"- {what}: per inference, against batch {b0.c['batch']}: " + "; ".join(off) + ". "
                         + ("A different round count means the compiler chose other constructions: it prices a "
                            "round against what a gate saves over the whole batch (passes/pricing.py)."
                            if any(r.rounds != b0.rounds for r in rs) else
                            "The rounds are the same, so this is not the round pricing: look into it."))
    return lines


def render(rows: list[Row]) -> str:
    """The section: the batch sweep, the sequence sweep, per inference across batches, skips."""
    def batch_base(r: Row) -> Row | None:      # the group's smallest batch, where it ran at another too
        batches = {x.c["batch"] for x in rows if x.ran and x.group() == r.group() and x.c["seq"] == r.c["seq"]}
        return _find(rows, r.group(), r.c["seq"], min(batches)) if len(batches) > 1 else None

    seqs_with_batches = {(r.group(), r.c["seq"]) for r in rows if r.c["batch"] > 1}
    smallest: dict[str, int] = {}     # per model: the sequence sweep's batch
    for r in rows:
        model = r.group()[0]
        smallest[model] = min(smallest.get(model, r.c["batch"]), r.c["batch"])

    def seq_base(r: Row) -> Row | None:        # the group's shortest sequence, where it ran at another too
        seqs = {x.c["seq"] for x in rows if x.ran and x.group() == r.group() and x.c["batch"] == r.c["batch"]}
        return _find(rows, r.group(), min(seqs), r.c["batch"]) if len(seqs) > 1 else None

    lines = ["### Batch sweep", ""]
    lines += _sweep_table(rows, lambda r: (r.group(), r.c["seq"]) in seqs_with_batches, "smallest batch",
                          batch_base) or ["(no configuration ran at more than one batch)"]
    lines += ["", "### Sequence sweep (smallest batch)", ""]
    lines += _sweep_table(rows, lambda r: r.c["batch"] == smallest[r.group()[0]], "shortest seq", seq_base) \
        or ["(no configuration)"]
    lines += ["", "### Key and bytes per inference across batch sizes", ""]
    lines += constancy(rows) or ["(no configuration ran at two batch sizes on one card)"]
    skipped = [r for r in rows if not r.ran]
    if skipped:
        lines += ["", "### Skipped", ""] + [f"- {r.c['name']} on the {r.card} ({r.source}): "
                                            f"{reason(r.rec.get('skipped'))}" for r in skipped]
    return "\n".join(lines) + "\n"


@click.command(name="python -m fusec.bench.sweep")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--source-depth", default=1, show_default=True, type=click.IntRange(0, 8),
              help="how many of a file's parent folders name its call in the tables (0: the file name)")
def cli(files, source_depth) -> None:
    """One markdown section from several fusec bench JSON files: batch and sequence sweeps,
    per-inference key and bytes across batch sizes, skipped configurations."""
    click.echo(render(load_rows([Path(f) for f in files], source_depth)), nl=False)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line (a file that is not bench output)."""
    return run_command(cli, argv, "python -m fusec.bench.sweep")


if __name__ == "__main__":
    sys.exit(main())
