"""Several inferences in one `fusec run` (--inputs DIR / --count N / --outputs DIR).

The oracle is onnxruntime on each request file; each inference must claim a key set of its
own, and the two servers must agree on how many inferences they run.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fusec.errors import FusecError, ParameterError
from fusec.run3 import free_port, fusec_cmd
from fusec.runtime.channel import local_channel_pair
from fusec.serving import agree_count, plan_requests
from tests.harness import both_parties
from tests.test_bench import DIGITS


def _fusec(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_requests_from_a_directory_a_count_or_one_input(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("b.npy", "a.npz", "notes.txt"):
        (d / name).write_bytes(b"")
    reqs = plan_requests(None, str(d), None, None, None)
    assert [r.name for r in reqs] == ["a", "b"] and reqs[0].input_path == d / "a.npz"
    assert [r.name for r in plan_requests(None, None, 3, None, None)] == [f"inference_{i:04d}" for i in range(3)]
    assert len(plan_requests(str(d / "a.npz"), None, None, str(tmp_path / "o.npy"), None)) == 1
    bad = [((str(d / "a.npz"), str(d), None, None, None), "not both"),
           ((None, str(d), 3, None, None), "holds 2 request"),
           ((str(d / "a.npz"), None, 2, None, None), "each inference needs its own request"),
           ((None, str(d), None, str(tmp_path / "o.npz"), None), "--output names one file"),
           ((None, str(tmp_path / "nowhere"), None, None, None), "not a directory"),
           ((None, str(tmp_path), None, None, None), "no .npy or .npz file"),
           ((None, None, 2, None, str(tmp_path / "missing")), "create it first")]
    for args, msg in bad:
        with pytest.raises(ParameterError, match=msg):
            plan_requests(*args)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.npz").write_bytes(b"")
    with pytest.raises(ParameterError, match="already holds a.npz"):
        plan_requests(None, str(d), None, None, str(out))


def test_the_two_servers_must_run_as_many_inferences():
    ends, errors = local_channel_pair(timeout=10), [None, None]

    def work(p):
        try:
            agree_count(ends[p], 3 if p == 0 else 2)
        except FusecError as e:
            errors[p] = e.message
    both_parties(work)
    assert errors[0] == "this server runs 3 inference(s), the peer 2"
    assert errors[1] == "this server runs 2 inference(s), the peer 3"
    ends = local_channel_pair(timeout=10)
    both_parties(lambda p: agree_count(ends[p], 4))        # equal counts: nothing to say


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A digits build with three key sets and three request files."""
    tmp = tmp_path_factory.mktemp("serving")
    build, keys, reqs = tmp / "build", tmp / "keys", tmp / "requests"
    assert _fusec("compile", DIGITS, "-o", build, "--batch", 1).returncode == 0
    assert _fusec("keygen", build, "-o", keys, "--count", 3).returncode == 0
    reqs.mkdir()
    rng = np.random.default_rng(5)
    xs = {}
    for name in ("r1", "r2", "r3"):
        xs[name] = rng.uniform(0, 16, (1, 64)).astype(np.float32)
        np.save(reqs / f"{name}.npy", xs[name])
    return tmp, build, keys, reqs, xs


def test_one_connection_three_requests_three_key_sets(served, monkeypatch):
    import onnxruntime as ort

    tmp, build, keys, reqs, xs = served
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp / "state"))
    out = tmp / "out"
    out.mkdir()
    port = free_port()
    p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", str(keys / "p0.key"),
                                    "--listen", f"127.0.0.1:{port}", "--count", "3"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p1 = _fusec("run", build, "--party", 1, "--keys", keys / "p1.key", "--peer", f"127.0.0.1:{port}",
                "--inputs", reqs, "--outputs", out, "--stats", tmp / "stats.json")
    out0, err0 = p0.communicate(timeout=180)
    assert p0.returncode == 0 and p1.returncode == 0, err0 + p1.stderr
    lines = [json.loads(s) for s in p1.stdout.splitlines()]
    assert [s["key_set"] for s in lines] == [0, 1, 2] and [s["request"] for s in lines] == ["r1", "r2", "r3"]
    assert len(json.loads((tmp / "stats.json").read_text())) == 3
    sess = ort.InferenceSession(str(DIGITS))
    name = sess.get_inputs()[0].name
    for req, x in xs.items():
        ref = sess.run(None, {name: x})[0]
        got = next(iter(np.load(out / f"{req}.npz").values()))
        assert np.max(np.abs(got - ref)) < 0.05 * (1 + np.max(np.abs(ref))), req
    # every set is used now: another request is refused before any socket
    r = _fusec("run", build, "--party", 0, "--keys", keys / "p0.key", "--listen", "127.0.0.1:9", "--count", 1)
    assert r.returncode == 2 and "are used" in r.stderr and "Traceback" not in r.stderr


def test_more_requests_than_key_sets_or_a_count_mismatch_is_one_line(served, monkeypatch, tmp_path):
    tmp, build, keys, reqs, xs = served
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    r = _fusec("run", build, "--party", 0, "--keys", keys / "p0.key", "--listen", "127.0.0.1:9", "--count", 4)
    assert r.returncode == 2 and "4 inferences need as many key sets" in r.stderr and "has 3 unused" in r.stderr
    r = _fusec("run", build, "--party", 0, "--keys", keys / "p0.key", "--listen", "127.0.0.1:9", "--cuda-graphs")
    assert r.returncode == 2 and "--backend gpu" in r.stderr
    port = free_port()
    p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", str(keys / "p0.key"),
                                    "--listen", f"127.0.0.1:{port}", "--count", "2"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p1 = _fusec("run", build, "--party", 1, "--keys", keys / "p1.key", "--peer", f"127.0.0.1:{port}",
                "--inputs", reqs)
    _, err0 = p0.communicate(timeout=120)
    for code, err in ((p0.returncode, err0), (p1.returncode, p1.stderr)):
        assert code == 2 and "Traceback" not in err, err
    assert "runs 2 inference(s), the peer 3" in err0 and "runs 3 inference(s), the peer 2" in p1.stderr
    # the count is agreed before any key-set hello: the mismatch used no set
    r = _fusec("run", build, "--party", 0, "--keys", keys / "p0.key", "--listen", "127.0.0.1:9", "--count", 4)
    assert r.returncode == 2 and "has 3 unused" in r.stderr


def test_the_next_key_set_is_read_while_the_current_one_runs(tmp_path, monkeypatch):
    """NextSetReader reads the next unused set in the background: the claim then reuses those
    bytes without reading the file again, and marks nothing before it; a corrupted next set
    is the key file's usual error, raised on the main thread by wait()."""
    from fusec.errors import KeyFileError
    from fusec.runtime.keyio import KeyFile, read_header
    from fusec.serving import NextSetReader
    from tests.test_keyfile import assert_keys_equal, flip_byte, make_layout, read_all, write_pair

    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    lay = make_layout()
    paths, written, _ = write_pair(tmp_path, lay)
    kf = KeyFile.open(paths[0], lay, 0)
    assert NextSetReader.usable(kf, stream_keys=False) and not NextSetReader.usable(kf, stream_keys=True)
    assert not NextSetReader.usable(object(), stream_keys=False)          # a dealer's stream: no prefetch
    ahead = NextSetReader(kf, None)
    read_all(kf.claim(0), lay)                                            # the current inference's set
    ahead.start()
    ahead.wait()
    assert kf.used_sets() == [0]                                          # read ahead, not marked
    reads = []
    monkeypatch.setattr(kf, "_read_set", lambda *a, **k: reads.append(a))
    assert_keys_equal(read_all(kf.claim(1), lay), written[0][1])          # from the bytes read ahead
    assert reads == [] and kf.used_sets() == [0, 1]
    monkeypatch.undo()
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    flip_byte(paths[0], read_header(paths[0]).set_offset(2) + 7)
    ahead.start()
    with pytest.raises(KeyFileError, match="key set 2 .*corrupted"):
        ahead.wait()
    ahead.wait()                                                          # the error is raised once
    monkeypatch.setattr("fusec.serving.SPARE_SET_SHARE", 0.0)             # as for a 34 GB set
    ahead.start()
    assert ahead._thread is None                                          # no second copy beside the current set
    with_buffer = NextSetReader(kf, lambda n: np.empty(n, np.uint8))     # the backend's reused buffer
    with_buffer.start()
    with pytest.raises(KeyFileError, match="key set 2 .*corrupted"):
        with_buffer.wait()
    kf.close()
