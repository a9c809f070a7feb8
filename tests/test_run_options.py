"""`fusec run` / `fusec demo run` refuse what they can see alone, in one line, with exit
status 2, before they claim a key set: numbers, addresses, output paths, key paths that
are not files, an unusable state directory. The key set stays usable afterwards (checked
by running the real pair of servers on it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fusec.cli import main
from fusec.run3 import free_port

N = 6


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("FUSEC_STATE_DIR", str(d))
    return d


def one_line_error(args, monkeypatch, capsys) -> str:
    """Run the CLI in-process as `fusec ARGS`; it must exit 2 with exactly one stderr line."""
    monkeypatch.setattr(sys, "argv", ["fusec", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def fusec(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


BASE = ["demo", "run", "--elements", N, "--keys", "nowhere.key"]


@pytest.mark.parametrize("cmd", ["demo", "run"])
@pytest.mark.parametrize("flag,value", [
    ("--timeout", "-1"), ("--timeout", "0"), ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "-inf"),
    ("--timeout", "1e300"), ("--timeout", "ten"), ("--connect-retry", "nan"), ("--connect-retry", "-1"),
    ("--connect-retry", "inf"), ("--peer", ":0"), ("--peer", "host:99999"), ("--peer", "host:"),
    ("--peer", "no-port"), ("--listen", ":70000"), ("--party", "2"), ("--party", "-1"), ("--party", "one"),
])
def test_bad_numbers_and_addresses_one_line_exit_2(cmd, flag, value, monkeypatch, capsys):
    base = BASE if cmd == "demo" else ["run", "no-build-dir", "--keys", "nowhere.key"]
    args = [*base, "--party", "1", "--peer", "127.0.0.1:9"]
    if flag in ("--party", "--peer"):
        i = args.index(flag)
        args[i + 1] = value
    else:
        args += [flag, value]
    line = one_line_error(args, monkeypatch, capsys)
    assert flag in line and value in line, line


def test_endpoint_count(monkeypatch, capsys):
    line = one_line_error([*BASE, "--party", "0"], monkeypatch, capsys)
    assert "exactly one of --listen and --peer" in line
    line = one_line_error([*BASE, "--party", "0", "--listen", ":9000", "--peer", ":9001"], monkeypatch, capsys)
    assert "exactly one of --listen and --peer" in line


def test_run_checks_output_paths_before_loading_the_build(tmp_path, monkeypatch, capsys):
    """The build directory does not exist: each error below proves the path check ran first."""
    run = ["run", tmp_path / "no-build", "--party", "1", "--keys", "k", "--peer", "127.0.0.1:9"]
    for out, why in ((tmp_path / "missing" / "out.npz", "does not exist"), (tmp_path / "out.txt", "must end in"),
                     (tmp_path, "must end in")):
        line = one_line_error([*run, "--output", out], monkeypatch, capsys)
        assert "--output" in line and why in line, line
    (tmp_path / "dir.npz").mkdir()
    line = one_line_error([*run, "--output", tmp_path / "dir.npz"], monkeypatch, capsys)
    assert "not a regular file" in line
    line = one_line_error([*run, "--stats", tmp_path / "missing" / "s.json"], monkeypatch, capsys)
    assert "--stats" in line and "does not exist" in line
    if os.geteuid() != 0:                             # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        line = one_line_error([*run, "--output", ro / "o.npz"], monkeypatch, capsys)
        assert "not writable" in line


def _keygen(tmp_path, count=1):
    r = fusec("demo", "keygen", "--elements", N, "--count", count, "-o", tmp_path / "keys")
    assert r.returncode == 0, r.stderr
    return tmp_path / "keys" / "p0.key", tmp_path / "keys" / "p1.key"


def _pair(p0_key, p1_key, out):
    import numpy as np

    vec = out.parent / "vec.npy"
    np.save(vec, np.linspace(-1, 1, N))
    port = free_port()
    cmd = [sys.executable, "-m", "fusec", "demo", "run", "--elements", str(N), "--timeout", "30", "--input", str(vec)]
    p0 = subprocess.Popen([*cmd, "--party", "0", "--keys", str(p0_key), "--listen", f"127.0.0.1:{port}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p1 = subprocess.run([*cmd, "--party", "1", "--keys", str(p1_key), "--peer", f"127.0.0.1:{port}",
                         "--output", str(out)], capture_output=True, text=True, timeout=90)
    o0, e0 = p0.communicate(timeout=90)
    return p0.returncode, p1.returncode, e0 + p1.stderr


def test_missing_output_dir_does_not_burn_the_key_set(tmp_path, state_dir):
    p0, p1 = _keygen(tmp_path)
    port = free_port()
    # P0 waits for a peer; P1 is refused before it connects, so P0 must time out (no peer)
    import numpy as np

    np.save(tmp_path / "w.npy", np.ones(N))
    lst = subprocess.Popen([sys.executable, "-m", "fusec", "demo", "run", "--elements", str(N), "--party", "0",
                            "--keys", str(p0), "--listen", f"127.0.0.1:{port}", "--timeout", "3",
                            "--input", str(tmp_path / "w.npy")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = fusec("demo", "run", "--elements", N, "--party", 1, "--keys", p1, "--peer", f"127.0.0.1:{port}",
              "--output", tmp_path / "no" / "such" / "dir" / "out.json")
    _, e0 = lst.communicate(timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert lst.returncode == 2 and "timed out" in e0, e0
    assert not (state_dir / "used").exists() or not any((state_dir / "used").glob("*/*"))
    # the one key set is still there for the corrected command
    rc0, rc1, err = _pair(p0, p1, tmp_path / "out.json")
    assert rc0 == 0 and rc1 == 0, err
    assert json.loads((tmp_path / "out.json").read_text())["key_set"] == 0


def test_copied_key_files_cannot_run_twice(tmp_path):
    """The attack of the issue: copy both key files elsewhere and run the set again on
    another input. The second run is refused before any socket opens, on both sides."""
    import shutil

    p0, p1 = _keygen(tmp_path)
    rc0, rc1, err = _pair(p0, p1, tmp_path / "out.json")
    assert rc0 == 0 and rc1 == 0, err
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(p0, copy / "a.key")
    shutil.copy(p1, copy / "b.key")
    for leftover in tmp_path.rglob("*.used"):
        leftover.unlink()
    for party, key in ((0, copy / "a.key"), (1, copy / "b.key")):
        r = fusec("demo", "run", "--elements", N, "--party", party, "--keys", key, "--peer", "127.0.0.1:9",
                  "--connect-retry", "0")
        assert r.returncode == 2 and "all 1 key sets" in r.stderr and "used" in r.stderr, r.stderr
        assert "connect" not in r.stderr


def test_key_path_fifo_and_unusable_state_dir(tmp_path):
    fifo = tmp_path / "p1.key"
    os.mkfifo(fifo)
    r = fusec("demo", "run", "--elements", N, "--party", 1, "--keys", fifo, "--peer", "127.0.0.1:9", timeout=30)
    assert r.returncode == 2 and "is a FIFO" in r.stderr and "Traceback" not in r.stderr, r.stderr
    _, p1 = _keygen(tmp_path / "k")
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = fusec("demo", "run", "--elements", N, "--party", 1, "--keys", p1, "--peer", "127.0.0.1:9",
              "--state-dir", blocker / "state", "--connect-retry", "0")
    assert r.returncode == 2 and "cannot keep the record of used key sets" in r.stderr, r.stderr
    assert "--state-dir" in r.stderr and "connect" not in r.stderr.split("hint")[0]
