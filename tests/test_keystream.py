"""Key sets streamed by the dealer over TCP (runtime/keystream.py, `fusec keygen --serve`):
the same bytes a key file holds for the same seed, each set once, the pairing as with files,
and one-line errors for every way the three ends can disagree."""
import subprocess
import sys
import threading

import numpy as np
import pytest

from fusec import demo
from fusec.errors import FusecError, KeyFileError, ParameterError
from fusec.run3 import free_port, fusec_cmd
from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.channel import TcpListener, local_channel_pair
from fusec.runtime.dealer import write_keys
from fusec.runtime.dealer_service import serve_keys
from fusec.runtime.keyio import KeyFile
from fusec.runtime.keystream import DealerKeyStream, check_plaintext, parse_stream_address
from fusec.runtime.party import open_keys, run_party

N, BITS, F = 6, 50, 12


class Dealer:
    """serve_keys in a thread on an ephemeral loopback port."""

    def __init__(self, graph, count: int, seed: bytes | None = None, timeout: float = 20.0, ssl_context=None,
                 backend=None) -> None:
        self.listener = TcpListener("127.0.0.1", 0, ssl_context)
        self.address = f"tcp://127.0.0.1:{self.listener.port}"
        self.result, self.error, self.log = None, None, []

        def go():
            try:
                self.result = serve_keys(graph, self.listener, count, seed=seed, timeout=timeout,
                                         log=self.log.append, backend=backend)
            except Exception as e:  # surfaced to the test
                self.error = e
            finally:
                self.listener.close()

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def join(self):
        self.thread.join(30)
        assert not self.thread.is_alive(), "the dealer did not finish"
        return self.result


def _both(fn):
    """fn(party) in two threads; (results, errors) by party."""
    res, err = {}, {}

    def go(p):
        try:
            res[p] = fn(p)
        except Exception as e:  # surfaced to the test
            err[p] = e

    ts = [threading.Thread(target=go, args=(p,)) for p in (0, 1)]
    [t.start() for t in ts]
    [t.join(60) for t in ts]
    return res, err


def test_streamed_sets_are_the_key_files_bytes(tmp_path):
    """For one test seed the dealer's stream carries exactly what it writes into key files
    (the file path has its own tests), set after set, and a set comes only once."""
    g = demo.build_graph(N, BITS, F)
    layout = g.layout()
    write_keys(g, tmp_path, count=2, seed=b"same")
    files = {}
    for p in (0, 1):
        with KeyFile.open(tmp_path / f"p{p}.key", layout, p, tmp_path / "state") as kf:
            files[p] = [kf._read_set(i).tobytes() for i in range(2)]
    dealer = Dealer(g, 2, seed=b"same")

    def receive(p):
        with DealerKeyStream.connect(dealer.address, layout, p) as ks:
            got = []
            while ks.next_unused() is not None:
                got.append(ks.claim(ks.next_unused()).read_all_raw().tobytes())
            with pytest.raises(KeyFileError, match="once, in order"):
                ks.claim(0)
            return got, ks.key_set_id, ks.pairing_secret

    res, err = _both(receive)
    assert not err, err
    for p in (0, 1):
        assert res[p][0] == files[p]
    assert res[0][1:] == res[1][1:]                 # one key-set id and pairing secret for both
    done = dealer.join()
    assert done["sets"] == 2 and done["sessions"] == 1 and done["generate_seconds"] > 0


def test_the_dealer_gives_its_cached_device_memory_back_after_every_set():
    """A GPU dealer next to two parties on one card kept the largest gate's keygen working
    set cached for the whole online phase (BERT-base at batch 8: the launch plan's recording
    ran out of memory in round 38). It gives the cache back after each set, before the
    servers start on it, and reports the most it gave back."""
    from fusec.runtime.backend import Backend

    class Releasing(Backend):
        def __init__(self):
            super().__init__()
            self.calls = []

        def release_cache(self):
            self.calls.append(len(self.calls))
            return (len(self.calls)) << 20

    g = demo.build_graph(N, BITS, F)
    be = Releasing()
    dealer = Dealer(g, 3, backend=be)

    def receive(p):
        with DealerKeyStream.connect(dealer.address, g.layout(), p) as ks:
            while ks.next_unused() is not None:
                ks.claim(ks.next_unused()).read_all_raw()

    _, err = _both(receive)
    assert not err, err
    done = dealer.join()
    assert be.calls == [0, 1, 2] and done["device_cache_released_bytes"] == 3 << 20
    assert get_backend("cpu").release_cache() == 0 and get_backend("cpu").memory_report() == {}


def _inputs(rng):
    return {0: {"w": ring.encode_fixed(rng.uniform(-1, 1, N), F, BITS)},
            1: {"x": ring.encode_fixed(rng.uniform(-3, 3, N), F, BITS)}}


def test_two_inferences_in_two_sessions_against_float_math():
    """Servers come and go (one `fusec run` pair per inference): the dealer serves set 0 to
    the first pair and set 1 to the next; each inference's outputs match float math."""
    g = demo.build_graph(N, BITS, F)
    dealer = Dealer(g, 2)
    rng = np.random.default_rng(5)
    for expect in (0, 1):
        inputs = _inputs(rng)
        c0, c1 = local_channel_pair(timeout=20)
        chans = {0: c0, 1: c1}

        def party(p):
            kf, idx = open_keys(g, p, dealer.address)
            with kf:
                return run_party(g, p, kf, idx, chans[p], inputs[p], get_backend("cpu"))

        res, err = _both(party)
        assert not err, err
        assert res[0].key_set == res[1].key_set == expect
        h = ring.decode_fixed(inputs[0]["w"], F, BITS) * ring.decode_fixed(inputs[1]["x"], F, BITS)
        out = ring.decode_fixed(res[1].outputs["max_out"], F, BITS)
        assert abs(float(np.ravel(out)[0]) - max(0.0, h.max())) < 2e-3
    done = dealer.join()
    assert done["sets"] == 2 and done["sessions"] == 2


def test_a_server_of_another_build_is_refused_in_one_line():
    g = demo.build_graph(N, BITS, F)
    dealer = Dealer(g, 1, timeout=3)
    with pytest.raises(KeyFileError, match="serves another build"):
        DealerKeyStream.connect(dealer.address, demo.build_graph(N + 1, BITS, F).layout(), 0)
    dealer.join()
    assert isinstance(dealer.error, FusecError) and "timed out" in str(dealer.error)


def test_a_second_server_for_the_same_party_is_refused_and_a_lost_server_ends_only_its_session():
    """A duplicate party 0 is told so; the pair that forms gets its offer; a server that
    hangs up mid-session ends that session, not the dealer, and the next pair is served."""
    g = demo.build_graph(N, BITS, F)
    dealer = Dealer(g, 1, timeout=10)
    entered, release, refused = threading.Event(), threading.Event(), []

    def p0():       # two of these race; the one that came second is refused, the other waits for party 1
        try:
            with DealerKeyStream.connect(dealer.address, g.layout(), 0):
                entered.set()
                release.wait(10)
        except KeyFileError as e:
            refused.append(e)

    racers = [threading.Thread(target=p0) for _ in range(2)]
    [t.start() for t in racers]
    deadline = threading.Event()
    for _ in range(100):                # until the loser heard it (at most 10 s)
        if refused:
            break
        deadline.wait(0.1)
    assert len(refused) == 1 and "party 0 is already connected" in str(refused[0])
    with DealerKeyStream.connect(dealer.address, g.layout(), 1) as ks1:
        assert ks1.next_unused() == 0
        assert entered.wait(10)
    release.set()       # both hung up without asking for a set: the session is over
    [t.join(10) for t in racers]
    res, err = _both(lambda p: _one_set_size(dealer.address, g.layout(), p))
    assert not err and res == {0: g.layout().set_nbytes, 1: g.layout().set_nbytes}
    done = dealer.join()
    assert done["sets"] == 1 and done["sessions"] == 2 and dealer.error is None


def _one_set_size(address: str, layout, party: int, **kw) -> int:
    """Connect, take the next set, hang up (the dealer exits once both have)."""
    with DealerKeyStream.connect(address, layout, party, **kw) as ks:
        return ks.claim(ks.next_unused()).read_all_raw().size


def test_no_dealer_and_bad_addresses_are_one_line():
    g = demo.build_graph(N, BITS, F)
    with pytest.raises(KeyFileError, match="start `fusec keygen BUILD --serve"):
        DealerKeyStream.connect(f"tcp://127.0.0.1:{free_port()}", g.layout(), 0, retry_for=0.2)
    for bad in ("tcp://", "tcp://host", "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000"):
        with pytest.raises(ParameterError, match="tcp://HOST:PORT"):
            parse_stream_address(bad)
    with pytest.raises(ParameterError, match="in the clear"):
        check_plaintext("10.1.2.3", False, "--keys")
    check_plaintext("10.1.2.3", True, "--keys")
    check_plaintext("127.0.0.1", False, "--keys")
    check_plaintext("::1", False, "--keys")


def _fusec(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_keygen_serve_and_run_against_onnxruntime(tmp_path, monkeypatch):
    """`fusec keygen --serve` + two `fusec run --keys tcp://` processes, twice: the dealer
    serves two inferences and exits; outputs match onnxruntime; no key file is written."""
    import onnxruntime as ort

    from tests.test_bench import DIGITS

    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    build = tmp_path / "build"
    assert _fusec("compile", DIGITS, "-o", build, "--batch", 1).returncode == 0
    r = _fusec("keygen", build, "--serve", "10.0.0.1:9100")
    assert r.returncode == 2 and "in the clear" in r.stderr and "Traceback" not in r.stderr
    r = _fusec("keygen", build)
    assert r.returncode == 2 and "exactly one of -o" in r.stderr
    dport = free_port()
    dealer = subprocess.Popen(fusec_cmd("keygen", str(build), "--serve", f"127.0.0.1:{dport}", "--count", "2",
                                        "--timeout", "60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sess = ort.InferenceSession(str(DIGITS))
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    for i in range(2):
        x = rng.uniform(0, 16, (1, 64)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        port = free_port()
        p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", f"tcp://127.0.0.1:{dport}",
                                        "--listen", f"127.0.0.1:{port}"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        p1 = _fusec("run", build, "--party", 1, "--keys", f"tcp://127.0.0.1:{dport}", "--peer", f"127.0.0.1:{port}",
                    "--input", tmp_path / "x.npy", "--output", tmp_path / "out.npy")
        out0, _ = p0.communicate(timeout=120)
        assert p0.returncode == 0 and p1.returncode == 0, out0 + p1.stderr
        assert f'"key_set": {i}' in p1.stdout
        ref = sess.run(None, {name: x})[0]
        assert np.max(np.abs(np.load(tmp_path / "out.npy") - ref)) < 0.05 * (1 + np.max(np.abs(ref)))
    out, err = dealer.communicate(timeout=60)
    assert dealer.returncode == 0, err
    assert '"served_sets": 2' in out and '"sessions": 2' in out
    assert not list(tmp_path.rglob("*.key"))


def test_over_mutual_tls_and_a_server_of_another_ca_gets_nothing(tmp_path):
    """With TLS (the servers' --tls-* files, the dealer's own certificate of the same CA)
    the sets arrive as over loopback; a server whose certificate another CA signed is refused
    before any key byte, and the dealer goes on to serve the right pair."""
    from tests.test_tls import CA

    ca, other = CA(tmp_path / "ca", "fusec test CA"), CA(tmp_path / "other", "someone else's CA")
    dealer_files, servers, stranger = ca.issue("dealer"), ca.issue("servers"), other.issue("stranger")
    g = demo.build_graph(N, BITS, F)
    dealer = Dealer(g, 1, timeout=10, ssl_context=dealer_files.server_context())
    with pytest.raises(FusecError):
        DealerKeyStream.connect(dealer.address, g.layout(), 0, timeout=3, ssl_context=stranger.client_context())
    res, err = _both(lambda p: _one_set_size(dealer.address, g.layout(), p, timeout=10,
                                             ssl_context=servers.client_context()))
    assert not err, err
    assert res == {0: g.layout().set_nbytes, 1: g.layout().set_nbytes}
    assert dealer.join()["sets"] == 1


def test_servers_asking_for_different_sets_are_both_refused():
    """A server out of step (it asks for set 5 while its peer asks for 0) gets nothing:
    the dealer refuses both in one line each, then waits for a new pair."""
    import json

    from fusec.runtime.channel import TcpChannel
    from fusec.runtime.keystream import PROTOCOL

    g = demo.build_graph(N, BITS, F)
    dealer = Dealer(g, 2, timeout=5)

    def odd_server(p):     # speaks the protocol by hand, asking for the wrong set
        port = int(dealer.address.rsplit(":", 1)[1])
        with TcpChannel.connect("127.0.0.1", port, 10) as ch:
            ch.send(json.dumps({"fusec_keys": PROTOCOL, "party": p, "layout": g.layout().digest()}).encode())
            json.loads(bytes(ch.recv("keys", 4096)))
            ch.send(json.dumps({"set": 5}).encode())
            return json.loads(bytes(ch.recv("keys", 4096)))

    res, err = _both(lambda p: odd_server(p) if p == 1 else DealerKeyStream.connect(dealer.address, g.layout(), p)
                     .claim(0))
    assert "sets 0 and 5" in res[1]["error"] and "restart both servers" in res[1]["hint"]
    assert isinstance(err[0], KeyFileError) and "refused set 0" in str(err[0])
    dealer.join()
    assert dealer.error is not None and "timed out" in str(dealer.error)   # it waited for a new pair, none came
    assert dealer.result is None
