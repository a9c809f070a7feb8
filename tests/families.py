"""Tiny random-init models of the families users bring (issue 12, item 3), for the tests.

Each builder makes a transformers / torch module from a small config (hidden 32, 2 layers,
2 heads, no downloads, eager attention), exports it with ``fusec.models``' exporter helper
(legacy TorchScript exporter at opset 17, or the dynamo exporter at 18), static shapes
(batch 1, seq 16), and returns the path plus one request (the inputs onnxruntime takes).
Nothing imports torch at module level: the tests skip cleanly where torch is absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SEQ = 16
HIDDEN, LAYERS, HEADS, FFN, VOCAB = 32, 2, 2, 64, 120


@dataclass
class Family:
    name: str
    build: Callable[[], tuple]              # -> (torch module, example args tuple, input names, request)
    output: str = "last_hidden_state"


def _tf():
    import transformers  # noqa: PLC0415
    return transformers


def _ids(seed: int, low: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, VOCAB, (1, SEQ)).astype(np.int64)


def _mask(n_real: int = SEQ) -> np.ndarray:
    return (np.arange(SEQ) < n_real).astype(np.int64)[None]


def last_hidden_state(m):
    """A transformers model as ``forward(input_ids, attention_mask) -> last_hidden_state``,
    the signature the exporters trace."""
    import torch  # noqa: PLC0415

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Wrap(m).eval()


def _encoder(config_cls: str, model_cls: str, **extra):
    """A text encoder ``forward(input_ids, attention_mask) -> last_hidden_state``."""
    def build():
        import torch  # noqa: PLC0415
        tf = _tf()
        cfg = getattr(tf, config_cls)(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, intermediate_size=FFN,
                                      max_position_embeddings=64, **extra)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        kw = {"add_pooling_layer": False} if model_cls in ("RobertaModel", "XLMRobertaModel", "MPNetModel") else {}
        m = getattr(tf, model_cls)(cfg, **kw).eval()
        from fusec.models.torch_export import perturb_weights  # noqa: PLC0415
        perturb_weights(m, 0)

        req = {"input_ids": _ids(1), "attention_mask": _mask()}
        args = tuple(torch.from_numpy(req[k]) for k in ("input_ids", "attention_mask"))
        return last_hidden_state(m), args, ["input_ids", "attention_mask"], req
    return build


def _vit():
    import torch  # noqa: PLC0415
    tf = _tf()
    cfg = tf.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, intermediate_size=FFN)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    m = tf.ViTModel(cfg, add_pooling_layer=False).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).last_hidden_state

    req = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    return Wrap(m).eval(), (torch.from_numpy(req["pixel_values"]),), ["pixel_values"], req


ACTIVATIONS = ("Sigmoid", "Tanh", "Softplus", "LeakyReLU", "ELU", "SELU", "Hardsigmoid", "Hardswish", "Mish", "Erf")


def _mlp(act: str):
    """``Linear(8, 16) -> act -> Linear(16, 4)`` on a float input ``x [4, 8]``."""
    def build():
        import torch  # noqa: PLC0415

        class Erf(torch.nn.Module):
            def forward(self, x):
                return torch.erf(x)

        torch.manual_seed(0)
        layer = Erf() if act == "Erf" else getattr(torch.nn, act)()
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), layer, torch.nn.Linear(16, 4)).eval()
        req = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
        return m, (torch.from_numpy(req["x"]),), ["x"], req
    return build


def _rnn(kind: str, bidirectional: bool = False):
    """``nn.LSTM`` / ``nn.GRU`` (input 8, hidden 16, batch first) on ``x [1, 12, 8]``, then a
    linear head on every step's output."""
    def build():
        import torch  # noqa: PLC0415

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = getattr(torch.nn, kind)(8, 16, batch_first=True, bidirectional=bidirectional)
                self.head = torch.nn.Linear(32 if bidirectional else 16, 4)

            def forward(self, x):
                return self.head(self.rnn(x)[0])

        torch.manual_seed(0)
        req = {"x": np.random.default_rng(0).standard_normal((1, 12, 8)).astype(np.float32)}
        return Net().eval(), (torch.from_numpy(req["x"]),), ["x"], req
    return build


FAMILIES = {
    "lstm": Family("lstm", _rnn("LSTM"), output="y"),
    "gru-bidirectional": Family("gru-bidirectional", _rnn("GRU", bidirectional=True), output="y"),
    "roberta": Family("roberta", _encoder("RobertaConfig", "RobertaModel", pad_token_id=1)),
    "xlm-roberta": Family("xlm-roberta", _encoder("XLMRobertaConfig", "XLMRobertaModel", pad_token_id=1)),
    "mpnet": Family("mpnet", _encoder("MPNetConfig", "MPNetModel", pad_token_id=1)),
    "deberta-v2": Family("deberta-v2", _encoder("DebertaV2Config", "DebertaV2Model", relative_attention=True,
                                                position_buckets=8, max_relative_positions=16,
                                                pos_att_type=["p2c", "c2p"], position_biased_input=False)),
    "vit": Family("vit", _vit),
    # a decoder: rotary positions, RMSNorm, SiLU-gated MLP, grouped-query attention, causal mask
    "llama": Family("llama", _encoder("LlamaConfig", "LlamaModel", num_key_value_heads=1)),
    **{f"mlp-{a.lower()}": Family(f"mlp-{a.lower()}", _mlp(a), output="y") for a in ACTIVATIONS},
}


def export(name: str, out_dir: Path, exporter: str = "legacy", opset: int | None = None
           ) -> tuple[Path, dict[str, np.ndarray], str]:
    """Export family ``name``; returns (onnx path, request, output name)."""
    from fusec.models.torch_export import export_torch  # noqa: PLC0415

    fam = FAMILIES[name]
    module, args, names, req = fam.build()
    path = Path(out_dir) / f"{name}_{exporter}.onnx"
    out, tmp, _ = export_torch(module, args, path, names, [fam.output], {}, exporter, opset)
    with tmp:
        path.write_bytes(Path(out).read_bytes())
    return path, req, fam.output
