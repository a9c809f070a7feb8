"""A build directory edited by someone who also re-hashes the manifest, and what `verify` checks on.

``load_build`` must answer every tampered file with one FusecError naming the file and the
field (never a traceback from deep inside the gate builder), and must never unpickle the
weights. ``fusec verify`` must pass every compile option on (built from the compile
command's own options) and check on inputs the calibration never saw.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusec.build import HASHED, compile_model, load_build
from fusec.errors import FusecError
from fusec.passes.options import CompileOptions

EXAMPLE = Path(__file__).resolve().parent.parent / "fusec" / "examples" / "digits_mlp.onnx"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "build"
    compile_model(str(EXAMPLE), out, CompileOptions(), batch=2)
    return out


def _rehash(d: Path) -> None:
    """What a tamperer who knows the format does: recompute every hash in the manifest."""
    m = json.loads((d / "manifest.json").read_text())
    if isinstance(m, dict) and isinstance(m.get("hashes"), dict):
        for name in list(m["hashes"]):
            if (d / name).is_file():
                m["hashes"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
        (d / "manifest.json").write_text(json.dumps(m))


def _tampered(build: Path, tmp_path: Path, edit) -> Path:
    d = tmp_path / "t"
    shutil.copytree(build, d)
    edit(d)
    _rehash(d)
    return d


def _edit_json(name: str, change):
    def edit(d: Path) -> None:
        doc = json.loads((d / name).read_text())
        new = change(doc)                          # edits in place; a returned list replaces the document
        doc = new if isinstance(new, list) else doc
        (d / name).write_text(json.dumps(doc))
    return edit


def _weights(change):
    def edit(d: Path) -> None:
        with np.load(d / "weights.npz") as z:
            w = {k: z[k] for k in z.files}
        change(w)
        np.savez(d / "weights.npz", **w)           # (allow_pickle: object arrays are pickled)
    return edit


def _first_const(d: Path) -> str:
    return sorted(json.loads((d / "ir.json").read_text())["consts"])[0]


CASES = {
    "flag of the wrong type": (_edit_json("manifest.json", lambda m: m["flags"].update(bits="50")),
                               "manifest.json: field flags.bits must be an integer"),
    "unknown flag": (_edit_json("manifest.json", lambda m: m["flags"].update(turbo=True)),
                     "manifest.json: field flags.turbo is not a compile flag"),
    "flag out of range": (_edit_json("manifest.json", lambda m: m["flags"].update(bits=7)), "ring width 7"),
    "missing key": (_edit_json("manifest.json", lambda m: m.pop("layout_digest")),
                    "manifest.json: required field layout_digest is missing"),
    "hash dropped": (_edit_json("manifest.json", lambda m: m["hashes"].pop("ir.json")),
                     "field hashes has no entry for ir.json"),
    "manifest not an object": (_edit_json("manifest.json", lambda m: [m]),
                               "manifest.json: field (top level) must be an object"),
    "garbage ir.json": (lambda d: (d / "ir.json").write_text("{garbage"), "ir.json is not valid JSON"),
    "ir shape of the wrong type": (_edit_json("ir.json", lambda g: next(iter(g["tensors"].values())).update(shape="2x64")),
                                   "ir.json: field tensors["),
    "ir negative dim": (_edit_json("ir.json", lambda g: next(iter(g["tensors"].values())).update(shape=[-1, 64])),
                        "must be a non-negative integer"),
    "ir huge dim": (_edit_json("ir.json", lambda g: next(iter(g["tensors"].values())).update(shape=[10 ** 12, 64])),
                    "over the limit"),
    "ir unknown op": (_edit_json("ir.json", lambda g: g["nodes"][0].update(op="Bogus")), "ir.json: field nodes[0].op"),
    "ir node reads nothing": (_edit_json("ir.json", lambda g: g["nodes"][0].update(inputs=["nowhere"])),
                              "names tensor 'nowhere'"),
    "garbage weights": (lambda d: (d / "weights.npz").write_bytes(b"PK\x03\x04 not a zip"),
                        "weights.npz is not a weights archive"),
    "weights of another shape": (_weights(lambda w: w.update({k: np.zeros(3, v.dtype) for k, v in list(w.items())[:1]})),
                                 "but ir.json lists"),
    "weights with NaN": (_weights(lambda w: w.update({k: np.full_like(v, np.nan) for k, v in w.items()
                                                      if v.dtype.kind == "f"})), "holds NaN"),
    "weights missing one": (_weights(lambda w: w.pop(sorted(w)[0])), "of ir.json is missing"),
    "program rounds": (_edit_json("program.json", lambda p: p.update(rounds=p["rounds"] + 1)),
                       "program.json: field rounds differs"),
    "program garbage": (lambda d: (d / "program.json").write_text("[]"), "program.json: field (top level)"),
    "layout garbage": (lambda d: (d / "keys.layout.json").write_text("7"), "keys.layout.json: field (top level)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_build_with_a_rehashed_manifest_is_refused_naming_file_and_field(build, tmp_path, case):
    edit, want = CASES[case]
    d = _tampered(build, tmp_path, edit)
    with pytest.raises(FusecError) as e:
        load_build(d)
    assert want in str(e.value), str(e.value)
    assert "\n" not in e.value.message


def test_an_untouched_build_loads(build):
    b = load_build(build)
    assert b.gates.layout().digest() == json.loads((build / "manifest.json").read_text())["layout_digest"]
    assert set(HASHED) >= set(json.loads((build / "manifest.json").read_text())["hashes"])


class _Touch:
    """Unpickling this creates a file: proof that nothing unpickled the weights."""
    target = ""

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_weights_are_never_unpickled(build, tmp_path):
    sentinel = tmp_path / "unpickled"
    _Touch.target = str(sentinel)

    def plant(w):
        k = sorted(w)[0]
        arr = np.empty(w[k].shape, object)
        arr[...] = _Touch()
        w[k] = arr
    d = _tampered(build, tmp_path, _weights(plant))
    with pytest.raises(FusecError, match="not a plain numeric type|but ir.json lists"):
        load_build(d)
    assert not sentinel.exists()


def test_tampered_build_through_the_cli_is_one_line_exit_2(build, tmp_path):
    d = _tampered(build, tmp_path, _edit_json("manifest.json", lambda m: m["flags"].update(frac=[12])))
    r = subprocess.run([sys.executable, "-m", "fusec", "inspect", str(d)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "flags.frac" in errors[0], r.stderr


# ---------------------------------------------------------------------- verify
def test_verify_passes_on_every_compile_option():
    """Every option of `fusec compile` (but -o) is an option of `verify` and comes back out of
    compile_argv when set: a new compile flag cannot be forgotten by verify."""
    import click

    from fusec.cli import compile_argv, compile_cmd, verify_cmd

    compile_opts = [p for p in compile_cmd.params if isinstance(p, click.Option) and p.name != "out"]
    assert {p.name for p in compile_opts} <= {p.name for p in verify_cmd.params}
    for p in compile_opts:
        flag = next(o for o in p.opts if o.startswith("--"))
        if p.is_flag:
            value = True
        elif p.multiple:
            value = ("a=b",)
        elif isinstance(p.type, click.Choice):
            value = [c for c in p.type.choices if c != p.default][0]
        elif isinstance(p.type, (click.types.IntParamType, click.IntRange)):
            value = 3
        elif isinstance(p.type, (click.types.FloatParamType, click.FloatRange)):
            value = 2.5
        else:
            value = "x.npy"
        argv = compile_argv({p.name: value})
        assert flag in argv, (p.name, argv)


def test_verify_draws_fresh_inputs_over_the_whole_contract_with_its_edges():
    from fusec.build import frontend
    from fusec.passes import pipeline
    from fusec.passes.calibrate import default_feeds
    from fusec.verify import fresh_feeds

    g = frontend(str(EXAMPLE), batch=4)
    opts = CompileOptions()
    for p in pipeline.PASSES:
        g = p(g, opts)
    (name,) = g.inputs
    lo, hi = g.meta["input_contract"][name]
    feeds, how = fresh_feeds(g, seed=0, calib_seed=opts.calib_seed)
    v = feeds[name]
    assert v.min() == lo and v.max() == hi                       # both edges present
    assert np.all((v >= lo) & (v <= hi))
    assert np.ptp(v) > 0.5 * (hi - lo)                           # spread over the range, not near 0
    calib = default_feeds(g, opts.calib_seed)[name]
    assert not np.allclose(v, calib)                             # not the calibration input
    assert name in how[0] and "contract" in how[0]
