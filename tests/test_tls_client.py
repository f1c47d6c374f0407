"""The pledge's TLS transport against real servers on loopback.

Servers are Python's `ssl` module (OpenSSL) requiring client certificates,
and `openssl s_server` itself; client keys are software keys and keys inside
SoftHSM2. Certificates are built here with cryptography's builders.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import select
import socket
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from tlslite.constants import CipherSuite, GroupName
from tlslite.errors import TLSIllegalParameterException
from tlslite.keyexchange import ECDHKeyExchange
from tlslite.recordlayer import RecordLayer
from tlslite.utils.python_ecdsakey import Python_ECDSAKey
from tlslite.utils.rsakey import RSAKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pledgeforge.firmware.http_client import (MAX_HEADER_BYTES, HttpClient, MalformedResponse,
                                              ResponseTooLarge)
from pledgeforge.firmware.tls_client import (
    ConnectionFailed, ServerAuth, ServerAuthError, TlsHandshakeFailed, TlsTimeout, TransportError,
    connect, parse_target, validate_against_pin,
)
from pledgeforge.hsm.keystore import generate_key
from pledgeforge.firmware.tls_keys import tls_private_key
from pledgeforge.firmware.tls_native import (NativeAeadRecordLayer, NativeVerifyingECDSAKey,
                                             NativeX25519KeyExchange)
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, SoftwareSigner, verify_signature

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
VERSION_NAMES = {TLS12: "TLS 1.2", TLS13: "TLS 1.3"}
SERVER_WAIT = 10.0  # bound on waiting for a test server to react


# --- certificates --------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issuer:
    """A test CA: certificate plus software key."""

    cert: x509.Certificate
    signer: SoftwareSigner

    def issue(self, cn: str, public_key, *, ca: bool = False, dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), eku=None) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.cert.subject)
                   .public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(_key_usage(ca), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.signer.public_key), critical=False))
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        return builder.sign(self.signer.private_key, hashes.SHA256())

    def sub_ca(self, cn: str) -> "Issuer":
        signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        return Issuer(self.issue(cn, signer.public_key, ca=True), signer)


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def make_root(cn: str) -> Issuer:
    signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(signer.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer.public_key), critical=False)
            .sign(signer.private_key, hashes.SHA256()))
    return Issuer(cert, signer)


@dataclass
class ServerPki:
    """root -> intermediate -> leaf (DNS localhost, IP 127.0.0.1)."""

    root: Issuer
    intermediate: Issuer
    leaf: x509.Certificate
    leaf_signer: SoftwareSigner

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.leaf, self.intermediate.cert]


def make_server_pki(cn: str = "registrar", dns=("localhost",), ips=("127.0.0.1",)) -> ServerPki:
    root = make_root(f"{cn} root CA")
    intermediate = root.sub_ca(f"{cn} issuing CA")
    signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    leaf = intermediate.issue(cn, signer.public_key, dns=dns, ips=ips, eku=ExtendedKeyUsageOID.SERVER_AUTH)
    return ServerPki(root, intermediate, leaf, signer)


@pytest.fixture(scope="module")
def server_pki() -> ServerPki:
    return make_server_pki()


@pytest.fixture(scope="module")
def client_ca() -> Issuer:
    return make_root("manufacturer CA")


def client_identity(client_ca: Issuer, signer) -> list[x509.Certificate]:
    """An IDevID-like certificate for `signer`'s key, issued by the client CA."""
    return [client_ca.issue("pledge-0001", signer.public_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH)]


@pytest.fixture(scope="module")
def ec_client(client_ca):
    signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    return client_identity(client_ca, signer), signer


# --- an HTTPS server requiring client certificates --------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv: TlsHttpServer = self.server
        srv.note_request(self.path)
        if self.path == "/whoami":
            peer = self.connection.getpeercert(binary_form=True) or b""
            body = (f"{hashlib.sha256(peer).hexdigest()} {self.connection.version()} "
                    f"conn={self.connection_number}").encode()
            self._send(200, body, {"Content-Type": "text/plain"})
        elif self.path == "/redirect":
            self._send(307, b"", {"Location": "https://owner.example/.well-known/brski"})
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            for piece in (b"hello, ", b"chunked ", b"world"):
                self.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\nX-Checksum: 42\r\n\r\n")
        elif self.path == "/big":
            self._send(200, b"x" * 200_000)
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"1000\r\n" + b"y" * 0x1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/big-to-close":  # no length: the body ends with the connection
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * 200_000)
            self.close_connection = True
        elif self.path == "/chunked-64k":  # exactly 64 KiB in uneven chunks
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for size in (1, 4095, 30_000, 31_440):
                self.wfile.write(f"{size:X}\r\n".encode() + b"c" * size + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path in ("/stall-mid-body", "/stall-mid-chunk"):
            self.send_response(200)
            if self.path == "/stall-mid-body":
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"only ten b")
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"a\r\nonly ten b\r\n64\r\nfirst part")
            srv.stalled.set()
            srv.release.wait(SERVER_WAIT)
            self.close_connection = True
        elif self.path == "/close-mid-body":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
        elif self.path == "/malformed-status":
            self.wfile.write(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")
            self.close_connection = True
        elif self.path in ("/huge-headers", "/large-headers"):
            self.send_response(200)
            for n in range(40 if self.path == "/huge-headers" else 30):
                self.send_header(f"X-Filler-{n}", "f" * 2000)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/close":
            self._send(200, b"bye", {"Connection": "close"})
            self.close_connection = True
        elif self.path == "/slow":
            srv.release.wait(SERVER_WAIT)
            self._send(200, b"late")
        else:
            self._send(404, b"not here")

    def do_POST(self):
        self.server.note_request(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, body[::-1], {"Content-Type": self.headers.get("Content-Type", "")})


class TlsHttpServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1:0; the TLS handshake runs in each connection's thread."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.lock = threading.Condition()
        self.connections = 0
        self.finished = 0
        self.handshake_errors: list[Exception] = []
        self.requests: list[str] = []
        self.release = threading.Event()
        self.stalled = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def note_request(self, path: str) -> None:
        with self.lock:
            self.requests.append(path)

    def finish_request(self, request, client_address):
        request.settimeout(SERVER_WAIT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            with self.lock:
                self.handshake_errors.append(exc)
                self.finished += 1
                self.lock.notify_all()
            return
        with self.lock:
            self.connections += 1
            number = self.connections
        try:
            handler_class = type("NumberedHandler", (_Handler,), {"connection_number": number})
            handler_class(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass  # the client went away mid-request; what the test checks is on its side
        finally:
            tls.close()
            with self.lock:
                self.finished += 1
                self.lock.notify_all()

    def wait_finished(self, count: int) -> bool:
        """Wait (bounded) until `count` connections have ended on the server side."""
        with self.lock:
            return self.lock.wait_for(lambda: self.finished >= count, SERVER_WAIT)


def server_context(pki: ServerPki, client_ca: Issuer, tmp: Path, version=None) -> ssl.SSLContext:
    chain_file = tmp / "server-chain.pem"
    key_file = tmp / "server-key.pem"
    chain_file.write_bytes(b"".join(_pem(c) for c in pki.chain))
    key_file.write_bytes(pki.leaf_signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file, key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=_pem(client_ca.cert).decode())
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


@contextmanager
def https_server(pki: ServerPki, client_ca: Issuer, tmp: Path, version=None):
    server = TlsHttpServer(server_context(pki, client_ca, tmp, version))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(SERVER_WAIT)


@pytest.fixture
def server(server_pki, client_ca, tmp_path):
    with https_server(server_pki, client_ca, tmp_path) as srv:
        yield srv


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(_der(cert)).hexdigest()


def open_client(server, chain, signer, auth, host="localhost", timeout=10.0):
    return connect(f"https://{host}:{server.port}/.well-known/brski", client_cert_chain=chain,
                   signer=signer, server_auth=auth, timeout=timeout)


# --- mutual TLS with different client keys ------------------------------


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("algorithm,hash_name,pad", [
    (KeyAlgorithm.EC_P256, "sha256", Padding.PKCS1V15),
    (KeyAlgorithm.EC_P384, "sha384", Padding.PKCS1V15),
    (KeyAlgorithm.RSA_2048, "sha256", None),
], ids=["ec-p256", "ec-p384", "rsa-2048"])
def test_mtls_with_software_key(server_pki, client_ca, tmp_path, version, algorithm, hash_name, pad):
    signer = SoftwareSigner.generate(algorithm)
    chain = client_identity(client_ca, signer)
    with https_server(server_pki, client_ca, tmp_path, version) as srv:
        with open_client(srv, chain, signer, ServerAuth.anchors([server_pki.root.cert])) as conn:
            response = HttpClient(conn).request("GET", "/whoami")
        assert conn.version == VERSION_NAMES[version]
        seen_fingerprint, seen_version, _ = response.body.decode().split()
        assert seen_fingerprint == fingerprint(chain[0])
        assert seen_version == {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[version]
        # RSA: PKCS#1 v1.5 where TLS 1.2 allows it, PSS in TLS 1.3 (where it is the only choice).
        expected_pad = pad or (Padding.PKCS1V15 if version is TLS12 else Padding.PSS)
        assert conn.client_signature.hash_name == hash_name
        assert conn.client_signature.padding is expected_pad


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
def test_mtls_with_key_inside_softhsm(token, server_pki, client_ca, tmp_path, version, algorithm):
    signer = generate_key(token.uri("k"), algorithm)
    chain = client_identity(client_ca, signer)
    with https_server(server_pki, client_ca, tmp_path, version) as srv:
        with open_client(srv, chain, signer, ServerAuth.anchors([server_pki.root.cert])) as conn:
            response = HttpClient(conn).request("GET", "/whoami")
    assert response.status == 200
    assert response.body.decode().split()[0] == fingerprint(chain[0])
    assert conn.version == VERSION_NAMES[version]


@pytest.mark.parametrize("version,ciphers,name", [
    (TLS12, "ECDHE-ECDSA-CHACHA20-POLY1305", "chacha20-poly1305"),
    (TLS12, "ECDHE-ECDSA-AES128-GCM-SHA256", "aes128gcm"),
    (TLS12, "ECDHE-ECDSA-AES256-GCM-SHA384", "aes256gcm"),
    (TLS13, None, "aes256gcm"),
], ids=["tls1.2-chacha20", "tls1.2-aes128gcm", "tls1.2-aes256gcm", "tls1.3"])
def test_records_are_sealed_by_cryptography_whichever_aead_the_server_picks(
        server_pki, client_ca, tmp_path, ec_client, version, ciphers, name):
    chain, signer = ec_client
    server = TlsHttpServer(server_context(server_pki, client_ca, tmp_path, version))
    if ciphers:
        server.context.set_ciphers(ciphers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with open_client(server, chain, signer, ServerAuth.anchors([server_pki.root.cert])) as conn:
            responses = [HttpClient(conn).request("GET", path) for path in ("/whoami", "/big")]
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(SERVER_WAIT)
    assert (conn.cipher, conn.cipher_implementation) == (name, "cryptography")
    assert responses[0].body.decode().split()[0] == fingerprint(chain[0])
    assert responses[1].status == 200 and len(responses[1].body) > 16384  # more than one record


@pytest.mark.parametrize("suite", [CipherSuite.TLS_CHACHA20_POLY1305_SHA256, CipherSuite.TLS_AES_128_GCM_SHA256,
                                   CipherSuite.TLS_AES_256_GCM_SHA384])
def test_native_aead_records_match_tlslites_own_and_refuse_a_changed_byte(suite):
    key_length, _, native = NativeAeadRecordLayer._getCipherSettings(suite)
    _, _, own = RecordLayer._getCipherSettings(suite)
    key, nonce, aad = bytearray(range(key_length)), bytearray(range(12)), bytearray(b"record header")
    plaintext = bytearray(b"voucher-request " * 40)
    sealed = native(key).seal(nonce, plaintext, aad)
    assert sealed == own(key, ["python"]).seal(nonce, plaintext, aad)
    assert native(key).open(nonce, sealed, aad) == plaintext
    tampered = bytearray(sealed)
    tampered[5] ^= 1
    assert native(key).open(nonce, tampered, aad) is None
    assert native(key).open(nonce, sealed, bytearray(b"other header")) is None


# RFC 7748 section 6.1: Alice's and Bob's private keys, public keys and shared secret.
RFC7748_ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
RFC7748_BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
RFC7748_BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_native_x25519_key_exchange_gives_the_rfc7748_values_as_tlslite_does():
    native, own = NativeX25519KeyExchange((3, 4)), ECDHKeyExchange(GroupName.x25519, (3, 4))
    for kex in (native, own):
        assert kex.calc_public_value(bytearray(RFC7748_ALICE)) == RFC7748_ALICE_PUBLIC
        assert kex.calc_shared_key(bytearray(RFC7748_ALICE), bytearray(RFC7748_BOB_PUBLIC)) == RFC7748_SHARED
        assert kex.calc_shared_key(bytearray(RFC7748_BOB), bytearray(RFC7748_ALICE_PUBLIC)) == RFC7748_SHARED
    private = native.get_random_private_key()
    assert native.calc_public_value(private) == own.calc_public_value(private)
    for bad_share in (bytearray(32), bytearray(31)):  # small order (all-zero result), wrong length
        with pytest.raises(TLSIllegalParameterException):
            native.calc_shared_key(private, bad_share)


@pytest.mark.parametrize("curve,hash_name", [(ec.SECP256R1(), "sha256"), (ec.SECP384R1(), "sha384")])
def test_native_check_of_a_server_ecdsa_key_agrees_with_python_ecdsa(curve, hash_name):
    private = ec.generate_private_key(curve)
    numbers = private.public_key().public_numbers()
    own = Python_ECDSAKey(numbers.x, numbers.y, {"secp256r1": "NIST256p", "secp384r1": "NIST384p"}[curve.name])
    native = NativeVerifyingECDSAKey.of(own)
    assert isinstance(native, NativeVerifyingECDSAKey) and native.curve_name == own.curve_name
    digest = bytearray(hashlib.new(hash_name, b"CertificateVerify content").digest())
    other = bytearray(hashlib.new(hash_name, b"other content").digest())
    signature = bytearray(private.sign(bytes(digest), ec.ECDSA(utils.Prehashed(getattr(hashes, hash_name.upper())()))))
    for key in (own, native):
        assert key.verify(signature, digest) and not key.verify(signature, other)
        assert not key.verify(bytearray(b"not DER"), digest)
    # A digest of a size no hash here has (SHA-1 in TLS 1.2) is left to python-ecdsa.
    sha1 = bytearray(hashlib.sha1(b"m").digest())
    sha1_signature = bytearray(private.sign(bytes(sha1), ec.ECDSA(utils.Prehashed(hashes.SHA1()))))
    assert native.verify(sha1_signature, sha1) and own.verify(sha1_signature, sha1)


def test_client_certificate_from_unknown_ca_is_refused_by_the_server(server, server_pki):
    stranger = make_root("unknown manufacturer")
    signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    chain = client_identity(stranger, signer)
    # TLS 1.3 lets the client finish before the server judges its certificate,
    # so the refusal can surface at the handshake or at the first read.
    with pytest.raises(TransportError) as info:
        with open_client(server, chain, signer, ServerAuth.anchors([server_pki.root.cert])) as conn:
            HttpClient(conn, timeout=5).request("GET", "/whoami")
    assert f"localhost:{server.port}" in str(info.value)
    assert server.wait_finished(1)
    assert server.handshake_errors, "the server should have rejected the client certificate"


def test_client_certificate_must_match_the_key(server, server_pki, client_ca):
    signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    other = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    with pytest.raises(TransportError, match="not for the key"):
        open_client(server, client_identity(client_ca, other), signer,
                    ServerAuth.anchors([server_pki.root.cert]))


def test_ecdsa_key_signs_a_digest_truncated_to_the_curve():
    """TLS 1.2 hands a P-256 key only the first 32 bytes of a SHA-384 digest;
    the signature must still verify as ECDSA-with-SHA-384 over the message."""
    signer = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    key = tls_private_key(signer)
    message = b"handshake messages"
    truncated = hashlib.sha384(message).digest()[:32]
    signature = key.sign(bytearray(truncated), hashAlg="sha384")
    assert verify_signature(signer.public_key, bytes(signature), message, "sha384")
    assert key.verify(signature, bytearray(truncated))  # tlslite's own check agrees
    assert not key.verify(signature, bytearray(hashlib.sha384(b"other messages").digest()[:32]))


def test_rsa_key_unwraps_the_pkcs1_digest_info():
    signer = SoftwareSigner.generate(KeyAlgorithm.RSA_2048)
    key = tls_private_key(signer)
    message = b"handshake messages"
    digest_info = RSAKey.addPKCS1Prefix(bytearray(hashlib.sha384(message).digest()), "sha384")
    signature = key.sign(digest_info, "pkcs1", None, 0)  # as tlslite calls it in TLS 1.2
    assert verify_signature(signer.public_key, bytes(signature), message, "sha384")
    assert key.last_signature.hash_name == "sha384"


# --- server authentication ---------------------------------------------


def test_anchors_accept_the_right_server_and_record_its_chain(server, server_pki, ec_client):
    chain, signer = ec_client
    with open_client(server, chain, signer, ServerAuth.anchors([server_pki.root.cert])) as conn:
        assert conn.server_chain == [_der(c) for c in server_pki.chain]


def test_anchors_reject_a_server_from_another_ca(server, ec_client):
    chain, signer = ec_client
    other = make_root("someone else")
    with pytest.raises(ServerAuthError) as info:
        open_client(server, chain, signer, ServerAuth.anchors([other.cert]))
    assert f"localhost:{server.port}" in str(info.value)
    assert "no chain to a trusted anchor" in info.value.reason
    # The connection was closed: the server's side of it ends.
    assert server.wait_finished(1)
    assert server.requests == []


def test_anchors_reject_a_name_mismatch(server, server_pki, ec_client):
    chain, signer = ec_client
    with pytest.raises(ServerAuthError, match="subjectAltName"):
        open_client(server, chain, signer,
                    ServerAuth.anchors([server_pki.root.cert], server_name="registrar.example"))
    assert server.wait_finished(1)


def test_anchors_check_ip_literals_against_ip_sans(client_ca, ec_client, tmp_path):
    chain, signer = ec_client
    dns_only = make_server_pki(ips=())
    with https_server(dns_only, client_ca, tmp_path) as srv:
        with open_client(srv, chain, signer, ServerAuth.anchors([dns_only.root.cert])):
            pass  # by name: fine
        with pytest.raises(ServerAuthError, match="subjectAltName"):
            open_client(srv, chain, signer, ServerAuth.anchors([dns_only.root.cert]), host="127.0.0.1")


def test_provisional_accepts_any_server_and_records_the_chain(client_ca, ec_client, tmp_path):
    chain, signer = ec_client
    unknown = make_server_pki("unknown registrar", dns=("elsewhere.example",), ips=())
    with https_server(unknown, client_ca, tmp_path) as srv:
        with open_client(srv, chain, signer, ServerAuth.provisional()) as conn:
            assert conn.server_chain == [_der(c) for c in unknown.chain]
            assert HttpClient(conn).request("GET", "/whoami").status == 200
    # What the pledge does later, once the voucher names the domain CA:
    validate_against_pin(conn.server_chain, _der(unknown.root.cert), "elsewhere.example")
    with pytest.raises(ServerAuthError):
        validate_against_pin(conn.server_chain, _der(make_root("other").cert), "elsewhere.example")


def test_pinned_leaf(server, server_pki, ec_client):
    chain, signer = ec_client
    with open_client(server, chain, signer, ServerAuth.pinned(server_pki.leaf)) as conn:
        assert conn.server_chain[0] == _der(server_pki.leaf)
    other_leaf = make_server_pki().leaf
    with pytest.raises(ServerAuthError, match="not the pinned domain certificate"):
        open_client(server, chain, signer, ServerAuth.pinned(other_leaf))


@pytest.mark.parametrize("pin_level", ["root", "intermediate"])
def test_pinned_ca(server, server_pki, ec_client, pin_level):
    chain, signer = ec_client
    pin = getattr(server_pki, pin_level).cert
    with open_client(server, chain, signer, ServerAuth.pinned(pin, "localhost")):
        pass
    with open_client(server, chain, signer, ServerAuth.pinned(pin), host="127.0.0.1") as conn:
        assert conn.server_name == "127.0.0.1"  # IP literal matched against the IP SAN
    with pytest.raises(ServerAuthError, match="subjectAltName"):
        open_client(server, chain, signer, ServerAuth.pinned(pin, "registrar.example"))
    with pytest.raises(ServerAuthError):
        open_client(server, chain, signer, ServerAuth.pinned(make_root("other domain").cert))


def test_validate_against_pin_without_a_network(server_pki):
    chain_der = [_der(c) for c in server_pki.chain]
    validate_against_pin(chain_der, _der(server_pki.leaf), "anything")  # EE pin: equality only
    validate_against_pin(chain_der, _der(server_pki.intermediate.cert), "localhost")
    validate_against_pin(chain_der, _der(server_pki.root.cert), "127.0.0.1")
    validate_against_pin(chain_der, _der(server_pki.root.cert), "[127.0.0.1]")
    with pytest.raises(ServerAuthError, match="subjectAltName"):
        validate_against_pin(chain_der, _der(server_pki.root.cert), "127.0.0.2")
    with pytest.raises(ServerAuthError, match="subjectAltName"):
        validate_against_pin(chain_der, _der(server_pki.root.cert), "registrar.example")
    with pytest.raises(ServerAuthError, match="not the pinned"):
        validate_against_pin(chain_der, _der(make_server_pki().leaf), "localhost")
    with pytest.raises(ServerAuthError, match="not a DER certificate"):
        validate_against_pin(chain_der, b"garbage", "localhost")
    with pytest.raises(ServerAuthError, match="malformed"):
        validate_against_pin([b"garbage"], _der(server_pki.root.cert), "localhost")
    # A CA pin needs the chain up to it: a leaf alone cannot reach the root.
    with pytest.raises(ServerAuthError):
        validate_against_pin(chain_der[:1], _der(server_pki.root.cert), "localhost")


# --- connection failures ------------------------------------------------


@pytest.mark.timeout(30)
def test_handshake_timeout_when_the_server_never_answers(ec_client, server_pki):
    chain, signer = ec_client
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes TCP; nobody ever speaks TLS
        port = silent.getsockname()[1]
        with pytest.raises(TlsTimeout, match=f"127.0.0.1:{port}"):
            connect(("127.0.0.1", port), client_cert_chain=chain, signer=signer,
                    server_auth=ServerAuth.provisional(), timeout=0.5)


def test_connection_refused_names_the_peer(ec_client):
    chain, signer = ec_client
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        port = closed.getsockname()[1]
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
            connect(f"127.0.0.1:{port}", client_cert_chain=chain, signer=signer,
                    server_auth=ServerAuth.provisional(), timeout=5)


def test_not_tls_at_all(ec_client):
    chain, signer = ec_client
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(1)
        port = plain.getsockname()[1]

        def answer_in_plain_http():
            peer, _ = plain.accept()
            with peer:
                peer.recv(4096)
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_in_plain_http, daemon=True)
        thread.start()
        with pytest.raises((TlsHandshakeFailed, ConnectionFailed), match=f"127.0.0.1:{port}"):
            connect(("127.0.0.1", port), client_cert_chain=chain, signer=signer,
                    server_auth=ServerAuth.provisional(), timeout=5)
        thread.join(SERVER_WAIT)


def test_parse_target():
    assert parse_target("https://registrar.example/.well-known/brski") == ("registrar.example", 443)
    assert parse_target("https://[::1]:8443/x") == ("::1", 8443)
    assert parse_target("est.example:9443") == ("est.example", 9443)
    assert parse_target(("127.0.0.1", 8443)) == ("127.0.0.1", 8443)
    with pytest.raises(TransportError, match="https"):
        parse_target("http://registrar.example/")
    with pytest.raises(TransportError, match="port"):
        parse_target("registrar.example:99999")


# --- HTTP over the connection ---------------------------------------------


@pytest.fixture
def http(server, server_pki, ec_client):
    chain, signer = ec_client
    conn = open_client(server, chain, signer, ServerAuth.anchors([server_pki.root.cert]))
    with HttpClient(conn, timeout=10) as client:
        yield client


def test_keep_alive_reuses_one_connection(http, server):
    first = http.request("POST", "/requestvoucher", {"Content-Type": "application/voucher-cms+json"},
                         b"voucher-request")
    second = http.request("GET", "/whoami")
    third = http.request("POST", "/voucher_status", {"Content-Type": "application/json"}, b"status")
    assert (first.status, first.body, first.content_type) == (200, b"tseuqer-rehcuov",
                                                               "application/voucher-cms+json")
    assert second.body.decode().endswith("conn=1")
    assert third.body == b"sutats"
    assert server.connections == 1
    assert server.requests == ["/requestvoucher", "/whoami", "/voucher_status"]
    assert http.connections_used == 1 and http.reusable


def test_redirect_is_returned_not_followed(http, server):
    response = http.request("GET", "/redirect")
    assert response.status == 307
    assert response.headers["location"] == "https://owner.example/.well-known/brski"
    assert response.headers.get("LOCATION") == response.headers["Location"]
    assert server.requests == ["/redirect"]


def test_chunked_body_is_decoded_and_the_connection_stays_usable(http, server):
    response = http.request("GET", "/chunked")
    assert response.body == b"hello, chunked world"
    assert http.request("GET", "/whoami").status == 200
    assert server.connections == 1


@pytest.mark.parametrize("path", ["/big", "/big-chunked", "/big-to-close"])
def test_oversize_body_is_refused(server, server_pki, ec_client, path):
    chain, signer = ec_client
    conn = open_client(server, chain, signer, ServerAuth.anchors([server_pki.root.cert]))
    client = HttpClient(conn, max_response_bytes=64 * 1024)
    with pytest.raises(ResponseTooLarge, match="65536 bytes"):
        client.request("GET", path)
    assert not client.reusable and conn.closed


def test_a_body_of_exactly_the_limit_in_uneven_chunks_is_read_whole(server, server_pki, ec_client):
    chain, signer = ec_client
    conn = open_client(server, chain, signer, ServerAuth.anchors([server_pki.root.cert]))
    with HttpClient(conn, max_response_bytes=64 * 1024) as client:
        response = client.request("GET", "/chunked-64k")
        assert (response.status, response.body) == (200, b"c" * 64 * 1024)
        assert response.headers["transfer-encoding"] == "chunked"
        assert client.request("GET", "/whoami").body.decode().endswith("conn=1")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/stall-mid-body", "/stall-mid-chunk"])
def test_a_server_that_stalls_mid_body_hits_the_deadline(http, server, path):
    with pytest.raises(TlsTimeout, match=f"GET {path} to localhost:{server.port}: no complete "
                                         f"response within 0.5 s"):
        http.request("GET", path, timeout=0.5)
    assert server.stalled.wait(SERVER_WAIT)  # the server did send the head and part of the body
    assert not http.reusable


def test_a_server_that_closes_mid_body_is_a_broken_connection(http, server):
    with pytest.raises(ConnectionFailed, match=f"localhost:{server.port} closed the connection "
                                               "after 10 body bytes"):
        http.request("GET", "/close-mid-body")
    assert not http.reusable


def test_a_malformed_status_line_is_a_clear_error(http, server):
    with pytest.raises(MalformedResponse) as info:
        http.request("GET", "/malformed-status")
    assert str(info.value) == (f"localhost:{server.port}: malformed HTTP/1.1 response: "
                               "illegal status line: bytearray(b'HTTP/1.1 2x0 OK')")
    assert not http.reusable


def test_response_headers_over_the_limit_are_refused(http, server):
    large = http.request("GET", "/large-headers")  # 30 x 2 kB: under the 64 KiB limit
    assert large.headers["x-filler-29"] == "f" * 2000
    with pytest.raises(MalformedResponse, match=f"localhost:{server.port}: response headers "
                                                f"longer than {MAX_HEADER_BYTES} bytes"):
        http.request("GET", "/huge-headers")  # 40 x 2 kB
    assert not http.reusable


def test_a_request_that_cannot_be_written_is_refused_before_anything_is_sent(http, server):
    with pytest.raises(TransportError, match="cannot send GET /a b"):
        http.request("GET", "/a b")
    with pytest.raises(TransportError, match="cannot send G;T /whoami"):
        http.request("G;T", "/whoami")
    assert http.request("GET", "/whoami").status == 200
    assert server.requests == ["/whoami"]


def test_connection_close_ends_reuse(server, server_pki, ec_client):
    chain, signer = ec_client
    auth = ServerAuth.anchors([server_pki.root.cert])
    client = HttpClient(open_client(server, chain, signer, auth))
    assert client.request("GET", "/close").body == b"bye"
    assert not client.reusable
    with pytest.raises(ConnectionFailed, match="open a new one"):
        client.request("GET", "/whoami")

    reconnecting = HttpClient(open_client(server, chain, signer, auth),
                              reconnect=lambda: open_client(server, chain, signer, auth))
    reconnecting.request("GET", "/close")
    assert reconnecting.request("GET", "/whoami").body.decode().endswith("conn=3")
    assert reconnecting.connections_used == 2
    reconnecting.close()


@pytest.mark.timeout(30)
def test_request_timeout(http, server):
    with pytest.raises(TlsTimeout, match=f"GET /slow to localhost:{server.port}"):
        http.request("GET", "/slow", timeout=0.3)
    assert not http.reusable


def test_request_header_injection_is_refused(http):
    with pytest.raises(TransportError, match="line break"):
        http.request("GET", "/whoami", {"X-Evil": "a\r\nInjected: yes"})
    with pytest.raises(TransportError, match="set by the HTTP client"):
        http.request("POST", "/x", {"Content-Length": "3"}, b"abc")


# --- interop with openssl s_server ------------------------------------------


@contextmanager
def openssl_server(pki: ServerPki, client_ca: Issuer, tmp: Path, extra_args: list[str]):
    files = {
        "cert": _pem(pki.leaf),
        "chain": _pem(pki.intermediate.cert),
        "key": pki.leaf_signer.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "ca": _pem(client_ca.cert),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / f"s_server-{name}.pem"
        paths[name].write_bytes(data)
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-www",
         "-cert", paths["cert"], "-cert_chain", paths["chain"], "-key", paths["key"],
         "-CAfile", paths["ca"], "-Verify", "1", *extra_args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port, seen, deadline = None, b"", time.monotonic() + SERVER_WAIT
        while port is None:
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            assert ready, f"openssl s_server did not start: {seen!r}"
            chunk = proc.stdout.read1(4096)
            assert chunk, f"openssl s_server exited: {seen!r}"
            seen += chunk
            for line in seen.decode(errors="replace").splitlines():
                if line.startswith("ACCEPT "):
                    port = int(line.rsplit(":", 1)[1])
        yield port
    finally:
        proc.kill()
        proc.wait(SERVER_WAIT)
        proc.stdout.close()


@pytest.mark.parametrize("algorithm,server_args,version,signature", [
    ("ec-p256", ["-tls1_3"], "TLS 1.3", ("sha256", Padding.PKCS1V15)),
    ("ec-p256", ["-tls1_2"], "TLS 1.2", ("sha256", Padding.PKCS1V15)),
    # A SHA-384 digest for a P-256 key: tlslite truncates it to the curve size first.
    # (tlslite 0.8.2 aborts a TLS 1.2 handshake whose CertificateRequest lists
    # no RSA PKCS#1 scheme, whatever the client key; hence RSA+SHA256 beside it.)
    ("ec-p256", ["-tls1_2", "-client_sigalgs", "ECDSA+SHA384:RSA+SHA256"], "TLS 1.2",
     ("sha384", Padding.PKCS1V15)),
    ("rsa-2048", ["-tls1_2"], "TLS 1.2", ("sha256", Padding.PKCS1V15)),
    ("rsa-2048", ["-tls1_3"], "TLS 1.3", ("sha256", Padding.PSS)),
], ids=["ec-tls1.3", "ec-tls1.2", "ec-tls1.2-sha384", "rsa-tls1.2", "rsa-tls1.3"])
def test_openssl_s_server_sees_the_softhsm_client_key(token, server_pki, client_ca, tmp_path,
                                                      algorithm, server_args, version, signature):
    signer = generate_key(token.uri("k"), algorithm)
    chain = client_identity(client_ca, signer)
    with openssl_server(server_pki, client_ca, tmp_path, server_args) as port:
        with connect(("localhost", port), client_cert_chain=chain, signer=signer,
                     server_auth=ServerAuth.anchors([server_pki.root.cert]), timeout=10) as conn:
            response = HttpClient(conn).request("GET", "/")
    assert response.status == 200
    page = response.body.decode(errors="replace")
    # -www reports the session, including the client certificate it verified.
    assert "Client certificate" in page
    assert _pem(chain[0]).decode().strip() in page
    assert conn.version == version
    assert (conn.client_signature.hash_name, conn.client_signature.padding) == signature
