"""PNG plots of ``fusec bench`` results, all from the JSON by one command (issue 14, item 4)::

    python -m fusec.bench.plots RESULTS.json [MORE.json ...] -o DIR

Needs matplotlib (``pip install 'fusec[plot]'``); the bench itself does not. Several files
(a fused and a sigma run, 1 and 2 GPUs, a sweep and its reruns) are merged. Each plot is
drawn only when its data is there; otherwise the command says which plot it skipped and
why. The plots:

* ``scopes_<model>.png`` -- where online time and bytes go: one stacked bar per gate set
  (and GPU count), a segment per profiler scope, at the smallest true batch and the most
  common sequence length; the online time no scope accounts for is "rest". Scope times
  that add up to more than the online time (they overlap: with launch plans a party's
  CUDA events also cover the other party's graphs on a shared card) are scaled down alike
  to it, as the Amdahl table does.
* ``throughput.png`` / ``speedup.png`` -- tokens/s, and sigma / fused online time, against
  the true batch size: one panel per model and sequence length with a batch sweep.
* ``seq_sweep.png`` -- online time per batch against sequence length at the smallest batch;
  configurations that were skipped (out of memory, disk) are marked with an x.
* ``padding_<model>.png`` -- the padding ablation: online time and bytes by scope, and key
  size, of the fused gates padded against unpadded (INSECURE).
* ``network.png`` -- online time per emulated network setting (``--net``), per gate set,
  with the sigma / fused ratio over each group (of one runtime, launch plans first).

Runs under another runtime than interpreted (``config.runtime``: launch plans, keys in
the clock) are their own lines and bars, labelled with it; ratios pair runs of one runtime.

Plots other than ``network.png`` use the runs over plain loopback when there are any (the
network plot is the place to compare settings).
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import click

from fusec.bench.merge import scope_metric
from fusec.bench.plan import DEFAULT_RUNTIME
from fusec.bench.util import load_results, run_command
from fusec.runtime.striped_channel import DEFAULT_STRIPES
from fusec.errors import FusecError

STYLE = {"fused": ("tab:blue", "o"), "sigma": ("tab:orange", "s"), "fused-unpadded": ("tab:red", "^")}
GPU_LINE = {None: "-", 1: "-", 2: "--"}
#: (alpha, marker fill, bar hatch) per runtime: launch plans solid, the others paler
RUNTIME_LOOK = {"launch plans": (1.0, "full", ""), "interpreted": (0.55, "full", ""),
                "keys in clock": (0.55, "none", "..")}
REST = "rest (in no scope)"
Made = tuple[list[Path], list[str]]        # files written, notes on what was skipped


def _pyplot():
    """matplotlib's pyplot on the file backend, or one line saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise FusecError("the plots need matplotlib, which is not installed: pip install 'fusec[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------- selecting results
def gate(c: dict) -> str:
    return c["gates"] if c.get("padded", True) else f"{c['gates']}-unpadded"


def runtime(c: dict) -> str:
    """How the parties ran (plan.RUNTIMES); files from before the bench recorded it are
    back-filled by util.load_results."""
    return c.get("runtime", DEFAULT_RUNTIME)


def series(c: dict) -> str:
    """A legend entry's gate set and, unless interpreted, its runtime; a batch run in lanes
    (fusec/bench/lanes.py) is a line of its own."""
    rt = runtime(c)
    label = gate(c) if rt == DEFAULT_RUNTIME else f"{gate(c)} ({rt})"
    label += f", {c['lanes']} lanes" if c.get("lanes", 1) > 1 else ""
    stripes = c.get("stripes", DEFAULT_STRIPES)     # unlabelled where unknown (load_results back-fills it)
    return label + ("" if stripes == DEFAULT_STRIPES else f", {stripes} connection" + ("s" if stripes > 1 else ""))


def net_name(c: dict) -> str:
    return (c.get("net") or {}).get("name") or "none"


def where(gpus: int | None) -> str:
    return "CPU" if gpus is None else f"{gpus} GPU" + ("s" if gpus > 1 else "")


def measured(results: list[dict]) -> list[dict]:
    return [r for r in results if "online" in r]


def by_model(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["config"].get("label", r["config"]["model"]), []).append(r)
    return out


def loopback(results: list[dict]) -> list[dict]:
    """The runs over plain loopback, or, when every run was shaped, those of the most
    common setting: the plots that do not compare networks must not mix them."""
    nets = Counter(net_name(r["config"]) for r in results)
    keep = "none" if "none" in nets else (nets.most_common(1)[0][0] if nets else "none")
    return [r for r in results if net_name(r["config"]) == keep]


def base_seq(results: list[dict]) -> int | None:
    seqs = Counter(r["config"]["seq"] for r in measured(results))
    return seqs.most_common(1)[0][0] if seqs else None


def online(r: dict) -> float:
    return r["online"]["per_batch"]["online_seconds"]


def speedup_rows(results: list[dict]) -> list[dict]:
    """Pseudo-records with ``online.ratio`` = sigma / fused online time, per configuration
    measured with both gate sets."""
    pairs: dict[tuple, dict] = {}
    for r in measured(results):
        c = r["config"]
        key = (c.get("label", c["model"]), c["seq"], c["batch"], c["gpus"], net_name(c), runtime(c), c.get("lanes", 1),
               c.get("stripes", 1))
        pairs.setdefault(key, {})[gate(c)] = r
    rows = []
    for by in pairs.values():
        if "fused" in by and "sigma" in by and online(by["fused"]):
            rows.append({"config": dict(by["fused"]["config"], gates="sigma/fused"),
                         "online": {"ratio": online(by["sigma"]) / online(by["fused"])}})
    return rows


# ---------------------------------------------------------------------- drawing helpers
def _save(plt, fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")   # legends placed outside the axes stay in
    plt.close(fig)
    return path


def _grid(plt, n: int, title: str, width: float = 5.5, ncols: int = 3):
    cols = min(n, ncols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.2 * rows), squeeze=False)
    fig.suptitle(title, fontsize=12)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _stack(ax, labels: list[str], parts: list[dict[str, float]], colors: dict, unit: str, scale: float,
           totals: list[float] | None = None) -> None:
    """Stacked bars, a segment per key of ``colors``; each bar labelled with its total
    (``totals`` if given: the online time, which per-scope maxima can exceed)."""
    bottoms = [0.0] * len(labels)
    for scope, color in colors.items():
        vals = [p.get(scope, 0.0) / scale for p in parts]
        if any(vals):
            ax.bar(labels, vals, bottom=bottoms, color=color, label=scope, edgecolor="white", linewidth=0.5)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
    peak = 0.0
    for i, top in enumerate(bottoms):
        total = top if totals is None else totals[i] / scale
        ax.annotate(f"{total:.3g} {unit}", (i, max(top, total)), ha="center", va="bottom", fontsize=9)
        peak = max(peak, top, total)
    if peak > 0:
        ax.set_ylim(0, peak * 1.12)         # room for the tallest bar's label under the title
    ax.set_ylabel(unit)
    ax.grid(axis="y", alpha=0.3)


def _scope_parts(plt, records: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """Per record: seconds per scope (+ rest) and bytes per scope; one color per scope."""
    scopes = list(dict.fromkeys(sc for r in records for sc in r["online"]["scopes_per_batch"]))
    cmap = plt.get_cmap("tab20")
    colors = {sc: cmap(i % 20) for i, sc in enumerate(scopes)}
    colors["rest"] = "lightgrey"
    times, nbytes = [], []
    for r in records:
        sc = {k: scope_metric(v, "seconds") for k, v in r["online"]["scopes_per_batch"].items()}
        total = sum(sc.values())
        if total > online(r) > 0:   # overlapping scopes (launch plans' CUDA events cover the other
            sc = {k: v * online(r) / total for k, v in sc.items()}   # party's graphs): scaled alike, as amdahl does
        sc["rest"] = max(0.0, online(r) - sum(sc.values()))
        times.append(sc)
        nbytes.append({k: scope_metric(v, "bytes") for k, v in r["online"]["scopes_per_batch"].items()})
    return times, nbytes, colors


def _legend_below(fig, ax) -> None:
    """The scopes' legend under the panels (one for all of them)."""
    handles, names = ax.get_legend_handles_labels()
    names = [REST if n == "rest" else n for n in names]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(names) // 7), 1, 1))


# ---------------------------------------------------------------------- (1) per-scope bars
def scope_bars(plt, results: list[dict], out: Path) -> Made:
    made, notes = [], []
    for model, rs in by_model(loopback(results)).items():
        ms = measured(rs)
        if not ms:
            notes.append(f"scopes_{model}.png: no measured configuration of {model}")
            continue
        seq, batch = base_seq(ms), min(r["config"]["batch"] for r in ms)
        chosen = sorted([r for r in ms if r["config"]["seq"] == seq and r["config"]["batch"] == batch
                         and r["config"].get("padded", True)],
                        key=lambda r: (str(r["config"]["gpus"]), runtime(r["config"]), gate(r["config"])))
        if not chosen:
            notes.append(f"scopes_{model}.png: nothing measured at seq {seq}, batch {batch}")
            continue
        times, nbytes, colors = _scope_parts(plt, chosen)
        labels = [f"{series(r['config'])}\n{where(r['config']['gpus'])}".replace(" (", "\n(") for r in chosen]
        by_gate = {gate(r["config"]): i for i, r in enumerate(chosen)}      # bytes do not depend on the GPUs
        fig, (a1, a2) = _grid(plt, 2, f"{model}: online time and communication by scope (seq {seq}, batch {batch}, "
                                      f"per batch)", width=6.5)
        _stack(a1, labels, times, colors, "s", 1.0, [online(r) for r in chosen])
        a1.set_title("online time (slower party; compute + wire per scope)")
        _stack(a2, list(by_gate), [nbytes[i] for i in by_gate.values()],
               {k: v for k, v in colors.items() if k != "rest"}, "MB", 1e6)
        a2.set_title("bytes sent (both parties)")
        _legend_below(fig, a1)
        made.append(_save(plt, fig, out / f"scopes_{model}.png", layout=False))
    return made, notes


# ---------------------------------------------------------------------- (2) lines against batch or seq
def _lines(plt, panels: list[tuple[str, dict, list[dict]]], out: Path, name: str, title: str, x: str,
           y: Callable[[dict], float | None], ylabel: str, reference: float | None = None,
           skipped: list[dict] | None = None) -> Path:
    """One panel per ``(title, fixed config values, records)``; a line per gate set and
    GPU count."""
    fig, axes = _grid(plt, len(panels), title, ncols=2)         # a model per row: its sequence lengths side by side
    for ax, (head, fixed, rs) in zip(axes, panels):
        lines: dict[tuple, list[dict]] = {}
        for r in rs:
            c = r["config"]
            lines.setdefault((series(c), gate(c), runtime(c), c["gpus"], c.get("lanes", 1) > 1), []).append(r)
        for (label, g, rt, gpus, in_lanes), recs in sorted(lines.items(), key=str):
            pts = sorted((r["config"][x], y(r)) for r in recs if y(r) is not None)
            color, marker = STYLE.get(g, ("tab:purple", "D"))
            alpha, fill, _ = RUNTIME_LOOK.get(rt, RUNTIME_LOOK[DEFAULT_RUNTIME])
            if pts:         # a batch in lanes: dash-dotted, square markers, beside the same gates in one lane
                ax.plot(*zip(*pts), "-." if in_lanes else GPU_LINE.get(gpus, ":"), color=color,
                        marker="s" if in_lanes else marker, fillstyle=fill, label=f"{label}, {where(gpus)}",
                        alpha=alpha)
        for r in skipped or []:
            c = r["config"]
            if c.get("label", c["model"]) == head and all(c.get(k) == v for k, v in fixed.items()):
                ax.plot([c[x]], [0.04], "x", color="grey", markersize=10, transform=ax.get_xaxis_transform())
                ax.annotate(f"{gate(c)} skipped\n({r.get('skip_kind')})", (c[x], 0.08),
                            xycoords=("data", "axes fraction"), fontsize=7, ha="center", color="dimgrey")
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, alpha=0.6)
        ax.set_title(head + "".join(f", {k} {v}" for k, v in fixed.items()))
        ax.set_xlabel({"batch": "true batch size", "seq": "sequence length"}[x])
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ticks = sorted({r["config"][x] for r in rs} | {r["config"][x] for r in skipped or []
                                                       if r["config"].get("label", r["config"]["model"]) == head})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # outside the axes: a series near zero (the sigma build's tokens/s) hides under one inside
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(plt, fig, out / name)


def _batch_panels(results: list[dict]) -> list[tuple[str, dict, list[dict]]]:
    """(model, {seq}, records) for every model and sequence length measured at two or more
    true batch sizes."""
    panels = []
    for model, rs in by_model(results).items():
        for seq in sorted({r["config"]["seq"] for r in rs}):
            at = [r for r in rs if r["config"]["seq"] == seq]
            if len({r["config"]["batch"] for r in at}) >= 2:
                panels.append((model, {"seq": seq}, at))
    return panels


def throughput(plt, results: list[dict], out: Path) -> Made:
    panels = _batch_panels([r for r in measured(loopback(results)) if r["config"].get("padded", True)])
    if not panels:
        return [], ["throughput.png: no model and sequence length measured at two or more batch sizes"]
    return [_lines(plt, panels, out, "throughput.png", "Throughput against true batch size", "batch",
                   lambda r: r["online"]["tokens_per_second"], "tokens / s (online)")], []


def speedup(plt, results: list[dict], out: Path) -> Made:
    panels = _batch_panels(speedup_rows(loopback(results)))
    if not panels:
        return [], ["speedup.png: no batch sweep measured with both gate sets"]
    return [_lines(plt, panels, out, "speedup.png", "Speed-up of the fused gates (sigma time / fused time)",
                   "batch", lambda r: r["online"]["ratio"], "sigma / fused online time", reference=1.0)], []


def seq_sweep(plt, results: list[dict], out: Path) -> Made:
    rs = [r for r in loopback(results) if r["config"].get("padded", True)]
    panels = []
    for model, mrs in by_model(rs).items():
        ms = measured(mrs)
        if not ms:
            continue
        small = min(r["config"]["batch"] for r in ms)
        at = [r for r in ms if r["config"]["batch"] == small]
        if len({r["config"]["seq"] for r in at}) >= 2:
            panels.append((model, {"batch": small}, at))
    if not panels:
        return [], ["seq_sweep.png: no model measured at two or more sequence lengths"]
    skipped = [r for r in rs if "skipped" in r and r.get("skip_kind") != "refused"]
    return [_lines(plt, panels, out, "seq_sweep.png", "Online time against sequence length", "seq",
                   online, "online time per batch (s)", skipped=skipped)], []


# ---------------------------------------------------------------------- (3) padding ablation
def padding(plt, results: list[dict], out: Path) -> Made:
    made, notes = [], []
    rs = loopback(results)
    unpadded = [r for r in rs if not r["config"].get("padded", True)]
    if not unpadded:
        return [], ["padding_*.png: no padding ablation in the results (fusec bench --padding-ablation)"]
    for model, group in by_model(unpadded).items():
        pairs = []
        for u in measured(group):
            cu = u["config"]
            twin = [r for r in measured(rs) if r["config"].get("padded", True) and r["config"]["gates"] == cu["gates"]
                    and all(r["config"].get(k) == cu.get(k) for k in ("label", "model", "seq", "batch", "gpus"))]
            if twin:
                pairs.append((twin[0], u))
        if not pairs:
            why = "; ".join(f"{r['config']['name']}: {r.get('skip_kind')}" for r in group if "skipped" in r)
            notes.append(f"padding_{model}.png: no measured padded/unpadded pair ({why or 'padded run missing'})")
            continue
        padded_rec, unpadded_rec = pairs[0]
        c = padded_rec["config"]
        recs = [padded_rec, unpadded_rec]
        times, nbytes, colors = _scope_parts(plt, recs)
        labels = ["padded", "unpadded\n(INSECURE)"]
        fig, (a1, a2, a3) = _grid(plt, 3, f"{model}: padding ablation of the fused gates (seq {c['seq']}, batch "
                                          f"{c['batch']}, {where(c['gpus'])}, per batch)", width=5.0)
        _stack(a1, labels, times, colors, "s", 1.0, [online(r) for r in recs])
        a1.set_title("online time by scope")
        _stack(a2, labels, nbytes, {k: v for k, v in colors.items() if k != "rest"}, "MB", 1e6)
        a2.set_title("bytes sent (both parties)")
        # the unpadded build's key: the bytes its sets actually key (the dealer's count), not the
        # file's reservation of every mask-dependent field at its padded size
        keys = [(r["keygen"].get("per_set_parts") or {}).get("key_bytes_used",
                                                             r["keygen"]["per_batch"]["key_bytes_per_party"]) / 1e9
                for r in recs]
        a3.bar(labels, keys, color=["tab:blue", "tab:red"])
        for i, k in enumerate(keys):
            a3.annotate(f"{k:.3g} GB", (i, k), ha="center", va="bottom", fontsize=9)
        a3.set_title("key per party (unpadded: keyed)")
        a3.set_ylabel("GB")
        a3.grid(axis="y", alpha=0.3)
        _legend_below(fig, a1)
        made.append(_save(plt, fig, out / f"padding_{model}.png", layout=False))
    return made, notes


# ---------------------------------------------------------------------- (4) network settings
def _net_order(c: dict) -> tuple:
    n = c.get("net")
    return (0, 0.0, 0.0) if not n else (1, n["rtt_seconds"], -n["bandwidth_bps"])


def network(plt, results: list[dict], out: Path) -> Made:
    ms = [r for r in measured(results) if r["config"].get("padded", True)]
    panels = []
    for model, rs in by_model(ms).items():
        seq = base_seq(rs)
        at = [r for r in rs if r["config"]["seq"] == seq]
        batch = min(r["config"]["batch"] for r in at)
        at = [r for r in at if r["config"]["batch"] == batch]
        if len({net_name(r["config"]) for r in at}) >= 2:
            panels.append((model, seq, batch, at))
    if not panels:
        return [], ["network.png: fewer than two network settings measured (fusec bench --net none --net lan "
                    "--net wan)"]
    fig, axes = _grid(plt, len(panels), "Online time against the network (emulated on loopback)")
    for ax, (model, seq, batch, rs) in zip(axes, panels):
        nets = sorted({net_name(r["config"]): r["config"] for r in rs}.values(), key=_net_order)
        names = [net_name(c) for c in nets]
        bars = sorted({(series(r["config"]), gate(r["config"]), runtime(r["config"]), r["config"]["gpus"])
                       for r in rs}, key=str)
        width = 0.8 / len(bars)
        for j, (label, g, rt, gpus) in enumerate(bars):
            alpha, _, dots = RUNTIME_LOOK.get(rt, RUNTIME_LOOK[DEFAULT_RUNTIME])
            vals = [next((online(r) for r in rs if net_name(r["config"]) == n and series(r["config"]) == label
                          and r["config"]["gpus"] == gpus), 0.0) for n in names]
            xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, vals, width, color=STYLE.get(g, ("tab:purple", "D"))[0], label=f"{label}, {where(gpus)}",
                   hatch=("" if gpus in (None, 1) else "//") + dots, alpha=alpha)
        for i, n in enumerate(names):       # the ratio of one runtime's pair (launch plans first)
            at = [r for r in rs if net_name(r["config"]) == n]
            for rt in sorted({runtime(r["config"]) for r in at}, key=lambda t: t != "launch plans"):
                f = [online(r) for r in at if runtime(r["config"]) == rt and gate(r["config"]) == "fused"]
                s = [online(r) for r in at if runtime(r["config"]) == rt and gate(r["config"]) == "sigma"]
                if f and s and f[0]:
                    ax.annotate(f"{s[0] / f[0]:.2f}x", (i, max(f[0], s[0])), ha="center", va="bottom", fontsize=9)
                    break
        labels = [n if not c.get("net") else f"{n}\n{c['net']['bandwidth_bps'] / 1e9:g} Gbit/s, "
                  f"{c['net']['rtt_seconds'] * 1e3:g} ms" for n, c in zip(names, nets)]
        ax.set_xticks(range(len(names)), labels, fontsize=8)
        ax.set_title(f"{model}, seq {seq}, batch {batch} (above: sigma / fused)")
        ax.set_ylabel("online time per batch (s)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return [_save(plt, fig, out / "network.png")], []


PLOTS = (scope_bars, throughput, speedup, seq_sweep, padding, network)


def plot_all(paths: list[Path], out: Path) -> Made:
    """Every plot the results support, written under ``out``; and a note per plot skipped."""
    plt = _pyplot()
    results, _ = load_results(paths)
    out.mkdir(parents=True, exist_ok=True)
    made, notes = [], []
    for plot in PLOTS:
        m, n = plot(plt, results, out)
        made += m
        notes += n
    return made, notes


@click.command(name="python -m fusec.bench.plots")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), default="plots", show_default=True,
              help="folder for the PNG files")
def cli(files, out) -> None:
    """PNG plots from fusec bench JSON files (merged): per-scope bars, tokens/s and speed-up
    against batch, the sequence sweep, the padding ablation, online time per network."""
    made, notes = plot_all([Path(f) for f in files], Path(out))
    for p in made:
        click.echo(str(p))
    for n in notes:
        click.echo(f"skipped {n}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line (a file that is not bench output, no matplotlib)."""
    return run_command(cli, argv, "python -m fusec.bench.plots")


if __name__ == "__main__":
    sys.exit(main())
