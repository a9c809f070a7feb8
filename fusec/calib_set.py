"""Calibration data from the command line: ``fusec compile --calib PATH`` -> a list of requests.

One sample rarely shows every range a model reaches; a fixed-point scale picked from it can
be too narrow for the next input. ``--calib`` therefore takes

* one ``.npy``/``.npz`` shaped like a request (the arrays a user feeds onnxruntime): one request;
* one ``.npy``/``.npz`` with MORE rows than the compiled batch (every array ``[N, ...]`` where
  the build takes ``[B, ...]``): split into ``ceil(N / B)`` batch-sized requests (the last one
  filled up with rows from the start: a repeated row changes no range);
* a folder of such files (sorted by name), every file giving the same inputs.

Each request is checked like a ``fusec run`` request (``fusec/inputs.py``: shape, dtype,
vocabulary, 0/1 masks, constants) and the calibration pass (``passes/calibrate``) takes the
range of every tensor over all of them, within ``--calib-seconds``. Every array is read
header-first (``build_schema.read_arrays``) and all of them together are held to ``--max-bytes``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fusec import build_schema as schema
from fusec import limits
from fusec.errors import FusecError
from fusec.ir.graph import Graph

SUFFIXES = (".npy", ".npz")
HINT = ("give one .npy/.npz request, one with more rows than the compiled batch, or a folder of them "
        "(np.savez(path, name=array, ...), the inputs by their ONNX names)")


def load_calibration(path, graph: Graph) -> list[dict[str, np.ndarray]]:
    """The requests in ``path`` (a file or a folder), each checked against ``graph``'s inputs."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES
                       and not f.name.startswith("."))
        if not files:
            raise FusecError(f"calibration folder {p} holds no .npy/.npz input files", HINT)
    elif p.is_file():
        files = [p]
    else:
        raise FusecError(f"calibration data {p} does not exist", HINT)
    total = _Total()
    out: list[dict[str, np.ndarray]] = []
    first_names: tuple[Path, list[str]] | None = None
    for f in files:
        feeds = _read(f, graph, total)
        names = sorted(feeds)
        if first_names is None:
            first_names = (f, names)
        elif names != first_names[1]:
            raise FusecError(f"calibration folder {p}: {f.name} gives input(s) {', '.join(names)} but "
                             f"{first_names[0].name} gives {', '.join(first_names[1])}",
                             "every file of a calibration folder must give the same inputs")
        out += _requests(f, graph, feeds)
    return out


class _Total:
    """All calibration arrays together stay within ``--max-bytes`` (a folder of many files, or one
    file of many rows, is bounded like one tensor)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.limit = limits.current().max_bytes

    def add(self, f: Path, arrays: dict[str, np.ndarray]) -> None:
        self.bytes += sum(int(a.nbytes) for a in arrays.values())
        if self.bytes > self.limit:
            raise FusecError(f"calibration data takes {limits.fmt_bytes(self.bytes)} by {f.name}, over the limit of "
                             f"{limits.fmt_bytes(self.limit)}", "use fewer samples, or raise --max-bytes")


def _read(f: Path, graph: Graph, total: _Total) -> dict[str, np.ndarray]:
    lim = limits.current()
    cap = max(1, min(lim.max_elements, lim.max_bytes // 8))
    data = schema.read_arrays(f, cap, "the calibration limit (--max-elements / --max-bytes) allows")
    if isinstance(data, np.ndarray):
        if len(graph.inputs) != 1:
            raise FusecError(f"calibration file {f}: the model has {len(graph.inputs)} inputs "
                             f"({', '.join(graph.inputs)}); a .npy holds one", "save them with np.savez(path, name=array, ...)")
        data = {graph.inputs[0]: data}
    if not data:
        raise FusecError(f"calibration file {f} holds no arrays", HINT)
    total.add(f, data)
    return data


def _compiled_shape(graph: Graph, name: str) -> tuple[int, ...] | None:
    """The shape one request gives ``name`` (None: not an input of the model; ``check_feeds`` says so)."""
    if name in graph.inputs:
        return graph.info(name).shape
    from fusec.inputs import roles_of  # noqa: PLC0415
    r = roles_of(graph).get(name)
    return tuple(r["shape"]) if r is not None else None


def _requests(f: Path, graph: Graph, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One file -> its requests: as is when every array has the compiled shape, else split by rows."""
    from fusec.inputs import check_feeds  # noqa: PLC0415
    want = {k: _compiled_shape(graph, k) for k in feeds}
    known = {k: s for k, s in want.items() if s is not None}
    if all(tuple(np.shape(feeds[k])) == s for k, s in known.items()):
        return [_check(f, graph, feeds, check_feeds)]
    rows = _row_count(f, feeds, known)
    batch = next(iter(known.values()))[0]
    n = math.ceil(rows / batch)
    out = []
    for i in range(n):
        idx = np.arange(i * batch, (i + 1) * batch) % rows
        out.append(_check(f, graph, {k: (np.asarray(v)[idx] if k in known else v) for k, v in feeds.items()},
                          check_feeds, f" (rows {i * batch}..{min((i + 1) * batch, rows) - 1})"))
    return out


def _row_count(f: Path, feeds: dict[str, np.ndarray], known: dict[str, tuple[int, ...]]) -> int:
    """N when every input is ``[N, *compiled[1:]]`` with one N above the compiled batch; else one line
    naming the first input that does not fit."""
    batches = {s[0] for s in known.values() if s}
    rows: dict[str, int] = {}
    for k, s in known.items():
        got = tuple(np.shape(feeds[k]))
        if not s or len(got) != len(s) or got[1:] != s[1:] or len(batches) != 1 or got[0] <= s[0]:
            like = f"({', '.join(['N', *map(str, s[1:])])})" if s else "a scalar"
            raise FusecError(f"calibration file {f}: input {k!r} has shape {got}; the model was compiled for {s}",
                             f"give {s} for one request, or {like} with N > {s[0] if s else 1} rows to calibrate on "
                             "N rows in batches (or recompile with matching --batch/--seq)")
        rows[k] = got[0]
    if len(set(rows.values())) != 1:
        desc = ", ".join(f"{k}: {n}" for k, n in rows.items())
        raise FusecError(f"calibration file {f}: its inputs have different numbers of rows ({desc})",
                         "give every input the same number of rows (one row per sample)")
    return next(iter(rows.values()))


def _check(f: Path, graph: Graph, feeds: dict[str, np.ndarray], check_feeds, where: str = "") -> dict[str, np.ndarray]:
    """A request checked like ``fusec run`` checks one, the file (and rows) named in the message."""
    try:
        return check_feeds(graph, feeds, what="calibration input")
    except FusecError as e:
        raise FusecError(f"calibration file {f}{where}: {e.message}", e.hint) from None
