"""BERT: a random-init ``transformers.BertModel`` encoder, exported to ONNX.

Needs torch and transformers (+ onnxscript for ``exporter="dynamo"``).
"""
from __future__ import annotations

import os
from pathlib import Path

from fusec.errors import ParameterError
from fusec.models.deps import need_torch, need_transformers
from fusec.models.info import ExportedModel
from fusec.models.onnx_file import finalize
from fusec.models.torch_export import (check_eager, check_shape_args, export_torch, perturb_weights, seq_dims,
                                       trace_batch)


def bert_module(layers: int = 2, hidden: int = 128, heads: int = 2, intermediate: int = 512,
                vocab: int = 1000, positions: int = 512, seed: int = 0, perturb: float = 0.1):
    """The torch module :func:`export_bert` exports: a random-init ``BertModel`` (eager
    attention, no pooler, eval mode) with biases and LayerNorm parameters perturbed, wrapped
    as ``forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state``."""
    torch = need_torch("building BERT")
    tf = need_transformers("building BERT")
    if hidden % heads:
        raise ParameterError(f"hidden={hidden} is not a multiple of heads={heads}")
    cfg = tf.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=positions, type_vocab_size=2, hidden_act="gelu")
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    bert = tf.BertModel(cfg, add_pooling_layer=False).eval()
    check_eager(bert)
    if perturb:
        perturb_weights(bert, seed, perturb)

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
    check_shape_args(exporter, batch, seq, positions, hidden, heads)
    torch = need_torch("export_bert")
    path = Path(path)
    module = bert_module(layers, hidden, heads, intermediate, vocab, positions, seed)
    tb = trace_batch(batch, dynamic, exporter)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tb, seq), generator=g)
    am = torch.ones(tb, seq, dtype=torch.long)
    tt = torch.zeros(tb, seq, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names} if dynamic else {}
    if dynamic and exporter == "legacy":
        dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
    out, tmp, opset = export_torch(module, (ids, am, tt), path, names, ["last_hidden_state"], dyn,
                                   exporter, opset, {"sequence": positions})
    config = dict(layers=layers, hidden=hidden, heads=heads, intermediate=intermediate, vocab=vocab,
                  positions=positions, seq=seq, batch=batch, seed=seed, dynamic=dynamic,
                  torch=torch.__version__, transformers=need_transformers("export_bert").__version__)
    with tmp:
        return finalize(out, path, "bert", exporter, config, vocab,
                        out_dims={"last_hidden_state": seq_dims(dynamic, batch, seq, hidden)})
