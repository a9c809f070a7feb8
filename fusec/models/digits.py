"""Classifiers trained on scikit-learn's 8x8 digits: an MLP (scikit-learn only) and a CNN (torch).

Both return a :class:`~fusec.models.info.DigitsModel` and stamp the float test accuracy,
measured with onnxruntime on the written file, into its metadata.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fusec.models.deps import need_torch, require
from fusec.models.info import DigitsModel
from fusec.models.onnx_file import finalize, stamp
from fusec.models.torch_export import export_torch


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, bundled with sklearn, no download), split
    ``train_test_split(test_size=0.25, random_state=0)``: 1347 train / 450 test. Pixels
    (0..16) are scaled by 1/16 to float32 in [0, 1]; X is ``[N, 64]``, y int64."""
    ds = require("sklearn.datasets", "the digits data set")
    ms = require("sklearn.model_selection", "the digits data set")
    X, y = ds.load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    Xtr, Xte, ytr, yte = ms.train_test_split(X, y, test_size=0.25, random_state=0)
    return Xtr, Xte, ytr, yte


def _ort_accuracy(path: Path, X: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    fixed = s.get_inputs()[0].shape[0]
    if isinstance(fixed, int):  # fixed batch: run in chunks of it
        preds = [s.run(None, {name: X[i:i + fixed]})[0].argmax(-1) for i in range(0, len(X) - len(X) % fixed, fixed)]
        pred = np.concatenate(preds)
        y = y[: len(pred)]
    else:
        pred = s.run(None, {name: X})[0].argmax(-1)
    return float((pred == y).mean())


def train_digits_mlp(path: str | os.PathLike, hidden: int = 32, batch: int | None = None,
                     seed: int = 0) -> DigitsModel:
    """Train ``64 -> hidden -> ReLU -> 10`` with scikit-learn's MLPClassifier on the
    digits split of :func:`digits_split` and write it with ``onnx.helper`` (opset 17):
    ``x [batch, 64] -> Gemm(transB=1) -> Relu -> Gemm(transB=1) -> logits [batch, 10]``.
    Needs scikit-learn only (no torch). ``batch=None`` leaves the batch dim symbolic.
    Returns ``(path, X_test [450, 64] float32, y_test)`` with ``.accuracy``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nn = require("sklearn.neural_network", "train_digits_mlp")
    exc = require("sklearn.exceptions", "train_digits_mlp")
    path = Path(path)
    Xtr, Xte, ytr, yte = digits_split()
    clf = nn.MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu", solver="adam", alpha=1e-4,
                           learning_rate_init=1e-3, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", exc.ConvergenceWarning)
        clf.fit(Xtr, ytr)
    (W1, W2), (b1, b2) = clf.coefs_, clf.intercepts_
    bdim = "batch" if batch is None else int(batch)
    inits = [
        numpy_helper.from_array(W1.T.astype(np.float32), "fc1.weight"),  # [hidden, 64]
        numpy_helper.from_array(b1.astype(np.float32), "fc1.bias"),
        numpy_helper.from_array(W2.T.astype(np.float32), "fc2.weight"),  # [10, hidden]
        numpy_helper.from_array(b2.astype(np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [bdim, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [bdim, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fusec.models")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    model.doc_string = ("sklearn digits 8x8, pixels/16 in [0,1], x [batch,64] -> logits [batch,10]; "
                        "train_test_split(test_size=0.25, random_state=0)")
    tmpdir = tempfile.TemporaryDirectory(prefix="fusec-mlp-")
    with tmpdir:
        tmp = Path(tmpdir.name) / path.name
        onnx.save(model, str(tmp))
        config = dict(hidden=hidden, seed=seed, batch=batch, trainer="sklearn.MLPClassifier",
                      sklearn=require("sklearn", "train_digits_mlp").__version__,
                      sklearn_train_accuracy=float(clf.score(Xtr, ytr)))
        finalize(tmp, path, "digits_mlp", "onnx.helper", config, None)
    acc = _ort_accuracy(path, Xte, yte)
    info = stamp(path, "fusec.float_accuracy", f"{acc:.6f}")
    return DigitsModel(path, Xte, yte, acc, info)


def cnn_module(seed: int = 0):
    """The digits CNN: ``[N,1,8,8] -> Conv(8,3x3,pad1) -> ReLU -> MaxPool2 -> Conv(16,3x3,
    pad1) -> ReLU -> AvgPool2 -> Flatten(64) -> Linear(10)``, untrained (seeded init)."""
    torch = need_torch("the digits CNN")
    nn = torch.nn
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    )


def train_digits_cnn(path: str | os.PathLike, epochs: int = 60, batch: int | None = None,
                     seed: int = 0) -> DigitsModel:
    """Train the :func:`cnn_module` CNN with torch (Adam, fixed seed, a few seconds on a CPU)
    on the digits split and export it with the legacy exporter, opset 17: input ``x``
    float32 ``[batch, 1, 8, 8]`` (pixels/16), output ``logits [batch, 10]``. Returns
    ``(path, X_test [450,1,8,8] float32, y_test)`` with ``.accuracy``."""
    torch = need_torch("train_digits_cnn")
    path = Path(path)
    Xtr, Xte, ytr, yte = digits_split()
    Xtr4, Xte4 = Xtr.reshape(-1, 1, 8, 8), Xte.reshape(-1, 1, 8, 8)
    model = cnn_module(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    xt, yt = torch.from_numpy(Xtr4), torch.from_numpy(ytr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise reproducible and fast enough for this size
    try:
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), 64):
                idx = perm[i:i + 64]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    dyn = {"x": {0: "batch"}, "logits": {0: "batch"}} if batch is None else {}
    ex = torch.from_numpy(Xte4[: (batch or 1)])
    out, tmp, opset = export_torch(model, (ex,), path, ["x"], ["logits"], dyn, "legacy", 17)
    config = dict(epochs=epochs, seed=seed, batch=batch, trainer="torch Adam lr=5e-3 bs=64",
                  torch=torch.__version__)
    with tmp:
        finalize(out, path, "digits_cnn", "legacy", config, None)
    acc = _ort_accuracy(path, Xte4, yte)
    info = stamp(path, "fusec.float_accuracy", f"{acc:.6f}")
    return DigitsModel(path, Xte4, yte, acc, info)
