"""The pledge driver: runs the sans-I/O state machine over real TLS and real keys.

Each action of `PledgeMachine` is performed here: TLS connections with the
IDevID key kept in its TPM or token, HTTP/1.1, voucher-requests signed inside
the key store, voucher verification, the pinned-domain-cert check, a new
LDevID key and CSR in the same key store, and the check of the issued
certificate. The same driver runs behind `pledgeforge pledge bootstrap` and the
emulated board's `bootstrap` shell command.

The LDevID key follows its lifecycle (ldevid_keys.py): it is generated in the
slot that is not current, deleted if the bootstrap fails, and made current by
`run(store=...)` once the caller has stored the certificate with its slot.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import build_chain
from pledgeforge.hsm.cms import sign_cms, verify_cms
from pledgeforge.hsm.errors import CertificateError, CmsError, VoucherError
from pledgeforge.hsm.est_wire import CsrAttributes, parse_certs_only
from pledgeforge.hsm.signer import Signer
from pledgeforge.hsm.voucher import Voucher, decode_binary
from pledgeforge.hsm.wellknown import VOUCHER_MEDIA_TYPE
from pledgeforge.hsm.x509 import make_csr, serial_number_of, to_der

from . import pledge_machine as pm
from .identity import PledgeIdentity
from .http_client import HttpClient
from .ldevid_keys import LdevidKeys, LdevidSlots, PendingKey, Slot
from .tls_client import (ServerAuth, ServerAuthError, TlsConnection, TlsTimeout, TransportError,
                         connect, validate_against_pin, verify_server_chain)


@dataclass
class BootstrapResult:
    """Everything a bootstrap produced; the caller decides what to persist."""

    state: str
    reason: str | None
    serial: str
    transitions: list[pm.Transition]
    voucher: bytes | None = None
    ldevid: x509.Certificate | None = None
    ldevid_key_uri: str | None = None
    #: the slot of the new LDevID key: what the caller's store records beside the certificate
    ldevid_slot: Slot | None = None
    ca_certs: list[x509.Certificate] = field(default_factory=list)
    registrar_url: str | None = None
    est_url: str | None = None
    redirects: tuple[str, ...] = ()
    additional_configuration_url: str | None = None
    additional_configuration: bytes | None = None
    additional_configuration_error: str | None = None

    @property
    def enrolled(self) -> bool:
        return self.state == pm.State.ENROLLED.value


class PledgeDriver:
    """Drive one bootstrap to Enrolled or Failed.

    `on_transition` is called with each state change as it happens (the board
    console prints them); `cancel` is an Event another thread may set to stop
    a bootstrap that is waiting or retrying. `ldevid_keys` holds the pledge's
    LDevID slots with the one its record names current (default: the slots of
    `identity.ldevid_key_uri`, none current).
    """

    def __init__(self, identity: PledgeIdentity, config: pm.PledgeConfig | None = None, *,
                 timeout: float = 10.0, on_transition: Callable[[pm.Transition], None] | None = None,
                 cancel: threading.Event | None = None, now: Callable[[], dt.datetime] | None = None,
                 ldevid_keys: LdevidKeys | None = None):
        self.identity = identity
        self.ldevid_keys = ldevid_keys or LdevidKeys(
            LdevidSlots.beside(identity.ldevid_key_uri, pin_env=identity.pin_env)
            if identity.ldevid_key_uri else
            LdevidSlots.next_to(identity.idevid_key_uri, pin_env=identity.pin_env))
        self.config = config or pm.PledgeConfig(cloud_registrar_url=identity.cloud_registrar_url)
        self.timeout = timeout
        self.on_transition = on_transition or (lambda t: None)
        self.cancel = cancel or threading.Event()
        self.now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self.machine = pm.PledgeMachine(self.config)
        self._signer: Signer | None = None
        self._conn: TlsConnection | None = None
        self._http: HttpClient | None = None
        self._voucher: bytes | None = None
        self._pin: bytes | None = None
        self._pending: PendingKey | None = None
        self._ldevid: x509.Certificate | None = None
        self._asked: CsrAttributes | None = None

    # ------------------------------------------------------------------ run

    def run(self, store: Callable[[BootstrapResult], None] | None = None) -> BootstrapResult:
        """Bootstrap to Enrolled or Failed.

        `store(result)` persists what the caller keeps of an enrollment (at least
        `result.ldevid` and `result.ldevid_slot`, in one atomic write); once it
        returns, the new key is current and the previous one deleted. Without
        `store`, the new key stays pending: the next enrollment or
        `LdevidKeys.recover()` deletes it. A failed bootstrap deletes its key.
        """
        shown = 0
        enrolled = False
        try:
            self._signer = keystore.open_signer(self.identity.idevid_key_uri, pin_env=self.identity.pin_env)
            action = self.machine.start()
            while True:
                for transition in self.machine.transitions[shown:]:
                    self.on_transition(transition)
                shown = len(self.machine.transitions)
                if action.is_terminal:
                    break
                if self.cancel.is_set():
                    action = self.machine.handle(pm.Cancel("bootstrap cancelled"))
                    continue
                action = self.machine.handle(self._perform(action))
            result = self._result(action)
            enrolled = result.enrolled
            if enrolled and store is not None:
                self.ldevid_keys.promote(self._pending, lambda pending: store(result))
            return result
        finally:
            self._close()
            if not enrolled and self._pending is not None:
                try:
                    self.ldevid_keys.discard(self._pending)
                except PledgeforgeError:
                    pass  # the outcome stands; the next enrollment or recover() deletes the key

    def _result(self, action) -> BootstrapResult:
        result = BootstrapResult(state=self.machine.state.value, reason=getattr(action, "reason", None),
                                 serial=self.identity.serial, transitions=list(self.machine.transitions),
                                 voucher=self._voucher)
        if isinstance(action, pm.Enrolled):
            result.ldevid = x509.load_der_x509_certificate(action.certificate_der)
            result.ldevid_key_uri = self._pending.uri_text
            result.ldevid_slot = self._pending.slot
            result.ca_certs = parse_certs_only(action.ca_certs, "CA certificates")
            result.registrar_url, result.est_url = action.registrar_url, action.est_url
            result.redirects = action.redirects
            result.additional_configuration_url = action.additional_configuration_url
            if action.additional_configuration_url:
                self._fetch_additional_configuration(result)
        return result

    # ------------------------------------------------------------------ actions

    def _perform(self, action: pm.Action) -> pm.Event:
        perform = self.PERFORMERS.get(type(action))
        if perform is None:
            raise TypeError(f"the pledge driver cannot perform {type(action).__name__}")
        return perform(self, action)

    def _connect(self, action: pm.Connect) -> pm.Event:
        self._close()
        host = urlsplit(action.url).hostname or ""
        try:
            # Always complete the handshake provisionally and judge the server
            # here: the machine wants to know "authenticated or not", not an error.
            conn = connect(action.url, client_cert_chain=[self.identity.idevid, *self.identity.idevid_chain],
                           signer=self._signer, server_auth=ServerAuth.provisional(), timeout=self.timeout)
        except TlsTimeout:
            return pm.Timeout()
        except TransportError as exc:
            return pm.ConnectFailed(str(exc))
        self._conn = conn
        self._http = HttpClient(conn, timeout=self.timeout)
        return pm.ConnectOk(authenticated=self._authenticated(conn, action.trust, host),
                            server_cert_der=conn.server_chain[0])

    def _authenticated(self, conn: TlsConnection, trust, host: str) -> bool:
        try:
            if isinstance(trust, pm.TrustPinnedDomainCert):
                validate_against_pin(conn.server_chain, trust.pinned_domain_cert_der, trust.server_name or host)
            else:
                verify_server_chain(conn.server_certificates, self.identity.builtin_anchors, host)
        except (ServerAuthError, CertificateError, ValueError):
            return False
        return True

    def _build_voucher_request(self, action: pm.BuildVoucherRequest) -> pm.Event:
        try:
            request = Voucher(
                is_request=True, assertion="proximity", serial_number=self.identity.serial,
                created_on=self.now(), nonce=decode_binary(action.nonce, "nonce"),
                idevid_issuer=_authority_key_id(self.identity.idevid),
                proximity_registrar_cert=action.registrar_cert_der or None)
            body = sign_cms(request.to_json(), self._signer, self.identity.idevid, self.identity.idevid_chain)
        except PledgeforgeError as exc:
            return pm.KeyOperationFailed(f"signing the voucher-request failed: {exc}")
        return pm.VoucherRequestBuilt(body)

    def _send_request(self, action: pm.SendRequest) -> pm.Event:
        if self._http is None:
            return pm.ConnectFailed("no connection")
        parts = urlsplit(action.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {}
        if action.content_type:
            headers["Content-Type"] = action.content_type
        if action.accept:
            headers["Accept"] = action.accept
        try:
            response = self._http.request(action.method, path or "/", headers, action.body)
        except TlsTimeout:
            return pm.Timeout()
        except TransportError as exc:
            return pm.ConnectFailed(str(exc))
        return pm.Response(status=response.status, headers=tuple(response.headers.items()),
                           body=response.body, received_at=time.time())

    def _verify_voucher(self, action: pm.VerifyVoucher) -> pm.Event:
        media = (action.content_type or "").split(";")[0].strip().lower()
        if media != VOUCHER_MEDIA_TYPE:
            return pm.VoucherRejected(f"voucher media type {action.content_type!r}, expected {VOUCHER_MEDIA_TYPE}")
        try:
            verified = verify_cms(action.voucher, self.identity.masa_anchors, at_time=self.now())
            voucher = Voucher.from_json(verified.content, expect_request=False)
            if voucher.serial_number != self.identity.serial:
                raise VoucherError(f"voucher is for serial {voucher.serial_number!r}, "
                                   f"this pledge is {self.identity.serial!r}")
            if voucher.nonce is None or voucher.nonce != decode_binary(action.expected_nonce, "nonce"):
                raise VoucherError("voucher nonce does not match the voucher-request's")
            voucher.check_time(self.now())
            voucher.require("pinned_domain_cert")
            x509.load_der_x509_certificate(voucher.pinned_domain_cert)
        except (CmsError, VoucherError, CertificateError, ValueError) as exc:
            return pm.VoucherRejected(str(exc))
        self._voucher = action.voucher
        self._pin = voucher.pinned_domain_cert
        return pm.VoucherVerified(voucher.pinned_domain_cert, voucher.est_domain,
                                  voucher.additional_configuration)

    def _check_server_against_pin(self, action: pm.CheckServerAgainstPin) -> pm.Event:
        chain = self._conn.server_chain if self._conn and self._conn.server_chain[0] == action.server_cert_der \
            else [action.server_cert_der]
        try:
            validate_against_pin(chain, action.pinned_domain_cert_der, action.server_name)
        except (ServerAuthError, ValueError) as exc:
            return pm.ServerPinMismatch(str(exc))
        return pm.ServerMatchesPin()

    def _generate_csr(self, action: pm.GenerateCsr) -> pm.Event:
        try:
            asked = CsrAttributes.decode(action.csr_attributes) if action.csr_attributes else CsrAttributes()
            if self._pending is None:
                self._pending = self.ldevid_keys.begin(self._signer.algorithm)
            serial = self.identity.serial
            subject = [f"CN={serial}" if "2.5.4.3" in asked.subject_oids or not asked.subject_oids else None,
                       f"serialNumber={serial}"]
            csr = make_csr(self._pending.signer, ",".join(s for s in subject if s),
                           other_names=[n for n in asked.subject_alt_names if isinstance(n, x509.OtherName)],
                           dns_names=[n.value for n in asked.subject_alt_names if isinstance(n, x509.DNSName)],
                           ip_addresses=[str(n.value) for n in asked.subject_alt_names
                                         if isinstance(n, x509.IPAddress)],
                           hash_name=asked.hash_name)
        except PledgeforgeError as exc:
            return pm.KeyOperationFailed(f"LDevID key or CSR: {exc}")
        self._asked = asked
        return pm.CsrReady(to_der(csr))

    def _check_certificate(self, action: pm.CheckCertificate) -> pm.Event:
        try:
            cert = check_issued_certificate(
                action.enroll_response, parse_certs_only(action.ca_certs, "CA certificates"),
                self._pending.signer, self.identity.serial,
                self._asked.subject_alt_names if self._asked else (), self.now())
        except (CertificateError, PledgeforgeError) as exc:
            return pm.CertificateRejected(str(exc))
        self._ldevid = cert
        return pm.CertificateAccepted(to_der(cert))

    def _sleep(self, action: pm.Sleep) -> pm.Event:
        self._close()  # nobody keeps a TLS session open across a wait
        self.cancel.wait(action.seconds)
        return pm.TimerFired()

    #: How each action of the machine is performed; the terminal actions end the run instead.
    PERFORMERS: dict[type[pm.Action], Callable[["PledgeDriver", pm.Action], pm.Event]] = {
        pm.Connect: _connect,
        pm.BuildVoucherRequest: _build_voucher_request,
        pm.SendRequest: _send_request,
        pm.VerifyVoucher: _verify_voucher,
        pm.CheckServerAgainstPin: _check_server_against_pin,
        pm.GenerateCsr: _generate_csr,
        pm.CheckCertificate: _check_certificate,
        pm.Sleep: _sleep,
    }

    # ------------------------------------------------------------------ after enrolment

    def _fetch_additional_configuration(self, result: BootstrapResult) -> None:
        """GET additional-configuration(-url), authenticating the server by the pin."""
        url = result.additional_configuration_url
        host = urlsplit(url).hostname or ""
        try:
            conn = connect(url, client_cert_chain=[self.identity.idevid, *self.identity.idevid_chain],
                           signer=self._signer, server_auth=ServerAuth.provisional(), timeout=self.timeout)
            try:
                if not (self._pin_ok(conn, host) or self._anchors_ok(conn, host)):
                    raise ServerAuthError(f"{host} matches neither the pin nor the built-in anchors",
                                          "untrusted")
                parts = urlsplit(url)
                response = HttpClient(conn, timeout=self.timeout).request(
                    "GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            finally:
                conn.close()
            if response.status != 200:
                raise TransportError(f"GET {url} answered {response.status}")
            result.additional_configuration = response.body
        except PledgeforgeError as exc:
            result.additional_configuration_error = str(exc)

    def _pin_ok(self, conn: TlsConnection, host: str) -> bool:
        if not self._pin:
            return False
        try:
            validate_against_pin(conn.server_chain, self._pin, host)
            return True
        except (ServerAuthError, ValueError):
            return False

    def _anchors_ok(self, conn: TlsConnection, host: str) -> bool:
        try:
            verify_server_chain(conn.server_certificates, self.identity.builtin_anchors, host)
            return True
        except (ServerAuthError, ValueError):
            return False

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._http = None


# ---------------------------------------------------------------------- helpers

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    """RFC 8366 idevid-issuer: the keyIdentifier of the IDevID's AKI."""
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def check_issued_certificate(enroll_response: bytes, ca_certs: Sequence[x509.Certificate], key: Signer,
                             serial: str, names: Sequence[x509.GeneralName],
                             at_time: dt.datetime) -> x509.Certificate:
    """The certificate an EST server issued (/simpleenroll or /simplereenroll response, base64
    certs-only) for `key`: it must carry the pledge's serialNumber and `names`, and chain to
    `ca_certs` (what /cacerts answered). Raises CertificateError saying what is wrong."""
    issued = parse_certs_only(enroll_response, "enrollment response")
    ours = key.public_key_der()
    mine = [c for c in issued if c.public_key().public_bytes(*_SPKI) == ours]
    if not mine:
        raise CertificateError("the issued certificate is not for the LDevID key")
    cert = mine[0]
    if serial_number_of(cert) != serial:
        raise CertificateError("the issued certificate does not carry this pledge's serialNumber")
    if names:
        try:
            got = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            got = set()
        missing = [n for n in names if n not in got]
        if missing:
            raise CertificateError(f"the issued certificate lacks the requested names {missing}")
    build_chain(cert, list(ca_certs), issued, at_time=at_time)
    return cert
