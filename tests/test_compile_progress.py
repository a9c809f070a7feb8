"""``fusec compile``'s progress: one stderr line per stage (every pipeline pass, by name,
in pipeline order), opened when the stage starts and closed with its seconds; ``--quiet``
prints none; a stage that fails closes its line before the error's own line."""
import re
import subprocess
import sys
from pathlib import Path

from fusec.passes.pipeline import PASSES

EXAMPLE = Path(__file__).parent.parent / "fusec" / "examples" / "digits_mlp.onnx"


def fusec(*args):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_every_pass_has_one_line_with_its_seconds(tmp_path):
    r = fusec("compile", EXAMPLE, "-o", tmp_path / "b", "--batch", "2")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("  [")]
    stages = []
    for ln in lines:
        m = re.fullmatch(r"  \[([a-z_, ]+)\] (\d+\.\d) s", ln)
        assert m, ln
        stages.append(m.group(1))
    want = ["frontend", *(p.__name__ for p in PASSES), "lower, schedule, key order", "write build directory"]
    assert stages == want


def test_quiet_prints_no_progress(tmp_path):
    r = fusec("compile", EXAMPLE, "-o", tmp_path / "b", "--batch", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "  [" not in r.stderr


def test_a_failing_stage_closes_its_line_before_the_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    r = fusec("compile", bad, "-o", tmp_path / "b")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == "  [frontend] failed", r.stderr
    assert lines[1].startswith("error:"), r.stderr
