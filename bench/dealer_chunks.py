"""The dealer's memory for one large elementwise gate, keyed whole and in element chunks (CPU).

Keys GELU as the compiler emits it (a narrow packed lookup with a folded rescale) for N
elements, once in one piece and once in chunks, each in a process of its own, under
tracemalloc: the traced peak, the keys and mask the keygen returns, and the working memory
beyond them. On a card the chunked keys leave the device a chunk at a time
(runtime/keygen_chunks.py), so there the device's peak is at most this working memory; keyed
whole, all of it is on the device.

    python bench/dealer_chunks.py --elements 3145728 --chunks 0,524288 --out bench/results/dealer_chunks_<date>.json

``--pack`` measures through to the two parties' packed slot bytes, what the dealer hands its
writers: ``--chunks whole,host:C,parts:C`` keys the gate whole and packs it, keys it in chunks
of C joined as host arrays and packs those, or packs each chunk where it is keyed
(``PackedParts``: no uint64 copy of the whole gate's keys is made).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
import tracemalloc

from fusec.runtime.gates.catalog import _narrow_gelu, gelu_spec
from fusec.runtime.backend import get_backend
from fusec.runtime.graph import GateGraph
from fusec.runtime.keygen_chunks import HostArrays, PackedParts, element_axes, gate_keygen
from fusec.runtime.layout import pack_gate_array
from fusec.runtime.rng import DealerRng


def measure(elements: int, chunk: int) -> dict:
    gate = _narrow_gelu(elements, gelu_spec(50, 12), 50, 12, 12)
    rng = DealerRng(b"dealer-chunks")
    r = rng.ring(elements, 50)
    tracemalloc.start()
    t0 = time.perf_counter()
    out, k0, k1 = gate_keygen(gate, rng, [r], chunk=chunk)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = sum(v.nbytes for k in (k0, k1) for v in k.values()) + out.nbytes
    return {"elements": elements, "chunk": chunk, "keygen_seconds": round(seconds, 2), "traced_peak_bytes": peak,
            "returned_bytes": kept, "working_bytes": peak - kept}


def measure_packed(elements: int, config: str) -> dict:
    """Keygen and packing into both parties' slot bytes (one unseeded slot), under tracemalloc."""
    gate = _narrow_gelu(elements, gelu_spec(50, 12), 50, 12, 12)
    g = GateGraph()
    g.input("x", elements, 50)
    g.add("gelu", gate, ["x"])
    g.output("y", "gelu")
    slot = g.layout().slot("gelu")
    rng = DealerRng(b"dealer-chunks")
    r = rng.ring(elements, 50)
    sink, _, c = config.partition(":")
    chunk = int(c or 0)
    tracemalloc.start()
    t0 = time.perf_counter()
    if sink == "parts":
        out, b0, b1 = gate_keygen(gate, rng, [r], chunk=chunk,
                                  sink=PackedParts(gate, element_axes(gate), (slot, slot), get_backend("cpu")))
    else:
        out, k0, k1 = gate_keygen(gate, rng, [r], chunk=chunk,
                                  sink=HostArrays(gate, element_axes(gate)) if sink == "host" else None)
        b0, b1 = pack_gate_array(slot, k0), pack_gate_array(slot, k1)
        del k0, k1
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = b0.nbytes + b1.nbytes + out.nbytes
    return {"elements": elements, "config": config, "chunk": chunk, "keygen_and_pack_seconds": round(seconds, 2),
            "traced_peak_bytes": peak, "packed_bytes": b0.nbytes + b1.nbytes, "working_bytes": peak - kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=3 * (1 << 20))
    ap.add_argument("--chunks", default="0,524288", help="comma-separated; 0 = keyed in one piece")
    ap.add_argument("--out", help="JSON results")
    ap.add_argument("--pack", action="store_true", help="through to packed bytes; --chunks whole,host:C,parts:C")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:        # one configuration in this process (the parent runs each in its own)
        row = measure_packed(args.elements, args.chunks) if args.pack else measure(args.elements, int(args.chunks))
        print(json.dumps(row))
        return
    rows = []
    for c in args.chunks.split(","):
        # each in a fresh process: a process's first large keygen pays its page faults
        run = subprocess.run([sys.executable, __file__, "--one", "--elements", str(args.elements), "--chunks", c]
                             + (["--pack"] if args.pack else []), capture_output=True, text=True, check=True)
        row = json.loads(run.stdout.strip().splitlines()[-1])
        rows.append(row)
        kept = row.get("returned_bytes", row.get("packed_bytes"))
        print(f"N={row['elements']:,} {c}: peak {row['traced_peak_bytes'] / 1e6:,.0f} MB, kept "
              f"{kept / 1e6:,.0f} MB, working {row['working_bytes'] / 1e6:,.0f} MB, "
              f"{row.get('keygen_seconds', row.get('keygen_and_pack_seconds'))} s", flush=True)
    if args.out:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                           "python": platform.python_version()},
               "git": git, "command": " ".join(["python"] + sys.argv), "results": rows}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
