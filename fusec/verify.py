"""``fusec verify``: compile -> keygen -> P0 and P1 as two processes -> compare with onnxruntime.

Everything runs as a user would run it (the ``fusec`` CLI in subprocesses over loopback
TCP); the reference is onnxruntime on the original ONNX file in float32, fed the same
inputs plus the public inputs the compiler fixed (attention mask ones, ...). Without
``--input`` the input is a fresh draw the calibration never saw, over each input's whole
accepted range with its edges (:func:`fresh_feeds`), and the output says so. The
comparison reports max absolute error, relative error (||a-b|| / ||b||), cosine
similarity and, for outputs with a class axis, argmax agreement.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusec.errors import FusecError


@dataclass
class Comparison:
    name: str
    max_abs: float
    rel: float
    cosine: float
    argmax_agree: float | None

    def line(self) -> str:
        am = f", argmax agreement {self.argmax_agree:.3f}" if self.argmax_agree is not None else ""
        return (f"{self.name}: max abs err {self.max_abs:.3e}, rel err {self.rel:.3e}, "
                f"cosine {self.cosine:.6f}{am}")


def compare(name: str, got: np.ndarray, ref: np.ndarray) -> Comparison:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise FusecError(f"output {name!r}: secure shape {got.shape} != onnxruntime shape {ref.shape}")
    d = got - ref
    nref = float(np.linalg.norm(ref))
    cos = float(np.dot(got.ravel(), ref.ravel()) / max(np.linalg.norm(got) * nref, 1e-300))
    am = None
    if ref.ndim >= 1 and ref.shape[-1] > 1:
        am = float(np.mean(np.argmax(got, -1) == np.argmax(ref, -1)))
    return Comparison(name, float(np.abs(d).max()) if d.size else 0.0,
                      float(np.linalg.norm(d) / max(nref, 1e-300)), cos, am)


def onnxruntime_reference(model_path, feeds: dict[str, np.ndarray], public_meta: dict,
                          user_public: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort  # noqa: PLC0415

    from fusec.ir.onnx_frontend import default_public_input  # noqa: PLC0415

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    run_feeds = {}
    for inp in sess.get_inputs():
        dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(double)": np.float64, "tensor(bool)": np.bool_}.get(inp.type, np.float32)
        if inp.name in feeds:
            run_feeds[inp.name] = np.asarray(feeds[inp.name]).astype(dtype)
        elif user_public and inp.name in user_public:
            run_feeds[inp.name] = np.asarray(user_public[inp.name]).astype(dtype)
        elif inp.name in public_meta:
            shape = tuple(public_meta[inp.name]["shape"])
            run_feeds[inp.name] = default_public_input(inp.name, shape, np.dtype(dtype))[0]
        else:
            raise FusecError(f"no value for ONNX input {inp.name!r} in the reference run")
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, run_feeds)))


def fresh_feeds(graph, seed: int, calib_seed: int = 0) -> tuple[dict[str, np.ndarray], list[str]]:
    """An input the calibration never saw, spread over the whole range the build accepts.

    The default calibration input is a standard normal draw (``passes/calibrate``); checking on
    it again would hide every range problem. Here each float input with an input contract
    ``[lo, hi]`` (``passes/ranges``; what ``fusec run`` accepts) is drawn uniformly over it, with
    both ends present (the first element ``lo``, the last ``hi``); token ids are uniform over the
    vocabulary with 0 and its last id present; anything else (masks) as the calibration draws it,
    from another seed. Returns the feeds and a description of each input's draw.
    """
    from fusec.passes.calibrate import default_feeds  # noqa: PLC0415

    rng = np.random.default_rng([seed, 0x7E51F])         # a stream no integer calibration seed gives
    other = int(rng.integers(1, 2 ** 31))
    feeds = default_feeds(graph, other if other != calib_seed else other + 1)
    contract = graph.meta.get("input_contract") or {}
    how = []
    for name in graph.inputs:
        if name not in feeds:
            continue
        info = graph.info(name)
        v = np.asarray(feeds[name])
        if info.dtype == "float" and name in contract and v.size:
            lo, hi = (float(x) for x in contract[name])
            v = rng.uniform(lo, hi, v.shape)
            v.flat[0], v.flat[-1] = lo, hi
            how.append(f"{name} uniform on [{lo:g}, {hi:g}] (the input contract) with both ends")
        elif info.dtype == "int" and v.size:
            vocab = _vocabulary(graph, name)
            if vocab:
                v = rng.integers(0, vocab, v.shape)
                v.flat[0], v.flat[-1] = 0, vocab - 1
                how.append(f"{name} uniform over ids [0, {vocab}) with 0 and {vocab - 1}")
            else:
                how.append(f"{name} as calibration draws it, from another seed")
        else:
            how.append(f"{name} as calibration draws it, from another seed")
        feeds[name] = v.astype(feeds[name].dtype) if hasattr(feeds[name], "dtype") else v
    return feeds, how


def _vocabulary(graph, name: str) -> int | None:
    """Rows of the embedding table ``name`` indexes (through reshapes), None if it indexes none."""
    seen = [name]
    for t in seen:
        for n in graph.consumers(t):
            if n.op in ("Reshape", "Identity", "Cast", "Unsqueeze", "Squeeze") and n.inputs[0] == t:
                seen.append(n.outputs[0])
            if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1] == t and graph.is_const(n.inputs[0]):
                return int(graph.const(n.inputs[0]).shape[n.attrs.get("axis", 0)])
    return None


def verify(model, workdir, compile_argv: list[str], input_path: str | None = None, seed: int = 0,
           timeout: float = 1800.0, echo=print, backend: str = "cpu", party_argv: list[str] | tuple = ()
           ) -> list[Comparison]:
    """``party_argv``: more ``fusec run`` options for both servers (e.g. ``--tls-*``)."""
    from fusec.build import load_build, load_inputs  # noqa: PLC0415
    from fusec.run3 import free_port, fusec_cmd, run_three  # noqa: PLC0415

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    build = wd / "build"
    import subprocess  # noqa: PLC0415
    echo(f"[1/4] compile {model} -> {build}")
    r = subprocess.run(fusec_cmd("compile", str(model), "-o", str(build), *compile_argv), capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode:
        raise FusecError(f"compile failed:\n{(r.stderr or r.stdout).strip()}")
    b = load_build(build)
    if input_path:
        feeds = load_inputs(input_path, b.ir)
        echo(f"[input] {input_path} (given)")
    else:
        feeds, how = fresh_feeds(b.ir, seed, b.opts.calib_seed)
        echo(f"[input] fresh draws the calibration did not see (seed {seed}): {'; '.join(how)}")
    np.savez(wd / "input.npz", **feeds)
    port = free_port()
    echo(f"[2/4] keygen -> {wd / 'keys'}; [3/4] P0 listens on 127.0.0.1:{port}, P1 connects")
    be = ("--backend", backend)
    run_three(fusec_cmd("keygen", str(build), "-o", str(wd / "keys"), *be),
              fusec_cmd("run", str(build), "--party", "0", "--keys", str(wd / "keys" / "p0.key"),
                        "--listen", f"127.0.0.1:{port}", "--stats", str(wd / "p0.json"), *be, *party_argv),
              fusec_cmd("run", str(build), "--party", "1", "--keys", str(wd / "keys" / "p1.key"),
                        "--peer", f"127.0.0.1:{port}", "--input", str(wd / "input.npz"),
                        "--output", str(wd / "out.npz"), "--stats", str(wd / "p1.json"), *be, *party_argv),
              timeout=timeout,
              echo=echo)
    echo("[4/4] onnxruntime reference")
    with np.load(wd / "out.npz") as z:
        got = {k: z[k] for k in z.files}
    from fusec.inputs import full_request  # noqa: PLC0415
    ref = onnxruntime_reference(model, full_request(b.ir, feeds), b.ir.meta.get("public_inputs", {}))
    stats = [json.loads((wd / f"p{p}.json").read_text()) for p in (0, 1)]
    echo(f"online ({backend}): {max(s['online_seconds'] for s in stats):.3f} s, {stats[1]['rounds']} rounds, "
         f"{sum(s['bytes_sent'] for s in stats):,} bytes sent (both parties)")
    results = []
    for name in b.ir.outputs:
        key = next((k for k in got if k == name), None)
        onnx_name = name[:-len("_shared")] if name.endswith("_shared") else name
        if key is None or onnx_name not in ref:
            continue
        results.append(compare(onnx_name, got[key], ref[onnx_name]))
        echo(results[-1].line())
    return results
