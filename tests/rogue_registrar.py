"""Misbehaving servers for the pledge's refusal tests: real HTTPS on loopback.

A `RogueServer` is an HTTPS server whose answers the test writes (a voucher
with the wrong nonce, a 307 from an unauthenticated server, ...). Its TLS
certificate comes from whichever CA the test wants the pledge to see. The
vouchers it hands out are signed like the lab MASA's (key in SoftHSM), or by
a key nobody trusts, so every check of the pledge is reached for real.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import sign_cms, unverified_content
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import VOUCHER_MEDIA_TYPE
from pledgeforge.hsm.x509 import issue_certificate, make_ca, to_der, to_pem



@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def tls_files(directory: Path, name: str, issuer_signer, issuer_cert) -> tuple[Path, Path]:
    """A server key and certificate (for 127.0.0.1) issued by the given CA, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(issuer_signer, issuer_cert, key.public_key(), f"CN=localhost,O={name}",
                             key_usage="tls", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(to_pem(cert))
    return cert_path, key_path


def self_signed_tls(directory: Path, name: str) -> tuple[Path, Path]:
    """TLS files from a CA nobody trusts."""
    ca = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    return tls_files(directory, name, ca, make_ca(ca, f"CN={name} CA"))


class RogueServer:
    """HTTPS on a free loopback port; `answer(request) -> Reply` decides every response.

    Client certificates are asked for (and checked against `client_ca`) so the
    pledge goes through its mutual TLS exactly as with a real registrar.
    """

    def __init__(self, cert_key: tuple[Path, Path], client_ca: Path, answer: Callable[[Request], Reply]):
        self.requests: list[Request] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert_key[0]), str(cert_key[1]))
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_OPTIONAL
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length))
                outer.requests.append(request)
                reply = answer(request)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RogueServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


class SilentServer:
    """Accepts TCP connections and never says a word: a registrar that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


class VoucherForge:
    """Vouchers as the lab MASA would sign them, with whatever the test gets wrong on purpose."""

    def __init__(self, lab):
        self.signer = keystore.open_signer(lab.key_uri("masa", "voucher-signer"))
        self.cert = load_certificate_file(str(lab.pki("masa-signer")))[0]
        self.owner_ca = load_certificate_file(str(lab.pki("owner-ca")))[0]

    def voucher_for(self, request_cms: bytes, *, serial: str | None = None, nonce: bytes | None = None,
                    expired: bool = False, est_domain: str | None = None, signer=None, cert=None) -> bytes:
        """A voucher answering `request_cms` (the pledge's voucher-request)."""
        asked = Voucher.from_json(unverified_content(request_cms), expect_request=True)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        voucher = Voucher(
            assertion="logged", serial_number=serial or asked.serial_number,
            nonce=asked.nonce if nonce is None else nonce,
            created_on=now - dt.timedelta(days=2 if expired else 0),
            expires_on=now - dt.timedelta(days=1) if expired else None,
            pinned_domain_cert=to_der(self.owner_ca), est_domain=est_domain)
        return sign_cms(voucher.to_json(), signer or self.signer, cert or self.cert)

    def untrusted_voucher_for(self, request_cms: bytes) -> bytes:
        """Right contents, signed by a key that does not chain to the manufacturer CA."""
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        cert = make_ca(key, "CN=not the MASA")
        return self.voucher_for(request_cms, signer=key, cert=cert)


def voucher_reply(cms: bytes) -> Reply:
    return Reply(200, cms, {"Content-Type": VOUCHER_MEDIA_TYPE})
