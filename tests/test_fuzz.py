"""Hostile and corrupt models through `fusec compile`: 0 tracebacks, 0 hangs, 0 unbounded allocations.

Every case is a model file (a small seed model, truncated, byte-flipped, structurally mutated,
or hand-built to ask for too much: huge dimensions, mismatched element types, NaN/inf
constants, external data outside the model's folder, cycles, duplicate names, endless
constant loops). Each must end in one of two ways:

* **a clear error**: exit status 2, exactly one ``error:`` line (plus an optional ``hint:``
  line), no traceback;
* **a correct compile**: exit status 0, and the compiled IR's plaintext run agrees with
  onnxruntime on the same (mutated) model and a random input (an independent oracle).

The cases run in a worker process (``python tests/test_fuzz.py CASES.json``) that calls the
CLI entry point in-process (fast: no interpreter start per case) under an address-space cap;
the test kills it on a case that runs past its timeout and counts that case a hang. A fast
deterministic subset runs by default; the full run (about a thousand cases) is marked slow.
"""
from __future__ import annotations

import copy
import json
import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

EXAMPLE = Path(__file__).resolve().parent.parent / "fusec" / "examples" / "digits_mlp.onnx"
CASE_TIMEOUT = 60.0          # seconds a case may take before it counts as a hang
MEMORY_CAP = 12 * 2 ** 30    # the worker's address space: a runaway allocation fails instead of swapping
COMPILE_ARGS = ["--fold-seconds", "10", "--calib-seconds", "30", "--max-bytes", str(2 ** 30)]  # 1 GiB: gentle on CI


# ====================================================================== seed models
def _opset(v: int = 17):
    return [h.make_opsetid("", v)]


def seed_mlp() -> onnx.ModelProto:
    """x[1,8] -> MatMul/Add/Relu -> MatMul/Add -> y[1,4]."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.standard_normal((8, 16)).astype(np.float32) * 0.3, "w1"),
             nh.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b1"),
             nh.from_array(rng.standard_normal((16, 4)).astype(np.float32) * 0.3, "w2"),
             nh.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b2")]
    nodes = [h.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"), h.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
             h.make_node("Relu", ["h1"], ["h2"], name="relu"), h.make_node("MatMul", ["h2", "w2"], ["h3"], name="mm2"),
             h.make_node("Add", ["h3", "b2"], ["y"], name="add2")]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [1, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], inits)
    return h.make_model(g, opset_imports=_opset())


def seed_plumbing() -> onnx.ModelProto:
    """Shape arithmetic the frontend folds: Shape/Gather/ConstantOfShape/Range/Expand/Tile/Reshape
    around a secret Mul and Add, so mutations of its constants reach the folder."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"], name="shape"),
        h.make_node("ConstantOfShape", ["s"], ["ones"], name="cos", value=nh.from_array(np.array([0.5], np.float32))),
        h.make_node("Mul", ["x", "ones"], ["xm"], name="mul"),
        h.make_node("Range", ["r0", "r1", "r2"], ["r"], name="range"),
        h.make_node("Cast", ["r"], ["rf"], name="cast", to=T.FLOAT),
        h.make_node("Expand", ["rf", "eshape"], ["re"], name="expand"),
        h.make_node("Add", ["xm", "re"], ["xa"], name="add"),
        h.make_node("Tile", ["xa", "reps"], ["xt"], name="tile"),
        h.make_node("Reshape", ["xt", "rshape"], ["y"], name="reshape"),
    ]
    inits = [nh.from_array(np.array(0, np.int64), "r0"), nh.from_array(np.array(4, np.int64), "r1"),
             nh.from_array(np.array(1, np.int64), "r2"), nh.from_array(np.array([2, 4], np.int64), "eshape"),
             nh.from_array(np.array([1, 2], np.int64), "reps"), nh.from_array(np.array([2, 2, 4], np.int64), "rshape")]
    g = h.make_graph(nodes, "plumbing", [h.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 2, 4])], inits)
    return h.make_model(g, opset_imports=_opset())


def seed_digits() -> onnx.ModelProto:
    return onnx.load(str(EXAMPLE))


SEEDS = {"mlp": (seed_mlp, []), "plumbing": (seed_plumbing, []), "digits": (seed_digits, ["--batch", "1"])}

#: exporter graphs (dynamic dims, shape plumbing, masks), slower to compile: the full run only
DATA = Path(__file__).resolve().parent / "data"
FULL_SEEDS = {"bert_dynamo": (lambda: onnx.load(str(DATA / "bert_tiny_dynamo.onnx")), ["--batch", "1", "--seq", "8"])}


# ====================================================================== cases
@dataclass
class Case:
    """One model to compile: ``files`` maps a name (the model is ``model.onnx``) to its bytes."""
    id: str
    family: str
    files: dict[str, bytes]
    args: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)   # name -> symlink target


def _case(cid: str, family: str, model: onnx.ModelProto | bytes, args=(), **extra) -> Case:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return Case(cid, family, {"model.onnx": data, **extra.pop("files", {})}, list(args), **extra)


def _graph_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    return h.make_model(h.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=_opset(opset))


def _vi(name, et=T.FLOAT, shape=(1, 4)):
    return h.make_tensor_value_info(name, et, list(shape) if shape is not None else None)


def byte_cases(seed: str, model: onnx.ModelProto, args: list[str], rng: random.Random, n_trunc: int,
               n_flip: int) -> list[Case]:
    data = model.SerializeToString()
    out = []
    cuts = sorted({0, 1, len(data) // 2, len(data) - 1} | {rng.randrange(len(data)) for _ in range(n_trunc)})
    for c in cuts[: max(n_trunc, 4)]:
        out.append(_case(f"{seed}/truncate@{c}", "truncation", data[:c], args))
    for i in range(n_flip):
        b = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            pos = rng.randrange(len(b))
            b[pos] ^= rng.choice((0x01, 0x80, 0xFF, rng.randrange(1, 256)))
        out.append(_case(f"{seed}/flip{i}", "byte flip", bytes(b), args))
    return out


_OPS = ["Relu", "Add", "MatMul", "Reshape", "Transpose", "Softmax", "Concat", "Gather", "Loop", "If", "Sqrt", "Div",
        "Cast", "Expand", "Tile", "Range", "ConstantOfShape", "NotAnOp", "Conv", "Einsum", "Slice", "Pad"]
_HUGE = [0, -1, -7, 2 ** 31, 10 ** 10, 10 ** 12, 2 ** 62, 2 ** 63 - 1]


def structural_cases(seed: str, model: onnx.ModelProto, args: list[str], rng: random.Random, n: int) -> list[Case]:
    """Random edits of the proto: each keeps the file parseable and breaks one invariant."""
    out = []
    for i in range(n):
        m = copy.deepcopy(model)
        g = m.graph
        kind = rng.choice(["drop node", "swap nodes", "duplicate node", "dangling input", "op type", "attribute",
                           "init dims", "init dtype", "input dtype", "input shape", "output name", "opset",
                           "init values", "duplicate init", "rename output"])
        nodes = list(g.node)
        try:
            if kind == "drop node" and nodes:
                del g.node[rng.randrange(len(nodes))]
            elif kind == "swap nodes" and len(nodes) > 1:
                a, b = rng.sample(range(len(nodes)), 2)
                na, nb = copy.deepcopy(g.node[a]), copy.deepcopy(g.node[b])
                g.node[a].CopyFrom(nb)
                g.node[b].CopyFrom(na)
            elif kind == "duplicate node" and nodes:
                g.node.insert(rng.randrange(len(nodes)), copy.deepcopy(rng.choice(nodes)))
            elif kind == "dangling input" and nodes:
                nd = rng.choice(g.node)
                if nd.input:
                    nd.input[rng.randrange(len(nd.input))] = rng.choice(["nowhere", "", nd.output[0]])
            elif kind == "op type" and nodes:
                rng.choice(g.node).op_type = rng.choice(_OPS)
            elif kind == "attribute" and nodes:
                nd = rng.choice(g.node)
                nd.attribute.append(h.make_attribute(rng.choice(["axis", "to", "perm", "keepdims", "transA", "value"]),
                                                     rng.choice([rng.choice(_HUGE), [rng.choice(_HUGE)] * 2, 1.5e30])))
            elif kind == "init dims" and g.initializer:
                t = rng.choice(g.initializer)
                dims = list(t.dims) or [1]
                dims[rng.randrange(len(dims))] = rng.choice(_HUGE)
                del t.dims[:]
                t.dims.extend(dims)
            elif kind == "init dtype" and g.initializer:
                rng.choice(g.initializer).data_type = rng.choice([T.DOUBLE, T.INT64, T.STRING, T.FLOAT16, T.BOOL, 0, 99])
            elif kind == "input dtype" and g.input:
                rng.choice(g.input).type.tensor_type.elem_type = rng.choice([T.DOUBLE, T.INT64, T.STRING, T.BOOL, 0, 99])
            elif kind == "input shape" and g.input:
                dims = rng.choice(g.input).type.tensor_type.shape.dim
                if dims:
                    dims[rng.randrange(len(dims))].dim_value = rng.choice(_HUGE[1:])
            elif kind == "output name" and g.output:
                rng.choice(g.output).name = rng.choice(["nowhere", g.input[0].name if g.input else "x", ""])
            elif kind == "opset":
                del m.opset_import[:]
                m.opset_import.extend([h.make_opsetid("", rng.choice([0, 1, 6, 99, 10 ** 6]))])
            elif kind == "init values" and g.initializer:
                t = rng.choice(g.initializer)
                v = nh.to_array(t).copy()
                if v.dtype.kind == "f" and v.size:
                    v.flat[rng.randrange(v.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e30, 3e38])
                    t.CopyFrom(nh.from_array(v, t.name))
            elif kind == "duplicate init" and g.initializer:
                g.initializer.append(copy.deepcopy(rng.choice(g.initializer)))
            elif kind == "rename output" and nodes:
                nd = rng.choice(g.node)
                nd.output[0] = rng.choice([x for n in nodes for x in n.output] + [n for n in [g.input[0].name] if g.input])
        except (ValueError, TypeError, IndexError):
            continue                    # the edit itself was impossible on this proto: skip it
        out.append(_case(f"{seed}/mut{i}:{kind}", "structural", m, args))
    return out


def hostile_cases() -> list[Case]:
    """Hand-built models, each asking for one specific thing a compiler must refuse (or survive)."""
    x, y = _vi("x"), _vi("y", shape=(1, 4))
    cases = []

    def scalar_sum_into_x(nodes, inits, name, family="huge dims", out="c"):
        """nodes produce tensor ``out``; y = x + sum(out) (so it is reached)."""
        nodes = nodes + [h.make_node("Cast", [out], ["cf"], to=T.FLOAT),
                         h.make_node("ReduceSum", ["cf"], ["r"], keepdims=0), h.make_node("Add", ["x", "r"], ["y"])]
        cases.append(_case(name, family, _graph_model(nodes, [x], [y], inits)))

    for n in (10 ** 10, 10 ** 12, 2 ** 40):
        scalar_sum_into_x([h.make_node("ConstantOfShape", ["s"], ["c"], value=nh.from_array(np.array([1.0], np.float32)))],
                          [nh.from_array(np.array([n], np.int64), "s")], f"hostile/ConstantOfShape[{n}]")
        scalar_sum_into_x([h.make_node("Range", ["a", "b", "d"], ["c"])],
                          [nh.from_array(np.array(0, np.int64), "a"), nh.from_array(np.array(n, np.int64), "b"),
                           nh.from_array(np.array(1, np.int64), "d")], f"hostile/Range[{n}]")
        scalar_sum_into_x([h.make_node("Expand", ["one", "s"], ["c"])],
                          [nh.from_array(np.ones((1, 1), np.float32), "one"),
                           nh.from_array(np.array([n // 10 ** 5, 10 ** 5], np.int64), "s")], f"hostile/Expand[{n}]")
        scalar_sum_into_x([h.make_node("Tile", ["one", "s"], ["c"])],
                          [nh.from_array(np.ones((2, 2), np.float32), "one"),
                           nh.from_array(np.array([n // 10 ** 5, 10 ** 5], np.int64), "s")], f"hostile/Tile[{n}]")
    # Range whose limit is computed (no static shape for data propagation to trust)
    scalar_sum_into_x([h.make_node("Mul", ["b0", "k"], ["b"]), h.make_node("Range", ["a", "b", "d"], ["c"])],
                      [nh.from_array(np.array(0, np.int64), "a"), nh.from_array(np.array(10 ** 5, np.int64), "b0"),
                       nh.from_array(np.array(10 ** 5, np.int64), "k"), nh.from_array(np.array(1, np.int64), "d")],
                      "hostile/Range[computed 1e10]")
    # a MatMul of two constants whose result is 10^10 elements (inputs small)
    scalar_sum_into_x([h.make_node("Expand", ["one", "sa"], ["a"]), h.make_node("Expand", ["one", "sb"], ["b"]),
                       h.make_node("MatMul", ["a", "b"], ["c"])],
                      [nh.from_array(np.ones((1, 1), np.float32), "one"), nh.from_array(np.array([10 ** 5, 1], np.int64), "sa"),
                       nh.from_array(np.array([1, 10 ** 5], np.int64), "sb")], "hostile/MatMul outer 1e10")
    # Reshape of a secret to a huge shape (inconsistent: checker/shape inference or the limit)
    cases.append(_case("hostile/Reshape huge", "huge dims", _graph_model(
        [h.make_node("Reshape", ["x", "s"], ["y"])], [x], [_vi("y", shape=None)],
        [nh.from_array(np.array([10 ** 6, 10 ** 6], np.int64), "s")])))
    # an initializer that declares 10^12 elements but holds 4
    t = nh.from_array(np.ones(4, np.float32), "w")
    del t.dims[:]
    t.dims.extend([10 ** 6, 10 ** 6])
    cases.append(_case("hostile/initializer dims 1e12", "huge dims",
                       _graph_model([h.make_node("Add", ["x", "w"], ["y"])], [x], [y], [t])))
    # huge input shapes, from the model or from the command line
    cases.append(_case("hostile/input dim 1e12", "huge dims", _graph_model(
        [h.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=(10 ** 6, 10 ** 6))], [_vi("y", shape=(10 ** 6, 10 ** 6))])))
    cases.append(_case("hostile/--batch 1e9", "huge dims", _graph_model(
        [h.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=("batch", 1000))], [_vi("y", shape=("batch", 1000))]),
        ["--batch", str(10 ** 9)]))
    cases.append(_case("hostile/--input-shape 1e12", "huge dims", _graph_model(
        [h.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=("n", "m"))], [_vi("y", shape=("n", "m"))]),
        ["--input-shape", "x=1000000x1000000"]))
    # a constant Loop of 10^12 iterations, and one with no trip count and a condition that stays true
    body = h.make_graph([h.make_node("Identity", ["cond"], ["cond_out"]), h.make_node("Add", ["v", "one"], ["v_out"])],
                        "body", [_vi("i", T.INT64, ()), _vi("cond", T.BOOL, ()), _vi("v", T.FLOAT, ())],
                        [_vi("cond_out", T.BOOL, ()), _vi("v_out", T.FLOAT, ())],
                        [nh.from_array(np.array(1.0, np.float32), "one")])
    for trip, name in ((np.array(10 ** 12, np.int64), "1e12"), (None, "unbounded")):
        inits = [nh.from_array(np.array(True), "c"), nh.from_array(np.array(0.0, np.float32), "v0")]
        if trip is not None:
            inits.append(nh.from_array(trip, "M"))
        cases.append(_case(f"hostile/Loop {name}", "endless loop", _graph_model(
            [h.make_node("Loop", ["M" if trip is not None else "", "c", "v0"], ["vf"], body=body),
             h.make_node("Add", ["x", "vf"], ["y"])], [x], [y], inits)))
    # mismatched element types
    for et, op in ((T.DOUBLE, "Add"), (T.INT64, "Add"), (T.FLOAT16, "Mul"), (T.DOUBLE, "MatMul")):
        shape_b = (4, 4) if op == "MatMul" else (1, 4)
        out_shape = (1, 4)
        cases.append(_case(f"hostile/{op}(float, {T.DataType.Name(et)})", "mismatched dtypes", _graph_model(
            [h.make_node(op, ["x", "b"], ["y"])], [x, _vi("b", et, shape_b)], [_vi("y", shape=out_shape)])))
    w = nh.from_array(np.ones((4, 4), np.float64), "w")
    cases.append(_case("hostile/MatMul(float, double initializer)", "mismatched dtypes",
                       _graph_model([h.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])))
    cases.append(_case("hostile/output declared int64", "mismatched dtypes", _graph_model(
        [h.make_node("Relu", ["x"], ["y"])], [x], [_vi("y", T.INT64)])))
    # NaN / inf / overflowing constants
    for v, name in ((np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf"), (1e30, "1e30"), (1e10, "1e10")):
        wv = np.full((4, 4), 0.1, np.float32)
        wv[1, 2] = v
        cases.append(_case(f"hostile/weight {name}", "NaN/inf constants", _graph_model(
            [h.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [nh.from_array(wv, "w")])))
        cases.append(_case(f"hostile/Constant {name}", "NaN/inf constants", _graph_model(
            [h.make_node("Constant", [], ["k"], value=nh.from_array(np.array([0.5, v, 1.0, 2.0], np.float32))),
             h.make_node("Mul", ["x", "k"], ["y"])], [x], [y])))
    cases.append(_case("hostile/weight 1e10 everywhere", "NaN/inf constants", _graph_model(
        [h.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [nh.from_array(np.full((4, 4), 1e10, np.float32), "w")])))
    cases.append(_case("hostile/folds to NaN", "NaN/inf constants", _graph_model(
        [h.make_node("Sqrt", ["m"], ["s"]), h.make_node("Mul", ["x", "s"], ["y"])], [x], [y],
        [nh.from_array(np.full((1, 4), -1.0, np.float32), "m")])))
    # a -inf attention-style mask (a sentinel): must compile, clamped, and agree with onnxruntime
    cases.append(_case("hostile/mask -inf (legitimate)", "NaN/inf constants", _graph_model(
        [h.make_node("Add", ["x", "mask"], ["s"]), h.make_node("Softmax", ["s"], ["y"], axis=-1)], [x], [y],
        [nh.from_array(np.array([[0, 0, -np.inf, 0]], np.float32), "mask")])))
    # opsets
    for v in (99, 10 ** 6):
        cases.append(_case(f"hostile/opset {v}", "opset", _graph_model([h.make_node("Relu", ["x"], ["y"])], [x], [y], opset=v)))
    # cycles and duplicate names
    cases.append(_case("hostile/cycle", "cycle", _graph_model(
        [h.make_node("Add", ["x", "b"], ["a"]), h.make_node("Relu", ["a"], ["b"]), h.make_node("Relu", ["a"], ["y"])],
        [x], [y])))
    cases.append(_case("hostile/self loop", "cycle", _graph_model(
        [h.make_node("Add", ["x", "a"], ["a"]), h.make_node("Relu", ["a"], ["y"])], [x], [y])))
    cases.append(_case("hostile/duplicate output", "duplicate names", _graph_model(
        [h.make_node("Relu", ["x"], ["a"]), h.make_node("Sigmoid", ["x"], ["a"]), h.make_node("Relu", ["a"], ["y"])],
        [x], [y])))
    cases.append(_case("hostile/duplicate initializer", "duplicate names", _graph_model(
        [h.make_node("Add", ["x", "w"], ["y"])], [x], [y],
        [nh.from_array(np.ones((1, 4), np.float32), "w"), nh.from_array(np.zeros((1, 4), np.float32), "w")])))
    cases.append(_case("hostile/duplicate input", "duplicate names", _graph_model(
        [h.make_node("Relu", ["x"], ["y"])], [x, x], [y])))
    cases.append(_case("hostile/initializer shadows output", "duplicate names", _graph_model(
        [h.make_node("Relu", ["x"], ["w"]), h.make_node("Relu", ["w"], ["y"])], [x], [y],
        [nh.from_array(np.ones((1, 4), np.float32), "w")])))
    cases.append(_case("hostile/duplicate graph output", "duplicate names", _graph_model(
        [h.make_node("Relu", ["x"], ["y"])], [x], [y, y])))
    # external data
    for loc, name, extra in (("../outside.bin", "parent", {}), ("/etc/hostname", "absolute", {}),
                             ("missing.bin", "missing", {}), ("w.bin", "short", {"w.bin": b"\0" * 8}),
                             ("link.bin", "symlink out", {}), ("w.bin", "offset past end", {"w.bin": b"\0" * 64}),
                             ("loop.bin", "symlink loop", {}), ("a\0b.bin", "NUL in the path", {}),
                             ("sub", "a folder", {})):
        t = nh.from_array(np.ones((4, 4), np.float32), "w")
        t.data_location = T.EXTERNAL
        t.ClearField("raw_data")
        fields = {"location": loc, "offset": "1000" if name == "offset past end" else "0", "length": "64"}
        for k, v in fields.items():
            e = t.external_data.add()
            e.key, e.value = k, v
        model = _graph_model([h.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [t])
        links = {"symlink out": {"link.bin": "/etc/hostname"}, "symlink loop": {"loop.bin": "loop.bin"},
                 "a folder": {"sub": "."}}.get(name, {})
        cases.append(_case(f"hostile/external data {name}", "external data", model, files=extra, links=links))
    return cases


def all_cases(full: bool) -> list[Case]:
    rng = random.Random(13)
    cases = hostile_cases()
    for name, (make, args) in SEEDS.items():
        model = make()
        cases.append(_case(f"{name}/seed", "seed", model, args))
        cases += byte_cases(name, model, args, rng, n_trunc=40 if full else 8, n_flip=200 if full else 25)
        cases += structural_cases(name, model, args, rng, n=200 if full else 25)
    for name, (make, args) in (FULL_SEEDS.items() if full else ()):
        model = make()
        cases.append(_case(f"{name}/seed", "seed", model, args))
        cases += byte_cases(name, model, args, rng, n_trunc=4, n_flip=12)
        cases += structural_cases(name, model, args, rng, n=20)
    return cases


# ====================================================================== the worker (a subprocess)
def _oracle(model_path: Path, args: list[str]) -> str:
    """'' if the compiled IR's plaintext run matches onnxruntime on the model, else why not."""
    import onnxruntime as ort

    from fusec.build import frontend
    from fusec.ir.ops import interpret
    from fusec.verify import onnxruntime_reference

    def flag(name: str) -> int | None:
        return int(args[args.index(name) + 1]) if name in args else None

    graph = frontend(str(model_path), batch=flag("--batch"), seq=flag("--seq"))
    rng = np.random.default_rng(0)
    feeds = {t: rng.standard_normal(graph.info(t).shape) if graph.info(t).dtype == "float"
             else np.zeros(graph.info(t).shape, np.int64) for t in graph.inputs}
    try:
        ref = onnxruntime_reference(model_path, feeds, graph.meta.get("public_inputs", {}))
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.NotImplemented,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
        return f"fusec compiled a model onnxruntime refuses: {' '.join(str(e).split())[:200]}"
    got = interpret(graph, feeds)
    for name in graph.outputs:
        onnx_name = name[:-len("_shared")] if name.endswith("_shared") else name
        if onnx_name not in ref:
            continue
        a, b = np.asarray(got[name], np.float64), np.asarray(ref[onnx_name], np.float64)
        if a.shape != b.shape:
            return f"output {onnx_name}: shape {a.shape} vs onnxruntime {b.shape}"
        fin = np.isfinite(b)
        if not np.array_equal(np.isfinite(a), fin) or not np.allclose(a[fin], b[fin], rtol=1e-3,
                                                                     atol=1e-4 * (1 + np.abs(b[fin]).max(initial=0))):
            return f"output {onnx_name}: max |diff| {np.nanmax(np.abs(a - b)):.3g} from onnxruntime"
    return ""


def _run_case(case_dir: Path, args: list[str]) -> dict:
    """Compile through the CLI entry point in this process; classify the outcome."""
    import contextlib
    import io
    import resource
    import traceback

    from fusec import cli

    out_dir = case_dir / "build"
    argv = ["fusec", "compile", str(case_dir / "model.onnx"), "-o", str(out_dir), *COMPILE_ARGS, *args]
    err, std = io.StringIO(), io.StringIO()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    code, tb = 0, ""
    old_argv = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001  (exactly what the suite is looking for)
        code, tb = -1, "".join(traceback.format_exception_only(type(e), e)).strip()[:500]
    finally:
        sys.argv = old_argv
    res = {"code": code, "seconds": round(time.monotonic() - t0, 3), "stderr": err.getvalue()[-2000:],
           "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) // 1024}
    if tb:
        res["traceback"] = tb
    if code == 0:
        try:
            res["oracle"] = _oracle(case_dir / "model.onnx", args)
        except Exception as e:  # noqa: BLE001
            res["oracle"] = f"oracle could not run: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return res


def _worker(cases_json: str) -> None:
    import resource
    import warnings

    warnings.simplefilter("ignore")
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    except (ValueError, OSError):
        pass
    for item in json.loads(Path(cases_json).read_text()):
        print(json.dumps({"start": item["id"]}), flush=True)
        res = _run_case(Path(item["dir"]), item["args"])
        print(json.dumps({"id": item["id"], **res}), flush=True)


# ====================================================================== the driver (in pytest)
def _materialize(cases: list[Case], root: Path) -> list[dict]:
    items = []
    for i, c in enumerate(cases):
        d = root / f"case{i:04d}" / "model"            # model in a subfolder: '../outside.bin' exists, outside
        d.mkdir(parents=True)
        (d.parent / "outside.bin").write_bytes(b"\0" * 64)
        for name, data in c.files.items():
            (d / name).write_bytes(data)
        for name, target in c.links.items():
            os.symlink(target, d / name)
        items.append({"id": c.id, "dir": str(d), "args": c.args})
    return items


def run_cases(cases: list[Case], root: Path) -> dict[str, dict]:
    """Every case through the worker; a case past CASE_TIMEOUT kills the worker (a hang) and the
    next worker goes on from the case after it."""
    items = _materialize(cases, root)
    results: dict[str, dict] = {}
    todo = items
    while todo:
        spec = root / f"todo{len(results)}.json"
        spec.write_text(json.dumps(todo))
        p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, cwd=root, text=True, bufsize=1)
        current, t_start = None, time.monotonic()
        while True:
            ready, _, _ = select.select([p.stdout], [], [], 1.0)
            if ready:
                line = p.stdout.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "start" in msg:
                    current, t_start = msg["start"], time.monotonic()
                else:
                    results[msg["id"]] = msg
                    current = None
            elif current is not None and time.monotonic() - t_start > CASE_TIMEOUT:
                p.kill()
                results[current] = {"id": current, "code": None, "hang": True, "seconds": CASE_TIMEOUT}
                break
            elif p.poll() is not None and not ready:
                break
        p.wait()
        if current is not None and current not in results:      # the worker died inside a case
            results[current] = {"id": current, "code": None, "crash": f"worker exited with {p.returncode}"}
        left = [it for it in items if it["id"] not in results]
        if len(left) == len(todo):                                # no progress: never loop forever
            for it in left:
                results[it["id"]] = {"id": it["id"], "code": None, "crash": f"worker exited with {p.returncode}"}
            break
        todo = left
    return results


def verdict(res: dict) -> str:
    """'' for a clean outcome, else what is wrong with it."""
    if res.get("hang"):
        return "hang"
    if res.get("crash"):
        return res["crash"]
    if res.get("traceback"):
        return f"traceback: {res['traceback']}"
    err = res.get("stderr", "")
    if "Traceback" in err:
        return "traceback in stderr"
    if res["rss_growth_mb"] > 2000:
        return f"allocated {res['rss_growth_mb']} MB"
    if res["code"] == 0:
        return res.get("oracle", "")
    if res["code"] != 2:
        return f"exit status {res['code']}"
    lines = [ln for ln in err.splitlines() if not ln.startswith("  [")]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if len(errors) != 1:
        return f"{len(errors)} error lines"
    rest = [ln for ln in lines if ln not in errors and not ln.startswith("  hint:") and not ln.startswith("WARNING")]
    if rest:
        return f"extra output: {rest[0][:200]}"
    if "MemoryError" in err or "Unable to allocate" in err:
        return "memory error (allocated before checking)"
    return ""


def summarize(cases: list[Case], results: dict[str, dict]) -> tuple[dict, list[str]]:
    counts = {"cases": len(cases), "clean errors": 0, "correct compiles": 0, "tracebacks": 0, "hangs": 0, "other": 0}
    bad = []
    for c in cases:
        r = results.get(c.id, {"crash": "no result"})
        v = verdict(r)
        if not v:
            counts["correct compiles" if r["code"] == 0 else "clean errors"] += 1
            continue
        counts["hangs" if v == "hang" else "tracebacks" if "traceback" in v else "other"] += 1
        bad.append(f"{c.id} [{c.family}]: {v}")
    return counts, bad


def _check(full: bool, tmp_path: Path) -> None:
    cases = all_cases(full)
    t0 = time.monotonic()
    results = run_cases(cases, tmp_path)
    counts, bad = summarize(cases, results)
    slowest = sorted(results.values(), key=lambda r: -r.get("seconds", 0))[:3]
    print(json.dumps({**counts, "seconds": round(time.monotonic() - t0, 1),
                      "slowest": [(r["id"], r.get("seconds")) for r in slowest]}, indent=1))
    assert not bad, f"{len(bad)} of {len(cases)} cases are not a clean error or a correct compile:\n" + "\n".join(bad[:40])


def test_hostile_cases_cover_every_family():
    """The suite itself: every family of the issue is present (a test that can fail)."""
    fams = {c.family for c in all_cases(full=False)}
    assert {"truncation", "byte flip", "structural", "huge dims", "mismatched dtypes", "NaN/inf constants",
            "external data", "cycle", "duplicate names", "endless loop", "opset"} <= fams


def test_verdicts_catch_what_they_should():
    """The classifier refuses tracebacks, two error lines, other exit codes and oracle mismatches."""
    ok = {"code": 2, "stderr": "  [frontend]\nerror: x is wrong\n  hint: do y\n", "rss_growth_mb": 0}
    assert verdict(ok) == ""
    assert verdict({**ok, "stderr": "Traceback (most recent call last):\n"}) != ""
    assert verdict({**ok, "stderr": "error: a\nerror: b\n"}) != ""
    assert verdict({**ok, "code": 1}) != ""
    assert verdict({**ok, "traceback": "OverflowError: x"}) != ""
    assert verdict({"code": 0, "stderr": "", "rss_growth_mb": 0, "oracle": "output y differs"}) != ""
    assert verdict({"code": 0, "stderr": "", "rss_growth_mb": 0, "oracle": ""}) == ""
    assert verdict({"hang": True}) == "hang"


def test_fuzz_fast_subset(tmp_path):
    _check(full=False, tmp_path=tmp_path)


@pytest.mark.slow
def test_fuzz_full(tmp_path):
    _check(full=True, tmp_path=tmp_path)


if __name__ == "__main__":
    _worker(sys.argv[1])
