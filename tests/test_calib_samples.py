"""Calibration over many samples (issue 12, item 4): ``fusec compile --calib`` with more rows than
the compiled batch, or a folder of requests; every tensor's range is the hull over all requests.

The oracle is onnxruntime run on each sample separately with the intermediate tensors as extra
outputs: the compiled ranges must equal [min, max] over those runs (so a build that calibrated on
the first request only, or on a wrong split, fails). The model is a tiny MLP built with onnx.helper.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from fusec.build import compile_model, frontend
from fusec.calib_set import load_calibration
from fusec.errors import FusecError
from fusec.limits import Limits, using
from fusec.passes import calibrate as calibrate_mod
from fusec.passes.options import CompileOptions

B, D_IN, D_H, D_OUT = 2, 4, 6, 3
TENSORS = ("h1", "h2", "y")        # ONNX intermediates whose names the IR keeps


def mlp(extra_outputs: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    inits = [nh.from_array(rng.normal(0, 1, (D_IN, D_H)).astype(np.float32), "W1"),
             nh.from_array(rng.normal(0, 1, (D_H, D_OUT)).astype(np.float32), "W2")]
    nodes = [h.make_node("MatMul", ["x", "W1"], ["h1"]), h.make_node("Tanh", ["h1"], ["h2"]),
             h.make_node("MatMul", ["h2", "W2"], ["y"])]
    outs = [h.make_tensor_value_info("y", T.FLOAT, ["batch", D_OUT])]
    if extra_outputs:
        outs += [h.make_tensor_value_info(t, T.FLOAT, None) for t in ("h1", "h2")]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, ["batch", D_IN])], outs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def ort_ranges(samples: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """[min, max] of each intermediate over onnxruntime runs, one per sample."""
    import onnxruntime as ort

    sess = ort.InferenceSession(mlp(True).SerializeToString(), providers=["CPUExecutionProvider"])
    lo = {t: np.inf for t in TENSORS}
    hi = {t: -np.inf for t in TENSORS}
    for x in samples:
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.astype(np.float32)})))
        for t in TENSORS:
            lo[t], hi[t] = min(lo[t], float(got[t].min())), max(hi[t], float(got[t].max()))
    return {t: (lo[t], hi[t]) for t in TENSORS}


def assert_ranges(got: dict, want: dict) -> None:
    for t in TENSORS:
        assert got[t] == pytest.approx(want[t], rel=1e-5, abs=1e-5), t


def samples(n: int, seed: int = 0) -> list[np.ndarray]:
    """Requests of growing spread: each adds to some tensor's range."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.3 * (k + 1), (B, D_IN)) for k in range(n)]


# ---------------------------------------------------------------------- the pass itself
def test_ranges_over_two_requests_are_the_hull_of_each_alone(tmp_path):
    r = samples(2)
    both = compile_model(mlp(), tmp_path / "b2", CompileOptions(calib=[{"x": v} for v in r]), batch=B).ir.meta
    assert_ranges(both["ranges"], ort_ranges(r))
    first = ort_ranges(r[:1])
    assert any(both["ranges"][t] != pytest.approx(first[t], rel=1e-5) for t in TENSORS)   # the second one counts
    # the input contract covers every request (max |x| over both, times 4, a power of two)
    m = max(float(np.abs(v).max()) for v in r) * 4
    assert both["input_contract"]["x"][1] == 2.0 ** np.ceil(np.log2(m))


def test_the_time_budget_stops_early_with_a_note(tmp_path, monkeypatch):
    """Each float run made slow: the budget ends the loop between requests; ranges are the hull of
    the requests it used (as many as the note says), never a half-run one."""
    import time

    real = calibrate_mod._run

    def slow(*a, **k):
        time.sleep(0.05)
        return real(*a, **k)

    monkeypatch.setattr(calibrate_mod, "_run", slow)
    r = samples(40, seed=1)
    opts = CompileOptions(calib=[{"x": v} for v in r])
    with using(Limits(calib_seconds=0.8)):
        meta = compile_model(mlp(), tmp_path / "b", opts, batch=B).ir.meta
    note = next(n for n in meta["notes"] if n.startswith("calibration used"))
    used = int(note.split()[2])
    assert 1 <= used < 40 and f"of {len(r)} requests" in note and "--calib-seconds" in note
    assert_ranges(meta["ranges"], ort_ranges(r[:used]))


# ---------------------------------------------------------------------- reading --calib
@pytest.fixture(scope="module")
def probe():
    return frontend(mlp(), batch=B)


def test_a_file_with_more_rows_is_split_into_batches(tmp_path, probe):
    rows = np.arange(5 * D_IN, dtype=np.float64).reshape(5, D_IN)
    np.save(tmp_path / "rows.npy", rows)
    reqs = load_calibration(tmp_path / "rows.npy", probe)
    assert len(reqs) == 3 and all(r["x"].shape == (B, D_IN) for r in reqs)
    assert np.array_equal(np.concatenate([r["x"] for r in reqs])[:5], rows)
    assert np.array_equal(reqs[2]["x"][1], rows[0])          # the last batch filled from the start
    np.savez(tmp_path / "one.npz", x=rows[:B])                # exactly the compiled shape: one request
    assert len(load_calibration(tmp_path / "one.npz", probe)) == 1


def test_a_folder_is_one_request_per_file_in_name_order(tmp_path, probe):
    for i, v in enumerate(samples(3)):
        np.savez(tmp_path / f"req{i}.npz", x=v)
    (tmp_path / "README.txt").write_text("not an input")
    reqs = load_calibration(tmp_path, probe)
    assert len(reqs) == 3 and all(np.array_equal(r["x"], v) for r, v in zip(reqs, samples(3)))


@pytest.mark.parametrize("case, want", [
    ("empty folder", "holds no .npy/.npz input files"),
    ("wrong shape", r"input 'x' has shape \(3, 5\); the model was compiled for \(2, 4\)"),
    ("fewer rows", r"input 'x' has shape \(1, 4\)"),
    ("mixed names", "gives input\\(s\\) x, z but a.npz gives x"),
    ("unknown name", "'z': not an input of this model"),
    ("nan", "contains NaN"),
])
def test_bad_calibration_data_is_one_line(tmp_path, probe, case, want):
    d = tmp_path / "calib"
    d.mkdir()
    target = d
    if case == "wrong shape":
        np.save(d / "a.npy", np.zeros((3, 5)))
    elif case == "fewer rows":
        np.save(d / "a.npy", np.zeros((1, D_IN)))
    elif case == "mixed names":
        np.savez(d / "a.npz", x=np.zeros((B, D_IN)))
        np.savez(d / "b.npz", x=np.zeros((B, D_IN)), z=np.zeros(2))
    elif case == "unknown name":
        np.savez(d / "a.npz", x=np.zeros((B, D_IN)), z=np.zeros(2))
        target = d / "a.npz"
    elif case == "nan":
        np.save(d / "a.npy", np.full((6, D_IN), np.nan))
        target = d / "a.npy"
    with pytest.raises(FusecError, match=want) as e:
        load_calibration(target, probe)
    assert "\n" not in e.value.message


def test_inputs_with_different_row_counts_are_refused(tmp_path):
    g = frontend(_two_input_model(), batch=1)
    np.savez(tmp_path / "c.npz", a=np.zeros((4, 2)), b=np.zeros((3, 2)))
    with pytest.raises(FusecError, match=r"different numbers of rows \(a: 4, b: 3\)"):
        load_calibration(tmp_path / "c.npz", g)
    np.savez(tmp_path / "c.npz", a=np.zeros((4, 2)), b=np.ones((4, 2)))
    reqs = load_calibration(tmp_path / "c.npz", g)
    assert len(reqs) == 4 and all(r["b"].shape == (1, 2) and r["b"].sum() == 2 for r in reqs)


def _two_input_model() -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Add", ["a", "b"], ["y"])], "add",
                     [h.make_tensor_value_info(n, T.FLOAT, ["batch", 2]) for n in ("a", "b")],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 2])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


# ---------------------------------------------------------------------- through the CLI
def fusec(*args):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_cli_rows_and_folder_calibrate_on_every_sample(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    r = samples(3, seed=3)
    rows = np.concatenate(r)                                   # 6 rows = 3 batches of 2
    np.save(tmp_path / "rows.npy", rows)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, v in enumerate(r):
        np.savez(folder / f"{i}.npz", x=v)
    want = ort_ranges(r)
    for src in (tmp_path / "rows.npy", folder):
        out = tmp_path / f"build_{src.stem}"
        p = fusec("compile", tmp_path / "m.onnx", "-o", out, "--batch", B, "--calib", src)
        assert p.returncode == 0, p.stderr
        assert_ranges(json.loads((out / "ir.json").read_text())["meta"]["ranges"], want)


def test_cli_bad_calibration_is_exit_2_one_line(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    p = fusec("compile", tmp_path / "m.onnx", "-o", tmp_path / "b", "--batch", B, "--calib", tmp_path / "empty")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "holds no .npy/.npz" in p.stderr
    assert len([line for line in p.stderr.splitlines() if line.startswith("error")]) == 1
