"""The build directory's files, parsed against a schema when a build is loaded.

``load_build`` checks each file's hash against ``manifest.json``, but whoever can edit the
build can re-hash the manifest too. So every file is also parsed strictly: wrong field
types, a missing key, garbage JSON, a weights archive holding something other than plain
numeric arrays (never unpickled) or arrays of another shape than ``ir.json`` declares all
become one ``FusecError`` naming the file and the field, never a traceback deep inside
the gate builder. Sizes are checked against ``fusec.limits`` before an array is read.

A schema is a small nested value: a Python type (or a tuple of them), a ``{key: schema}``
dict of required keys (``Opt(schema)`` for optional ones; unknown keys are allowed, later
fusec versions may add some), ``[schema]`` for a list of anything matching, or
``Map(schema)`` for a dict of arbitrary string keys.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fusec.errors import FusecError
from fusec.limits import check_size

RECOMPILE = "the build directory is damaged or was edited; re-run `fusec compile`"


@dataclass(frozen=True)
class Opt:
    schema: Any


@dataclass(frozen=True)
class Map:
    schema: Any


@dataclass(frozen=True)
class Pattern:
    regex: str
    what: str


HEX64 = Pattern(r"[0-9a-f]{64}", "a sha256 hex digest")
NUMBER = (int, float)
DIM = Pattern("dim", "a non-negative integer")

MANIFEST = {
    "format": int,
    "flags": dict,                       # checked field by field against CompileOptions (check_flags)
    "layout_digest": str,
    "hashes": Map(HEX64),
    "insecure": Opt(bool),
    "batch": Opt((int, type(None))),
    "seq": Opt((int, type(None))),
    "model": Opt(str),
    "compile_seconds": Opt(NUMBER),
}

IR = {
    "name": str,
    "inputs": [str],
    "outputs": [str],
    "meta": dict,
    "tensors": Map({"shape": [DIM], "dtype": str, "visibility": str, "scale": Opt((int, type(None))),
                    "bits": Opt((int, type(None))), "owner": Opt((int, type(None)))}),
    "consts": Map({"shape": [DIM], "dtype": str}),
    "nodes": [{"name": str, "op": str, "inputs": [str], "outputs": [str], "attrs": dict}],
}

PROGRAM = {
    "rounds": int,
    "inputs": Map({"tensor": str, "owner": int, "shape": [DIM]}),
    "outputs": Map({"tensor": str, "scale": int, "shape": [DIM]}),
    "steps": [dict],
}

LAYOUT = dict                            # the layout's own parser checks it field by field


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "an object",
            list: "a list", type(None): "null"}.get(t, getattr(t, "__name__", str(t)))


def _is(value, t) -> bool:
    if isinstance(t, tuple):
        return any(_is(value, x) for x in t)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool))
    return isinstance(value, t)


def validate(value: Any, schema: Any, file: str, path: str = "") -> None:
    """Raise a FusecError naming ``file`` and the field (``path``) where ``value`` leaves ``schema``."""
    here = path or "(top level)"

    def bad(what: str) -> FusecError:
        got = type(value).__name__ if not isinstance(value, (int, float, str, bool)) or isinstance(value, str) \
            and len(value) > 40 else repr(value)
        return FusecError(f"{file}: field {here} must be {what}, got {got}", RECOMPILE)

    if isinstance(schema, Opt):
        schema = schema.schema
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise bad("an object")
        for k, sub in schema.items():
            if k not in value:
                if isinstance(sub, Opt):
                    continue
                raise FusecError(f"{file}: required field {path + '.' + k if path else k} is missing", RECOMPILE)
            validate(value[k], sub, file, f"{path}.{k}" if path else k)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise bad("a list")
        for i, item in enumerate(value):
            validate(item, schema[0], file, f"{path}[{i}]")
    elif isinstance(schema, Map):
        if not isinstance(value, dict):
            raise bad("an object")
        for k, item in value.items():
            validate(item, schema.schema, file, f"{path}[{k!r}]")
    elif isinstance(schema, Pattern):
        if schema is DIM:
            if not _is(value, int) or value < 0:
                raise bad(schema.what)
        elif not isinstance(value, str) or not re.fullmatch(schema.regex, value):
            raise bad(schema.what)
    elif not _is(value, schema):
        raise bad(_type_name(schema))


def read_json(path: Path, schema: Any) -> Any:
    """A build file's JSON, parsed and checked against ``schema``."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FusecError(f"{path} is not valid JSON ({' '.join(str(e).split())[:200]})", RECOMPILE) from None
    validate(doc, schema, path.name)
    return doc


def check_flags(flags: dict, file: str = "manifest.json") -> dict:
    """``flags`` as ``CompileOptions`` takes them: every key known, every value of its field's type."""
    from fusec.passes.options import CompileOptions  # noqa: PLC0415

    types = {"int": int, "str": str, "float": NUMBER, "bool": bool}
    known = {f.name: f for f in fields(CompileOptions)}
    for k, v in flags.items():
        f = known.get(k)
        if f is None or k in ("notes", "calib", "input_ranges"):
            raise FusecError(f"{file}: field flags.{k} is not a compile flag this fusec knows", RECOMPILE)
        t = types.get(str(f.type).split(" ")[0]) if isinstance(f.type, str) else f.type
        if t is not None:
            validate(v, t, file, f"flags.{k}")
    return flags


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy stream's header, before any data is read (so a size or dtype can be
    refused first). Raises ``ValueError`` (or what numpy raises) on a stream that is not a .npy."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"unknown .npy format version {version}")
    shape, _, dtype = read_header(f)
    return tuple(shape), dtype


def read_weights(path: Path, consts: dict[str, dict]) -> dict[str, np.ndarray]:
    """``weights.npz``: plain numeric arrays only (no pickle), each of the shape and dtype ``ir.json``
    lists for it, sizes checked from each array's header before the array is read."""
    name = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise FusecError(f"{path} is not a weights archive ({e})", RECOMPILE) from None
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            spec = consts.get(key)
            if spec is None:
                raise FusecError(f"{name}: array {key!r} is not a constant of ir.json", RECOMPILE)
            try:
                with zf.open(info) as f:
                    shape, dtype = _npy_header(f)
                    if dtype.hasobject or dtype.kind not in "biuf":
                        raise FusecError(f"{name}: array {key!r} has dtype {dtype}, not a plain numeric type",
                                         RECOMPILE)
                    if list(shape) != list(spec["shape"]) or str(dtype) != spec["dtype"]:
                        raise FusecError(f"{name}: array {key!r} is {str(dtype)}{list(shape)}, but ir.json lists "
                                         f"{spec['dtype']}{list(spec['shape'])}", RECOMPILE)
                    check_size(shape, dtype.itemsize, f"{name}: array {key!r}")
                with zf.open(info) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
            except FusecError:
                raise
            except Exception as e:  # noqa: BLE001  (ValueError, zlib.error, EOFError, BadZipFile ...)
                raise FusecError(f"{name}: array {key!r} cannot be read ({' '.join(str(e).split())[:200]})",
                                 RECOMPILE) from None
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise FusecError(f"{name}: array {key!r} holds NaN or infinity (a compiled build never does)",
                                 RECOMPILE)
            out[key] = arr
    missing = sorted(set(consts) - set(out))
    if missing:
        raise FusecError(f"{name}: constant {missing[0]!r} of ir.json is missing ({len(missing)} missing)", RECOMPILE)
    return out


def check_ir(doc: dict, file: str = "ir.json") -> None:
    """What the IR schema cannot say: known ops, known visibilities/dtypes, tensor sizes within
    the limits, every node's tensors declared."""
    from fusec.ir.graph import VISIBILITIES  # noqa: PLC0415
    from fusec.ir.ops import OPS  # noqa: PLC0415

    for k, v in doc["tensors"].items():
        if v["visibility"] not in VISIBILITIES:
            raise FusecError(f"{file}: field tensors[{k!r}].visibility is {v['visibility']!r}, not one of "
                             f"{', '.join(VISIBILITIES)}", RECOMPILE)
        if v["dtype"] not in ("float", "int", "bool"):
            raise FusecError(f"{file}: field tensors[{k!r}].dtype is {v['dtype']!r}, not float/int/bool", RECOMPILE)
        check_size(v["shape"], 8, f"{file}: tensor {k!r}")
    for i, n in enumerate(doc["nodes"]):
        if n["op"] not in OPS:
            raise FusecError(f"{file}: field nodes[{i}].op is {n['op']!r}, not an IR op", RECOMPILE)
        for t in n["inputs"] + n["outputs"]:
            if t and t not in doc["tensors"]:
                raise FusecError(f"{file}: node {n['name']!r} (nodes[{i}]) names tensor {t!r}, which is not in "
                                 f"tensors", RECOMPILE)
    for what in ("inputs", "outputs"):
        for t in doc[what]:
            if t not in doc["tensors"]:
                raise FusecError(f"{file}: field {what} names tensor {t!r}, which is not in tensors", RECOMPILE)


# ---------------------------------------------------------------------- a request's arrays (.npy / .npz)
def _read_member(f, name: str, label: str, max_elements: int,
                 limit_what: str = "any input of this build takes") -> np.ndarray:
    """One .npy stream: header first (plain numeric or bool, at most ``max_elements``), then the data."""
    try:
        shape, dtype = _npy_header(f)
    except Exception as e:  # noqa: BLE001
        raise FusecError(f"{label}: {name} is not a .npy array ({' '.join(str(e).split())[:200]})",
                         "save inputs with np.save / np.savez") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise FusecError(f"{label}: {name} has dtype {dtype}; inputs are plain numeric arrays (never unpickled)",
                         "save inputs with np.save / np.savez of numeric arrays")
    from fusec.limits import elements  # noqa: PLC0415
    if elements(shape) > max_elements:
        raise FusecError(f"{label}: {name} has shape {list(shape)} ({elements(shape):,} elements), more than "
                         f"{limit_what} ({max_elements:,})", "check that the file belongs to this build")
    try:
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    except Exception as e:  # noqa: BLE001  (truncated data, a bad zip member ...)
        raise FusecError(f"{label}: {name} cannot be read ({' '.join(str(e).split())[:200]})",
                         "the file is truncated or corrupt; write it again") from None


def read_arrays(path: Path, max_elements: int, limit_what: str = "any input of this build takes"
                ) -> np.ndarray | dict[str, np.ndarray]:
    """A ``.npy`` (one array) or ``.npz`` (named arrays) request, every array's header checked before
    its data is read: no pickle, no array larger than ``max_elements``, no traceback on a corrupt file."""
    label = str(path)
    if zipfile.is_zipfile(path):
        out: dict[str, np.ndarray] = {}
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    with zf.open(info) as f:            # (a zip member seeks by re-reading: header first)
                        out[key] = _read_member(f, f"array {key!r}", label, max_elements, limit_what)
        except FusecError:
            raise
        except Exception as e:  # noqa: BLE001  (BadZipFile, zlib.error, EOFError ...)
            raise FusecError(f"cannot read input file {label}: {' '.join(str(e).split())[:200]}",
                             "give a .npy array or a .npz of named arrays") from None
        return out
    with open(path, "rb") as f:
        return _read_member(f, "the array", label, max_elements, limit_what)
