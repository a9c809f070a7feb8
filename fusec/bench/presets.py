"""The models ``fusec bench`` knows by name, and how ``--model`` text becomes a :class:`ModelSpec`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fusec.errors import FusecError


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a preset exported with random weights, or a given ONNX file."""

    name: str
    kind: str | None = None          # "bert" | "gpt2" (exported by fusec.models); None: ``path``
    path: str | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    positions: int | None = None     # at least this; raised to the longest sequence benchmarked
    bits: int = 50                   # ring width n (DESIGN §4)

    @property
    def label(self) -> str:
        base = PRESETS.get(self.name)
        return f"{self.name}-L{self.layers}" if base and base.layers != self.layers else self.name

    def export_argv(self, out: Path, positions: int) -> list[str]:
        argv = [self.kind, str(out), "--layers", str(self.layers), "--hidden", str(self.hidden), "--heads",
                str(self.heads), "--vocab", str(self.vocab), "--positions", str(positions)]
        if self.kind == "bert":
            argv += ["--intermediate", str(self.intermediate)]
        return argv

    def cache_name(self, positions: int) -> str:
        return (f"{self.kind}-L{self.layers}-H{self.hidden}-A{self.heads}-I{self.intermediate}-V{self.vocab}"
                f"-P{positions}")


PRESETS: dict[str, ModelSpec] = {
    "bert-base": ModelSpec("bert-base", "bert", None, 12, 768, 12, 3072, 30522, 512, 50),
    "gpt2": ModelSpec("gpt2", "gpt2", None, 12, 768, 12, 3072, 50257, 1024, 50),
    # small enough for the CPU backend and tests (DESIGN §4: n = 37 for bert-tiny)
    "bert-tiny": ModelSpec("bert-tiny", "bert", None, 2, 128, 2, 512, 1000, 512, 37),
    "gpt2-tiny": ModelSpec("gpt2-tiny", "gpt2", None, 2, 128, 2, 512, 1000, 64, 37),
}


def resolve_model(text: str, layers: int | None = None, bits: int | None = None) -> ModelSpec:
    """A preset name or an ONNX file -> ModelSpec, with ``--layers``/``--bits`` applied."""
    if text in PRESETS:
        spec = PRESETS[text]
        if layers is not None:
            spec = replace(spec, layers=layers)
    elif text.endswith(".onnx") or Path(text).is_file():
        if not Path(text).is_file():
            raise FusecError(f"model file {text} does not exist")
        if layers is not None:
            raise FusecError(f"--layers applies to the presets, not to a given ONNX file ({text})",
                             "export the model with the layers you want (python -m fusec.models ...)")
        spec = ModelSpec(Path(text).stem, path=str(Path(text).resolve()))
    else:
        raise FusecError(f"unknown model {text!r}", f"use a preset ({', '.join(PRESETS)}) or a path to an .onnx file")
    return replace(spec, bits=bits) if bits is not None else spec
