"""The driver: ONNX -> build directory, and build directory -> gates, inputs, outputs.

``compile_model`` runs the frontend and the pass pipeline and writes the build directory
(DESIGN §2): ``ir.json`` (final IR), ``weights.npz`` (its constants), ``program.json``
(ordered steps with their rounds), ``keys.layout.json``, ``manifest.json`` (versions,
flags, hashes) and ``report.txt`` (notes: clamped constants, overflow warnings, specs).
``load_build`` reads it back, checks the hashes, and rebuilds the identical gate graph.
The input owner's side (``encode_inputs``) runs the plaintext prefix and encodes the
values that are shared; ``decode_outputs`` turns received ring values back into floats.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fusec import build_schema as schema
from fusec.errors import FusecError
from fusec.limits import Limits
from fusec.limits import using as using_limits
from fusec.ir.graph import Graph
from fusec.ir.ops import run_node
from fusec.passes.lower import Lowered
from fusec.passes.options import CompileOptions
from fusec.passes.pipeline import Progress, build_gates, run_passes, stage
from fusec.passes.schedule import Step
from fusec.runtime import ring

FORMAT = 1
HASHED = ("ir.json", "weights.npz", "program.json", "keys.layout.json", "kernels.cu")


@dataclass
class Build:
    path: Path
    ir: Graph
    opts: CompileOptions
    low: Lowered
    steps: list[Step]
    manifest: dict

    @property
    def gates(self):
        return self.low.gates

    @property
    def kernels_source(self) -> str | None:
        """The generated kernels.cu (None for builds from before codegen)."""
        f = self.path / "kernels.cu"
        return f.read_text() if f.is_file() else None

    @property
    def scopes(self) -> dict[str, str]:
        """Profiler scope of every gate (from the schedule)."""
        return {s.id: s.scope for s in self.steps}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frontend(model, batch: int | None = None, seq: int | None = None, input_shapes: dict | None = None,
             public_inputs: dict | None = None, input_roles: dict | None = None) -> Graph:
    """The frontend with every input's role resolved (``ir/input_roles``): constants from
    ``public_inputs`` or the defaults, ``private``/``public`` per request."""
    from fusec.ir import input_roles as roles  # noqa: PLC0415
    from fusec.ir.onnx_frontend import load_model  # noqa: PLC0415
    plan = roles.plan(input_roles, public_inputs)
    declared = roles.onnx_inputs(model)
    names = [n for n, _ in declared]
    for name in plan.roles:
        if names and name not in names:
            raise FusecError(f"--input-role names {name!r}, which is not an input of the model",
                             f"the model's inputs: {', '.join(names) or '(none)'}")
    graph = load_model(model, batch=batch, seq=seq, input_shapes=input_shapes, public_inputs=plan.public_inputs)
    roles.record(graph, declared, plan)
    return graph


def compile_graph(graph: Graph, opts: CompileOptions, progress: Progress | None = None):
    graph = run_passes(graph, opts, progress)
    graph.meta["flags"] = opts.as_dict()
    with stage(progress, "lower, schedule, key order"):
        low, steps = build_gates(graph, opts)
    return graph, low, steps


def compile_model(model, out_dir, opts: CompileOptions, batch: int | None = None, seq: int | None = None,
                  input_shapes: dict | None = None, public_inputs: dict | None = None,
                  progress: Progress | None = None, input_roles: dict | None = None,
                  limits: Limits | None = None) -> Build:
    """``limits`` (``fusec/limits.py``) bound every size and the compile-time evaluation;
    ``progress`` hears each stage start and end (``passes.pipeline.stage``)."""
    t0 = time.perf_counter()
    if opts.round_price == "inference":     # a gate's saving is over the true batch: price it per inference
        opts = replace(opts, price_batch=int(batch or 1))
    with using_limits(limits):
        with stage(progress, "frontend"):
            graph = frontend(model, batch, seq, input_shapes, public_inputs, input_roles)
        graph, low, steps = compile_graph(graph, opts, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with stage(progress, "write build directory"):
        return _write(out, model, graph, low, steps, opts, batch, seq, t0)


def _write(out: Path, model, graph: Graph, low: Lowered, steps: list[Step], opts: CompileOptions,
           batch: int | None, seq: int | None, t0: float) -> Build:
    """The build directory's files; the manifest (hashes, compile seconds) after them, the report last."""
    (out / "ir.json").write_text(graph.to_json())
    np.savez(out / "weights.npz", **{k: v for k, v in graph.consts.items()})
    (out / "program.json").write_text(json.dumps(program(graph, low, steps), indent=1))
    (out / "keys.layout.json").write_text(low.gates.layout().to_json(indent=1))
    (out / "kernels.cu").write_text(kernels_source(low))
    manifest = {
        "format": FORMAT,
        "fusec": _version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "flags": opts.as_dict(),
        "model": str(model) if not hasattr(model, "SerializeToString") else "<in-memory model>",
        "batch": batch, "seq": seq,
        "layout_digest": low.gates.layout().digest(),
        "compile_seconds": round(time.perf_counter() - t0, 3),
        "insecure": bool(graph.meta.get("insecure")),
        "hashes": {name: _sha(out / name) for name in HASHED},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    from fusec.report import report  # noqa: PLC0415
    b = Build(out, graph, opts, low, steps, manifest)
    (out / "report.txt").write_text(report(b))
    return b


def kernels_source(low: Lowered) -> str:
    """The build's CUDA kernels, specialized for its DCF/DPF shapes and wire widths."""
    from fusec.codegen.cuda import render  # noqa: PLC0415
    from fusec.codegen.program import gate_arcs, kernel_config  # noqa: PLC0415
    widths = {int(b) for n in low.gates.nodes for b in (getattr(n.gate, "bits", None), getattr(n.gate, "out_bits", None))
              if isinstance(b, int)}
    return render(kernel_config(low.gates.layout(), widths, gate_arcs(n.gate for n in low.gates.nodes)))


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415
        return version("fusec")
    except Exception:  # noqa: BLE001
        return "unknown"


def program(graph: Graph, low: Lowered, steps: list[Step]) -> dict:
    return {
        "rounds": max((s.end for s in steps), default=0),
        "inputs": {gid: {"tensor": t, "owner": owner, "shape": list(graph.info(t).shape)}
                   for gid, (t, owner) in low.inputs.items()},
        "outputs": {gid: {"tensor": t, "scale": s, "shape": list(graph.info(t).shape)}
                    for gid, (t, s) in low.outputs.items()},
        "steps": [s.as_dict() for s in steps],
    }


#: files a build must have a hash for (kernels.cu is absent from builds older than codegen)
REQUIRED = ("ir.json", "weights.npz", "program.json", "keys.layout.json")


def load_build(path) -> Build:
    """Read a build back: hashes, then every file against its schema (``fusec/build_schema.py``:
    a re-hashed manifest does not let a tampered file through), then the gate graph rebuilt and
    compared with the saved program and key layout."""
    p = Path(path)
    if not (p / "manifest.json").is_file():
        raise FusecError(f"{p} is not a build directory (no manifest.json)", "run `fusec compile model.onnx -o DIR` first")
    manifest = schema.read_json(p / "manifest.json", schema.MANIFEST)
    if manifest["format"] != FORMAT:
        raise FusecError(f"{p} was written by another fusec build format ({manifest['format']})",
                         "re-run `fusec compile` with this version")
    for name in REQUIRED:
        if name not in manifest["hashes"]:
            raise FusecError(f"{p / 'manifest.json'}: field hashes has no entry for {name}", schema.RECOMPILE)
    for name, digest in manifest["hashes"].items():
        f = p / name
        if name not in HASHED:
            raise FusecError(f"{p / 'manifest.json'}: field hashes names {name!r}, not a build file", schema.RECOMPILE)
        if not f.is_file() or _sha(f) != digest:
            raise FusecError(f"{f} is missing or was modified after compilation",
                             "re-run `fusec compile`; keys must be generated from the same build")
    flags = schema.check_flags(manifest["flags"])
    ir_doc = schema.read_json(p / "ir.json", schema.IR)
    schema.check_ir(ir_doc)
    weights = schema.read_weights(p / "weights.npz", ir_doc["consts"])
    saved_program = schema.read_json(p / "program.json", schema.PROGRAM)
    saved_layout = schema.read_json(p / "keys.layout.json", schema.LAYOUT)
    opts = CompileOptions(**flags)
    try:
        graph = Graph.from_json(json.dumps(ir_doc), weights)
        low, steps = build_gates(graph, opts)
    except FusecError:
        raise
    except Exception as e:  # noqa: BLE001  (a graph that passes the schema but not the compiler's invariants)
        raise FusecError(f"{p / 'ir.json'} describes a graph fusec cannot rebuild ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})", schema.RECOMPILE) from None
    if low.gates.layout().digest() != manifest["layout_digest"]:
        raise FusecError("rebuilding the gate graph gave a different key layout than at compile time",
                         "the fusec version changed since compilation; re-run `fusec compile`")
    for name, saved, rebuilt in (("program.json", saved_program, program(graph, low, steps)),
                                 ("keys.layout.json", saved_layout, json.loads(low.gates.layout().to_json()))):
        rebuilt = json.loads(json.dumps(rebuilt))
        if saved != rebuilt:
            field = next((k for k in sorted(set(saved) | set(rebuilt)) if saved.get(k) != rebuilt.get(k)), "?")
            raise FusecError(f"{p / name}: field {field} differs from the one rebuilt from ir.json", schema.RECOMPILE)
    return Build(p, graph, opts, low, steps, manifest)


# ---------------------------------------------------------------------- the input owner's side
def load_inputs(path, graph: Graph) -> dict[str, np.ndarray]:
    """Inputs from ``.npy`` (one model input) or ``.npz`` (named); checked against the IR."""
    p = Path(path)
    if not p.is_file():
        raise FusecError(f"input file {p} does not exist")
    largest = max((graph.info(t).size for t in graph.inputs), default=1)
    data = schema.read_arrays(p, max(largest, 1))      # headers first: no pickle, nothing larger than an input
    if isinstance(data, np.ndarray):
        if len(graph.inputs) != 1:
            raise FusecError(f"the model has {len(graph.inputs)} inputs ({', '.join(graph.inputs)}); a .npy holds one",
                             "save them with np.savez(path, name=array, ...)")
        feeds = {graph.inputs[0]: data}
    else:
        feeds = data
    from fusec.inputs import check_feeds  # noqa: PLC0415
    return check_feeds(graph, feeds)      # every check before keygen (verify) and before any byte is sent


def check_inputs(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request checked by role (``fusec/inputs.py``); returns the feeds the program takes."""
    from fusec.inputs import check_feeds  # noqa: PLC0415
    return check_feeds(graph, feeds)


def encode_inputs(build: Build, feeds: dict[str, np.ndarray], party: int) -> dict[str, np.ndarray]:
    """Run this party's plaintext prefix and encode the shared tensors (gate id -> ring values)."""
    g, opts = build.ir, build.opts
    mine = {gid: t for gid, (t, owner) in build.low.inputs.items() if owner == party}
    if not mine:
        return {}
    feeds = check_inputs(g, feeds)
    env: dict[str, np.ndarray] = dict(g.consts)
    for name in g.inputs:
        v = np.asarray(feeds[name])
        env[name] = v.astype(np.float64) if g.info(name).dtype == "float" else v.astype(np.int64)
    for n in g.nodes():
        if n.attrs.get("at") == "client":
            for t, v in zip(n.outputs, run_node(n.op, [env[t] if t else None for t in n.inputs], n.attrs)):
                env[t] = v
    out = {}
    lim = 2.0 ** (opts.bits - 2 - opts.frac)
    from fusec.passes.owner_contract import check as check_owner  # noqa: PLC0415
    for gid, t in mine.items():
        v = np.asarray(env[t], np.float64)
        check_owner(g, t, v)
        if np.any(np.abs(v) >= lim):
            raise FusecError(f"input tensor {t!r} has |x| up to {np.max(np.abs(v)):.4g}, beyond what fixed point "
                             f"n={opts.bits}, f={opts.frac} holds ({lim:g})", "scale the input or use a wider --bits")
        out[gid] = ring.encode_fixed(v.reshape(-1), opts.frac, opts.bits)
    return out


def decode_outputs(build: Build, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    res = {}
    for gid, v in outputs.items():
        t, scale = build.low.outputs[gid]
        res[t] = ring.decode_fixed(np.asarray(v), scale, build.opts.bits).reshape(build.ir.info(t).shape)
    return res

