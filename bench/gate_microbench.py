"""Per-gate speed-ups of the fused gates over the SIGMA-style ones, for the Amdahl table.

Each nonlinearity of a transformer layer is exported alone as a one-op ONNX model at
BERT-base's shapes (GELU on 128 x 3072, softmax on 12 x 128 x 128, layer norm on
128 x 768; ``--small`` divides the sequence by 8 for a quick CPU check), then
``fusec bench`` runs both gate sets on it on the chosen backend, P0 and P1 as processes,
warm-up once, median of ``--repeat``. The speed-up ``s`` of a scope is sigma's online time
over fused's for that model. The result is the ``--gate-speedups`` file of
``fusec bench`` and ``python -m fusec.bench.amdahl``:

    {"source": "...", "speedups": {"gelu": s, "softmax": s, "layernorm": s}, "runs": {...}}

Run it on the machine the end-to-end numbers come from (the issue asks for the same
machine), e.g. on a GPU:

    python bench/gate_microbench.py --backend gpu --repeat 5 -o gates.json
    fusec bench --model bert-base --gates fused,sigma --backend gpu --gate-speedups gates.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def _model(op: str, seq: int) -> onnx.ModelProto:
    """One nonlinearity of a BERT-base layer, alone, with the input shape it has there."""
    rng = np.random.default_rng(0)
    if op == "gelu":            # as BERT exports it: x * 0.5 * (1 + erf(x / sqrt(2)))
        shape = [1, seq, 3072]
        inits = [nh.from_array(np.array(np.sqrt(2.0), np.float32), "r2"), nh.from_array(np.array(1.0, np.float32), "one"),
                 nh.from_array(np.array(0.5, np.float32), "half")]
        nodes = [h.make_node("Div", ["x", "r2"], ["t"]), h.make_node("Erf", ["t"], ["e"]),
                 h.make_node("Add", ["e", "one"], ["p"]), h.make_node("Mul", ["x", "p"], ["q"]),
                 h.make_node("Mul", ["q", "half"], ["y"])]
        opsets = [h.make_opsetid("", 17)]
    elif op == "softmax":
        shape, nodes, inits = [1, 12, seq, seq], [h.make_node("Softmax", ["x"], ["y"], axis=-1)], []
        opsets = [h.make_opsetid("", 17)]
    elif op == "layernorm":
        shape = [1, seq, 768]
        inits = [nh.from_array((1 + 0.1 * rng.normal(size=768)).astype(np.float32), "g"),
                 nh.from_array((0.1 * rng.normal(size=768)).astype(np.float32), "b")]
        nodes = [h.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-12)]
        opsets = [h.make_opsetid("", 17)]
    else:
        raise ValueError(op)
    g = h.make_graph(nodes, op, [h.make_tensor_value_info("x", T.FLOAT, shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, shape)], inits)
    return h.make_model(g, opset_imports=opsets)


def run(ops: list[str], seq: int, backend: str, repeat: int, workdir: Path) -> dict:
    runs: dict[str, dict] = {}
    for op in ops:
        path = workdir / f"{op}.onnx"
        onnx.save(_model(op, seq), path)
        out = workdir / f"{op}.json"
        argv = [sys.executable, "-m", "fusec", "bench", "--model", str(path), "--gates", "fused,sigma",
                "--backend", backend, "--internal-batch", "1", "--warmup", "1", "--repeat", str(repeat),
                "--workdir", str(workdir / op), "--json", str(out)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: the bench of {op} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        doc = json.loads(out.read_text())
        times = {r["config"]["gates"]: r["online"]["per_batch"]["online_seconds"] for r in doc["results"]
                 if "online" in r}
        runs[op] = {"fused_seconds": times["fused"], "sigma_seconds": times["sigma"], "machine": doc["machine"]}
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ops", default="gelu,softmax,layernorm")
    ap.add_argument("--small", action="store_true", help="sequence 16 instead of 128 (a quick CPU check)")
    ap.add_argument("-o", "--out", required=True, help="the --gate-speedups JSON to write")
    args = ap.parse_args()
    seq = 16 if args.small else 128
    with tempfile.TemporaryDirectory() as tmp:
        runs = run(args.ops.split(","), seq, args.backend, args.repeat, Path(tmp))
    machine = next(iter(runs.values()))["machine"] if runs else {}
    doc = {"source": f"bench/gate_microbench.py --backend {args.backend} --repeat {args.repeat} (seq {seq}), "
                     f"on {', '.join(machine.get('gpus') or []) or machine.get('cpu', 'this machine')}",
           "speedups": {op: r["sigma_seconds"] / r["fused_seconds"] for op, r in runs.items()},
           "runs": runs}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    for op, r in runs.items():
        print(f"{op}: fused {r['fused_seconds']:.4f} s, sigma {r['sigma_seconds']:.4f} s, "
              f"s = {doc['speedups'][op]:.2f}x")


if __name__ == "__main__":
    main()
