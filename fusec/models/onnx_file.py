"""Writing an exported model as one self-contained, reproducible ONNX file.

Every builder ends here: the exporter's temporary output is loaded (external data pulled
in), stripped of per-node debug annotations (not byte-reproducible, and they carry local
paths), stamped with ``fusec.*`` metadata and saved inline unless it is over ~1.9 GB.
"""
from __future__ import annotations

import json
from pathlib import Path

from fusec.errors import CompileError
from fusec.models.info import ExportedModel, load_info

INLINE_LIMIT = 1_900_000_000  # protobuf's 2 GiB cap, with room for the graph


def finalize(tmp_path: Path, path: Path, kind: str, exporter: str, config: dict, vocab: int | None,
             extra: dict[str, str] | None = None, out_dims: dict[str, tuple] | None = None) -> ExportedModel:
    """Load what an exporter wrote (pulling in external data), stamp metadata, pin output
    dims the exporter left as made-up symbols (``out_dims``: name -> dims, str = symbolic),
    check, and save as one file at ``path``."""
    import onnx

    m = onnx.load(str(tmp_path))  # loads any external data next to it
    strip_debug_info(m.graph)
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
    if m.ByteSize() < INLINE_LIMIT:
        onnx.checker.check_model(m)
        onnx.save(m, str(path))
    else:
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")
        onnx.checker.check_model(str(path))
    return load_info(path)


def strip_debug_info(graph) -> None:
    """Drop per-node / per-value exporter annotations (the dynamo exporter's stack traces,
    FX node dumps and module scopes: ~190 kB on a tiny BERT, with local file paths, and not
    byte-reproducible across runs). Nothing a runtime reads."""
    for n in graph.node:
        if hasattr(n, "metadata_props"):  # onnx >= 1.16
            del n.metadata_props[:]
        n.ClearField("doc_string")
        for a in n.attribute:
            if a.g is not None and a.HasField("g"):
                strip_debug_info(a.g)
            for sub in a.graphs:
                strip_debug_info(sub)
    for v in list(graph.value_info) + list(graph.input) + list(graph.output) + list(graph.initializer):
        if hasattr(v, "metadata_props"):
            del v.metadata_props[:]
        v.ClearField("doc_string")


def stamp(path: Path, key: str, value: str) -> ExportedModel:
    """Add one ``metadata_props`` entry to a written file (e.g. the measured accuracy)."""
    import onnx

    m = onnx.load(str(path))
    m.metadata_props.add(key=key, value=value)
    onnx.save(m, str(path))
    return load_info(path)
