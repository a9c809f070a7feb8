#!/usr/bin/env python
"""Throughput of the generated GPU kernels (runtime/gpu_kernels.py) on one GPU.

Measures, with keys and inputs resident in device memory:

* fixed-key AES-MMO: 128-bit blocks per second;
* DCF evaluation at n bits (default 50) with a payload of one n-bit word (m = 1, w = n):
  elements per second (one party; party 1 also negates);
* 1-bit less-than from an early-terminated DPF (prefix parity) at n bits: elements/s;
* the packed comparisons of GELU and exp (one key, M points): every point walked from the root
  against the generated arc walk (runtime/dpf_arc.py), elements/s and AES/s;
* matmul mod 2^n of 128x768 @ 768x3072 (a BERT-base FFN projection at seq 128), per method.

Each case: one warm-up call, then ``--runs`` timed calls (CUDA events around the call, so
the time is the GPU's), median reported. Key material is random (the kernels' cost does not
depend on it); every case checks a sample of outputs against the CPU reference first, so a
fast-but-wrong build cannot report numbers. DESIGN §8's H200 reference points are printed
next to the results for a sanity check. ``--inline-aes`` also measures a build whose AES is
inlined at every call site (the default build calls one out-of-line AES per kernel).

    python bench/bench_gpu_kernels.py --json gpu_kernels.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from typing import Callable

import numpy as np

from fusec.codegen import cuda
from fusec.runtime import dcf, dpf, prg, ring
from fusec.runtime.dcf import DcfKey
from fusec.runtime.dpf import DpfKey
from fusec.runtime.dpf_arc import DpfArc
from fusec.runtime.gpu_kernels import MATMUL_METHODS, GpuKernels

#: DESIGN §8, one H200: T-table AES in shared memory, DPF less-than at n = 50.
REFERENCE = {"aes_blocks_per_s": 16.5e9, "dpf_lt_elements_per_s": 350e6}
SAMPLE = 512  # elements checked against the CPU reference per case


def gpu_time(fn: Callable[[], object], runs: int) -> float:
    """Median GPU seconds of ``fn`` over ``runs`` calls after one warm-up (CUDA events)."""
    import cupy

    fn()
    times = []
    for _ in range(runs):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def rand_u64(cp, *shape: int):
    """Uniform uint64 on the device, from two 32-bit halves."""
    hi, lo = (cp.random.randint(0, 1 << 32, size=shape, dtype=cp.int64).astype(cp.uint64) for _ in range(2))
    return (hi << np.uint64(32)) | lo


def random_dcf(cp, N: int, n: int, m: int, w: int) -> dict:
    """Random structure-of-arrays DCF key material on the device (cw_tr 0/1, payloads in range)."""
    wm = ring.mask(w)
    return {"root": rand_u64(cp, N, 2), "cw_seed": rand_u64(cp, n, N, 2), "cw_tr": rand_u64(cp, n, N) & np.uint64(1),
            "cw_v": rand_u64(cp, n, N, m) & wm, "cw_final": rand_u64(cp, N, m) & wm}


def random_dpf(cp, N: int, n: int) -> dict:
    depth = n - dpf.leaf_bits(n)
    return {"root": rand_u64(cp, N, 2), "cw_seed": rand_u64(cp, depth, N, 2),
            "cw_tr": rand_u64(cp, depth, N) & np.uint64(1), "cw_leaf": rand_u64(cp, N, 2)}


def host_sample(keys: dict, count: int) -> dict[str, np.ndarray]:
    """The first ``count`` elements of device SoA keys (element axis: 0 for root-like, 1 for per-level)."""
    return {k: (v[:, :count] if k in ("cw_seed", "cw_tr", "cw_v") else v[:count]).get() for k, v in keys.items()}


def bench_aes(gk: GpuKernels, cp, blocks: int, runs: int) -> dict:
    b = rand_u64(cp, blocks, 2)
    ref = prg.AesMmo(prg.FIXED_KEYS["L"])(b[:SAMPLE].get())
    assert (gk.aes_mmo("L", b[:SAMPLE]).get() == ref).all(), "AES-MMO disagrees with the CPU"
    t = gpu_time(lambda: gk.aes_mmo("L", b), runs)
    return {"case": "aes_mmo", "items": blocks, "seconds": t, "per_s": blocks / t, "unit": "blocks/s",
            "reference_per_s": REFERENCE["aes_blocks_per_s"]}


def bench_dcf(gk: GpuKernels, cp, N: int, n: int, runs: int) -> dict:
    m, w = 1, n
    keys = random_dcf(cp, N, n, m, w)
    x = rand_u64(cp, N) & ring.mask(n)
    fields = ("root", "cw_seed", "cw_tr", "cw_v", "cw_final")
    args = [keys[k] for k in fields]
    sample, xs = host_sample(keys, SAMPLE), x[:SAMPLE].get()
    got = gk.dcf_eval(1, *(sample[k] for k in fields), xs, n, m, w)
    assert (cp.asnumpy(got) == dcf.eval(1, DcfKey(n, m, w, **sample), xs)).all(), "DCF disagrees with the CPU"
    t = gpu_time(lambda: gk.dcf_eval(1, *args, x, n, m, w), runs)
    return {"case": f"dcf_eval n={n} m={m} w={w}", "items": N, "seconds": t, "per_s": N / t, "unit": "elements/s",
            "aes_per_element": DcfKey.aes_per_eval(n, m, w)}


def bench_dpf_lt(gk: GpuKernels, cp, N: int, n: int, runs: int) -> dict:
    keys = random_dpf(cp, N, n)
    x = rand_u64(cp, N) & ring.mask(n)
    fields = ("root", "cw_seed", "cw_tr", "cw_leaf")
    args = [keys[k] for k in fields]
    sample, xs = host_sample(keys, SAMPLE), x[:SAMPLE].get()
    got = gk.dpf_lt_eval(0, *(sample[k] for k in fields), xs, n)
    assert (cp.asnumpy(got) == dpf.lt_eval(0, DpfKey(n, **sample), xs)).all(), "DPF less-than disagrees with the CPU"
    t = gpu_time(lambda: gk.dpf_lt_eval(0, *args, x, n), runs)
    return {"case": f"dpf_lt_eval n={n}", "items": N, "seconds": t, "per_s": N / t, "unit": "elements/s",
            "aes_per_element": DpfKey.aes_per_eval(n), "reference_per_s": REFERENCE["dpf_lt_elements_per_s"]}


#: The packed comparisons of BERT-base s128 (runtime/dpf_arc.py), offsets as the compiler places them:
#: layer 0's GELU (n = 14, 12 points, 57 AES instead of 96) and softmax exp (n = 17, 9 points, 33 instead of 99).
ARCS = {"gelu": DpfArc(14, (0, 76, 136, 206, 336, 495, 3175, 15889, 16047, 16177, 16247, 16307)),
        "exp": DpfArc(17, (0, 6, 7, 130535, 130777, 130883, 130951, 131001, 131041))}


def bench_arc(gk: GpuKernels, cp, N: int, label: str, arc: DpfArc, runs: int) -> list[dict]:
    """One less-than key at the arc's M points per element: every point walked from the root
    (``dpf_lt_eval`` on (N, M) points) against the generated arc walk, same keys and inputs."""
    n = arc.n
    keys = random_dpf(cp, N, n)
    u = rand_u64(cp, N) & ring.mask(n)
    a = cp.asarray(np.asarray(arc.offsets, np.uint64))
    pts = (u[:, None] - a[None, :]) & ring.mask(n)
    fields = ("root", "cw_seed", "cw_tr", "cw_leaf")
    args = [keys[k] for k in fields]
    sample = host_sample(keys, SAMPLE)
    ref = dpf.lt_eval(0, DpfKey(n, **sample), pts[:SAMPLE].get())
    assert (cp.asnumpy(gk.dpf_lt_arc(0, *args, u, arc)[:SAMPLE]) == ref).all(), f"arc walk ({label}) disagrees"
    plain = gpu_time(lambda: gk.dpf_lt_eval(0, *args, pts, n), runs)
    walk = gpu_time(lambda: gk.dpf_lt_arc(0, *args, u, arc), runs)
    out = []
    for how, t, aes in (("points from the root", plain, arc.plain_aes_per_eval()), ("arc walk", walk, arc.aes_per_eval())):
        out.append({"case": f"dpf_lt {label} n={n} M={arc.points} [{how}]", "items": N, "seconds": t, "per_s": N / t,
                    "unit": "elements/s", "aes_per_element": aes, "aes_per_s": N * aes / t})
    return out


def bench_matmul(gk: GpuKernels, cp, M: int, K: int, N: int, bits: int, runs: int) -> list[dict]:
    A, B = rand_u64(cp, M, K) & ring.mask(bits), rand_u64(cp, K, N) & ring.mask(bits)
    ref = np.matmul(A[:4].get(), B.get()) & ring.mask(bits)
    out = []
    for method in MATMUL_METHODS:
        assert (gk.matmul_mod(A[:4], B, bits, method=method).get() == ref).all(), f"matmul ({method}) is wrong"
        t = gpu_time(lambda: gk.matmul_mod(A, B, bits, method=method), runs)
        out.append({"case": f"matmul {M}x{K}@{K}x{N} mod 2^{bits} [{method}]", "items": M * N * K, "seconds": t,
                    "per_s": M * N * K / t, "unit": "MAC/s"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", dest="n", type=int, default=50, help="ring / domain bits n (default 50)")
    ap.add_argument("--aes-blocks", type=int, default=1 << 24)
    ap.add_argument("--dcf-elements", type=int, default=1 << 20)
    ap.add_argument("--dpf-elements", type=int, default=1 << 22)
    ap.add_argument("--arc-elements", type=int, default=8 * 393216, help="elements of the arc cases (GELU's at batch 8)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--inline-aes", action="store_true",
                    help="also measure the build with inlined AES (its first compile takes about a minute)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    try:
        import cupy as cp
        cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        print(f"needs CuPy and a CUDA GPU: {e}", file=sys.stderr)
        return 2

    builds = [("out-of-line AES", False)] + ([("inlined AES", True)] if args.inline_aes else [])
    results = []
    for label, inline in builds:
        cfg = cuda.default_config().merged(cuda.KernelConfig(dcf_shapes=((args.n, 1, args.n),),
                                                             dpf_widths=(args.n, 14, 17), inline_aes=inline,
                                                             dpf_arcs=tuple(ARCS.values())))
        gk = GpuKernels(config=cfg)
        rows = [bench_aes(gk, cp, args.aes_blocks, args.runs),
                bench_dcf(gk, cp, args.dcf_elements, args.n, args.runs),
                bench_dpf_lt(gk, cp, args.dpf_elements, args.n, args.runs)]
        for name, arc in ARCS.items():
            rows += bench_arc(gk, cp, args.arc_elements, name, arc, args.runs)
        if not inline:
            rows += bench_matmul(gk, cp, 128, 768, 3072, args.n, args.runs)
        for r in rows:
            r["build"] = label
        results += rows

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    print(f"device: {device}")
    print(f"{'case':48s} {'build':16s} {'time (ms)':>10s} {'throughput':>14s} {'unit':12s} {'DESIGN §8':>10s}")
    for r in results:
        ref = f"{r['reference_per_s']:.3g}" if "reference_per_s" in r else ""
        print(f"{r['case']:48s} {r['build']:16s} {r['seconds'] * 1e3:10.3f} {r['per_s']:14.4g} {r['unit']:12s} "
              f"{ref:>10s}")
    if args.json:
        doc = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": device,
               "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "runs": args.runs,
               "n": args.n, "results": results}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
