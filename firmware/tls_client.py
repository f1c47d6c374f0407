"""The pledge's TLS client: mutual TLS with a key that stays in a TPM or token.

tlslite-ng runs the TLS 1.2/1.3 handshake in Python, so the CertificateVerify
signature can come from any `Signer` (see tls_keys). tlslite checks that the
server holds the key of the certificate it sent, but not who that
certificate belongs to: `ServerAuth` does that after the handshake, in one of
the three ways BRSKI needs (built-in trust anchors, provisional, pinned
domain certificate).

Every blocking step (TCP connect, handshake, each read and write) is bounded
by a deadline; failures raise one of the `TransportError` subclasses below,
naming host:port.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import verification
from tlslite import HandshakeSettings
from tlslite.constants import AlertDescription
from tlslite.errors import TLSAlert, TLSError, TLSRemoteAlert

from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm.signer import Signer, SignatureSpec

from .tls_keys import preferred_signature_hashes, tls_certificate_chain, tls_private_key
from .tls_native import TLSConnection

DEFAULT_HTTPS_PORT = 443


class TransportError(PledgeforgeError):
    """Base of the errors talking to a server over TLS."""


class ConnectionFailed(TransportError):
    """The TCP connection could not be made, or broke."""


class TlsTimeout(TransportError):
    """A connect, handshake, read or write took longer than allowed."""


class TlsHandshakeFailed(TransportError):
    """The TLS handshake failed (protocol error or the server refused us)."""


class ServerAuthError(TransportError):
    """The server's certificate chain failed the authentication we asked for."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ClientCredentialsError(TransportError):
    """The client certificate chain and key do not fit together."""


class BadTarget(TransportError):
    """The URL or host:port to connect to is malformed."""


# --- where to connect -------------------------------------------------------


def parse_target(target: str | tuple[str, int]) -> tuple[str, int]:
    """(host, port) from an https URL, 'host:port', '[v6]:port', 'host' or a tuple."""
    if isinstance(target, tuple):
        host, port = target
        return _strip_brackets(str(host)), int(port)
    text = target.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() != "https":
            raise BadTarget(f"{target!r}: only https URLs are supported")
    else:
        parts = urlsplit("//" + text)
    try:
        port = parts.port or DEFAULT_HTTPS_PORT
    except ValueError:
        raise BadTarget(f"{target!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise BadTarget(f"{target!r}: no host name")
    return parts.hostname, port


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(_strip_brackets(host))
    except ValueError:
        return None


def host_port_text(host: str, port: int) -> str:
    """host:port as people write it ([v6]:port for IPv6 literals)."""
    ip = _ip_literal(host)
    return f"[{host}]:{port}" if ip is not None and ip.version == 6 else f"{host}:{port}"


# --- server authentication --------------------------------------------------


def _extension_policies() -> dict[str, verification.ExtensionPolicy]:
    """The Web PKI profile (RFC 5280 + CA/B rules) minus one requirement.

    cryptography's defaults require an Authority Key Identifier in every
    non-root certificate. Private registrar and domain CAs (which BRSKI is
    built around) often omit it, and it adds nothing to path validation
    once the signature has been checked, so it may be present or absent.
    Everything else, including subjectAltName on the server certificate and
    the serverAuth EKU when an EKU is present, stays as cryptography has it.
    """
    aki = (x509.AuthorityKeyIdentifier, verification.Criticality.NON_CRITICAL, None)
    return {
        "ca_policy": verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(*aki),
        "ee_policy": verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(*aki),
    }


def _verification_subject(name: str) -> verification.Subject:
    ip = _ip_literal(name)
    if ip is not None:
        return x509.IPAddress(ip)
    try:
        return x509.DNSName(name)
    except ValueError:
        raise ServerAuthError(f"{name!r} is not a valid DNS name to check the server against",
                              "invalid server name") from None


def verify_server_chain(chain: list[x509.Certificate], anchors: list[x509.Certificate],
                        name: str) -> None:
    """Raise ServerAuthError unless `chain` (leaf first) builds to one of
    `anchors` and its leaf names `name` (DNS-ID, or IP SAN for an IP literal)."""
    if not chain:
        raise ServerAuthError(f"{name}: the server sent no certificate", "no server certificate")
    if not anchors:
        raise ServerAuthError(f"{name}: no trust anchors to check the server against", "no trust anchors")
    subject = _verification_subject(name)
    verifier = (verification.PolicyBuilder()
                .store(verification.Store(anchors))
                .time(dt.datetime.now(dt.timezone.utc))
                .extension_policies(**_extension_policies())
                .build_server_verifier(subject))
    try:
        verifier.verify(chain[0], chain[1:])
    except verification.VerificationError as exc:
        reason = str(exc)
        if "candidates exhausted" in reason:
            # cryptography's wording when no path reaches the store; say it plainly.
            trusted = "; ".join(a.subject.rfc4514_string() for a in anchors)
            reason = (f"no chain to a trusted anchor (the server's certificate is issued by "
                      f"{chain[0].issuer.rfc4514_string()}; trusted: {trusted})")
        raise ServerAuthError(f"server certificate for {name} rejected: {reason}", reason) from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_pin(chain: list[x509.Certificate], pin: x509.Certificate, name: str) -> None:
    """RFC 8995 pinned-domain-cert: an end-entity pin must be the server's
    certificate; a CA pin must be where the chain ends, and the name must match."""
    if not chain:
        raise ServerAuthError(f"{name}: the server sent no certificate", "no server certificate")
    if not _is_ca(pin):
        if chain[0] != pin:
            raise ServerAuthError(
                f"server certificate for {name} is not the pinned domain certificate "
                f"(pinned {pin.subject.rfc4514_string()}, got {chain[0].subject.rfc4514_string()})",
                "leaf does not equal the pinned end-entity certificate")
        return
    verify_server_chain(chain, [pin], name)


def _load_chain(chain_der: list[bytes], name: str) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        raise ServerAuthError(f"server certificate for {name} is malformed: {exc}",
                              "malformed certificate") from None


def validate_against_pin(server_chain_der: list[bytes], pin_der: bytes, host: str) -> None:
    """Check a recorded server chain (leaf first, DER) against a voucher's
    pinned-domain-cert, as `ServerAuth.pinned` does during a handshake."""
    try:
        pin = x509.load_der_x509_certificate(pin_der)
    except ValueError as exc:
        raise ServerAuthError(f"the pinned-domain-cert is not a DER certificate: {exc}",
                              "malformed pin") from None
    _check_pin(_load_chain(server_chain_der, host), pin, _strip_brackets(host))


class ServerAuth:
    """How the pledge decides that the server is the one it meant to reach.

    Build one with `ServerAuth.anchors(...)`, `.provisional()` or `.pinned(...)`.
    """

    def expected_name(self, host: str) -> str:
        """The name the server certificate must carry (default: the host dialled)."""
        return host

    def check(self, chain: list[x509.Certificate], name: str) -> None:
        """Raise ServerAuthError unless `chain` (leaf first) is acceptable for `name`."""
        raise NotImplementedError

    @staticmethod
    def anchors(certificates: list[x509.Certificate], server_name: str | None = None) -> "TrustAnchors":
        return TrustAnchors(tuple(certificates), server_name)

    @staticmethod
    def provisional() -> "Provisional":
        return Provisional()

    @staticmethod
    def pinned(pin: x509.Certificate, dns_name: str | None = None) -> "Pinned":
        return Pinned(pin, dns_name)


@dataclass(frozen=True)
class TrustAnchors(ServerAuth):
    """The chain must build to one of these anchors and name the server."""

    certificates: tuple[x509.Certificate, ...]
    server_name: str | None = None

    def expected_name(self, host):
        return self.server_name or host

    def check(self, chain, name):
        verify_server_chain(chain, list(self.certificates), name)


@dataclass(frozen=True)
class Provisional(ServerAuth):
    """BRSKI provisional TLS: accept any server, keep its chain for later."""

    def check(self, chain, name):
        if not chain:
            raise ServerAuthError(f"{name}: the server sent no certificate", "no server certificate")


@dataclass(frozen=True)
class Pinned(ServerAuth):
    """RFC 8995 pinned-domain-cert (an end-entity certificate or a CA)."""

    pin: x509.Certificate
    dns_name: str | None = None

    def expected_name(self, host):
        return self.dns_name or host

    def check(self, chain, name):
        _check_pin(chain, self.pin, name)


# --- the connection ---------------------------------------------------------


class _DeadlineSocket:
    """A non-blocking socket that tlslite can use as a blocking one, where
    every wait ends at `deadline` (time.monotonic()) with TimeoutError.

    A plain socket timeout bounds each recv, not an operation: a server that
    drips one byte at a time could hold a handshake open for ever.
    """

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self._sock = sock
        self.deadline = time.monotonic()

    def _wait(self, event: int) -> None:
        remaining = self.deadline - time.monotonic()
        poller = select.poll()
        poller.register(self._sock, event)
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise TimeoutError("timed out")

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self._sock.recv(size)
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLIN)

    def send(self, data) -> int:
        while True:
            try:
                return self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLOUT)

    def sendall(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def shutdown(self, how: int) -> None:
        try:
            self._sock.shutdown(how)
        except OSError:
            pass  # already gone; closing is all that is left to do

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self):
        return self._sock.getpeername()

    def getsockname(self):
        return self._sock.getsockname()

    def setsockopt(self, *args):
        return self._sock.setsockopt(*args)


_VERSION_NAMES = {(3, 3): "TLS 1.2", (3, 4): "TLS 1.3"}


_CLIENT_CERT_ALERTS = {
    AlertDescription.bad_certificate, AlertDescription.unsupported_certificate,
    AlertDescription.certificate_revoked, AlertDescription.certificate_expired,
    AlertDescription.certificate_unknown, AlertDescription.unknown_ca,
    AlertDescription.access_denied, AlertDescription.decrypt_error,
    AlertDescription.certificate_required,
}


def _alert_name(alert: TLSAlert) -> str:
    return AlertDescription.toRepr(alert.description) or str(alert.description)


class TlsConnection:
    """An established, authenticated TLS connection (use `connect`)."""

    def __init__(self, tls: TLSConnection, raw: _DeadlineSocket, host: str, port: int,
                 server_name: str, timeout: float, server_chain: list[bytes],
                 client_signature: SignatureSpec | None):
        self._tls = tls
        self._raw = raw
        self.host = host
        self.port = port
        #: The name the server was authenticated for (the host unless ServerAuth names another).
        self.server_name = server_name
        self.timeout = timeout
        #: The server's certificates as sent, leaf first, DER.
        self.server_chain = server_chain
        #: Hash and padding of our CertificateVerify (None if the server asked for no certificate).
        self.client_signature = client_signature
        self.version = _VERSION_NAMES.get(tuple(tls.version), str(tls.version))
        self.cipher = tls.getCipherName()
        #: who seals the records: "cryptography" (tls_native.py) for the AEAD suites
        self.cipher_implementation = tls.getCipherImplementation()
        self._closed = False

    @property
    def peer(self) -> str:
        return host_port_text(self.host, self.port)

    @property
    def server_certificates(self) -> list[x509.Certificate]:
        return [x509.load_der_x509_certificate(der) for der in self.server_chain]

    @property
    def closed(self) -> bool:
        return self._closed

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.timeout if deadline is None else deadline

    def _fail(self, exc: BaseException, doing: str) -> TransportError:
        """Close and turn a tlslite or socket failure into one of ours."""
        self._abort()
        if isinstance(exc, TimeoutError):
            return TlsTimeout(f"{doing} {self.peer} timed out")
        if isinstance(exc, TLSRemoteAlert):
            # In TLS 1.3 the server judges our certificate after our side of
            # the handshake is done, so its refusal arrives here.
            hint = (" (the server refused the client certificate)"
                    if exc.description in _CLIENT_CERT_ALERTS else "")
            return ConnectionFailed(
                f"{self.peer} ended the connection with alert {_alert_name(exc)} while {doing}{hint}")
        if isinstance(exc, (TLSError, TLSAlert)):
            return ConnectionFailed(f"TLS error while {doing} {self.peer}: {exc}")
        return ConnectionFailed(f"connection to {self.peer} broke while {doing}: {exc}")

    def sendall(self, data: bytes, *, deadline: float | None = None) -> None:
        """Send all of `data` before `deadline` (default: now + timeout)."""
        if self._closed:
            raise ConnectionFailed(f"connection to {self.peer} is closed")
        self._raw.deadline = self._deadline(deadline)
        try:
            self._tls.write(data)
        except (OSError, TLSError, TLSAlert) as exc:
            raise self._fail(exc, "sending to") from None

    def recv(self, max_bytes: int = 65536, *, deadline: float | None = None) -> bytes:
        """Up to `max_bytes` of application data; b"" once the server has closed."""
        if self._closed:
            return b""
        self._raw.deadline = self._deadline(deadline)
        try:
            data = self._tls.read(max_bytes, 1)
        except (OSError, TLSError, TLSAlert) as exc:
            raise self._fail(exc, "reading from") from None
        if not data:
            self._abort()
        return bytes(data)

    def _abort(self) -> None:
        self._closed = True
        self._raw.close()

    def close(self) -> None:
        """Send close_notify (bounded by a short deadline) and close the socket."""
        if self._closed:
            return
        self._raw.deadline = time.monotonic() + min(self.timeout, 1.0)
        try:
            self._tls.close()
        except (OSError, TLSError, TLSAlert):
            pass  # the peer went first; the socket is closed below either way
        self._abort()

    def __enter__(self) -> "TlsConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TlsConnection {self.peer} {self.version} {'closed' if self._closed else 'open'}>"


def _handshake_settings(signer: Signer) -> HandshakeSettings:
    settings = HandshakeSettings()
    settings.minVersion = (3, 3)
    settings.maxVersion = (3, 4)
    # tlslite would send RFC 8879 CompressedCertificate, which OpenSSL servers reject.
    settings.certificate_compression_send = []
    # One TLS 1.3 key share, X25519 (done by OpenSSL, tls_native.py), rather than tlslite's
    # default of P-256 too, whose share python-ecdsa would make. A server without X25519
    # asks for another group with a HelloRetryRequest.
    settings.keyShares = ["x25519"]
    hashes = preferred_signature_hashes(signer)
    settings.ecdsaSigHashes = list(hashes)
    settings.rsaSigHashes = list(hashes)
    # PKCS#1 v1.5 first: TLS 1.2 then uses the padding every token and TPM
    # can do; TLS 1.3 forbids it and tlslite moves on to PSS. (tlslite 0.8.2
    # also aborts a TLS 1.2 handshake whose CertificateRequest lists no RSA
    # PKCS#1 scheme at all, whatever our key; OpenSSL servers always list one.)
    settings.rsaSchemes = ["pkcs1", "pss"]
    return settings


def _open_tcp(host: str, port: int, deadline: float) -> socket.socket:
    peer = host_port_text(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.001))
    except TimeoutError:
        raise TlsTimeout(f"connecting to {peer} timed out") from None
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise ConnectionFailed(f"cannot connect to {peer}: {reason}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _check_client_credentials(chain: list[x509.Certificate], signer: Signer) -> None:
    if not chain:
        raise ClientCredentialsError("the client certificate chain is empty")
    if chain[0].public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != signer.public_key_der():
        raise ClientCredentialsError(
            f"the client certificate {chain[0].subject.rfc4514_string()} is not for the key in "
            f"{signer.description}")


def connect(target: str | tuple[str, int], *, client_cert_chain: list[x509.Certificate],
            signer: Signer, server_auth: ServerAuth, timeout: float) -> TlsConnection:
    """Open a mutually authenticated TLS connection.

    `target` is an https URL, 'host:port' or (host, port). `timeout` bounds
    TCP connect plus handshake together, and then each read or write.
    The server is checked by `server_auth`; on any failure the socket is
    closed and a TransportError subclass names host:port and the reason.
    """
    host, port = parse_target(target)
    peer = host_port_text(host, port)
    _check_client_credentials(client_cert_chain, signer)
    key = tls_private_key(signer)
    chain = tls_certificate_chain(client_cert_chain)
    name = _strip_brackets(server_auth.expected_name(host))
    sni = name if _ip_literal(name) is None else None  # RFC 6066: no IP literals in SNI

    deadline = time.monotonic() + timeout
    raw = _DeadlineSocket(_open_tcp(host, port, deadline))
    raw.deadline = deadline
    tls = TLSConnection(raw)
    # A TCP close without close_notify reads as end of data, as browsers and
    # Python's ssl servers have it; the HTTP layer still refuses a body cut
    # short of its Content-Length or last chunk.
    tls.ignoreAbruptClose = True
    try:
        tls.handshakeClientCert(chain, key, settings=_handshake_settings(signer), serverName=sni)
    except TimeoutError:
        raw.close()
        raise TlsTimeout(f"TLS handshake with {peer} timed out after {timeout:g} s") from None
    except TLSRemoteAlert as exc:
        raw.close()
        raise TlsHandshakeFailed(f"{peer} refused the TLS handshake: alert {_alert_name(exc)}") from None
    except (TLSError, TLSAlert) as exc:
        raw.close()
        raise TlsHandshakeFailed(f"TLS handshake with {peer} failed: {exc}") from None
    except (BrokenPipeError, ConnectionResetError) as exc:
        raw.close()
        raise TlsHandshakeFailed(
            f"{peer} closed the connection during the TLS handshake ({exc.strerror}); "
            "a TLS 1.3 server that refuses the client certificate does this") from None
    except OSError as exc:
        raw.close()
        raise ConnectionFailed(f"connection to {peer} broke during the TLS handshake: {exc}") from None

    # tlslite has no hook between the server's Certificate and our own, so
    # the chain is judged once the handshake is done: our certificate (not
    # our key) has then been shown to a server not yet authenticated, which
    # BRSKI's provisional TLS accepts anyway. Nothing is sent before the check.
    server_chain = [bytes(cert.bytes) for cert in tls.session.serverCertChain.x509List]
    conn = TlsConnection(tls, raw, host, port, name, timeout, server_chain, key.last_signature)
    try:
        server_auth.check(_load_chain(server_chain, peer), name)
    except ServerAuthError as exc:
        conn.close()
        raise ServerAuthError(f"{peer}: {exc}", exc.reason) from None
    return conn


__all__ = [
    "connect", "TlsConnection", "ServerAuth", "TrustAnchors", "Provisional", "Pinned",
    "validate_against_pin", "verify_server_chain", "parse_target", "host_port_text",
    "TransportError", "ConnectionFailed", "TlsTimeout", "TlsHandshakeFailed", "ServerAuthError",
    "ClientCredentialsError", "BadTarget",
]
