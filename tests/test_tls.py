"""TLS between the servers from --tls-cert/--tls-key/--tls-ca: mutual authentication,
and each way it must refuse (another CA, a wrong host name, an expired certificate, no
client certificate), as a clear error on real loopback TCP and from the CLI.

Every certificate is made here, in tmp_path, with the ``cryptography`` package.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from fusec.errors import ParameterError, PeerError  # noqa: E402
from fusec.run3 import free_port  # noqa: E402
from fusec.runtime.channel import TcpChannel, TcpListener  # noqa: E402
from fusec.runtime.tls import TlsFiles  # noqa: E402

WAIT = 20.0
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _name(cn: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A self-made certificate authority in ``folder``."""

    def __init__(self, folder: Path, cn: str):
        self.folder, self.key = folder, ec.generate_private_key(ec.SECP256R1())
        folder.mkdir(parents=True, exist_ok=True)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = folder / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, hosts=("127.0.0.1", "localhost"), valid=(NOW - DAY, NOW + 30 * DAY)) -> TlsFiles:
        """A server certificate for ``hosts`` (also usable as a client certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(valid[0]).not_valid_after(valid[1])
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        (self.folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.folder / f"{name}.key").write_bytes(_pem_key(key))
        return TlsFiles(self.folder / f"{name}.pem", self.folder / f"{name}.key", self.path)


def with_ca(files: TlsFiles, ca: CA) -> TlsFiles:
    return TlsFiles(files.cert, files.key, ca.path)


def connect_pair(server: TlsFiles, client: TlsFiles, host: str = "127.0.0.1", server_name: str | None = None):
    """Listener with ``server``'s files, connector with ``client``'s; both ends exchange
    one frame. Returns (server result or error, client result or error)."""
    def srv(lst):
        with lst.accept(5, accept_timeout=WAIT) as ch:
            return bytes(ch.exchange(b"from-server", "x", 100))

    def cli(port):
        with TcpChannel.connect(host, port, 5, retry_for=5, ssl_context=client.client_context(),
                                server_hostname=server_name) as ch:
            return bytes(ch.exchange(b"from-client", "x", 100))

    with TcpListener("127.0.0.1", 0, server.server_context()) as lst, ThreadPoolExecutor(2) as ex:
        futs = ex.submit(srv, lst), ex.submit(cli, lst.port)
        out = []
        for f in futs:
            try:
                out.append(f.result(WAIT))
            except PeerError as e:
                out.append(e)
        return out


@pytest.fixture
def pki(tmp_path):
    ca, other = CA(tmp_path / "ca", "fusec test CA"), CA(tmp_path / "other", "someone else's CA")
    return ca, other


def test_mutual_tls_between_two_certificates_of_one_ca(pki):
    ca, _ = pki
    s, c = ca.issue("p0"), ca.issue("p1")
    for files in (s, c):
        files.check()
    assert connect_pair(s, c) == [b"from-client", b"from-server"]
    assert connect_pair(s, c, host="localhost") == [b"from-client", b"from-server"]  # DNS name in the SAN


def _refused(result, *needles):
    assert isinstance(result, PeerError), result
    text = str(result)
    assert any(n in text for n in needles), text
    assert "Traceback" not in text
    return text


def test_server_certificate_from_another_ca_is_refused(pki):
    ca, other = pki
    srv, cli = connect_pair(with_ca(other.issue("p0"), other), ca.issue("p1"))
    text = _refused(cli, "unable to get local issuer certificate", "self-signed certificate in certificate chain",
                    "self signed certificate in certificate chain")
    assert "the certificate of 127.0.0.1:" in text
    assert isinstance(srv, PeerError)


def test_client_certificate_from_another_ca_is_refused(pki):
    ca, other = pki
    srv, cli = connect_pair(ca.issue("p0"), with_ca(other.issue("p1"), ca))
    _refused(srv, "unable to get local issuer certificate", "self-signed certificate in certificate chain",
             "self signed certificate in certificate chain")
    _refused(cli, "does not trust the CA", "refused our certificate", "closed")


def test_wrong_host_name_is_refused(pki):
    ca, _ = pki
    server = ca.issue("p0", hosts=("10.9.8.7", "p0.example.org"))
    srv, cli = connect_pair(server, ca.issue("p1"))
    text = _refused(cli, "mismatch", "not valid for")
    assert "127.0.0.1" in text
    # the name it does carry, given as --tls-server-name, is accepted
    assert connect_pair(server, ca.issue("p1b"), server_name="p0.example.org") == [b"from-client", b"from-server"]


def test_expired_certificates_are_refused_both_ways(pki):
    ca, _ = pki
    old = (NOW - 30 * DAY, NOW - DAY)
    srv, cli = connect_pair(ca.issue("p0", valid=old), ca.issue("p1"))
    _refused(cli, "certificate has expired")
    srv, cli = connect_pair(ca.issue("p0b"), ca.issue("p1b", valid=old))
    _refused(srv, "certificate has expired")
    _refused(cli, "expired", "refused our certificate", "closed")


def test_a_client_without_certificate_is_refused(pki):
    import ssl

    ca, _ = pki
    bare = ssl.create_default_context(cafile=str(ca.path))     # verifies the server, offers no certificate
    with TcpListener("127.0.0.1", 0, ca.issue("p0").server_context()) as lst, ThreadPoolExecutor(2) as ex:
        fs = ex.submit(lambda: lst.accept(5, accept_timeout=WAIT).exchange(b"", "x", 10))
        fc = ex.submit(lambda: TcpChannel.connect("127.0.0.1", lst.port, 5, retry_for=5,
                                                  ssl_context=bare).exchange(b"", "x", 10))
        for f in (fs, fc):
            with pytest.raises(PeerError):
                f.result(WAIT)


def test_own_files_checked_before_connecting(pki, tmp_path):
    ca, other = pki
    good = ca.issue("p0")
    with pytest.raises(ParameterError, match=r"expired on \d{4}-\d\d-\d\d"):
        ca.issue("old", valid=(NOW - 30 * DAY, NOW - DAY)).check()
    with pytest.raises(ParameterError, match="not valid before"):
        ca.issue("future", valid=(NOW + DAY, NOW + 30 * DAY)).check()
    with pytest.raises(ParameterError, match="missing --tls-ca"):
        TlsFiles.from_options(good.cert, good.key, None)
    assert TlsFiles.from_options(None, None, None) is None
    with pytest.raises(ParameterError, match="--tls-key .* is not a readable file"):
        TlsFiles(good.cert, tmp_path / "nope.key", good.ca).check()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ParameterError, match="--tls-cert .* is not a PEM certificate"):
        TlsFiles(junk, good.key, good.ca).check()
    with pytest.raises(ParameterError, match="--tls-ca .* is not a PEM certificate"):
        TlsFiles(good.cert, good.key, junk).check()
    mismatched = TlsFiles(good.cert, other.issue("x").key, good.ca)
    mismatched.check()                                    # both readable PEM ...
    with pytest.raises(ParameterError, match="cannot use --tls-cert .* with --tls-key"):
        mismatched.server_context()                       # ... but not a pair


# ---------------------------------------------------------------------- from the CLI
N = 6


def fusec(*args, timeout=60):
    return subprocess.Popen([sys.executable, "-m", "fusec", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p, timeout=90):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _tls_args(files: TlsFiles):
    return ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca]


def _ledger_sets(state: Path) -> list[str]:
    return sorted(str(p.relative_to(state)) for p in (state / "used").glob("*/*")) if state.exists() else []


def test_demo_run_over_mutual_tls_from_the_cli(pki, tmp_path, monkeypatch):
    from fusec import demo

    ca, other = pki
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state"))
    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-m", "fusec", "demo", "keygen", "--elements", str(N), "--count", "2",
                        "-o", keys], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(5)
    x, w = rng.uniform(-3, 3, N), rng.uniform(-1, 1, N)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)

    def pair(p0_tls, p1_tls):
        port = free_port()
        p0 = fusec("demo", "run", "--elements", N, "--party", 0, "--keys", keys / "p0.key", "--listen",
                   f"127.0.0.1:{port}", "--input", tmp_path / "w.npy", "--timeout", 20, *p0_tls)
        p1 = fusec("demo", "run", "--elements", N, "--party", 1, "--keys", keys / "p1.key", "--peer",
                   f"127.0.0.1:{port}", "--input", tmp_path / "x.npy", "--output", tmp_path / "out.json",
                   "--timeout", 20, "--connect-retry", 20, *p1_tls)
        return _finish(p0), _finish(p1)

    # the client's certificate comes from another CA: both refuse, one error line each, no set used
    (rc0, _, e0), (rc1, _, e1) = pair(_tls_args(ca.issue("p0")), _tls_args(with_ca(other.issue("p1"), ca)))
    assert rc0 == 2 and rc1 == 2, (e0, e1)
    assert e0.startswith("error: TLS: the certificate of 127.0.0.1:") and "Traceback" not in e0 + e1, e0
    assert len(e0.strip().splitlines()) <= 2 and len(e1.strip().splitlines()) <= 2, (e0, e1)
    assert _ledger_sets(tmp_path / "state") == []
    # an expired certificate of our own is refused before the key file is even opened
    p1 = fusec("demo", "run", "--elements", N, "--party", 1, "--keys", keys / "p1.key", "--peer", "127.0.0.1:9",
               *_tls_args(ca.issue("old", valid=(NOW - 30 * DAY, NOW - DAY))))
    rc, _, err = _finish(p1)
    assert rc == 2 and "expired on" in err and len(err.strip().splitlines()) == 1, err
    # matching certificates: the run goes through TLS and computes the right thing
    (rc0, _, e0), (rc1, out1, e1) = pair(_tls_args(ca.issue("p0")), _tls_args(ca.issue("p1")))
    assert rc0 == 0 and rc1 == 0, (e0, e1)
    got = json.loads((tmp_path / "out.json").read_text())
    ref = demo.plaintext(x, w)
    assert np.max(np.abs(np.array(got["outputs"]["gelu_out"]) - ref["gelu_out"])) < 2e-3
    assert got["key_set"] == 0 and len(_ledger_sets(tmp_path / "state")) == 2


def test_verify_runs_both_servers_over_tls(pki, tmp_path):
    """`fusec verify --tls-*` hands the files to both servers: with a certificate that
    names another host the client refuses the listener (so TLS is really on), and with
    --tls-server-name set to that host the run goes through."""
    ca, _ = pki
    files = ca.issue("p0", hosts=("p0.example.org",))
    example = Path(__file__).parent.parent / "fusec" / "examples" / "digits_mlp.onnx"
    cmd = [sys.executable, "-m", "fusec", "verify", str(example), "--batch", "2", *map(str, _tls_args(files))]
    r = subprocess.run([*cmd, "--workdir", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "certificate is not valid for '127.0.0.1'" in r.stderr, r.stderr + r.stdout
    r = subprocess.run([*cmd, "--workdir", str(tmp_path / "b"), "--tls-server-name", "p0.example.org"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "argmax agreement 1.000" in r.stdout, r.stderr + r.stdout


def test_bench_workers_talk_tls(pki, tmp_path):
    """`fusec bench --tls-*` gives the files to both workers: refused for a certificate
    that names another host, accepted with --tls-server-name."""
    ca, _ = pki
    files = ca.issue("p0", hosts=("p0.example.org",))
    example = Path(__file__).parent.parent / "fusec" / "examples" / "digits_mlp.onnx"
    cmd = [sys.executable, "-m", "fusec", "bench", "--model", str(example), "--seq", "1", "--batch", "1",
           "--internal-batch", "1", "--warmup", "0", "--repeat", "1", "--gates", "fused", *map(str, _tls_args(files))]
    r = subprocess.run([*cmd, "--workdir", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "certificate is not valid for '127.0.0.1'" in r.stderr, r.stderr
    r = subprocess.run([*cmd, "--workdir", str(tmp_path / "b"), "--tls-server-name", "p0.example.org"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b" / "bench.json").read_text())["results"][0]
    assert rec["online"]["per_batch"]["rounds"] == rec["compile"]["rounds_planned"] > 0
