"""The CLI's own surface: help, the cost table, the compiler commands, clean errors."""
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).parent.parent / "fusec" / "examples" / "digits_mlp.onnx"


def fusec(*args):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_help_and_gate_table():
    assert fusec("--help").returncode == 0
    r = fusec("gates", "--bits", "37", "--frac", "12")
    assert r.returncode == 0
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 15 and any("ScalarGate" in row for row in rows)


def test_unknown_option_is_a_usage_error_not_a_traceback():
    r = fusec("demo", "run", "--party", "7", "--keys", "x", "--peer", ":1")
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- compiler commands
def test_compile_inspect_keygen_and_bad_inputs(tmp_path):
    build, keys = tmp_path / "build", tmp_path / "keys"
    r = fusec("compile", EXAMPLE, "-o", build, "--batch", "2")
    assert r.returncode == 0, r.stderr
    r = fusec("inspect", build)
    assert r.returncode == 0 and "rounds" in r.stdout and "relu" in r.stdout
    assert fusec("inspect", build, "--ir", "--layout", "--program").returncode == 0
    assert fusec("keygen", build, "-o", keys).returncode == 0
    # wrong shape, wrong dtype, NaN: refused with a message before any connection
    for bad in (np.zeros((3, 64), np.float32), np.zeros((2, 64), np.int64).astype(object), np.full((2, 64), np.nan)):
        np.save(tmp_path / "bad.npy", bad, allow_pickle=True)
        r = fusec("run", build, "--party", "1", "--keys", keys / "p1.key", "--peer", "127.0.0.1:9",
                  "--input", tmp_path / "bad.npy", "--connect-retry", "0")
        assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # a modified build is refused
    (build / "program.json").write_text("{}")
    r = fusec("inspect", build)
    assert r.returncode == 2 and "modified" in r.stderr


def test_compile_bad_model_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model" * 10)
    r = fusec("compile", junk, "-o", tmp_path / "b")
    assert r.returncode == 2 and "junk.onnx" in r.stderr and "Traceback" not in r.stderr
    r = fusec("compile", EXAMPLE, "-o", tmp_path / "b")       # dynamic batch without --batch
    assert r.returncode == 2 and "--batch" in r.stderr


def test_token_ids_outside_the_vocabulary_are_refused():
    from fusec.build import check_inputs
    from fusec.errors import FusecError
    from tests.test_compiler import _embedding_model

    g, _ = _embedding_model(vocab=50)
    try:
        check_inputs(g, {"ids": np.array([[1, 2, 3, 50, 0, 0]])})
    except FusecError as e:
        assert "vocabulary" in str(e) and "50" in str(e)
    else:
        raise AssertionError("out-of-vocabulary id accepted")


def test_verify_command_runs_two_processes(tmp_path):
    r = fusec("example", "--workdir", tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "argmax agreement 1.000" in r.stdout


# ---------------------------------------------------------------------- the input contract
def test_input_range_sets_the_contract_and_run_refuses_values_outside_it(tmp_path):
    import json

    build, keys = tmp_path / "build", tmp_path / "keys"
    r = fusec("compile", EXAMPLE, "-o", build, "--batch", "2", "--input-range", "x=0:1")
    assert r.returncode == 0, r.stderr
    assert json.loads((build / "ir.json").read_text())["meta"]["input_contract"] == {"x": [0.0, 1.0]}
    assert fusec("keygen", build, "-o", keys).returncode == 0
    x = np.full((2, 64), 0.5)
    x[1, 7] = 1.5
    for name, save in (("bad.npy", lambda p: np.save(p, x)), ("bad.npz", lambda p: np.savez(p, x=x))):
        save(tmp_path / name)
        r = fusec("run", build, "--party", "1", "--keys", keys / "p1.key", "--peer", "127.0.0.1:9",
                  "--input", tmp_path / name, "--connect-retry", "0")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("error: input 'x'") and "1.5" in lines[0] and "[0, 1]" in lines[0], lines[0]
        assert "--input-range x=" in lines[0] and "connect" not in r.stderr      # refused before any socket
    # values on the contract's edges are accepted (this one fails later, at the connection)
    np.save(tmp_path / "edge.npy", np.stack([np.zeros(64), np.ones(64)]))
    r = fusec("run", build, "--party", "1", "--keys", keys / "p1.key", "--peer", "127.0.0.1:9",
              "--input", tmp_path / "edge.npy", "--connect-retry", "0")
    assert r.returncode == 2 and "contract" not in r.stderr and "connect" in r.stderr, r.stderr


def test_input_range_syntax_errors_exit_2():
    for bad, cmds in (("x=1", ["compile", "verify"]), ("x=2:1", ["compile"]), ("x=a:b", ["compile"]),
                      ("=0:1", ["compile"]), ("x=0:inf", ["compile"]), ("x", ["verify"])):
        for cmd in cmds:
            extra = ("-o", "/nonexistent/never-written") if cmd == "compile" else ()
            r = fusec(cmd, EXAMPLE, *extra, "--batch", "2", "--input-range", bad)
            assert r.returncode == 2 and "--input-range" in r.stderr and "Traceback" not in r.stderr, \
                (cmd, bad, r.stderr)
    r = fusec("compile", EXAMPLE, "-o", "/nonexistent/never-written", "--batch", "2", "--input-range", "nosuch=0:1")
    assert r.returncode == 2 and "nosuch" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_sequence_longer_than_the_models_positions_says_so(tmp_path):
    """bert-tiny's position embeddings hold 128 positions: --seq 256 cannot broadcast against
    them, and the error says which size the model is built for instead of only the shapes."""
    model = Path(__file__).parent / "data" / "bert_tiny_legacy.onnx"
    r = fusec("compile", model, "-o", tmp_path / "b", "--seq", "256", "--batch", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot lower" in r.stderr
    assert "the model is built for size 128 on that axis" in r.stderr and "--seq" in r.stderr
