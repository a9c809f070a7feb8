"""``--net``: the emulated link of runtime/shaping.py, on both channel kinds, and its plumbing
into ``fusec run`` and ``fusec bench``.

The oracle is the link model itself, written out here from the issue's definition: a frame of
S bytes sent at t reaches the peer at ``t + RTT/2 + S·8/bandwidth`` (plus queueing behind
earlier frames of the same direction), so N exchanges cost N·(RTT/2 + S·8/bw) -- not twice
that -- and never less. Lower bounds are exact (the emulation guarantees "no earlier");
upper bounds leave room for a loaded machine but stay well below the doubled cost.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fusec.errors import ParameterError, PeerError
from fusec.runtime.channel import TcpChannel, TcpListener, local_channel_pair
from fusec.runtime.shaping import NetSetting, ShapedChannel, parse_net

WAIT = 30.0
ROOT = Path(__file__).parent.parent
DIGITS = ROOT / "fusec" / "examples" / "digits_mlp.onnx"


def both(f0, f1):
    with ThreadPoolExecutor(2) as ex:
        a, b = ex.submit(f0), ex.submit(f1)
        return a.result(WAIT), b.result(WAIT)


def tcp_pair(timeout: float = 10.0):
    with TcpListener("127.0.0.1", 0) as lst:
        port = lst.port
        return both(lambda: lst.accept(timeout, accept_timeout=WAIT),
                    lambda: TcpChannel.connect("127.0.0.1", port, timeout, retry_for=5))


def shaped_pair(kind: str, net: NetSetting):
    a, b = local_channel_pair() if kind == "local" else tcp_pair()
    return ShapedChannel(a, net), ShapedChannel(b, net)


# ---------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, bw, rtt", [
    ("lan", 1e9, 0.5e-3), ("WAN", 400e6, 4e-3),                         # the settings
    ("10gbit,0.2ms", 10e9, 0.2e-3), ("400Mbps, 4ms", 400e6, 4e-3), ("1.5gbit/s,250us", 1.5e9, 250e-6),
    ("100kbit,0s", 100e3, 0.0), ("2e6bit,1e-3s", 2e6, 1e-3),
])
def test_parse_net(text, bw, rtt):
    net = parse_net(text)
    assert net.bandwidth_bps == pytest.approx(bw) and net.rtt_s == pytest.approx(rtt)
    assert parse_net(net.spec) == net                                  # what the bench hands its workers


@pytest.mark.parametrize("text", [None, "", "none", "None", "off"])
def test_no_net(text):
    assert parse_net(text) is None


@pytest.mark.parametrize("text, what", [
    ("fast", "not a network setting"), ("10gbit", "not a network setting"), ("1,2,3", "not a network setting"),
    ("-1gbit,1ms", "must be positive"), ("0mbit,1ms", "must be positive"), ("1e20bit,1ms", "at most"),
    ("10GBps,1ms", "not bits per second"), ("10gbit,5", "not a time"), ("10gbit,-1ms", "from 0 to"),
    ("10gbit,nanms", "not a time"), ("1gbit,1h", "not a time"),
])
def test_bad_net_is_one_line(text, what):
    with pytest.raises(ParameterError, match=what) as e:
        parse_net(text)
    assert "\n" not in str(e.value) and repr(text) in str(e.value)


# ---------------------------------------------------------------------- timing against the link model
def _exchanges(ch, n: int, size: int) -> float:
    data = bytes(size)
    t0 = time.monotonic()
    for _ in range(n):
        got = ch.exchange(data, "x", size)
        assert len(got) == size
    return time.monotonic() - t0


@pytest.mark.parametrize("kind", ["local", "tcp"])
def test_n_exchanges_cost_n_one_way_delays(kind):
    """Both parties send, then receive: each exchange costs RTT/2 + S/bw (the two
    directions' delays overlap), not RTT + 2 S/bw."""
    net = NetSetting("test", 20e6, 5e-3)
    n, size = 40, 2500
    a, b = shaped_pair(kind, net)
    overhead = a.frame_overhead                                        # TCP's 8-byte length prefix
    want = n * (net.rtt_s / 2 + (size + overhead) * 8 / net.bandwidth_bps)      # 40 x 3.5 ms = 0.14 s
    ta, tb = both(lambda: _exchanges(a, n, size), lambda: _exchanges(b, n, size))
    print(f"{kind}: {n} exchanges of {size} B: {max(ta, tb) * 1e3:.1f} ms, model {want * 1e3:.1f} ms")
    assert min(ta, tb) >= want * 0.98
    assert max(ta, tb) <= want * 1.5 + 0.02, "slower than one link delay per exchange (doubled: x2)"
    # the counters hold what the unshaped channel would: no emulation header
    for ch in (a, b):
        s = ch.stats["x"]
        assert (s.bytes_sent, s.bytes_recv, s.rounds) == (n * (size + overhead), n * (size + overhead), n)
    a.close()
    b.close()


def test_a_big_frame_pays_its_bandwidth():
    net = NetSetting("test", 80e6, 2e-3)                               # 1 MB: 0.1 s at 80 Mbit/s
    a, b = shaped_pair("tcp", net)
    t = both(lambda: _exchanges(a, 2, 1_000_000), lambda: _exchanges(b, 2, 1_000_000))
    want = 2 * (1e-3 + 1_000_008 * 8 / 80e6)
    assert want * 0.98 <= max(t) <= want * 1.3 + 0.05
    a.close()
    b.close()


def test_bandwidth_is_a_fifo_per_direction():
    """Frames sent back to back queue behind each other: the k-th (from 1) arrives at
    t0 + RTT/2 + k·S/bw, not all of them at t0 + RTT/2 + S/bw."""
    net = NetSetting("test", 8e6, 4e-3)
    k, size = 8, 5000                                                  # 5 ms each on the wire
    a, b = shaped_pair("local", net)
    t0 = time.monotonic()
    for _ in range(k):
        a.send(bytes(size))
    arrivals = []
    for _ in range(k):
        b.recv(limit=size)
        arrivals.append(time.monotonic() - t0)
    for i, t in enumerate(arrivals, 1):
        assert t >= net.rtt_s / 2 + i * size * 8 / net.bandwidth_bps * 0.999, (i, t)
    assert arrivals[-1] <= net.rtt_s / 2 + k * size * 8 / net.bandwidth_bps + 0.04


def test_a_late_party_does_not_pay_the_latency_again():
    """P1 comes to the exchange 60 ms late: P0 waits for P1's frame (60 ms + one delay of
    30 ms); P1's frame from P0 arrived long ago, so P1 goes on at once, as on a real link."""
    net = NetSetting("test", 1e9, 60e-3)
    a, b = shaped_pair("local", net)

    def late():
        time.sleep(0.06)
        return _exchanges(b, 1, 10) + 0.06

    ta, tb = both(lambda: _exchanges(a, 1, 10), late)
    assert ta >= 0.06 + 0.03
    assert tb < 0.06 + 0.02, f"the late party waited {(tb - 0.06) * 1e3:.1f} ms for a frame already there"


# ---------------------------------------------------------------------- mismatched peers
def test_unshaped_or_differently_shaped_peer_is_refused():
    a, b = local_channel_pair(timeout=5)
    shaped = ShapedChannel(a, parse_net("lan"))
    b.send(b"hello")
    with pytest.raises(PeerError, match="carry no network emulation") as e:
        shaped.recv()
    assert "same --net" in str(e.value)
    a, b = local_channel_pair(timeout=5)
    ShapedChannel(b, parse_net("wan")).send(b"hello")
    with pytest.raises(PeerError, match="another network"):
        ShapedChannel(a, parse_net("lan")).recv()


def test_stamp_beyond_the_timeout_is_refused_not_waited_for():
    a, b = local_channel_pair(timeout=1)
    slow = NetSetting("slow", 8.0, 0.0)                                 # 8 bit/s: 100 bytes take 100 s
    ShapedChannel(a, slow).send(bytes(100))
    t0 = time.monotonic()
    with pytest.raises(PeerError, match="beyond the 1 s timeout"):
        ShapedChannel(b, slow).recv()
    assert time.monotonic() - t0 < 1


# ---------------------------------------------------------------------- command lines
def fusec(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fusec", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("cmd", [["run", "nowhere", "--party", "0", "--keys", "k", "--listen", ":9999"],
                                 ["bench", "--model", str(DIGITS)]])
@pytest.mark.parametrize("net, what", [("fast", "not a network setting"), ("-5mbit,1ms", "must be positive")])
def test_bad_net_on_the_command_line(cmd, net, what, tmp_path):
    r = fusec(*cmd, "--net", net, "--workdir" if cmd[0] == "bench" else "--timeout",
              tmp_path if cmd[0] == "bench" else "5", timeout=60)
    assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_records_and_pays_the_network(tmp_path):
    """The same configuration unshaped and at 1 Gbit/s, 100 ms RTT: the shaped run is marked
    (config, name, markdown); its online time is at least rounds x RTT/2 (each round waits for
    the peer's frame, sent after the previous round) and at most that much above the
    unshaped run, with room for a loaded machine (the bytes, a few hundred per round, take
    microseconds at 1 Gbit/s)."""
    out = tmp_path / "out.json"
    r = fusec("bench", "--model", DIGITS, "--seq", "1", "--batch", "1", "--internal-batch", "1", "--warmup", "1",
              "--repeat", "3", "--gates", "fused", "--net", "none", "--net", "1gbit,100ms", "--workdir", tmp_path,
              "--json", out, "--markdown", tmp_path / "out.md")
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    plain, shaped = doc["results"]
    assert plain["config"]["net"] is None and shaped["config"]["net"]["rtt_seconds"] == 0.1
    assert shaped["config"]["name"].endswith("/1gbit,100ms")
    rounds = shaped["online"]["per_batch"]["rounds"]
    assert rounds == plain["online"]["per_batch"]["rounds"] > 0
    assert shaped["online"]["per_batch"]["bytes_sent"] == plain["online"]["per_batch"]["bytes_sent"]
    t_shaped, t_plain = (r["online"]["per_batch"]["online_seconds"] for r in (shaped, plain))
    assert rounds * 0.05 <= t_shaped <= t_plain + rounds * 0.05 * 1.4 + 0.05, (rounds, t_shaped, t_plain)
    md = (tmp_path / "out.md").read_text()
    assert "1gbit,100ms (emulated: 1 Gbit/s, 100 ms RTT)" in md and "| network |" in md


def test_fusec_run_with_net(tmp_path):
    """``fusec run --net`` on both servers: the stats record the setting and the online time
    pays at least RTT/2 per round; a peer without --net is refused in one line, before a key
    set is claimed."""
    from fusec.run3 import free_port, fusec_cmd

    build, keys, x = tmp_path / "build", tmp_path / "keys", ROOT / "fusec" / "examples" / "digits_sample.npy"
    assert fusec("compile", DIGITS, "-o", build, "--batch", 8).returncode == 0
    assert fusec("keygen", build, "-o", keys, "--count", 2).returncode == 0

    def pair(net0, net1):
        port = free_port()
        p0 = subprocess.Popen(fusec_cmd("run", str(build), "--party", "0", "--keys", str(keys / "p0.key"),
                                        "--listen", f"127.0.0.1:{port}", "--input", str(x), "--timeout", "60",
                                        "--stats", str(tmp_path / "s0.json"), *net0),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p1 = fusec("run", build, "--party", 1, "--keys", keys / "p1.key", "--peer", f"127.0.0.1:{port}",
                   "--input", x, "--timeout", "60", *net1)
        out0, err0 = p0.communicate(timeout=300)
        return p0.returncode, err0, p1

    rc0, err0, p1 = pair(["--net", "1gbit,40ms"], ["--net", "1gbit,40ms"])
    assert rc0 == 0 and p1.returncode == 0, err0 + p1.stderr
    assert "network: 1gbit,40ms (emulated: 1 Gbit/s, 40 ms RTT)" in err0
    stats = json.loads((tmp_path / "s0.json").read_text())
    assert stats["net"]["rtt_seconds"] == 0.04 and stats["net"]["bandwidth_bps"] == 1e9
    # every round but the first waits RTT/2 inside the clock (the first frame may already be
    # on its way before this party's clock starts)
    assert stats["online_seconds"] >= (stats["rounds"] - 1) * 0.02 > 0
    rc0, err0, p1 = pair(["--net", "lan"], [])
    assert rc0 == 2 and "carry no network emulation" in err0 and "Traceback" not in err0
    assert p1.returncode == 2 and "Traceback" not in p1.stderr
    rc0, err0, p1 = pair(["--stream-keys"], [])     # both key sets still unused: the refused hello claimed none
    assert rc0 == 0 and p1.returncode == 0, err0 + p1.stderr
    stats = json.loads((tmp_path / "s0.json").read_text())
    assert stats["net"] is None and stats["stream_keys"] is True     # a party-local choice (keys in the clock)


def test_bench_grid_per_network_setting(tmp_path):
    from fusec.bench import BenchOptions, plan_cases, resolve_model
    from fusec.errors import FusecError

    m = resolve_model("bert-base", layers=1)
    nets = [None, parse_net("lan"), parse_net("wan")]
    opts = BenchOptions([m], seqs=[128], batches=[1, 2], gates=["fused", "sigma"], nets=nets, padding_ablation=True,
                        workdir=tmp_path)
    cases = plan_cases(opts)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)) == (2 * 2 + 1) * 3
    assert "bert-base-L1/seq128/b2/sigma/cpu/wan" in names and "bert-base-L1/seq128/b2/sigma/cpu" in names
    assert len({c.build_slug for c in cases}) == 2 * 2 + 1          # one build serves every network setting
    assert json.loads(json.dumps(opts.settings()))["nets"][1]["rtt_s"] == 0.5e-3
    with pytest.raises(FusecError, match="must be distinct"):
        BenchOptions([m], nets=[parse_net("lan"), parse_net("LAN")], workdir=tmp_path).validate()
