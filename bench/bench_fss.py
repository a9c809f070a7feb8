#!/usr/bin/env python
"""Throughput of the CPU (numpy) FSS primitives: DCF and DPF less-than.

Measures, for an n-bit domain (default n = 50, the BERT-base/GPT-2 ring):

* DCF with a payload of one n-bit word (m = 1, w = n): dealer keygen and one party's eval;
* the 1-bit less-than from a DPF with early termination (prefix parity): keygen and eval;
* key bytes per element and party (bit-packed, as the key file stores them) and AES
  blocks per evaluated element.

Elements are processed in chunks (``--chunk``) as the dealer and servers do; a run's time
is the sum over chunks of the wall clock (``time.perf_counter``) spent inside keygen or
eval only (random inputs are drawn outside the timed regions). Eval time is the mean of
party 0 and party 1 (party 1 also negates its DCF share). One warm-up run, then the
median of ``--runs`` runs. Every run checks a sample of reconstructed outputs against
``[x < alpha]`` so a fast-but-wrong build cannot report numbers.

    python bench/bench_fss.py --bits 50 --elements 1000000 --json out.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from fusec.runtime import dcf, dpf
from fusec.runtime.dcf import DcfKey
from fusec.runtime.dpf import DpfKey
from fusec.runtime.prg import CpuPrg
from fusec.runtime.rng import DealerRng


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def packed_key_bits(field_specs) -> int:
    """Bits of one party's key as stored (each field at its declared bit width)."""
    return sum(int(np.prod(shape)) * bits for _, shape, bits in field_specs)


def measured_bits(key, field_specs) -> int:
    """Bits of the arrays a keygen actually produced, at the field widths of the layout."""
    widths = {name: bits for name, _, bits in field_specs}
    return sum(a.size * widths[name] for name, a in key.arrays().items())


def _check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"bench_fss: wrong result in {what}; refusing to report numbers")


def one_run(kind: str, n: int, elements: int, chunk: int, rng: DealerRng, prg: CpuPrg) -> dict:
    """One full pass over ``elements``: returns keygen/eval seconds and a size check."""
    t_gen = t_ev0 = t_ev1 = 0.0
    key_bits = None
    done = 0
    while done < elements:
        N = min(chunk, elements - done)
        alpha = rng.ring(N, n)
        x = rng.ring(N, n)
        x[: min(N, 4)] = alpha[: min(N, 4)]  # include x == alpha in the sample checked
        if kind == "dcf":
            beta = rng.ring((N, 1), n)
            t0 = time.perf_counter()
            k0, k1 = dcf.keygen(rng, alpha, beta, n, n, prg)
            t1 = time.perf_counter()
            s0 = dcf.eval(0, k0, x, prg)
            t2 = time.perf_counter()
            s1 = dcf.eval(1, k1, x, prg)
            t3 = time.perf_counter()
            specs = DcfKey.field_specs(n, 1, n, N)
            m = np.uint64((1 << n) - 1)
            got = (s0[:256, 0] + s1[:256, 0]) & m
            want = np.where(x[:256] < alpha[:256], beta[:256, 0], np.uint64(0))
            _check(np.array_equal(got, want), "DCF")
        else:
            t0 = time.perf_counter()
            k0, k1 = dpf.lt_keygen(rng, alpha, n, prg)
            t1 = time.perf_counter()
            s0 = dpf.lt_eval(0, k0, x, prg)
            t2 = time.perf_counter()
            s1 = dpf.lt_eval(1, k1, x, prg)
            t3 = time.perf_counter()
            specs = DpfKey.field_specs(n, N)
            got = (s0[:256] ^ s1[:256]).astype(bool)
            _check(np.array_equal(got, x[:256] < alpha[:256]), "DPF less-than")
        t_gen += t1 - t0
        t_ev0 += t2 - t1
        t_ev1 += t3 - t2
        bits = measured_bits(k0, specs)
        _check(bits == packed_key_bits(specs), "key size")
        key_bits = (key_bits or 0) + bits
        done += N
    return {"keygen_s": t_gen, "eval_p0_s": t_ev0, "eval_p1_s": t_ev1, "key_bits": key_bits}


def bench(kind: str, n: int, elements: int, chunk: int, runs: int, warmup: int, seed: bytes | None) -> dict:
    rng = DealerRng(seed)
    prg = CpuPrg()
    for _ in range(warmup):
        one_run(kind, n, elements, chunk, rng, prg)
    results = [one_run(kind, n, elements, chunk, rng, prg) for _ in range(runs)]
    gen = statistics.median(r["keygen_s"] for r in results)
    ev = statistics.median((r["eval_p0_s"] + r["eval_p1_s"]) / 2 for r in results)
    key_bits = results[0]["key_bits"]
    if kind == "dcf":
        formula_bits = DcfKey.key_bits(n, 1, n)
        aes = DcfKey.aes_per_eval(n, 1, n)
        name, payload = "DCF", f"1 x {n}-bit word"
    else:
        formula_bits = DpfKey.key_bits(n)
        aes = DpfKey.aes_per_eval(n)
        name, payload = "DPF less-than (prefix parity)", "1 bit (XOR-shared)"
    _check(key_bits == formula_bits * elements, "key size formula")
    # AES blocks actually encrypted per evaluated element (checks the cost model)
    prg2 = CpuPrg()
    probe = min(elements, 1024)
    r2 = DealerRng(b"aes-count-probe!")
    a, x = r2.ring(probe, n), r2.ring(probe, n)
    if kind == "dcf":
        k0, _ = dcf.keygen(r2, a, r2.ring((probe, 1), n), n, n)
        before = prg2.aes_calls
        dcf.eval(0, k0, x, prg2)
    else:
        k0, _ = dpf.lt_keygen(r2, a, n)
        before = prg2.aes_calls
        dpf.lt_eval(0, k0, x, prg2)
    aes_measured = (prg2.aes_calls - before) / probe
    _check(aes_measured == aes, "AES count")
    return {
        "primitive": name,
        "kind": kind,
        "n": n,
        "payload": payload,
        "elements": elements,
        "keygen_elems_per_s": elements / gen,
        "eval_elems_per_s_per_party": elements / ev,
        "keygen_s_median": gen,
        "eval_s_median_per_party": ev,
        "key_bytes_per_element_per_party": key_bits / elements / 8,
        "key_bits_per_element_per_party": key_bits / elements,
        "aes_per_eval": aes,
        "runs": results,
    }


def markdown(rows: list[dict]) -> str:
    out = [
        "| primitive | n | payload | keygen (elem/s, both keys) | eval (elem/s, one party) "
        "| key bytes/elem (per party) | AES blocks/eval |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['primitive']} | {r['n']} | {r['payload']} | {r['keygen_elems_per_s']:,.0f} "
            f"| {r['eval_elems_per_s_per_party']:,.0f} | {r['key_bytes_per_element_per_party']:,.3f} "
            f"| {r['aes_per_eval']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", dest="n", type=int, default=50, help="domain bits n (default 50)")
    p.add_argument("--elements", type=int, default=1_000_000, help="elements (keys) per run")
    p.add_argument("--chunk", type=int, default=65536, help="elements per keygen/eval call")
    p.add_argument("--runs", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    p.add_argument("--only", choices=["dcf", "dpf"], help="bench one primitive")
    p.add_argument("--seed", default=None, help="fixed dealer seed (text) for reproducible keys")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="also write the results as JSON")
    a = p.parse_args(argv)
    if a.elements < 1 or a.chunk < 1 or a.runs < 1 or a.warmup < 0:
        p.error("--elements, --chunk and --runs must be >= 1, --warmup >= 0")
    seed = a.seed.encode() if a.seed is not None else None
    kinds = [a.only] if a.only else ["dcf", "dpf"]
    rows = [bench(k, a.n, a.elements, a.chunk, a.runs, a.warmup, seed) for k in kinds]
    table = markdown(rows)
    print(table)
    if a.json_out:
        info = {
            "date": _dt.date.today().isoformat(),
            "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "args": vars(a),
            "results": rows,
            "table_markdown": table,
        }
        with open(a.json_out, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
