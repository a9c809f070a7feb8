"""What ``fusec inspect`` and the compile report print: IR, per-gate costs, specs, layout.

Costs are the gates' own ``cost()`` (tested against real keys and AES counters), summed
over elements: key bytes per party, AES calls, bits sent per party. Rounds come from the
schedule. With a true batch B, everything is also given per inference (divided by B).
"""
from __future__ import annotations

from collections import defaultdict

from fusec.ir import scalar_fn


def _batch(build) -> int:
    return int(build.manifest.get("batch") or 1)


def totals(build) -> dict:
    key_bits = aes = open_bits = 0
    for n in build.gates.nodes:
        c = n.gate.cost()
        key_bits += c.key_bits * n.gate.elements
        aes += c.aes * n.gate.elements
        open_bits += c.open_bits * n.gate.elements
    layout = build.gates.layout()
    return {"gates": len(build.gates.nodes), "rounds": max((s.end for s in build.steps), default=0),
            "key_bytes": layout.set_nbytes,
            "aes_calls": aes, "bytes_sent_per_party": open_bits // 8}


def cost_table(build) -> str:
    by_scope: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    scope = {s.id: s.scope for s in build.steps}
    for n in build.gates.nodes:
        c = n.gate.cost()
        row = by_scope[(scope.get(n.id, "other"), n.gate.kind)]
        row[0] += 1
        row[1] += n.gate.elements
        row[2] += c.key_bits * n.gate.elements // 8
        row[3] += c.aes * n.gate.elements
        row[4] += c.open_bits * n.gate.elements // 8
    lines = ["| scope | gate kind | gates | elements | key bytes | AES calls | bytes sent/party |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (sc, kind), r in sorted(by_scope.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"| {sc} | {kind} | {r[0]} | {r[1]:,} | {r[2]:,} | {r[3]:,} | {r[4]:,} |")
    return "\n".join(lines)


def specs(build) -> str:
    seen = {}
    for node in build.ir.nodes():
        if node.op != "Scalar":
            continue
        s = node.attrs.get("spec")
        impl = node.attrs.get("impl", "fused")
        if impl == "sigma" or s is None:
            key = (node.attrs.get("label"), "sigma")
            line = f"{node.attrs.get('label')}: SIGMA-style construction"
        else:
            key = (s["name"], s["f_in"], s["f_out"], tuple(s["breakpoints"]))
            deg = max(len(c) for c in s["coeffs"]) - 1
            lo, hi = s.get("fit_range", (0, 0))
            line = (f"{s['name']} = {scalar_fn.describe(node.attrs['fn'])}: {len(s['coeffs'])} pieces "
                    f"(fitted on [{lo:g}, {hi:g}]), degree {deg}, f_in {s['f_in']} -> f_out {s['f_out']}, "
                    f"max error {s['max_error_ulps']:.2f} ulps")
        if key in seen:
            seen[key][1] += 1
        else:
            seen[key] = [line, 1]
    return "\n".join(f"- {line} (x{count})" for line, count in seen.values()) or "(no scalar gates)"


def split(build) -> str:
    g = build.ir
    client = [n for n in g.nodes() if n.attrs.get("at") == "client"]
    shares = [n for n in g.nodes() if n.op == "Share"]
    lines = [f"input owner runs {len(client)} node(s) in plaintext before sharing: "
             + (", ".join(f"{n.op}:{n.name}" for n in client[:12]) + (" ..." if len(client) > 12 else "")
                if client else "none")]
    for n in shares:
        lines.append(f"shared: {n.inputs[0]} {list(g.info(n.outputs[0]).shape)} (owner P{n.attrs.get('owner', 1)})")
    for name, how in g.meta.get("public_inputs", {}).items():
        lines.append(f"public input fixed at compile time: {name} = {how.get('value')} ({how.get('source')}; "
                     f"override with --public-input {name}=file.npy)")
    return "\n".join(lines)


def report(build) -> str:
    t = totals(build)
    B = _batch(build)
    flags = build.opts.as_dict()
    lines = [f"fusec build {build.path}", f"flags: {flags}",
             f"gates: {t['gates']}, rounds: {t['rounds']}",
             f"key per party: {t['key_bytes']:,} bytes ({t['key_bytes'] / B:,.0f} per inference, batch {B})",
             f"online bytes sent per party: {t['bytes_sent_per_party']:,} "
             f"({t['bytes_sent_per_party'] / B:,.0f} per inference)",
             f"AES calls per party: {t['aes_calls']:,}", "", "## split", split(build), "", "## scalar gates",
             specs(build), "", "## cost by scope and gate kind (per party)", cost_table(build)]
    notes = build.ir.meta.get("notes", [])
    if notes:
        lines += ["", "## notes"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
