"""A stand-in pledge for the registrar-side tests: a software IDevID key and plain HTTPS.

It is not the pledge (firmware/ is): it only sends what a pledge sends, so
the servers can be checked request by request, with `ssl` and `http.client`.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
import http.client
import os
import secrets
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import HEALTH_PATH, VOUCHER_MEDIA_TYPE
from pledgeforge.hsm.x509 import make_csr, to_der, to_pem



@dataclass
class StandIn:
    """A device identity: software key and certificate, as PEM files for `ssl`."""

    serial: str
    key: SoftwareSigner
    cert: x509.Certificate
    key_path: Path
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, serial: str, issue, file_stem: str | None = None) -> "StandIn":
        """`issue(public_key, serial) -> certificate` makes its IDevID; its files are named
        after the serial unless `file_stem` is given (for serials that are no file name)."""
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        cert = issue(key.public_key, serial)
        directory.mkdir(parents=True, exist_ok=True)
        stem = file_stem or serial
        key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
        key_path.write_bytes(key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        os.chmod(key_path, 0o600)
        cert_path.write_bytes(to_pem(cert))
        return cls(serial, key, cert, key_path, cert_path)

    def voucher_request(self, *, nonce: bytes | None = None, serial: str | None = None,
                        proximity: x509.Certificate | None = None,
                        nonceless: bool = False) -> tuple[bytes, bytes | None]:
        """(CMS, nonce) of a pledge voucher-request signed with this identity."""
        if not nonceless and nonce is None:
            nonce = secrets.token_bytes(16)
        request = Voucher(is_request=True, serial_number=serial or self.serial, nonce=nonce,
                          created_on=dt.datetime.now(dt.timezone.utc),
                          assertion="proximity" if proximity is not None else None,
                          proximity_registrar_cert=to_der(proximity) if proximity is not None else None)
        return sign_cms(request.to_json(), self.key, self.cert), nonce

    def csr(self, subject: str, dns_names=()) -> tuple[SoftwareSigner, x509.CertificateSigningRequest]:
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        return key, make_csr(key, subject, dns_names=dns_names)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    server_cert: x509.Certificate | None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def https(url: str, method: str = "GET", body: bytes | None = None, *,
          identity: StandIn | None = None, client_files: tuple[Path, Path] | None = None,
          anchors: list[Path] | None = None, headers: dict[str, str] | None = None,
          timeout: float = 30) -> Answer:
    """One request; the server is checked against `anchors` (none: provisional, as BRSKI allows)."""
    parts = urlsplit(url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if anchors:
        for anchor in anchors:
            context.load_verify_locations(cafile=str(anchor))
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if identity is not None:
        client_files = (identity.cert_path, identity.key_path)
    if client_files is not None:
        context.load_cert_chain(str(client_files[0]), str(client_files[1]))
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        der = conn.sock.getpeercert(binary_form=True) if conn.sock else None
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                      x509.load_der_x509_certificate(der) if der else None)
    finally:
        conn.close()


def post_voucher_request(url: str, cms: bytes, **kwargs) -> Answer:
    headers = {"Content-Type": VOUCHER_MEDIA_TYPE, "Accept": VOUCHER_MEDIA_TYPE, **kwargs.pop("headers", {})}
    return https(url, "POST", cms, headers=headers, **kwargs)


@contextmanager
def running_lab(directory: Path):
    """A lab with its three servers for the duration."""
    from pledgeforge.lab import Lab

    lab = None
    try:
        lab, _ = Lab.up(directory)
        yield lab
    finally:
        if lab is not None:
            lab.down()


def tls_refusal(request) -> str:
    """Run `request()`; it must fail at the TLS level. Returns what the client saw."""
    try:
        answer = request()
    except (ssl.SSLError, ConnectionError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    raise AssertionError(f"expected the TLS handshake to be refused, got HTTP {answer.status}")


def wait_for_health(proc: subprocess.Popen, url: str, anchor: Path, output: Path | None = None,
                    timeout: float = 60) -> None:
    """Until the server `proc` runs answers its health check at `url` (its certificate checked
    against `anchor`); the test fails, with the server's `output` (a log file, else its piped
    stderr), when it exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is None and time.monotonic() < deadline:
            try:
                if https(url + HEALTH_PATH, anchors=[anchor], timeout=2).status == 200:
                    return
            except OSError:
                pass
        else:
            text = output.read_text() if output else (proc.stderr.read().decode() if proc.stderr else "")
            state = "did not answer in time" if proc.poll() is None else f"exited with {proc.returncode}"
            raise AssertionError(f"the server at {url} {state}:\n{text}")
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
