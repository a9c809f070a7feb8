"""What ``fusec inspect`` and the compile report print: IR, per-gate costs, specs, ranges.

Costs are the gates' own ``cost()`` (tested against real keys and AES counters), summed
over elements: AES calls, bits sent per party. Key bytes per party are what the two key
files hold per inference set, averaged over the parties (``key_bytes``: each party's file
holds a 16-byte seed in place of its shares of the gates seeded to it,
runtime/seeded_shares.py; ``key_bytes_p0``/``_p1`` in the totals), fields packed to their
widths; ``key_bytes_unseeded`` is the full layout's (``keys.layout.json``, what a server
inflates each set into), and the cost model's key bits are given next to them. Rounds come
from the schedule.
With a true batch B (the manifest's ``batch``), everything is also given per inference
(divided by B; rounds are not divided).

One function, :func:`summary`, computes every number; the text report (:func:`report`)
and ``fusec inspect --json`` are two renderings of it, so they cannot disagree.

Gate classes are the profiler scopes (``passes/schedule.py`` ``scope_of``): ``linear``,
``rescale``, ``gelu``, ``softmax``, ``layernorm``, ``other`` (inputs, outputs, max trees
outside a block, free data movement). A class's *elements* are those of its gates that
cost something (key, AES or bits sent); free gates (adds, public scalars, public-weight
matmuls, data movement) are counted apart as ``free_elements``. Per-element figures divide
by the costed elements.

Ranges: for every secret tensor of the secure program, its calibrated interval
(``graph.meta["ranges"]``, from one float run on the calibration data) and its proven
interval (``graph.meta["proven"]``, from ``passes/ranges.py``; absent on builds made before
that pass), each turned into the ring bits it needs at the tensor's fixed-point scale by
``passes.ranges.width_bits``. In JSON an unbounded end is ``null``; so is a missing interval.
"""
from __future__ import annotations

import math
from collections import defaultdict

from fusec.ir import scalar_fn
from fusec.notes import grouped
from fusec.passes import ranges as ranges_pass
from fusec.runtime.seeded_shares import party_layout

CLASSES = ("linear", "rescale", "gelu", "softmax", "layernorm", "other")
_SUMMED = ("gates", "elements", "free_elements", "key_bytes", "key_bytes_unseeded", "key_bits_model", "aes_calls",
           "open_bits_per_party", "open_bits_both")


def _batch(build) -> int:
    return int(build.manifest.get("batch") or 1)


def _finite(v):
    """A JSON-safe float: None for inf/nan."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------- costs
def _gate_rows(build) -> list[dict]:
    """One row per gate: its class (profiler scope), kind and summed costs (per party)."""
    lay = build.gates.layout()
    stored = [party_layout(lay, p) for p in (0, 1)]     # what each party's key file holds (seeded shares)
    scope = build.scopes
    rows = []
    for n in build.gates.nodes:
        g, c = n.gate, n.gate.cost()
        E = int(g.elements)
        sent = c.open_bits * E
        # every open is sent by both parties, except a private input's (its owner alone sends x + r)
        both = sent if g.kind == "input" else 2 * sent
        # the compiler's choice of lookup (passes/pricing.py) shows as part of the kind
        lookup = getattr(g, "lookup", None)
        kind = f"{g.kind} ({lookup})" if isinstance(lookup, str) else g.kind
        rows.append({"id": n.id, "class": scope.get(n.id, "other"), "kind": kind, "elements": E,
                     "key_bytes": (stored[0].slot(n.id).nbytes + stored[1].slot(n.id).nbytes) / 2
                     if n.id in lay else 0,
                     "key_bytes_unseeded": lay.slot(n.id).nbytes if n.id in lay else 0,
                     "key_bits_model": c.key_bits * E, "aes_calls": c.aes * E,
                     "open_bits_per_party": sent, "open_bits_both": both,
                     "costed": bool(c.key_bits or c.aes or c.open_bits)})
    return rows


def _add(acc: dict, r: dict) -> None:
    acc["gates"] += 1
    if r["costed"]:
        acc["elements"] += r["elements"]
    else:
        acc["free_elements"] += r["elements"]
    for k in ("key_bytes", "key_bytes_unseeded", "key_bits_model", "aes_calls", "open_bits_per_party",
              "open_bits_both"):
        acc[k] += r[k]


def _finish(acc: dict) -> dict:
    """Bytes sent (exact: bits / 8) and per-element figures of a summed row."""
    acc["bytes_sent_per_party"] = acc["open_bits_per_party"] / 8
    acc["bytes_sent_both"] = acc["open_bits_both"] / 8
    E = acc["elements"]
    acc["per_element"] = {"key_bytes": acc["key_bytes"] / E if E else None,
                          "aes_calls": acc["aes_calls"] / E if E else None,
                          "bytes_sent_per_party": acc["bytes_sent_per_party"] / E if E else None}
    return acc


def _empty() -> dict:
    return {k: 0 for k in _SUMMED}


def costs(build) -> dict:
    """Totals, per-inference shares, per gate class and per (class, kind): see the module doc."""
    rows = _gate_rows(build)
    B = _batch(build)
    tot, by_class, by_kind = _empty(), {c: _empty() for c in CLASSES}, defaultdict(_empty)
    for r in rows:
        _add(tot, r)
        _add(by_class.setdefault(r["class"], _empty()), r)
        _add(by_kind[(r["class"], r["kind"])], r)
    tot = _finish(tot)
    tot["rounds"] = max((s.end for s in build.steps), default=0)
    crit, per_gate = _critical_path(build, rows)
    tot["key_bytes_model"] = tot["key_bits_model"] / 8
    lay = build.gates.layout()
    tot["key_bytes_p0"], tot["key_bytes_p1"] = (party_layout(lay, p).set_nbytes for p in (0, 1))
    per_inf = {k: tot[k] / B for k in ("key_bytes", "key_bytes_unseeded", "key_bytes_model", "aes_calls",
                                       "bytes_sent_per_party", "bytes_sent_both")}
    per_inf["rounds"] = tot["rounds"]
    classes = []
    for c, acc in by_class.items():
        acc = _finish(acc)
        acc["key_bytes_model"] = acc["key_bits_model"] / 8
        acc["rounds_critical_path"] = crit.get(c, 0)
        acc["rounds_per_gate"] = per_gate.get(c, 0)
        classes.append({"class": c, **acc})
    kinds = []
    for (c, k), acc in sorted(by_kind.items(), key=lambda kv: (-kv[1]["key_bytes"], kv[0])):
        acc = _finish(acc)
        kinds.append({"class": c, "kind": k, **acc})
    return {"batch": B, "totals": tot, "per_inference": per_inf, "by_class": classes, "by_kind": kinds}


def _critical_path(build, rows: list[dict]) -> tuple[dict, dict]:
    """Rounds by class: along one critical path of the schedule (they add up to the total),
    and the most rounds one gate of the class takes."""
    steps = {s.id: s for s in build.steps}
    cls = {r["id"]: r["class"] for r in rows}
    per_gate: dict = defaultdict(int)
    for s in build.steps:
        per_gate[cls.get(s.id, "other")] = max(per_gate[cls.get(s.id, "other")], s.end - s.start)
    crit: dict = defaultdict(int)
    cur = max(build.steps, key=lambda s: s.end, default=None)
    while cur is not None and cur.end > 0:
        crit[cls.get(cur.id, "other")] += cur.end - cur.start
        cur = next((steps[i] for i in cur.inputs if i in steps and steps[i].end == cur.start and steps[i].end > 0),
                   None)
    return dict(crit), dict(per_gate)


def totals(build) -> dict:
    """The headline numbers (``fusec compile`` prints them)."""
    t = costs(build)["totals"]
    return {"gates": t["gates"], "rounds": t["rounds"], "key_bytes": t["key_bytes"], "aes_calls": t["aes_calls"],
            "bytes_sent_per_party": t["open_bits_per_party"] // 8}


def _fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def cost_table(build, c: dict | None = None) -> str:
    c = c or costs(build)
    lines = ["| scope | gate kind | gates | elements | key bytes | AES calls | bytes sent/party |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in c["by_kind"]:
        lines.append(f"| {r['class']} | {r['kind']} | {r['gates']} | {r['elements'] + r['free_elements']:,} | "
                     f"{r['key_bytes']:,.0f} | {r['aes_calls']:,} | {_fmt(r['bytes_sent_per_party'])} |")
    return "\n".join(lines)


def class_table(c: dict) -> str:
    B = c["batch"]
    lines = ["| class | gates | elements | key bytes | AES calls | bytes sent/party | rounds (critical path) | "
             "rounds/gate | key B/elem | AES/elem | sent B/elem | key bytes/inference |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in c["by_class"]:
        pe = r["per_element"]
        lines.append(f"| {r['class']} | {r['gates']} | {r['elements']:,} | {r['key_bytes']:,.0f} | "
                     f"{r['aes_calls']:,} | "
                     f"{_fmt(r['bytes_sent_per_party'])} | {r['rounds_critical_path']} | {r['rounds_per_gate']} | "
                     f"{_fmt(pe['key_bytes'], 1)} | {_fmt(pe['aes_calls'], 1)} | "
                     f"{_fmt(pe['bytes_sent_per_party'], 2)} | {_fmt(r['key_bytes'] / B)} |")
    t = c["totals"]
    lines.append(f"| total | {t['gates']} | {t['elements']:,} | {t['key_bytes']:,.0f} | {t['aes_calls']:,} | "
                 f"{_fmt(t['bytes_sent_per_party'])} | {t['rounds']} | | {_fmt(t['per_element']['key_bytes'], 1)} | "
                 f"{_fmt(t['per_element']['aes_calls'], 1)} | {_fmt(t['per_element']['bytes_sent_per_party'], 2)} | "
                 f"{_fmt(t['key_bytes'] / B)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- specs
def spec_list(build) -> list[dict]:
    """Distinct scalar specs (SIGMA constructions by label), with how many gates use each."""
    seen: dict = {}
    for node in build.ir.nodes():
        if node.op != "Scalar":
            continue
        s = node.attrs.get("spec")
        impl = node.attrs.get("impl", "fused")
        label = node.attrs.get("label")
        if impl == "sigma" or s is None:
            key = (label, "sigma")
            d = {"name": label, "impl": "sigma", "label": label}
        else:
            key = (s["name"], s["f_in"], s["f_out"], tuple(s["breakpoints"]))
            lo, hi = s.get("fit_range", (0, 0))
            d = {"name": s["name"], "impl": impl, "label": label, "fn": scalar_fn.describe(node.attrs["fn"]),
                 "pieces": len(s["coeffs"]), "degree": max(len(c) for c in s["coeffs"]) - 1,
                 "f_in": s["f_in"], "f_out": s["f_out"], "max_error_ulps": _finite(s.get("max_error_ulps")),
                 "fit_range": [_finite(lo), _finite(hi)]}
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = {**d, "count": 1}
    return list(seen.values())


def specs(build, lst: list[dict] | None = None) -> str:
    lst = spec_list(build) if lst is None else lst
    out = []
    for d in lst:
        if d["impl"] == "sigma":
            line = f"{d['name']}: SIGMA-style construction"
        else:
            lo, hi = d["fit_range"]
            err = d["max_error_ulps"]
            line = (f"{d['name']} = {d['fn']}: {d['pieces']} pieces (fitted on [{_g(lo)}, {_g(hi)}]), degree "
                    f"{d['degree']}, f_in {d['f_in']} -> f_out {d['f_out']}, max error "
                    f"{'nan' if err is None else f'{err:.2f}'} ulps")
        out.append(f"- {line} (x{d['count']})")
    return "\n".join(out) or "(no scalar gates)"


def _g(v) -> str:
    return "-" if v is None else f"{v:g}"


# ---------------------------------------------------------------------- ranges
def _bits(iv, scale):
    if iv is None or scale is None:
        return None
    from fusec.passes.ranges import width_bits  # noqa: PLC0415
    lo, hi = (float("-inf") if v is None else float(v) for v in iv)
    if math.isnan(lo) or math.isnan(hi):
        return None
    return width_bits(lo, hi, int(scale))


def _interval(v):
    if v is None:
        return None
    lo, hi = v
    return [None if lo is None or (isinstance(lo, float) and math.isinf(lo)) else float(lo),
            None if hi is None or (isinstance(hi, float) and math.isinf(hi)) else float(hi)]


def secret_tensors(build) -> list[str]:
    """The secret tensors of the secure program (those that have a wire), in program order."""
    wire = build.low.wire
    out, seen = [], set()
    for node in build.ir.nodes():
        for t in node.outputs:
            if t and t in wire and t not in seen and build.ir.info(t).visibility == "secret":
                seen.add(t)
                out.append(t)
    return out


def ranges(build) -> dict:
    """Per secret tensor: shape, scale, calibrated and proven interval, bits each needs."""
    g = build.ir
    cal = g.meta.get("ranges") or {}
    proven = g.meta.get("proven")
    rows = []
    for t in secret_tensors(build):
        info = g.info(t)
        c = _interval(cal.get(t))
        # tensors later passes added (rescales) have their input's proven interval
        p = _interval(list(ranges_pass.proven(g, t))) if proven is not None else None
        rows.append({"tensor": t, "shape": list(info.shape), "elements": int(math.prod(info.shape)),
                     "scale": info.scale, "calibrated": c, "proven": p,
                     "bits_calibrated": _bits(c, info.scale), "bits_proven": _bits(p, info.scale)})

    def hist(key, has):
        h: dict = defaultdict(lambda: [0, 0])
        for r in rows:
            if r[has] is None:
                continue
            b = r[key]
            slot = h["unbounded" if b is None else str(b)]
            slot[0] += 1
            slot[1] += r["elements"]
        order = sorted((k for k in h if k != "unbounded"), key=int) + (["unbounded"] if "unbounded" in h else [])
        return {k: {"tensors": h[k][0], "elements": h[k][1]} for k in order}

    def widest(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return max(vals) if vals else None

    summary = {"ring_bits": build.opts.bits, "secret_tensors": len(rows),
               "with_calibrated": sum(r["calibrated"] is not None for r in rows),
               "proven_available": proven is not None,
               "with_proven": sum(r["proven"] is not None for r in rows),
               "proven_unbounded": sum(r["proven"] is not None and r["bits_proven"] is None for r in rows),
               "proven_wider_than_ring": sum((r["bits_proven"] or 0) > build.opts.bits for r in rows),
               "calibrated_wider_than_ring": sum((r["bits_calibrated"] or 0) > build.opts.bits for r in rows),
               "max_bits_calibrated": widest("bits_calibrated"), "max_bits_proven": widest("bits_proven"),
               "bits_calibrated_histogram": hist("bits_calibrated", "calibrated"),
               "bits_proven_histogram": hist("bits_proven", "proven")}
    return {"summary": summary, "tensors": rows}


def _rank(r) -> tuple:
    """Widest first: unbounded proven ranges, then by proven bits, then by calibrated bits."""
    p, c = r["bits_proven"], r["bits_calibrated"]
    unb = r["proven"] is not None and p is None
    return (not unb, -(p if p is not None else -1), -(c if c is not None else -1), r["tensor"])


def _iv(iv) -> str:
    if iv is None:
        return "-"
    lo, hi = ("-inf" if iv[0] is None else f"{iv[0]:.4g}"), ("inf" if iv[1] is None else f"{iv[1]:.4g}")
    return f"[{lo}, {hi}]"


def _b(v) -> str:
    return "-" if v is None else str(v)


def ranges_text(rng: dict, top: int | None = 10) -> str:
    """Summary lines, then one line per tensor: all (``top=None``) or the ``top`` widest."""
    s = rng["summary"]
    lines = [f"secret tensors: {s['secret_tensors']} ({s['with_calibrated']} calibrated, "
             + (f"{s['with_proven']} proven, {s['proven_unbounded']} of them unbounded)" if s["proven_available"]
                else "proven ranges: - (passes/ranges.py did not run on this build))")
             + f"; ring n = {s['ring_bits']}"]

    def hist_line(name, h):
        if not h:
            return f"{name} bits needed: -"
        return f"{name} bits needed (bits: tensors): " + ", ".join(f"{k}: {v['tensors']}" for k, v in h.items())

    lines.append(f"widest: calibrated {_b(s['max_bits_calibrated'])} bits, proven {_b(s['max_bits_proven'])} bits; "
                 f"wider than the ring: {s['calibrated_wider_than_ring']} calibrated, "
                 + (f"{s['proven_wider_than_ring']} proven" if s["proven_available"] else "- proven"))
    lines.append(hist_line("calibrated", s["bits_calibrated_histogram"]))
    lines.append(hist_line("proven", s["bits_proven_histogram"]))
    rows = rng["tensors"]
    shown = rows if top is None else sorted(rows, key=_rank)[:top]
    if top is not None:
        lines.append(f"the {len(shown)} widest (all {len(rows)}: fusec inspect --ranges):")
    hdr = ("bits cal/prv", "scale", "calibrated", "proven", "shape", "tensor")
    table = [hdr] + [(f"{_b(r['bits_calibrated'])}/{_b(r['bits_proven'])}", _b(r["scale"]), _iv(r["calibrated"]),
                      _iv(r["proven"]), "x".join(map(str, r["shape"])) or "scalar", r["tensor"]) for r in shown]
    w = [max(len(row[i]) for row in table) for i in range(len(hdr) - 1)]
    for row in table:
        lines.append("  ".join(row[i].rjust(w[i]) if i < 2 else row[i].ljust(w[i]) for i in range(len(w)))
                     + "  " + row[-1])
    return "\n".join(lines)


# ---------------------------------------------------------------------- split, whole report
def split(build) -> str:
    g = build.ir
    client = [n for n in g.nodes() if n.attrs.get("at") == "client"]
    shares = [n for n in g.nodes() if n.op == "Share"]
    onnx_ops = sorted({n.attrs.get("onnx_op", "?") for n in client if n.op == "OnnxNode"})
    lines = [f"input owner runs {len(client)} node(s) in plaintext before sharing: "
             + (", ".join(f"{n.op}:{n.name}" for n in client[:12]) + (" ..." if len(client) > 12 else "")
                if client else "none")]
    if onnx_ops:
        lines.append(f"  of which ONNX ops without a secure lowering, run by the owner with onnxruntime: "
                     f"{', '.join(onnx_ops)}")
    contract = g.meta.get("owner_contract") or {}
    for n in shares:
        how = "public: zero mask, both servers see it" if n.attrs.get("role") == "public" else "masked"
        if n.inputs[0] in contract:
            lo, hi = contract[n.inputs[0]]
            how += f"; owner checks it in [{lo:.4g}, {hi:.4g}]"
        lines.append(f"shared: {n.inputs[0]} {list(g.info(n.outputs[0]).shape)} (owner P{n.attrs.get('owner', 1)}, "
                     f"{how})")
    roles = g.meta.get("input_roles")
    if roles:
        lines.append("input roles (--input-role NAME=private|public|constant):")
        lines += [f"  {_role_line(name, roles[name])}" for name in sorted(roles)]
    else:                                   # builds from before input roles
        for name, how in g.meta.get("public_inputs", {}).items():
            lines.append(f"public input fixed at compile time: {name} = {how.get('value')} ({how.get('source')}; "
                         f"override with --public-input {name}=file.npy)")
    return "\n".join(lines)


def _role_line(name: str, r: dict) -> str:
    shape = "x".join(map(str, r.get("shape", []))) or "scalar"
    what = r["role"]
    if what == "constant":
        what += f" = {r.get('value_desc')} ({r.get('source')})"
    if r.get("unused"):
        what += ", unused by the output"
    kind = f" {r['kind']}" if r.get("kind") and r["kind"] != "data" else ""
    return f"{name} [{shape} {r.get('dtype')}{kind}]: {what}; leaks {r.get('leaks')}"


def summary(build) -> dict:
    """Every number ``fusec inspect`` prints, machine-readable (``fusec inspect --json``)."""
    c = costs(build)
    m = build.manifest
    return {"build": str(build.path), "flags": build.opts.as_dict(), "batch": c["batch"], "seq": m.get("seq"),
            "model": m.get("model"), "insecure": bool(m.get("insecure")),
            "totals": c["totals"], "per_inference": c["per_inference"], "by_class": c["by_class"],
            "by_kind": c["by_kind"], "specs": spec_list(build), "ranges": ranges(build),
            "notes": list(build.ir.meta.get("notes", []))}


def report(build, all_ranges: bool = False, top: int = 10, data: dict | None = None) -> str:
    d = data or summary(build)
    t, p, B = d["totals"], d["per_inference"], d["batch"]
    lines = [f"fusec build {build.path}", f"flags: {d['flags']}",
             f"gates: {t['gates']}, rounds: {t['rounds']}",
             f"key per party: {t['key_bytes']:,.0f} bytes ({p['key_bytes']:,.0f} per inference, batch {B}; "
             f"P0 {t['key_bytes_p0']:,}, P1 {t['key_bytes_p1']:,}); {t['key_bytes_unseeded']:,} without seeded shares; "
             f"cost model {t['key_bytes_model']:,.0f}",
             f"online bytes sent per party: {t['bytes_sent_per_party']:,.0f} "
             f"({p['bytes_sent_per_party']:,.0f} per inference); both parties: {t['bytes_sent_both']:,.0f} "
             f"({p['bytes_sent_both']:,.0f} per inference)",
             f"AES calls per party: {t['aes_calls']:,} ({p['aes_calls']:,.0f} per inference)",
             "", "## split", split(build), "", "## scalar gates", specs(build, d["specs"]),
             "", "## cost by gate class (per party; per element = over the elements of gates that cost something)",
             class_table(d),
             "", "## cost by scope and gate kind (per party)", cost_table(build, d),
             "", "## ranges (calibrated vs proven; bits at the tensor's scale)",
             ranges_text(d["ranges"], None if all_ranges else top)]
    if d["notes"]:
        lines += ["", "## notes"] + [f"- {n}" for n in grouped(d["notes"])]
    return "\n".join(lines) + "\n"
