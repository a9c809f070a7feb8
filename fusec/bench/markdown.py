"""The bench's JSON as markdown for BENCHMARKS.md: date, machine, exact command, method, one
row per configuration (skips with their reasons), fused/SIGMA ratios and per-scope tables.
``bench/table.py`` and ``fusec bench --markdown`` both use :func:`render_markdown`."""
from __future__ import annotations

from fusec.bench.merge import scope_metric
from fusec.bench.plan import stripes_of
from fusec.bench.util import gb, secs, unique


def _machine_line(m: dict) -> str:
    gpus = m.get("gpus") or []
    where = (f"{len(gpus)} x {gpus[0]}" if gpus and len(set(gpus)) == 1 else ", ".join(gpus)) if gpus else "no GPU"
    where += " under CUDA MPS (the parties' kernels share the card at once)" if m.get("cuda_mps") else ""
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    vers = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    return f"{where}; CPU {m.get('cpu')}, {m.get('cores')} cores{mem}; {vers}"


def _ran(doc: dict) -> list[dict]:
    return [r for r in doc["results"] if "online" in r]


def net_name(c: dict) -> str | None:
    """The emulated network of a configuration (``--net``), None for plain loopback."""
    return (c.get("net") or {}).get("name")


def _shaped(doc: dict) -> bool:
    return any(net_name(r["config"]) for r in doc["results"])


def _row(rec: dict, shaped: bool = False) -> list[str]:
    c = rec["config"]
    gates = c["gates"] if c.get("padded", True) else f"{c['gates']} (no padding, INSECURE)"
    if rec.get("online", {}).get("keys_unpacked_late"):
        gates += " \u2020"
    if rec.get("online", {}).get("plan_refused"):
        gates += " \u2021"
    head = [c.get("label", c["model"]), str(c["seq"]), _batch_cell(c),
            gates, "-" if c["gpus"] is None else str(c["gpus"])] + ([net_name(c) or "-"] if shaped else [])
    if "skipped" in rec:    # what it would have taken, where the compile got that far
        comp, batch = rec.get("compile") or {}, max(int(c.get("batch") or 1), 1)
        rounds = comp.get("rounds_planned")
        key = comp.get("key_bytes_per_set")
        return head + [f"skipped ({rec.get('skip_kind')})"] + ["-"] * 3 + \
            ["-" if rounds is None else f"{rounds:.0f}", "-", "-" if key is None else gb(key / batch), "-"]
    on, kg = rec["online"], rec["keygen"]
    return head + [secs(on["per_batch"]["online_seconds"]), _spread(on), secs(on["per_inference"]["online_seconds"]),
                   gb(on["per_inference"]["bytes_sent"]), f"{on['per_batch']['rounds']:.0f}",
                   secs(kg["per_inference"]["seconds"]), gb(kg["per_inference"]["key_bytes_per_party"]),
                   f"{on['tokens_per_second']:,.1f}"]


def _batch_cell(config: dict) -> str:
    """The batch, and how it ran when in lanes: "8 (2 x 4)" (fusec/bench/lanes.py)."""
    return _batch_text(config["batch"], config.get("lanes", 1))


def _batch_text(batch: int, lanes: int) -> str:
    return str(batch) + (f" ({lanes} x {batch // lanes})" if lanes > 1 else "")


def _spread(online: dict) -> str:
    """Range of the timed steps' online times around their median, e.g. "-3% / +5%":
    how much to trust a row (other load on the machine shows up here)."""
    times = [s["online_seconds"] for s in online["steps"] if not s.get("warmup")]
    med = online["per_step"]["online_seconds"]
    if not times or not med:
        return "-"
    return f"{(min(times) / med - 1) * 100:+.0f}% / {(max(times) / med - 1) * 100:+.0f}%"


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _pairs(doc: dict) -> dict[tuple, dict[str, dict]]:
    """(model label, seq, batch, gpus, network, lanes) -> {gate label: record} over the measured records."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in _ran(doc):
        c = r["config"]
        label = c["gates"] if c.get("padded", True) else f"{c['gates']}-unpadded"
        out.setdefault((c.get("label", c["model"]), c["seq"], c["batch"], c["gpus"], net_name(c), c.get("lanes", 1)),
                       {})[label] = r
    return out


def _speedups(doc: dict) -> list[str]:
    rows, shaped = [], _shaped(doc)
    for (model, seq, batch, gpus, net, lanes), by in _pairs(doc).items():
        if "fused" in by and "sigma" in by:
            f, s = by["fused"], by["sigma"]
            ratio = lambda get: f"{get(s) / get(f):.2f}x" if get(f) else "-"  # noqa: E731
            rows.append([model, str(seq), _batch_text(batch, lanes), "-" if gpus is None else str(gpus),
                         *([net or "-"] if shaped else []),
                         secs(f["online"]["per_batch"]["online_seconds"]),
                         secs(s["online"]["per_batch"]["online_seconds"]),
                         ratio(lambda r: r["online"]["per_batch"]["online_seconds"]),
                         ratio(lambda r: r["online"]["per_batch"]["bytes_sent"]),
                         ratio(lambda r: r["online"]["per_batch"]["rounds"]),
                         ratio(lambda r: r["keygen"]["per_batch"]["key_bytes_per_party"])])
    if not rows:
        return []
    return ["", "Fused against SIGMA-style gates (ratio = sigma / fused; above 1 means fused is better):", "",
            *table(["model", "seq", "batch", "GPUs", *(["network"] if shaped else []), "online fused",
                    "online sigma", "time", "bytes", "rounds", "key"], "lrrr" + "l" * shaped + "rrrrrr", rows)]


def _change(a, b) -> str:
    """Relative change from a (padded) to b (unpadded)."""
    return f"{(b / a - 1) * 100:+.1f}%" if a else "-"


def _padding_ablation(doc: dict) -> list[str]:
    """Padded (the secure build) against unpadded (``--insecure-mask-dependent-shapes``), per
    configuration: online time, bytes, rounds, key, and the change of every scope but
    ``linear`` (the nonlinear gates' scopes). Loudly INSECURE: the unpadded build's key shapes
    depend on its masks. Its key is given twice: the layout's reservation (each
    mask-dependent field at its padded size, what the file holds) and the bytes its sets
    actually key (the dealer's count), which is the unpadded construction's real size."""
    rows, scope_lines, same, shaped = [], [], [], _shaped(doc)
    for (model, seq, batch, gpus, net, lanes), by in _pairs(doc).items():
        if "fused" not in by or "fused-unpadded" not in by:
            continue
        p, u = by["fused"], by["fused-unpadded"]
        on = lambda r, k: r["online"]["per_batch"][k]  # noqa: E731
        key_p = p["keygen"]["per_batch"]["key_bytes_per_party"]
        key_res = u["keygen"]["per_batch"]["key_bytes_per_party"]
        key_used = (u["keygen"].get("per_set_parts") or {}).get("key_bytes_used")
        where = ["-" if gpus is None else str(gpus), *([net or "-"] if shaped else [])]
        if key_used == key_p and on(p, "bytes_sent") == on(u, "bytes_sent") and on(p, "rounds") == on(u, "rounds"):
            same.append(f"{model} seq {seq} batch {batch}")
        rows.append([model, str(seq), _batch_text(batch, lanes), *where,
                     secs(on(p, "online_seconds")), secs(on(u, "online_seconds")),
                     _change(on(p, "online_seconds"), on(u, "online_seconds")),
                     gb(on(p, "bytes_sent")), gb(on(u, "bytes_sent")), _change(on(p, "bytes_sent"), on(u, "bytes_sent")),
                     f"{on(p, 'rounds'):.0f} / {on(u, 'rounds'):.0f}",
                     gb(key_p), gb(key_res), gb(key_used) if key_used is not None else "-",
                     _change(key_p, key_used) if key_used is not None else "-"])
        sp, su = p["online"]["scopes_per_batch"], u["online"]["scopes_per_batch"]
        srows = [[sc, secs(scope_metric(sp.get(sc, {}), "seconds")), secs(scope_metric(su.get(sc, {}), "seconds")),
                  _change(scope_metric(sp.get(sc, {}), "seconds"), scope_metric(su.get(sc, {}), "seconds")),
                  gb(scope_metric(sp.get(sc, {}), "bytes")), gb(scope_metric(su.get(sc, {}), "bytes")),
                  _change(scope_metric(sp.get(sc, {}), "bytes"), scope_metric(su.get(sc, {}), "bytes"))]
                 for sc in unique([*sp, *su]) if sc != "linear"]
        if srows:
            scope_lines += ["", f"Padding ablation by scope (all but `linear`), {model}, seq {seq}, batch {batch}, "
                                f"{'CPU' if gpus is None else f'{gpus} GPU(s)'}{f', network {net}' if net else ''} "
                                f"(per batch; unpadded = INSECURE):", "",
                            *table(["scope", "padded time", "unpadded time", "change", "padded bytes",
                                    "unpadded bytes", "change"], "lrrrrrr", srows)]
    if not rows:
        return []
    if same:
        scope_lines += ["", f"Same bytes, rounds and keyed key in {', '.join(same)}: the two builds evaluate the same "
                            "gates (no mask-dependent shape in them), so a time difference there is measurement "
                            "noise (see the steps' min / max)."]
    return ["", "**Padding ablation: the unpadded build is INSECURE** (`--insecure-mask-dependent-shapes`: its key "
                "shapes depend on the masks and reveal them; measured only to price mask-independent padding, never "
                "deploy). Per batch, per party for keys. *key padded*: the secure build's key set. *key unpadded, "
                "reserved*: what its key file holds per set (each mask-dependent field at its padded size, so a set "
                "has a fixed size; plus an 8-byte count per such gate). *key unpadded, keyed*: the bytes its sets "
                "actually key (the dealer's count, averaged over the sets): the unpadded construction's size, which "
                "the change column compares with the padded key. Only the piece-table lookup has mask-dependent "
                "shapes; the fused gates' packed and shifted lookups compare in x-space, so their shapes never "
                "depend on the masks and padding costs them nothing.", "",
            *table(["model", "seq", "batch", "GPUs", *(["network"] if shaped else []), "online padded",
                    "online unpadded", "change", "bytes padded", "bytes unpadded", "change",
                    "rounds padded / unpadded", "key padded", "key unpadded, reserved", "key unpadded, keyed",
                    "change"], "lrrr" + "l" * shaped + "r" * 11, rows), *scope_lines]


def _scope_rows(by: dict[str, dict], times: list[str]) -> list[list[str]]:
    """Rows of a per-scope table: every time metric and the bytes, per gate set; then what
    no scope accounts for, and the totals."""
    labels = list(by)
    sc_of = {lab: by[lab]["online"]["scopes_per_batch"] for lab in labels}
    scopes = unique(sc for lab in labels for sc in sc_of[lab])
    rows = [[sc] + [cell for lab in labels for cell in (
        *(secs(sc_of[lab].get(sc, {}).get(t)) for t in times), gb(scope_metric(sc_of[lab].get(sc, {}), "bytes")))]
        for sc in scopes]
    rest = {lab: by[lab]["online"]["per_batch"]["online_seconds"] - sum(
        scope_metric(m, "seconds") for m in sc_of[lab].values()) for lab in labels}
    rows.append(["rest (in no scope)"] + [cell for lab in labels
                                          for cell in (secs(max(0.0, rest[lab])), *[""] * len(times))])
    rows.append(["**online (total)**"] + [cell for lab in labels for cell in (
        secs(by[lab]["online"]["per_batch"]["online_seconds"]), *[""] * (len(times) - 1),
        gb(by[lab]["online"]["per_batch"]["bytes_sent"]))])
    return rows


def _scope_tables(doc: dict) -> list[str]:
    """Per model and GPU count, one table at the smallest batch and the most common
    sequence length (the configuration the per-scope plot shows). Time columns are
    whatever per-scope seconds the runtime reports (compute, wire, ...)."""
    out = []
    pairs = _pairs(doc)
    seqs = [seq for (_, seq, _, _, _, _) in pairs]
    for (model, seq, batch, gpus, net, lanes), by in pairs.items():
        smallest = min(b for (m, s, b, g, n, _) in pairs if (m, s, g, n) == (model, seq, gpus, net))
        if len(by) < 2 or batch != smallest or seq != max(set(seqs), key=seqs.count):
            continue
        times = sorted({k for r in by.values() for m in r["online"]["scopes_per_batch"].values()
                        for k in m if "seconds" in k})
        names = [t.removesuffix("_seconds") for t in times] + ["bytes"]
        where = ("CPU" if gpus is None else f"{gpus} GPU(s)") + (f", network {net} (emulated)" if net else "")
        out += ["", f"By scope, {model}, seq {seq}, batch {_batch_text(batch, lanes)}, {where} (per batch; each time "
                    f"is the slower party's, so they may add up to a little more than the online time; bytes: both "
                    f"parties):", "",
                *table(["scope"] + [f"{lab} {n}" for lab in by for n in names],
                        "l" + "r" * len(names) * len(by), _scope_rows(by, times))]
    return out


def _phase_table(doc: dict) -> list[str]:
    """Where a round's time goes, per configuration and party (runtime/protocol.py's round
    phases, per batch): *step* advances the gates (Python and kernel launches), *pack* is the
    pack kernel and the copy to the host (it waits for the device's queued work, so the
    kernels' time shows here), *wire* is the exchange (including waiting for the peer),
    *unpack* the copy back and the unpack kernel."""
    rows = []
    for r in _ran(doc):
        rounds = r["online"]["per_batch"].get("rounds") or 0
        for party, ph in r["online"].get("round_phases_per_batch", {}).items():
            total = sum(ph.values())
            cells = [f"{ph.get(k, 0) * 1e3:.0f} ms" for k in ("step", "pack", "wire", "unpack")]
            rows.append([r["config"]["name"], party, *cells, f"{total * 1e3:.0f} ms",
                         f"{total / rounds * 1e6:.0f} us" if rounds else "-"])
    if not rows:
        return []
    return ["", "Round phases per batch (step: gates' Python and launches; pack: kernel + copy to host, waits for "
                "the device's queued work; wire: exchange incl. waiting for the peer; unpack: copy back + kernel):",
            "", *table(["configuration", "party", "step", "pack", "wire", "unpack", "total", "per round"],
                       "llrrrrrr", rows)]


def _key_load_table(doc: dict) -> list[str]:
    """What it takes to get one key set ready, outside the online clock (runtime/party.py,
    the slower party, median per set): the hello, the claim (file: read, checksum, ledger;
    ``--keys stream``: the dealer making and sending it), staging to the device, and the
    rate over a party's key bytes."""
    rows = []
    for r in _ran(doc):
        pb = r["online"]["per_batch"]
        total = pb.get("key_load_seconds")
        nbytes = r.get("keygen", {}).get("per_batch", {}).get("key_bytes_per_party")
        if not total:
            continue
        cells = [f"{(pb.get(k) or 0) * 1e3:.0f} ms" for k in ("hello_seconds", "claim_seconds", "stage_seconds")]
        rows.append([r["config"]["name"], *cells, f"{total * 1e3:.0f} ms",
                     f"{nbytes / total / 1e9:.2f} GB/s" if nbytes else "-"])
    if not rows:
        return []
    return ["", "Key load per key set, outside the online clock (hello; claim: read + checksum + ledger, or the "
                "dealer's stream; stage: copy to the device and unpack):",
            "", *table(["configuration", "hello", "claim", "stage", "total", "key bytes / total"], "lrrrrr", rows)]


def _late_keys_note(doc: dict) -> list[str]:
    """The footnote of the configurations marked \u2020 (keys unpacked inside the clock)."""
    online = [r.get("online", {}) for r in doc["results"]]
    if not any(o.get("keys_unpacked_late") for o in online):
        return []
    graphs = "--cuda-graphs" in doc["settings"].get("party_argv", [])
    note = ("\u2020 Each gate's keys were unpacked when the gate started, inside the online clock: "
            + ("launch plans read every set from one device buffer and unpack it inside the recorded graphs."
               if graphs else "the unpacked set did not fit in device memory next to its packed bytes (and "
               "the peer's, on a shared card)."))
    if any(o.get("seeded_shares_late") for o in online):
        note += (" The set stayed in its stored layout on the card (inflated, it and the online phase's room did "
                 "not fit), so each gate regenerated its seeded shares from their seeds there too.")
    return ["", note]


def _network_lines(doc: dict) -> list[str]:
    """Shaped runs, loudly: which emulated link each network name stands for."""
    nets = {net_name(r["config"]): r["config"]["net"] for r in doc["results"] if net_name(r["config"])}
    if not nets:
        return []
    what = "; ".join(n.get("description") or name for name, n in nets.items())
    return [f"- **Network emulated** (column *network*; `-`: plain loopback): {what}. Both parties' channels "
            f"hold every frame until send time + queueing + size / bandwidth + RTT / 2 (runtime/shaping.py), "
            f"per direction; the parties still run on one machine."]


def render_markdown(doc: dict) -> str:
    """The JSON as markdown for BENCHMARKS.md: date, machine, exact command, method, one
    row per configuration (skips with their reasons), fused/sigma ratios, per-scope tables."""
    from fusec.bench import amdahl  # noqa: PLC0415  (here: `python -m fusec.bench.amdahl` must import it first)

    st = doc["settings"]
    shaped = _shaped(doc)
    rows = [_row(r, shaped) for r in doc["results"]]
    lines = [f"## End to end: `fusec bench` ({doc['date'][:10]})", "",
             f"- Date: {doc['date']}",
             f"- Machine: {_machine_line(doc['machine'])}; backend `{st['backend']}`",
             f"- Command: `{doc['command']}`",
             f"- Method: random weights; per configuration {st['warmup']} untimed warm-up step(s), then the median "
             f"of {st['repeat']} timed steps; a step evaluates {st['internal_batch']} key set(s) (internal batch) "
             f"back to back over loopback TCP. Online time is the slower party's, bytes are "
             f"both parties' sends, rounds per key set. Per batch = one forward of the true batch (one key set); per "
             f"inference = per batch / true batch; tokens/s = batch x internal batch x seq / step time. Keygen is "
             f"the dealer's time per key set; key bytes are per party. "
             + ("Keys are streamed to the device gate by gate inside the online clock (--stream-keys)."
                if "--stream-keys" in st.get("party_argv", []) else
                "Keys are staged (copied and unpacked) before the online clock.")
             + (" Key sets come from a dealer process over loopback TCP when both parties ask (--keys stream; "
                "no key files); keygen is its generate + pack + send time." if st.get("keys_mode") == "stream"
                else "")
             + (" Launch plans (--cuda-graphs): each party interprets its first inference, records its second "
                "as one CUDA graph per round and replays the graphs for every later one (each key set unpacked "
                "before the clock into one device buffer every set reuses; a configuration marked as unpacking "
                "late copies packed sets there and unpacks each gate's keys inside the graphs)."
                if "--cuda-graphs" in st.get("party_argv", []) else "")
             + (f" The workers' frames of 1 MiB or more went as {_stripes(st)} slices over as many TCP connections, "
                "each moved by its own thread (--stripes)." if _stripes(st) > 1 else "")
             + (f" A batch shown as B (L x B/L) ran as L lanes (--lanes {st['lanes']}): L pairs of workers at once, "
                "each on a build of batch B/L with its own connection and key sets; its online time is the union "
                "of every lane's online intervals, both parties'." if st.get("lanes", 1) > 1 else ""),
             *_network_lines(doc), "",
             *table(["model", "seq", "batch", "gates", "GPUs", *(["network"] if shaped else []),
                     "online / batch", "steps min / max",
                      "online / inference", "bytes / inference", "rounds", "keygen / inference",
                      "key / inference / party", "tokens/s"], "lrrlr" + "l" * shaped + "rrrrrrrr", rows)]
    lines += _late_keys_note(doc)
    refused = next((r["online"]["plan_refused"] for r in doc["results"] if r.get("online", {}).get("plan_refused")), None)
    if refused:
        lines += ["", f"\u2021 Asked for launch plans, these ran interpreted: {refused}."]
    skipped = [r for r in doc["results"] if "skipped" in r]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {r['config']['name']}: {' '.join(r['skipped'].split())}" for r in skipped]
    return "\n".join(lines + _speedups(doc) + _padding_ablation(doc)
                     + amdahl.markdown(doc["results"], doc.get("gate_microbench"))
                     + _scope_tables(doc) + _phase_table(doc) + _key_load_table(doc)) + "\n"


def _stripes(settings: dict) -> int:
    """The TCP connections the workers used (plan.stripes_of their options)."""
    return stripes_of(settings.get("party_argv"))
