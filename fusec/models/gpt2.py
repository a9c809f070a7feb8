"""GPT-2: a random-init ``transformers.GPT2Model`` decoder stack, exported to ONNX.

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


def gpt2_module(layers: int = 2, hidden: int = 128, heads: int = 2, vocab: int = 1000,
                positions: int = 64, seed: int = 0, perturb: float = 0.1):
    """The torch module :func:`export_gpt2` exports: random-init ``GPT2Model`` (eager
    attention, causal, gelu_new = tanh GELU), biases/LayerNorms perturbed, wrapped as
    ``forward(input_ids) -> last_hidden_state``."""
    torch = need_torch("building GPT-2")
    tf = need_transformers("building GPT-2")
    if hidden % heads:
        raise ParameterError(f"hidden={hidden} is not a multiple of heads={heads}")
    cfg = tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                        n_positions=positions, use_cache=False, bos_token_id=vocab - 1,
                        eos_token_id=vocab - 1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    gpt = tf.GPT2Model(cfg).eval()
    check_eager(gpt)
    if perturb:
        perturb_weights(gpt, seed, perturb)

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
    check_shape_args(exporter, batch, seq, positions, hidden, heads)
    torch = need_torch("export_gpt2")
    path = Path(path)
    module = gpt2_module(layers, hidden, heads, vocab, positions, seed)
    tb = trace_batch(batch, dynamic, exporter)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tb, seq), generator=g)
    dyn = {"input_ids": {0: "batch", 1: "sequence"}} if dynamic else {}
    if dynamic and exporter == "legacy":
        dyn["last_hidden_state"] = {0: "batch", 1: "sequence"}
    out, tmp, opset = export_torch(module, (ids,), path, ["input_ids"], ["last_hidden_state"], dyn,
                                   exporter, opset, {"sequence": positions})
    config = dict(layers=layers, hidden=hidden, heads=heads, vocab=vocab, positions=positions, seq=seq,
                  batch=batch, seed=seed, dynamic=dynamic,
                  torch=torch.__version__, transformers=need_transformers("export_gpt2").__version__)
    with tmp:
        return finalize(out, path, "gpt2", exporter, config, vocab,
                        out_dims={"last_hidden_state": seq_dims(dynamic, batch, seq, hidden)})
