"""What a builder wrote and how to feed it, read back from the ONNX file alone.

Builders stamp their facts (kind, exporter, config, vocabulary size) into the file's
``metadata_props`` (keys ``fusec.*``), so :func:`load_info` recovers them from a committed
file without torch; :func:`example_inputs` makes deterministic feeds from them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusec.errors import CompileError

@dataclass
class ExportedModel:
    """An ONNX file written by a builder, and how to feed it.

    ``inputs`` / ``outputs`` map names to shapes whose symbolic entries are strings
    (``"batch"``, ``"sequence"``); ``input_dtypes`` maps input names to numpy dtype names.
    """

    path: Path
    kind: str
    inputs: dict[str, tuple]
    input_dtypes: dict[str, str]
    outputs: dict[str, tuple]
    opset: int
    exporter: str = ""
    vocab_size: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def example_inputs(self, batch: int = 1, seq: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Random feeds for ``batch`` x ``seq`` (see :func:`example_inputs`)."""
        return example_inputs(self, batch=batch, seq=seq, seed=seed)


class DigitsModel(tuple):
    """``(path, X_test, y_test)`` of a trained digits model; ``.accuracy`` is the float
    test accuracy (measured with onnxruntime on the written file), ``.info`` its
    :class:`ExportedModel`."""

    def __new__(cls, path: Path, X_test: np.ndarray, y_test: np.ndarray, accuracy: float, info: ExportedModel):
        self = super().__new__(cls, (path, X_test, y_test))
        self.accuracy = float(accuracy)
        self.info = info
        return self

    path = property(lambda self: self[0])
    X_test = property(lambda self: self[1])
    y_test = property(lambda self: self[2])

    def __repr__(self) -> str:
        return (f"DigitsModel(path={str(self[0])!r}, X_test={self[1].shape}, y_test={self[2].shape}, "
                f"accuracy={self.accuracy:.4f})")


def _value_info_shapes(values) -> tuple[dict, dict]:
    import onnx

    shapes, dtypes = {}, {}
    for v in values:
        tt = v.type.tensor_type
        shapes[v.name] = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
        dtypes[v.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    return shapes, dtypes


def load_info(path: str | os.PathLike) -> ExportedModel:
    """Read an ONNX file's inputs, outputs and the ``fusec.*`` metadata a builder wrote.
    Works on any ONNX file (no torch needed); missing metadata leaves defaults."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise CompileError(f"model file {path} does not exist")
    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    ins, in_dt = _value_info_shapes([v for v in m.graph.input if v.name not in init])
    outs, _ = _value_info_shapes(m.graph.output)
    props = {p.key: p.value for p in m.metadata_props}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    vocab = props.get("fusec.vocab_size")
    return ExportedModel(
        path=path,
        kind=props.get("fusec.kind", ""),
        inputs=ins,
        input_dtypes=in_dt,
        outputs=outs,
        opset=int(opset),
        exporter=props.get("fusec.exporter", ""),
        vocab_size=int(vocab) if vocab else None,
        config=json.loads(props.get("fusec.config", "{}")),
    )


def example_inputs(model: ExportedModel | str | os.PathLike, batch: int = 1, seq: int | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random feeds for a model from this module (or any ONNX file).

    Symbolic ``batch`` / ``sequence`` dims take ``batch`` / ``seq`` (``seq`` defaults to the
    config's ``seq``, else 16). ``input_ids`` are uniform in ``[0, vocab)`` (position 0 of
    each row is token 101 = [CLS] when vocab > 101, only for realism); ``attention_mask`` is
    all ones except that, for batch > 1, the last row's last quarter is padding (0), so the
    mask path is exercised; ``token_type_ids`` are 0 in the first half and 1 in the second;
    float inputs are uniform in [0, 1).
    """
    info = model if isinstance(model, ExportedModel) else load_info(model)
    rng = np.random.default_rng(seed)
    if seq is None:
        seq = int(info.config.get("seq", 16))
    vocab = info.vocab_size or 1000
    feeds = {}
    for name, shape in info.inputs.items():
        dims = []
        for d in shape:
            if isinstance(d, str):
                dims.append(batch if d == "batch" else seq if d in ("sequence", "seq") else 1)
            else:
                dims.append(int(d))
        dt = np.dtype(info.input_dtypes[name])
        if name == "input_ids":
            a = rng.integers(0, vocab, size=dims, dtype=np.int64)
            if vocab > 101 and a.ndim == 2:
                a[:, 0] = 101
        elif name == "attention_mask":
            a = np.ones(dims, dtype=np.int64)
            if a.ndim == 2 and a.shape[0] > 1 and a.shape[1] >= 4:
                a[-1, a.shape[1] - a.shape[1] // 4:] = 0
        elif name == "token_type_ids":
            a = np.zeros(dims, dtype=np.int64)
            if a.ndim == 2:
                a[:, a.shape[1] // 2:] = 1
        elif np.issubdtype(dt, np.floating):
            a = rng.random(dims, dtype=np.float64)
        else:
            a = rng.integers(0, 2, size=dims)
        feeds[name] = a.astype(dt)
    return feeds


def op_counts(path: str | os.PathLike) -> dict[str, int]:
    """Op type -> count over the main graph (sorted by count), e.g. for reports."""
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node).most_common())
