"""The ONNX file of a configuration: given, or exported once (random weights) and cached."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from fusec.bench.plan import Case
from fusec.bench.presets import ModelSpec
from fusec.bench.stage import module_argv, run_stage


def export_model(spec: ModelSpec, workdir: Path, positions: int, timeout: float, case: Case) -> Path:
    """The ONNX file of ``spec``: given, or exported once with random weights and cached
    (by every parameter) under ``workdir/models``. Runs ``python -m fusec.models`` in a
    subprocess: torch is needed there only, never by the bench itself."""
    if spec.path:
        return Path(spec.path)
    out = Path(workdir) / "models" / f"{spec.cache_name(positions)}.onnx"
    done = out.with_suffix(".done")
    if not done.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        run_stage(module_argv("fusec.models", *spec.export_argv(out, positions)), "model export", case, timeout,
                  out.with_suffix(".log"))
        done.write_text(json.dumps(asdict(spec)))
    return out
