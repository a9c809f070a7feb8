#!/usr/bin/env python3
"""Regenerate the committed model fixtures (tests/data) and the bundled example
(fusec/examples) with the builders in fusec/models/.

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install transformers onnxscript scikit-learn
    python tests/data/make_fixtures.py                 # everything (~30 s on 2 CPU cores)
    python tests/data/make_fixtures.py --only bert_tiny_dynamo digits_mlp
    python tests/data/make_fixtures.py --only family_roberta family_vit family_mlp_sigmoid

Writes, besides the files, tests/data/fixtures.json: per file its size, sha256, opset,
inputs/outputs, op-type counts, accuracy where trained, and the torch / transformers /
scikit-learn / onnx versions that made it. Weights depend on the torch version's RNG, so a
regeneration with another torch gives other (equally valid) numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from fusec import models  # noqa: E402

EXAMPLES = models.EXAMPLES_DIR

# the tiny transformer configuration shared by the fixtures (and by the two BERT exporters,
# which therefore compute the same function: same seed, same weights)
BERT_TINY = dict(layers=2, hidden=128, heads=2, intermediate=512, vocab=1000, positions=128, seq=16, seed=0)
GPT2_TINY = dict(layers=2, hidden=128, heads=2, vocab=1000, positions=64, seq=16, seed=0)
N_SAMPLE = 8  # test images in fusec/examples/digits_sample.npy


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def bert_tiny_legacy():
    return models.export_bert(HERE / "bert_tiny_legacy.onnx", exporter="legacy", **BERT_TINY), {}


def bert_tiny_dynamo():
    return models.export_bert(HERE / "bert_tiny_dynamo.onnx", exporter="dynamo", **BERT_TINY), {}


def gpt2_tiny():
    return models.export_gpt2(HERE / "gpt2_tiny.onnx", exporter="legacy", **GPT2_TINY), {}


def digits_cnn():
    d = models.train_digits_cnn(HERE / "digits_cnn.onnx")
    np.savez_compressed(HERE / "digits_cnn_test.npz", X_test=d.X_test.astype(np.float32),
                        y_test=d.y_test.astype(np.int64))
    return d.info, {"float_accuracy": d.accuracy, "test_set": "digits_cnn_test.npz"}


def digits_mlp():
    import onnxruntime as ort

    d = models.train_digits_mlp(EXAMPLES / "digits_mlp.onnx")
    X = d.X_test[:N_SAMPLE].astype(np.float32)
    y = d.y_test[:N_SAMPLE]
    np.save(EXAMPLES / "digits_sample.npy", X)
    logits = ort.InferenceSession(str(d.path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    meta = {
        "model": "digits_mlp.onnx",
        "input": "x",
        "input_shape": ["batch", 64],
        "output": "logits",
        "output_shape": ["batch", 10],
        "architecture": "x[batch,64] -> Gemm(64->32) -> Relu -> Gemm(32->10) -> logits",
        "scaling": "sklearn load_digits pixels (0..16) divided by 16 -> float32 in [0, 1]",
        "split": "sklearn.model_selection.train_test_split(X, y, test_size=0.25, random_state=0)",
        "samples": f"digits_sample.npy = X_test[0:{N_SAMPLE}], float32 [{N_SAMPLE}, 64]; take row i as a [1, 64] input",
        "labels": [int(v) for v in y],
        "float_predictions": [int(v) for v in logits.argmax(-1)],
        "float_logits": [[round(float(v), 6) for v in row] for row in logits],
        "float_accuracy": round(d.accuracy, 6),
        "test_size": int(len(d.y_test)),
        "regenerate": "python tests/data/make_fixtures.py --only digits_mlp",
    }
    (EXAMPLES / "digits_sample.json").write_text(json.dumps(meta, indent=1) + "\n")
    return d.info, {"float_accuracy": d.accuracy, "samples": "digits_sample.npy / digits_sample.json"}


#: tests/test_families.py's CI cases (tests/families.py: tiny random-init exports), committed
#: so that they run without torch: family_NAME.onnx and the request family_NAME_request.npz
FAMILIES = ("roberta", "vit", "mlp-sigmoid")


def _family(name: str):
    def build():
        import tempfile

        from fusec.models.onnx_file import finalize
        from tests.families import export

        stem = "family_" + name.replace("-", "_")
        with tempfile.TemporaryDirectory(prefix="fusec-family-") as tmp:
            path, req, out = export(name, Path(tmp), "legacy")
            info = finalize(path, HERE / f"{stem}.onnx", f"family:{name}", "legacy",
                            {"family": name, "source": "tests/families.py"}, None)
        np.savez_compressed(HERE / f"{stem}_request.npz", **req)
        return info, {"request": f"{stem}_request.npz", "output": out}

    build.__name__ = "family_" + name.replace("-", "_")
    return build


BUILDERS = {f.__name__: f for f in (bert_tiny_legacy, bert_tiny_dynamo, gpt2_tiny, digits_cnn, digits_mlp,
                                    *(_family(n) for n in FAMILIES))}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "onnxscript", "sklearn", "onnx", "onnxruntime", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="regenerate just these")
    a = ap.parse_args(argv)
    EXAMPLES.mkdir(parents=True, exist_ok=True)
    manifest_path = HERE / "fixtures.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.setdefault("files", {})
    versions = _versions()
    for name in a.only or list(BUILDERS):
        info, extra = BUILDERS[name]()
        rel = info.path.resolve().relative_to(ROOT).as_posix()
        entry = {
            "size": info.path.stat().st_size,
            "sha256": _sha(info.path),
            "kind": info.kind,
            "exporter": info.exporter,
            "opset": info.opset,
            "inputs": {k: list(v) for k, v in info.inputs.items()},
            "outputs": {k: list(v) for k, v in info.outputs.items()},
            "config": info.config,
            "op_counts": models.op_counts(info.path),
            "versions": versions,
            **extra,
        }
        manifest["files"][rel] = entry
        acc = f"  float accuracy {extra['float_accuracy']:.4f}" if "float_accuracy" in extra else ""
        print(f"{rel:40s} {entry['size']:>9d} B  opset {info.opset} ({info.exporter}){acc}")
        print(f"    ops: {entry['op_counts']}")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for p in sorted(list(HERE.glob("*.npz")) + list(EXAMPLES.glob("*"))):
        print(f"{p.resolve().relative_to(ROOT).as_posix():40s} {p.stat().st_size:>9d} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
