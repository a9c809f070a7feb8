#!/usr/bin/env python
"""PNG plots of ``fusec bench`` results (needs matplotlib: ``pip install 'fusec[bench]'``).

    python bench/plot.py bench.json [more.json ...] -o plots/

Writes, per model:

* ``scopes_<model>.png`` -- where the online time and the bytes go: one stacked bar per
  gate set (and GPU count), a segment per profiling scope, at the smallest true batch and
  the most common sequence length. Time per scope is the slower party's, bytes are both
  parties'; the part of the online time no scope accounts for is drawn as "rest".
* ``throughput.png`` -- tokens/s against true batch size, one line per gate set and GPU count.
* ``speedup.png`` -- sigma online time / fused online time against true batch size
  (above 1: the fused gates are faster).
* ``seq_sweep.png`` -- online time per batch against sequence length at the smallest
  batch; configurations that were skipped (e.g. out of memory) are marked with an x.

Several JSON files (e.g. a 1-GPU and a 2-GPU run) are merged into the same plots.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fusec.bench import scope_metric  # noqa: E402

STYLE = {"fused": ("tab:blue", "o"), "sigma": ("tab:orange", "s"), "fused-unpadded": ("tab:red", "^")}
GPU_LINE = {None: "-", 1: "-", 2: "--"}
GPU_COLOR = {None: "tab:gray", 1: "tab:purple", 2: "tab:green"}
REST = "rest (in no scope)"


def load(paths: list[Path]) -> list[dict]:
    """All results of the given bench JSON files."""
    out = []
    for p in paths:
        out += json.loads(Path(p).read_text())["results"]
    return out


def _gate(c: dict) -> str:
    return c["gates"] if c.get("padded", True) else f"{c['gates']}-unpadded"


def _where(gpus: int | None) -> str:
    return "CPU" if gpus is None else f"{gpus} GPU" + ("s" if gpus > 1 else "")


def _by_model(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["config"].get("label", r["config"]["model"]), []).append(r)
    return out


def _measured(results: list[dict]) -> list[dict]:
    return [r for r in results if "online" in r]


def _base_seq(results: list[dict]) -> int | None:
    seqs = Counter(r["config"]["seq"] for r in _measured(results))
    return seqs.most_common(1)[0][0] if seqs else None


def _series(results: list[dict], x: str, **fixed) -> dict[tuple, list[dict]]:
    """(gate label, gpus) -> measured results matching ``fixed``, sorted by config[x]."""
    out: dict[tuple, list[dict]] = {}
    for r in _measured(results):
        c = r["config"]
        if all(c.get(k) == v for k, v in fixed.items()):
            out.setdefault((_gate(c), c["gpus"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["config"][x]) for k, v in sorted(out.items(), key=str)}


def _save(fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _grid(n: int, title: str, width: float = 5.5):
    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.2), squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, axes[0]


# ---------------------------------------------------------------------- (a) per-scope bars
def _stack(ax, labels: list[str], parts: list[dict[str, float]], colors: dict[str, str], unit: str, scale: float,
           totals: list[float] | None = None):
    """Stacked bars, one segment per key of ``colors``; each bar labelled with its total
    (``totals`` if given: e.g. the online time, which per-scope maxima can exceed)."""
    bottoms = [0.0] * len(labels)
    for scope, color in colors.items():
        vals = [p.get(scope, 0.0) / scale for p in parts]
        if any(vals):
            ax.bar(labels, vals, bottom=bottoms, color=color, label=scope, edgecolor="white", linewidth=0.5)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
    for i, top in enumerate(bottoms):
        total = top if totals is None else totals[i] / scale
        ax.annotate(f"{total:.3g} {unit}", (i, max(top, total)), ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(unit)
    ax.grid(axis="y", alpha=0.3)


def scope_bars(results: list[dict], out: Path) -> list[Path]:
    paths = []
    for model, rs in _by_model(results).items():
        seq, ms = _base_seq(rs), _measured(rs)
        if not ms:
            continue
        batch = min(r["config"]["batch"] for r in ms)
        chosen = [r for r in ms if r["config"]["seq"] == seq and r["config"]["batch"] == batch]
        chosen.sort(key=lambda r: (str(r["config"]["gpus"]), _gate(r["config"])))
        scopes = list(dict.fromkeys(sc for r in chosen for sc in r["online"]["scopes_per_batch"]))
        cmap = plt.get_cmap("tab20")
        colors = {sc: cmap(i % 20) for i, sc in enumerate(scopes)}
        colors["rest"] = "lightgrey"
        times, labels = [], []
        for r in chosen:
            sc = {k: scope_metric(v, "seconds") for k, v in r["online"]["scopes_per_batch"].items()}
            sc["rest"] = max(0.0, r["online"]["per_batch"]["online_seconds"] - sum(sc.values()))
            times.append(sc)
            labels.append(f"{_gate(r['config'])}\n{_where(r['config']['gpus'])}")
        by_gate = {_gate(r["config"]): r for r in chosen}        # bytes do not depend on the GPUs
        byte_parts = [{k: scope_metric(v, "bytes") for k, v in r["online"]["scopes_per_batch"].items()}
                      for r in by_gate.values()]
        fig, (a1, a2) = _grid(2, f"{model}: online time and communication by scope (seq {seq}, batch {batch}, "
                                 f"per batch)", width=6.5)
        _stack(a1, labels, times, colors, "s", 1.0, [r["online"]["per_batch"]["online_seconds"] for r in chosen])
        a1.set_title("online time (slower party; compute + wire per scope)")
        _stack(a2, list(by_gate), byte_parts, {k: v for k, v in colors.items() if k != "rest"}, "MB", 1e6)
        a2.set_title("bytes sent (both parties)")
        handles, names = a1.get_legend_handles_labels()
        names = [REST if n == "rest" else n for n in names]
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(names) // 7), 1, 1))
        paths.append(_save(fig, out / f"scopes_{model}.png", layout=False))
    return paths


# ---------------------------------------------------------------------- (b)-(d) lines
def _lines(results: list[dict], out: Path, name: str, title: str, x: str, y, ylabel: str,
           fixed_of=lambda rs: {}, logx: bool = True, skipped_marks: bool = False,
           reference: float | None = None) -> Path | None:
    models = _by_model(results)
    if not _measured(results):
        return None
    fig, axes = _grid(len(models), title)
    for ax, (model, rs) in zip(axes, models.items()):
        fixed = fixed_of(rs)
        for (gate, gpus), series in _series(rs, x, **fixed).items():
            color, marker = STYLE.get(gate, (GPU_COLOR.get(gpus, "black"), "D"))
            pts = [(r["config"][x], y(r)) for r in series if y(r) is not None]
            if pts:
                ax.plot(*zip(*pts), GPU_LINE.get(gpus, ":"), color=color, marker=marker,
                        label=f"{gate}, {_where(gpus)}")
        if skipped_marks:
            _mark_skipped(ax, rs, x, fixed)
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, alpha=0.6)
        ax.set_title(model + "".join(f", {k} {v}" for k, v in fixed.items()))
        ax.set_xlabel(x.replace("batch", "true batch size").replace("seq", "sequence length"))
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        if logx:
            ax.set_xscale("log", base=2)
            ticks = sorted({r["config"][x] for r in rs})
            ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, out / name)


def _mark_skipped(ax, rs: list[dict], x: str, fixed: dict) -> None:
    """One grey x and note per x value with configurations that did not fit (what, and
    why); the compiler's refusal of the insecure ablation is not a point of this curve."""
    at: dict[int, list[dict]] = {}
    for r in rs:
        if ("skipped" in r and r.get("skip_kind") != "refused"
                and all(r["config"].get(k) == v for k, v in fixed.items())):
            at.setdefault(r["config"][x], []).append(r)
    for xv, group in at.items():
        kinds = ", ".join(sorted({str(r.get("skip_kind")) for r in group}))
        what = ", ".join(sorted({f"{_gate(r['config'])} {_where(r['config']['gpus'])}" for r in group}))
        ax.plot([xv], [0.04], "x", color="grey", markersize=10, transform=ax.get_xaxis_transform())
        ax.annotate(f"skipped ({kinds}):\n{what}", (xv, 0.08), xycoords=("data", "axes fraction"), fontsize=7,
                    ha="center", va="bottom", color="dimgrey", wrap=True)


def throughput(results: list[dict], out: Path) -> Path | None:
    return _lines(results, out, "throughput.png", "Throughput against true batch size", "batch",
                  lambda r: r["online"]["tokens_per_second"], "tokens / s (online)",
                  fixed_of=lambda rs: {"seq": _base_seq(rs)})


def speedup(results: list[dict], out: Path) -> Path | None:
    pairs: dict[tuple, dict] = {}
    for r in _measured(results):
        c = r["config"]
        pairs.setdefault((c.get("label", c["model"]), c["seq"], c["batch"], c["gpus"]), {})[_gate(c)] = r
    rows = []
    for (model, seq, batch, gpus), by in pairs.items():
        if "fused" in by and "sigma" in by:
            f, s = (by[g]["online"]["per_batch"]["online_seconds"] for g in ("fused", "sigma"))
            cfg = dict(by["fused"]["config"], gates="sigma/fused")
            rows.append({"config": cfg, "online": {"ratio": s / f if f else None}})
    if not rows:
        return None
    path = _lines(rows, out, "speedup.png", "Speed-up of the fused gates (sigma time / fused time)", "batch",
                  lambda r: r["online"]["ratio"], "sigma / fused online time",
                  fixed_of=lambda rs: {"seq": _base_seq(rs)}, reference=1.0)
    return path


def seq_sweep(results: list[dict], out: Path) -> Path | None:
    def smallest_batch(rs: list[dict]) -> dict:
        return {"batch": min(r["config"]["batch"] for r in rs)}

    if len({r["config"]["seq"] for r in results}) < 2:
        return None
    return _lines(results, out, "seq_sweep.png", "Online time against sequence length", "seq",
                  lambda r: r["online"]["per_batch"]["online_seconds"], "online time per batch (s)",
                  fixed_of=smallest_batch, skipped_marks=True)


def plot_all(paths: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = load(paths)
    made = scope_bars(results, out)
    for f in (throughput, speedup, seq_sweep):
        p = f(results, out)
        if p is not None:
            made.append(p)
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", type=Path, help="fusec bench JSON file(s)")
    p.add_argument("-o", "--out", type=Path, default=Path("plots"), help="output folder")
    a = p.parse_args(argv)
    for path in plot_all(a.json, a.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
