"""Shared steps of the torch-based builders: quiet exporters, perturbed random weights,
eager attention, and one ``torch.onnx.export`` call for both exporters.

Nothing here imports torch at module level; each function asks :mod:`fusec.models.deps`.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

from fusec.errors import CompileError, ParameterError
from fusec.models.deps import need_torch, require

EXPORTERS = ("legacy", "dynamo")


@contextlib.contextmanager
def quiet():
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


def perturb_weights(module, seed: int, scale: float = 0.1) -> None:
    """Add ``scale * N(0,1)`` noise to every bias and every LayerNorm weight, so that no
    exporter can fold a zero bias or a unit LayerNorm scale away."""
    torch = need_torch("perturbing weights")
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


def check_eager(model) -> None:
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl != "eager":
        raise CompileError(f"transformers chose attention implementation {impl!r}, expected 'eager'",
                           hint="upgrade transformers (>= 4.36 honours attn_implementation='eager')")


def export_torch(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                 dynamic: dict[str, dict[int, str]], exporter: str, opset: int | None,
                 dim_max: dict[str, int] | None = None) -> tuple[Path, tempfile.TemporaryDirectory, int]:
    """Run torch.onnx.export into a temp dir; returns (file, tempdir handle, opset).
    An exporter failure becomes a CompileError."""
    torch = need_torch("exporting a torch model to ONNX")
    if exporter not in EXPORTERS:
        raise ParameterError(f"unknown exporter {exporter!r}", hint="use 'legacy' or 'dynamo'")
    if exporter == "dynamo":
        require("onnxscript", "the dynamo ONNX exporter")
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
        with quiet(), torch.no_grad():
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
        with quiet():
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                     input_names=input_names, output_names=output_names,
                                     dynamic_shapes=shapes if dims else None, verbose=False)
            prog.save(str(out), external_data=False)
    return out, tmpdir, opset


def check_shape_args(exporter: str, batch: int, seq: int, positions: int | None,
                     hidden: int = 0, heads: int = 1) -> None:
    if heads < 1 or hidden % heads:
        raise ParameterError(f"hidden={hidden} is not a multiple of heads={heads}")
    if exporter not in EXPORTERS:
        raise ParameterError(f"unknown exporter {exporter!r}", hint="use 'legacy' or 'dynamo'")
    if batch < 1 or seq < 1:
        raise ParameterError(f"batch and seq must be >= 1 (got batch={batch}, seq={seq})")
    if positions is not None and seq > positions:
        raise ParameterError(f"seq={seq} exceeds the model's {positions} position embeddings")


def seq_dims(dynamic: bool, batch: int, seq: int, *rest: int) -> tuple:
    return (("batch", "sequence") if dynamic else (batch, seq)) + tuple(rest)


def trace_batch(batch: int, dynamic: bool, exporter: str) -> int:
    # torch.export specialises a dimension whose example size is 1; trace a dynamic batch at 2
    return 2 if (dynamic and exporter == "dynamo" and batch == 1) else batch
