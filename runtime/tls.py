"""TLS between the two servers, from three files: our certificate, its key, and the CA.

Mutual authentication: the listening server requires a client certificate signed by the
CA; the connecting server checks the listener's certificate against the CA *and* the
host name it connects to (``--peer``'s host, or ``server_name``). Only the given CA is
trusted (no system roots): the two servers are introduced by whoever runs them, not by
the web PKI. TLS 1.2 at least.

Our own files are checked before any socket is opened, each problem named in one line
(missing or unreadable file, not PEM, key not matching the certificate, certificate
expired or not yet valid), so a misconfigured server fails before it claims a key set.
"""
from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from fusec.errors import ParameterError


@dataclass(frozen=True)
class TlsFiles:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca`` (PEM)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_options(cls, cert, key, ca) -> "TlsFiles | None":
        """All three or none (plain TCP)."""
        given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
        if not any(given.values()):
            return None
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ParameterError(f"TLS needs all of --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}")
        return cls(Path(cert), Path(key), Path(ca))

    def check(self) -> None:
        """Our certificate is readable, PEM, and valid now; the CA file is PEM."""
        from cryptography import x509  # noqa: PLC0415

        for flag, p in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if not p.is_file() or not os.access(p, os.R_OK):
                raise ParameterError(f"{flag} {p} is not a readable file")
        try:
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        except ValueError as e:
            raise ParameterError(f"--tls-cert {self.cert} is not a PEM certificate ({e})") from None
        try:
            x509.load_pem_x509_certificates(self.ca.read_bytes())
        except ValueError as e:
            raise ParameterError(f"--tls-ca {self.ca} is not a PEM certificate ({e})") from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if now > cert.not_valid_after_utc:
            raise ParameterError(f"--tls-cert {self.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                                 f"issue a new certificate from your CA")
        if now < cert.not_valid_before_utc:
            raise ParameterError(f"--tls-cert {self.cert} is not valid before "
                                 f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)")

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as e:
            raise ParameterError(f"cannot use --tls-cert {self.cert} with --tls-key {self.key} "
                                 f"({getattr(e, 'reason', None) or e}); the key must be the certificate's, "
                                 f"PEM and unencrypted") from None
        try:
            ctx.load_verify_locations(cafile=str(self.ca))
        except (ssl.SSLError, OSError) as e:
            raise ParameterError(f"cannot load --tls-ca {self.ca} ({getattr(e, 'reason', None) or e})") from None
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """For ``--listen``: present our certificate, require the peer's (signed by the CA)."""
        return self._context(ssl.Purpose.CLIENT_AUTH)

    def client_context(self) -> ssl.SSLContext:
        """For ``--peer``: present our certificate, verify the listener's and its host name."""
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = True
        return ctx
