"""The CLI's own surface: help, the cost table, clean errors."""
import subprocess
import sys


def fusec(*args):
    return subprocess.run([sys.executable, "-m", "fusec", *args], capture_output=True, text=True, timeout=120)


def test_help_and_gate_table():
    assert fusec("--help").returncode == 0
    r = fusec("gates", "--n", "37", "--f", "12")
    assert r.returncode == 0
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 15 and any("ScalarGate" in row for row in rows)


def test_unknown_option_is_a_usage_error_not_a_traceback():
    r = fusec("demo", "run", "--party", "7", "--keys", "x", "--peer", ":1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
