"""LDevID renewal: EST /simplereenroll (RFC 7030 4.2.2), authenticated by the current LDevID.

An enrolled pledge renews its LDevID before it expires:

1. TLS to the EST server it enrolled with, its current LDevID as client
   certificate (the key in the current slot signs the handshake). The server
   must chain to the CA certificates the pledge stored from /cacerts at
   enrollment (its explicit trust anchors, RFC 7030 4.1.3) and carry the EST
   URL's host name.
2. A new key in the other slot (ldevid_keys.py), and a CSR with exactly the
   current certificate's subject and subjectAltName (RFC 7030 4.2.2).
3. POST /simplereenroll; a 202 waits (Retry-After, capped) and asks again, a
   bounded number of times. The certificate is checked as at enrollment
   (pledge.check_issued_certificate) and must keep the subject.
4. enrollstatus (RFC 8995 5.9.4): after success, over a new connection
   authenticated by the new LDevID, which shows the registrar that the pledge
   holds the new key and confirms that very certificate; after a refusal or a
   rejected certificate, over the current connection, with the reason.
5. `store(result)` records the new certificate and slot (one atomic write);
   then the new key is current and the old one deleted. Any failure before
   that deletes the new key: the pledge keeps its current LDevID.

The registrar side is registrar/est.py (`simplereenroll`).
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from cryptography import x509

from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.retry_after import parse_retry_after
from pledgeforge.hsm.signer import Signer
from pledgeforge.hsm.wellknown import (BRSKI_PATH, JSON_MEDIA_TYPE, PKCS7_MEDIA_TYPE,
                                       PKCS10_MEDIA_TYPE)
from pledgeforge.hsm.x509 import make_csr, serial_number_of, to_der

from .http_client import HttpClient, Response
from .ldevid_keys import LdevidKeys, LifecycleError, PendingKey, Slot
from .pledge import check_issued_certificate
from .pledge_machine import server_origin, status_report_body
from .tls_client import ServerAuth, TlsConnection, TransportError, connect

#: how often a 202 is waited out before the renewal gives up, and the longest wait
MAX_ACCEPTED_RETRIES = 3
ACCEPTED_WAIT_CAP_S = 60.0


class RenewalError(PledgeforgeError):
    """The pledge cannot attempt a renewal (not enrolled, or its record does not fit its keys)."""


@dataclass(frozen=True)
class Enrollment:
    """What an enrolled pledge keeps: its LDevID, the slot of its key, whom it enrolled with."""

    certificate: x509.Certificate
    slot: Slot
    #: what /cacerts answered at enrollment: the EST server's explicit trust anchors
    ca_certs: tuple[x509.Certificate, ...]
    #: the EST base URL (https://host:port/.well-known/est)
    est_url: str

    @property
    def serial(self) -> str:
        serial = serial_number_of(self.certificate)
        if not serial:
            raise RenewalError("the LDevID carries no subject serialNumber")
        return serial


@dataclass
class RenewalResult:
    renewed: bool
    reason: str | None
    previous: x509.Certificate
    certificate: x509.Certificate | None = None
    slot: Slot | None = None
    key_uri: str | None = None
    #: what became of the enrollstatus report ("answered 200 OK", "not delivered: ...")
    enroll_status: str | None = None
    #: what the key store deleted afterwards (the previous key, or the failed attempt's)
    deleted: list[str] = field(default_factory=list)


def renew(enrollment: Enrollment, keys: LdevidKeys, store: Callable[[RenewalResult], None], *,
          timeout: float = 10.0, cancel: threading.Event | None = None,
          now: Callable[[], dt.datetime] | None = None) -> RenewalResult:
    """Renew the pledge's LDevID; `store(result)` persists a new one (see the module docstring).

    A failure (no new key, no connection, a refusal, an unusable answer) is a RenewalResult
    with `renewed` False and the reason; a pledge that cannot try at all (no usable current
    LDevID key) raises RenewalError."""
    if keys.current is not enrollment.slot:
        raise RenewalError(f"the pledge's record names slot {enrollment.slot.value}, its keys "
                           f"{keys.current.value if keys.current else 'no current slot'}")
    renewal = _Renewal(enrollment, keys, timeout, cancel or threading.Event(),
                       now or (lambda: dt.datetime.now(dt.timezone.utc)))
    return renewal.run(store)


class _Renewal:
    def __init__(self, enrollment: Enrollment, keys: LdevidKeys, timeout: float,
                 cancel: threading.Event, now: Callable[[], dt.datetime]):
        self.enrollment = enrollment
        self.keys = keys
        self.timeout = timeout
        self.cancel = cancel
        self.now = now
        self.origin = server_origin(enrollment.est_url)
        self.host = urlsplit(self.origin).hostname or ""
        self.result = RenewalResult(False, None, enrollment.certificate)

    def run(self, store: Callable[[RenewalResult], None]) -> RenewalResult:
        try:
            current_key = self.keys.open_current()
        except (PledgeforgeError, LifecycleError) as exc:
            raise RenewalError(f"the current LDevID key cannot be used: {exc}") from None
        pending = None
        conn = None
        try:
            try:
                pending = self.keys.begin(current_key.algorithm)
                csr = self._csr(pending.signer)
            except PledgeforgeError as exc:  # nothing was asked of the server yet: nothing to report
                self.result.reason = f"the new LDevID key or its CSR could not be made: {exc}"
                return self.result
            conn, response = self._reenroll(current_key, csr)
            if response.status != 200:
                return self._fail(f"EST simplereenroll at {self.enrollment.est_url}: "
                                  f"{_status_text(response)}", conn)
            try:
                cert = self._check(response.body, pending.signer)
            except (CertificateError, PledgeforgeError) as exc:
                return self._fail(f"issued certificate rejected: {exc}", conn)
            conn.close()
            conn = None
            self.result.enroll_status = self._report_over(cert, pending.signer, True, None)
            self.result.renewed, self.result.certificate = True, cert
            self.result.slot, self.result.key_uri = pending.slot, pending.uri_text
            self.result.deleted = self.keys.promote(pending, lambda p: store(self.result))
            pending = None
            return self.result
        except TransportError as exc:
            self.result.reason = f"renewal with {self.origin} failed: {exc}"
            return self.result
        finally:
            if conn is not None:
                conn.close()
            if pending is not None:
                self.result.deleted = self._discard(pending)

    # ------------------------------------------------------------------ steps

    def _csr(self, signer: Signer) -> bytes:
        current = self.enrollment.certificate
        try:
            names = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = []
        csr = make_csr(signer, current.subject,
                       dns_names=[n.value for n in names if isinstance(n, x509.DNSName)],
                       ip_addresses=[str(n.value) for n in names if isinstance(n, x509.IPAddress)],
                       other_names=[n for n in names if isinstance(n, x509.OtherName)])
        return to_der(csr)

    def _connect(self, certificate: x509.Certificate, signer: Signer) -> TlsConnection:
        return connect(self.origin, client_cert_chain=[certificate], signer=signer,
                       server_auth=ServerAuth.anchors(list(self.enrollment.ca_certs)),
                       timeout=self.timeout)

    def _reenroll(self, current_key: Signer, csr_der: bytes) -> tuple[TlsConnection, Response]:
        """POST /simplereenroll, waiting out a bounded number of 202s."""
        path = urlsplit(self.enrollment.est_url).path.rstrip("/") + "/simplereenroll"
        body = base64.encodebytes(csr_der)  # RFC 7030 4.2.1 and RFC 8951: base64
        headers = {"Content-Type": PKCS10_MEDIA_TYPE, "Accept": PKCS7_MEDIA_TYPE}
        for attempt in range(MAX_ACCEPTED_RETRIES + 1):
            conn = self._connect(self.enrollment.certificate, current_key)
            try:
                response = HttpClient(conn, timeout=self.timeout).request("POST", path, headers, body)
            except TransportError:
                conn.close()
                raise
            if response.status != 202 or attempt == MAX_ACCEPTED_RETRIES:
                return conn, response
            conn.close()  # nobody keeps a TLS session open across a wait
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if self.cancel.wait(min(wait if wait is not None else 1.0, ACCEPTED_WAIT_CAP_S)):
                raise TransportError("renewal cancelled while the certificate was not ready")
        raise AssertionError("unreachable")

    def _check(self, body: bytes, signer: Signer) -> x509.Certificate:
        current = self.enrollment.certificate
        try:
            names = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = []
        cert = check_issued_certificate(body, self.enrollment.ca_certs, signer, self.enrollment.serial,
                                        names, self.now())
        if cert.subject != current.subject:
            raise CertificateError(f"the renewed certificate names {cert.subject.rfc4514_string()}, "
                                   f"not {current.subject.rfc4514_string()}")
        return cert

    def _fail(self, reason: str, conn: TlsConnection) -> RenewalResult:
        """Refused or unusable: tell the EST server why over the current connection."""
        self.result.reason = reason
        self.result.enroll_status = self._report(conn, False, reason)
        return self.result

    def _report_over(self, certificate: x509.Certificate, signer: Signer, ok: bool,
                     reason: str | None) -> str:
        """enrollstatus over a new connection authenticated by `certificate`."""
        try:
            conn = self._connect(certificate, signer)
        except TransportError as exc:
            return f"not delivered ({exc})"
        try:
            return self._report(conn, ok, reason)
        finally:
            conn.close()

    def _report(self, conn: TlsConnection, ok: bool, reason: str | None) -> str:
        try:
            response = HttpClient(conn, timeout=self.timeout).request(
                "POST", f"{BRSKI_PATH}/enrollstatus", {"Content-Type": JSON_MEDIA_TYPE},
                status_report_body(ok, reason))
        except TransportError as exc:
            return f"not delivered ({exc})"
        return f"answered {_status_text(response)}"

    def _discard(self, pending: PendingKey) -> list[str]:
        try:
            return self.keys.discard(pending)
        except PledgeforgeError:
            return []  # the next renewal or recover() deletes it


def _status_text(response: Response) -> str:
    text = f"{response.status} {response.reason}".strip()
    if response.body and (response.content_type or "").startswith("text/"):
        detail = " ".join(response.body[:200].decode("utf-8", "replace").split())
        if detail:
            text += f" ({detail})"
    return text


__all__ = ["Enrollment", "RenewalResult", "RenewalError", "renew", "MAX_ACCEPTED_RETRIES",
           "ACCEPTED_WAIT_CAP_S"]
