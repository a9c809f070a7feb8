"""Checks an untrusted ONNX model must pass before the frontend evaluates any of it.

The frontend (``ir/onnx_frontend.py``) calls these at load; each failure is one
``CompileError`` line naming the file and what is wrong:

* **opsets** newer than the installed onnx knows (the checker itself accepts opset 99 and
  then validates nothing against it);
* the **checker** with full (strict) shape and type inference, so mismatched element
  types (``Add(float, double)``), cycles and duplicate tensor names are refused with the
  checker's own message, on one line;
* **external data** must lie inside the model's folder (no ``../`` or absolute paths, no
  symlink out of it) and be no larger than the limits;
* **sizes**: every initializer's declared dims, every input shape and every shape ONNX
  shape inference derives are checked against ``fusec.limits`` before anything of that
  size is allocated or folded;
* **values**: NaN in a float constant is refused naming it; +-inf or a magnitude past
  ``SENTINEL`` only where it is a mask sentinel (a single fill value, or a mask of zeros and
  sentinels), which ``passes/clamp_constants`` clamps; anywhere else it is a corrupt weight.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from fusec.errors import CompileError
from fusec.limits import check_size, current, elements, fmt_bytes, HINT

__all__ = ["one_line", "check_opsets", "check_model", "check_external_data", "check_initializer_size",
           "check_constant_values", "itemsize", "check_inferred_shapes", "data_prop_is_bounded", "SENTINEL"]

#: magnitudes that only ever mean "infinity" in exported models (same threshold as clamp_constants)
SENTINEL = 1e15

#: bytes an element of a computed tensor takes inside the compiler (the IR evaluates in float64/int64)
IR_ITEMSIZE = 8

_REEXPORT = "re-export the model; `python -m onnx.checker` shows the same problem"

#: numpy-style broadcasting starts at opset 7; before it, ops with a ``broadcast`` attribute are refused
MIN_OPSET = 7


def _legacy_broadcast(op: str, version: int) -> bool:
    try:
        return "broadcast" in onnx.defs.get_schema(op, version).attributes
    except Exception:  # noqa: BLE001  (no such op at that opset: the checker says so)
        return False


def one_line(e: BaseException | str, limit: int = 400) -> str:
    """An exception's message on one line (the checker's span several)."""
    s = " ".join(str(e).split()) or (type(e).__name__ if isinstance(e, BaseException) else "")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def itemsize(elem_type: int) -> int:
    """Bytes per element of an ONNX element type (8 where unknown: the pessimistic bound)."""
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # noqa: BLE001  (UNDEFINED, STRING, or a number onnx does not know)
        return 8


# ---------------------------------------------------------------------- opsets and the checker
def _known_opsets() -> dict[str, int]:
    """The newest opset of each domain the installed onnx has schemas for."""
    out: dict[str, int] = {"": onnx.defs.onnx_opset_version()}
    for s in onnx.defs.get_all_schemas_with_history():
        if s.domain:
            out[s.domain] = max(out.get(s.domain, 0), s.since_version)
    return out


def check_opsets(proto: onnx.ModelProto, label: str) -> None:
    known = _known_opsets()
    seen: set[str] = set()
    for imp in proto.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in seen:
            raise CompileError(f"{label} imports opset domain {domain or 'ai.onnx'!r} twice", _REEXPORT)
        seen.add(domain)
        newest = known.get(domain)
        if newest is not None and imp.version > newest:
            raise CompileError(f"{label} uses opset {imp.version} of {domain or 'ai.onnx'!r}, newer than the installed "
                               f"onnx {onnx.__version__} knows (up to {newest})",
                               f"re-export with opset {newest} or lower, or upgrade onnx")
        if imp.version < 1:
            raise CompileError(f"{label} declares opset {imp.version} of {domain or 'ai.onnx'!r}", _REEXPORT)
        if domain == "" and imp.version < MIN_OPSET:
            legacy = sorted({n.op_type for n in proto.graph.node if not n.domain and _legacy_broadcast(n.op_type,
                                                                                                     imp.version)})
            if legacy:
                raise CompileError(f"{label} uses opset {imp.version} of 'ai.onnx', where {', '.join(legacy)} "
                                   f"broadcast only through a legacy 'broadcast' attribute fusec does not model "
                                   f"(opset {MIN_OPSET} and newer broadcast like numpy)",
                                   "convert it: onnx.version_converter.convert_version(model, 17)")


def check_model(light: onnx.ModelProto, label: str) -> None:
    """onnx.checker with strict shape/type inference (``full_check``) on the weight-less model;
    graph output names must be unique too (the checker lets a repeated one through)."""
    try:
        onnx.checker.check_model(light, full_check=True)
    except Exception as e:  # noqa: BLE001  (ValidationError, InferenceError, C++ errors)
        raise CompileError(f"{label} is not a valid ONNX model: {one_line(e)}", _REEXPORT) from None
    outs = [o.name for o in light.graph.output]
    dup = sorted({n for n in outs if outs.count(n) > 1})
    if dup:
        raise CompileError(f"{label} is not a valid ONNX model: graph output {dup[0]!r} is listed "
                           f"{outs.count(dup[0])} times", _REEXPORT)


# ---------------------------------------------------------------------- external data
def _external_fields(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def check_external_data(tensors: Iterable[TensorProto], base: Path, label: str) -> None:
    """Every external-data reference stays inside ``base`` (the model's folder, symlinks
    resolved), names a regular file, and asks for no more than the limits allow."""
    root = base.resolve()
    lim = current()
    for t in tensors:
        f = _external_fields(t)
        loc = f.get("location", "")
        if not loc:
            raise CompileError(f"{label}: tensor {t.name!r} says its data is external but names no file", _REEXPORT)
        if os.path.isabs(loc) or Path(loc).drive:
            raise CompileError(f"{label}: external data of tensor {t.name!r} is an absolute path {loc!r}; only files "
                               f"inside the model's folder are read", "save the model with its .data file beside it")
        path = (base / loc)
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError, ValueError):        # a symlink loop, a NUL byte
            raise CompileError(f"{label}: external data path {loc!r} of tensor {t.name!r} cannot be resolved",
                               "save the model with its .data file beside it") from None
        if real != root and root not in real.parents:
            raise CompileError(f"{label}: external data {loc!r} of tensor {t.name!r} lies outside the model's folder "
                               f"{str(root)!r}; refused", "save the model with its .data file beside it")
        if not real.is_file():
            raise CompileError(f"{label}: external data file {str(path)!r} for tensor {t.name!r} is missing"
                               + (" (not a regular file)" if real.exists() else ""),
                               "copy the .data file(s) saved with the model next to the .onnx file")
        try:
            offset = int(f.get("offset", "0") or 0)
            length = int(f["length"]) if f.get("length") else None
        except ValueError:
            raise CompileError(f"{label}: tensor {t.name!r} has a non-numeric external data offset/length "
                               f"({f.get('offset')!r}, {f.get('length')!r})", _REEXPORT) from None
        size = real.stat().st_size
        want = elements(t.dims) * itemsize(t.data_type)
        check_initializer_size(t, label)
        if offset < 0 or (length is not None and length < 0):
            raise CompileError(f"{label}: tensor {t.name!r} has a negative external data offset or length", _REEXPORT)
        span = length if length is not None else max(size - offset, 0)
        if span > lim.max_bytes:
            raise CompileError(f"{label}: external data of tensor {t.name!r} is {fmt_bytes(span)}, over the limit of "
                               f"{fmt_bytes(lim.max_bytes)}", HINT)
        if offset + (length if length is not None else want) > size:
            raise CompileError(f"{label}: external data of tensor {t.name!r} needs bytes up to "
                               f"{offset + (length if length is not None else want):,} of {loc!r}, which has {size:,}",
                               "the .data file is truncated or belongs to another export; copy the right one")


# ---------------------------------------------------------------------- sizes and values
def check_initializer_size(t: TensorProto, label: str) -> None:
    """An initializer's declared dims against the limits, before its data is decoded."""
    check_size(t.dims, itemsize(t.data_type), f"{label}: initializer {t.name!r}")


def check_constant_values(name: str, v: np.ndarray, what: str = "initializer") -> None:
    """NaN never; +-inf or |v| >= SENTINEL only as a mask sentinel (see module doc)."""
    if v.dtype.kind not in "fc" or v.size == 0:
        return
    with np.errstate(all="ignore"):
        a = np.asarray(v, np.float64) if v.dtype.kind == "f" else np.abs(v)
        nan = np.isnan(a)
        if nan.any():
            i = tuple(int(k) for k in np.argwhere(nan)[0])
            raise CompileError(f"{what} {name!r} contains {int(nan.sum())} NaN value(s) (first at index {i})",
                               "the weights are corrupt; re-export or re-train the model")
        huge = ~np.isfinite(a) | (np.abs(a) >= SENTINEL)
        if not huge.any():
            return
        single = bool(np.all(a == a.flat[0]))
        mask = bool(np.all(huge | (a == 0)))
    if not (single or mask):
        i = tuple(int(k) for k in np.argwhere(huge)[0])
        raise CompileError(f"{what} {name!r} contains {int(huge.sum())} infinite or huge value(s) (|v| >= "
                           f"{SENTINEL:g}; {float(a[i]):g} at index {i}) among ordinary values; fixed point cannot "
                           f"hold them", "the weights are corrupt; re-export or re-train the model (only masks may "
                           "use +-inf / finfo.min)")


def check_inferred_shapes(inferred: onnx.ModelProto) -> None:
    """Every shape ONNX shape inference found (static dims only) against the limits, naming the
    node that produces it: the model would allocate it when evaluated or folded."""
    producer = {o: (i, n) for i, n in enumerate(inferred.graph.node) for o in n.output}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
        i, n = producer.get(vi.name, (0, None))
        where = (f"node {(n.name or f'{n.op_type}_{i}')!r} ({n.op_type}): output {vi.name!r}" if n
                 else f"tensor {vi.name!r}")
        check_size(dims, max(itemsize(tt.elem_type), IR_ITEMSIZE), where)


def _static(vi: onnx.ValueInfoProto | None) -> bool:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)


def data_prop_is_bounded(inferred: onnx.ModelProto) -> bool:
    """Whether ONNX data propagation may run on this model: it materializes the values of
    ``Range`` (a Range to 10^10 allocates 80 GB inside onnx, beyond our reach), so it runs only
    where every Range's output shape is already static, hence checked against the limits."""
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    return all(_static(infos.get(n.output[0])) for n in inferred.graph.node if n.op_type == "Range" and n.output)


# ---------------------------------------------------------------------- before folding one node
#: constant inputs up to this many elements go into the one-node model shape inference sees
#: (shapes, repeats, pads, Range bounds are small); bigger ones only by type and shape
_SMALL = 1024


def check_fold(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int], ir_version: int,
               what: str, typed: dict[str, tuple[tuple[int, ...], int]] | None = None) -> None:
    """Before a node is evaluated on constants: the sizes of its outputs as ONNX shape inference
    sees them (its small constant inputs as initializers, so ConstantOfShape, Range, Expand,
    Tile, Pad, OneHot, Resize, broadcasting and MatMul are all sized without evaluating them),
    and a constant Loop's trip count. Inference failing is no verdict: the fold may go on
    (its outputs are checked again once they exist). ``typed`` gives the (shape, element type) of
    inputs that are not constants, for a node about to be lowered rather than folded."""
    lim = current()
    if node.op_type == "Loop":
        trip = feeds.get(node.input[0]) if node.input and node.input[0] else None
        n = int(np.asarray(trip).reshape(-1)[0]) if trip is not None and np.asarray(trip).size else None
        if n is None or n > lim.max_loop_iterations:
            raise CompileError(f"{what}: a constant Loop of {'unbounded' if n is None else f'{n:,}'} iterations "
                               f"is not folded (the limit is {lim.max_loop_iterations:,} iterations)",
                               "a malformed or hostile model asks for this; a genuine model does not loop this "
                               "long on constants (re-export it with the loop unrolled or computed in advance)")
    inits, ins = [], []
    for k, (shape, et) in (typed or {}).items():
        ins.append(helper.make_tensor_value_info(k, et, list(shape)))
    for k, v in feeds.items():
        v = np.asarray(v)
        try:
            et = helper.np_dtype_to_tensor_dtype(v.dtype)
        except Exception:  # noqa: BLE001
            return
        if v.size <= _SMALL and v.dtype.kind in "iub":
            inits.append(onnx.numpy_helper.from_array(v, k))
        else:
            ins.append(helper.make_tensor_value_info(k, et, list(v.shape)))
    try:
        g = helper.make_graph([node], "fold", ins, [onnx.ValueInfoProto(name=o) for o in node.output if o], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("" if d == "ai.onnx" else d, v)
                                                for d, v in opsets.items()], ir_version=ir_version)
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001
        return
    for vi in inferred.graph.output:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
            check_size(dims, max(itemsize(tt.elem_type), IR_ITEMSIZE), f"{what}: output {vi.name!r}")


# ---------------------------------------------------------------------- text fields
def check_strings(proto: onnx.ModelProto, label: str) -> None:
    """Every string field decodes as UTF-8. protobuf parses a corrupt name without complaint and
    raises UnicodeDecodeError only when it is read, deep inside later code; a flipped byte in a
    name must be the same clean error as any other corruption."""
    from google.protobuf.descriptor import FieldDescriptor

    def walk(m, where: str) -> None:
        for fd, value in m.ListFields():
            values = value if _repeated(fd) else [value]
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for sub in values:
                    walk(sub, f"{where}.{fd.name}")
            elif fd.type == FieldDescriptor.TYPE_STRING:
                for v in values:            # upb hands back bytes for a string that is not UTF-8
                    if isinstance(v, bytes):
                        raise CompileError(f"{label} is not a valid ONNX model: field {where}.{fd.name} ({v[:40]!r}) "
                                           f"is not valid UTF-8", "the file is corrupt; re-export or re-download it")

    try:
        walk(proto, "model")
    except UnicodeDecodeError as e:         # the pure-Python protobuf raises instead
        raise CompileError(f"{label} is not a valid ONNX model: a name or text field is not valid UTF-8 ({e.reason} "
                           f"at byte {e.start})", "the file is corrupt; re-export or re-download it") from None


def _repeated(fd) -> bool:
    return getattr(fd, "is_repeated", None) if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
