"""Dealer, P0 and P1 as real processes; key-file and peer errors; traffic vs input."""
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from fusec import demo
from fusec.errors import KeyFileError, KeyReuseError, PeerError
from fusec.run3 import free_port
from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.channel import local_channel_pair
from fusec.runtime.dealer import write_keys
from fusec.runtime.party import open_keys, run_party

N, BITS, F = 6, 50, 12


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    """The servers' state directory (reuse ledger) of each test, inherited by subprocesses."""
    d = tmp_path / "state"
    monkeypatch.setenv("FUSEC_STATE_DIR", str(d))
    return d


def used(state_dir, key_path, party):
    """Sets recorded as used for ``key_path``'s keygen run, read from the ledger's files."""
    from fusec.runtime.keyio import read_header

    d = state_dir / "used" / f"{read_header(key_path).key_set_id}.p{party}"
    return sorted(int(p.name) for p in d.iterdir()) if d.exists() else []


def fusec(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fusec", *args], capture_output=True, text=True, timeout=timeout)


def test_three_processes_over_loopback(tmp_path, state_dir):
    """`fusec demo` runs the dealer, P0 and P1 as separate processes over TCP."""
    r = fusec("demo", "--elements", str(N), "--workdir", str(tmp_path), "--seed", "3")
    assert r.returncode == 0, r.stderr + r.stdout
    out = json.loads((tmp_path / "out.json").read_text())
    x, w = np.load(tmp_path / "x.npy"), np.load(tmp_path / "w.npy")
    h = x * w
    # oracle: float math, independent of the gate code; tolerance: a few ulps of 2^-12
    gel = 0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2)))
    assert np.max(np.abs(np.array(out["outputs"]["gelu_out"]) - gel)) < 2e-3
    assert abs(out["outputs"]["max_out"][0] - max(0, h.max())) < 2e-3
    assert used(state_dir, tmp_path / "p0.key", 0) == [0] and used(state_dir, tmp_path / "p1.key", 1) == [0]
    assert not list(tmp_path.glob("*.used"))        # the record is the server's, not beside the key file


def _run_pair(graph, paths, inputs, be_timeout=10.0):
    c0, c1 = local_channel_pair(timeout=be_timeout)
    res, err = {}, {}

    def go(p, ch):
        try:
            kf, idx = open_keys(graph, p, paths[p])
            res[p] = run_party(graph, p, kf, idx, ch, inputs[p], get_backend("cpu"))
        except Exception as e:  # surfaced to the test
            err[p] = e
            ch.close()

    ts = [threading.Thread(target=go, args=(p, c)) for p, c in ((0, c0), (1, c1))]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return res, err


def _inputs(rng):
    return {0: {"w": ring.encode_fixed(rng.uniform(-1, 1, N), F, BITS)},
            1: {"x": ring.encode_fixed(rng.uniform(-3, 3, N), F, BITS)}}


def test_key_reuse_refused_and_count(tmp_path):
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path, count=2)
    rng = np.random.default_rng(0)
    for expect_set in (0, 1):
        res, err = _run_pair(g, paths, _inputs(rng))
        assert not err and res[1].key_set == expect_set
    with pytest.raises(KeyFileError, match="used"):
        open_keys(g, 0, paths[0])
    from fusec.runtime.keyio import KeyFile
    with pytest.raises(KeyReuseError):
        KeyFile.open(paths[0], g.layout(), 0).claim(0)


def test_wrong_party_file_fails_before_any_connection(tmp_path):
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path)
    port = free_port()
    # nothing listens on `port`: a clean key error proves the check came first
    r = fusec("demo", "run", "--elements", str(N), "--party", "0", "--keys", str(paths[1]),
              "--peer", f"127.0.0.1:{port}", "--connect-retry", "1", timeout=30)
    assert r.returncode == 2
    assert "party 1" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(KeyFileError, match="another build|layout"):
        open_keys(demo.build_graph(N + 1, BITS, F), 0, paths[0])


def test_mismatched_key_files_detected_by_handshake(tmp_path):
    g = demo.build_graph(N, BITS, F)
    a = write_keys(g, tmp_path / "a")
    b = write_keys(g, tmp_path / "b")
    res, err = _run_pair(g, (a[0], b[1]), _inputs(np.random.default_rng(1)))
    assert any(isinstance(e, PeerError) and "keygen run" in str(e) for e in err.values())


def test_peer_gone_is_a_clear_error_within_timeout(tmp_path):
    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path)
    port = free_port()
    np.save(tmp_path / "x.npy", np.zeros(N))
    r = fusec("demo", "run", "--elements", str(N), "--party", "1", "--keys", str(paths[1]), "--input",
              str(tmp_path / "x.npy"), "--peer", f"127.0.0.1:{port}", "--timeout", "1", "--connect-retry", "1",
              timeout=60)
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bytes_sent_do_not_depend_on_inputs(tmp_path):
    """Message sizes, round by round, are the same for very different inputs."""
    g = demo.build_graph(N, BITS, F)
    sizes = []
    for seed, scale in ((0, 1e-3), (1, 3.0)):
        paths = write_keys(g, tmp_path / str(seed))
        rng = np.random.default_rng(seed)
        inp = {0: {"w": ring.encode_fixed(rng.uniform(-1, 1, N) * scale, F, BITS)},
               1: {"x": ring.encode_fixed(rng.uniform(-3, 3, N) * scale, F, BITS)}}
        c0, c1 = local_channel_pair()
        per_round = {0: [], 1: []}
        for p, ch in ((0, c0), (1, c1)):
            orig = ch.exchange

            def spy(data, scope="other", limit=None, _orig=orig, _p=p):
                per_round[_p].append(len(data))
                return _orig(data, scope, limit)
            ch.exchange = spy
        res = {}

        def go(p, ch):
            kf, idx = open_keys(g, p, paths[p])
            res[p] = run_party(g, p, kf, idx, ch, inp[p], get_backend("cpu"))
        ts = [threading.Thread(target=go, args=(p, c)) for p, c in ((0, c0), (1, c1))]
        [t.start() for t in ts]
        [t.join() for t in ts]
        sizes.append(per_round)
    assert sizes[0] == sizes[1]
    assert len(sizes[0][0]) > 5


def test_open_keys_verifies_into_the_backends_host_buffer(tmp_path):
    """``open_keys(out=be.host_buffer)`` (as a GPU server reads into page-locked memory):
    the set is read there once, before the hello, the claim uses those verified bytes
    (the buffer is not asked for again) and the outputs are those of the plain path on
    the same key set (another state directory, so the set may be used again)."""
    from fusec.runtime.backend import Backend

    class HostBuffered(Backend):
        def __init__(self):
            super().__init__()
            self.asked, self.buf = [], None

        def host_buffer(self, nbytes):
            self.asked.append(nbytes)
            self.buf = np.zeros(nbytes, np.uint8) if self.buf is None else self.buf
            return self.buf[:nbytes]

    g = demo.build_graph(N, BITS, F)
    paths = write_keys(g, tmp_path, count=1)
    inputs = _inputs(np.random.default_rng(4))
    outs, bes = {}, {0: HostBuffered(), 1: HostBuffered()}
    for run, out in (("plain", False), ("buffered", True)):
        c0, c1 = local_channel_pair(timeout=10.0)
        res = {}

        def go(p, ch, run=run, out=out):
            kf, idx = open_keys(g, p, paths[p], tmp_path / run, out=bes[p].host_buffer if out else None)
            with kf:
                res[p] = run_party(g, p, kf, idx, ch, inputs[p], bes[p] if out else get_backend("cpu"))
        ts = [threading.Thread(target=go, args=(p, c)) for p, c in ((0, c0), (1, c1))]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert set(res) == {0, 1}, run
        outs[run] = res
    for p in (0, 1):
        assert bes[p].asked == [g.layout().set_nbytes]
        assert outs["plain"][p].outputs.keys() == outs["buffered"][p].outputs.keys()
        for k, v in outs["plain"][p].outputs.items():
            np.testing.assert_array_equal(outs["buffered"][p].outputs[k], v)


def test_stage_set_gives_the_same_key_set_type_on_every_backend():
    """stage_set returns StagedKeys: a mapping from gate id to that gate's key arrays, in
    layout order, whether unpacked up front or on first use (the GPU backend's code is
    checked against it in tests/test_device_path.py::test_streamed_keys_are_the_staged_keys)."""
    import numpy as np

    from fusec.runtime.backend import StagedKeys, get_backend
    from fusec.runtime.layout import KeyField, KeyLayout

    layout = KeyLayout([("g0", "demo", 3, (KeyField("seed", (3, 2), 64), KeyField("t", (5, 3), 1))),
                        ("g1", "demo", 7, (KeyField("v", (7,), 37),))])
    buf = np.random.default_rng(5).integers(0, 256, size=layout.set_nbytes, dtype=np.uint8)
    cpu = get_backend("cpu").stage_set(layout, buf)
    assert isinstance(cpu, StagedKeys) and list(cpu) == ["g0", "g1"] and len(cpu) == 2
    lazy = StagedKeys(layout.gate_ids, load=lambda g: cpu[g])
    for g in layout.gate_ids:
        for name, a in cpu[g].items():
            np.testing.assert_array_equal(lazy[g][name], a)
