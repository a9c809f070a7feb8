"""Launches per round and per key set: how much Python-driven device work the GPU runtime
issues, counted on the CPU (no GPU needed) through the host build of the kernels.

The GPU backend's own code (runtime/gpu_backend.py) runs on fake device arrays
(tests/fakedevice.py's HostKernelBackend); every array operation that creates a device
array and every generated-kernel launch is counted, for the dealer (with the fused DPF/DCF
keygen kernels and with the level-by-level loops they replace) and for each party's online
phase. On a GPU each of these is a CuPy call of ~5-20 us of host time, which is what the
online phase's per-round overhead is made of (BENCHMARKS.md, issue 11).

    PYTHONPATH=. python bench/launch_counts.py tests/data/bert_tiny_legacy.onnx --seq 8 --bits 37
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading

from fusec.build import compile_model, encode_inputs, load_build
from fusec.codegen import cuda
from fusec.passes.calibrate import default_feeds
from fusec.passes.options import CompileOptions
from fusec.runtime.dealer import write_keys
from fusec.runtime.gpu_backend import GpuPrg
from fusec.runtime.keyio import KeyFile
from fusec.runtime.protocol import RoundLog
import tests.fakedevice as fake
from tests.harness import both_parties, queue_exchanges


class Counter:
    """Array operations (fake device arrays created) and kernel launches, per thread's party."""

    def __init__(self) -> None:
        self.ops = [0, 0, 0]          # party 0, party 1, the dealer (index 2)
        self.launches = [0, 0, 0]
        self._who = threading.local()
        wrapped = fake._device

        def counting(res):
            self.ops[getattr(self._who, "p", 2)] += 1
            return wrapped(res)

        fake._device = counting

    def attach(self, be, who: int) -> None:
        self._who.p = who
        run = be.kernels._run

        def launch(*a, **k):
            self.launches[who] += 1
            return run(*a, **k)

        be.kernels._run = launch

    def reset(self, who: int) -> None:
        self.ops[who] = self.launches[who] = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--bits", type=int, default=37)
    args = ap.parse_args()
    out = tempfile.mkdtemp()
    compile_model(args.model, out, CompileOptions(bits=args.bits), batch=1, seq=args.seq)
    b = load_build(out)
    src = cuda.render(cuda.default_config())
    kind = fake.host_kernel_backend(src, cuda.compile_host_library(src, tempfile.mkdtemp()))
    count = Counter()
    keys = tempfile.mkdtemp()
    fused = (GpuPrg.keygen_tree, GpuPrg.dcf_keygen)
    for label in ("fused keygen kernels", "level-by-level loops"):
        be = kind()
        count.attach(be, 2)
        count.reset(2)
        t: dict = {}
        write_keys(b.gates, keys, 1, seed=b"launch-counts", backend=be, timings=t)
        print(f"dealer, {label}: {count.ops[2]} array ops, {count.launches[2]} kernel launches per key set "
              f"({len(b.gates.nodes)} gates)")
        if hasattr(GpuPrg, "keygen_tree"):
            del GpuPrg.keygen_tree, GpuPrg.dcf_keygen  # the second pass: the loops
    GpuPrg.keygen_tree, GpuPrg.dcf_keygen = fused
    os.environ["FUSEC_STATE_DIR"] = tempfile.mkdtemp()
    feeds, ex, logs = default_feeds(b.ir, seed=1), queue_exchanges(), [RoundLog(), RoundLog()]

    def work(p: int) -> None:
        be = kind()
        count.attach(be, p)
        with KeyFile.open(f"{keys}/p{p}.key", b.gates.layout(), p) as kf:
            staged = be.stage_set(b.gates.layout(), kf.claim(0).read_all_raw())
        count.reset(p)
        b.gates.evaluate(p, staged, encode_inputs(b, feeds, p) if p == 1 else {}, ex[p], be, logs[p])

    both_parties(work)
    for p in (0, 1):
        r = logs[p].rounds
        print(f"online, party {p}: {r} rounds, {count.ops[p]} array ops ({count.ops[p] / r:.0f} per round), "
              f"{count.launches[p]} kernel launches ({count.launches[p] / r:.1f} per round)")


if __name__ == "__main__":
    main()
