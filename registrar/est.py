"""The owner's EST server (RFC 7030, as BRSKI 5.9 uses it).

Wire formats (RFC 7030 4 with RFC 8951; encoded by hsm/est_wire.py, shared with the pledge): every body is base64 (line breaks
allowed) of DER; no Content-Transfer-Encoding header is needed or looked at.

- /cacerts: a certs-only CMS SignedData ("degenerate PKCS#7": no content,
  no signers) with the CA certificates, application/pkcs7-mime.
- /csrattrs: CsrAttrs ::= SEQUENCE OF AttrOrOID (RFC 7030 4.5.2, values as
  RFC 9908 clarifies), application/csrattrs, built from configuration:
    * one OBJECT IDENTIFIER per subject attribute type the CSR must carry
      (2.5.4.3 commonName, 2.5.4.5 serialNumber: the pledge puts its own
      serial number there; its value is then checked against the IDevID);
    * one extensionRequest attribute (1.2.840.113549.1.9.14) holding an
      Extensions with a subjectAltName that lists the dNSName values the
      CSR must request ("{serial}" in the configuration becomes the serial;
      a name that comes out invalid is refused, never built);
    * the OBJECT IDENTIFIER of the signature algorithm the pledge should use
      (a hint, as in RFC 7030's example: it is not enforced, since an RSA
      key cannot follow an ECDSA hint).
- /simpleenroll, /simplereenroll: a base64 PKCS#10 (application/pkcs10) in,
  a certs-only SignedData with the new certificate out
  (application/pkcs7-mime; smime-type=certs-only).

Who may enroll: a pledge that authenticated with its IDevID (TLS client
certificate chaining to a configured manufacturer CA) and either obtained its
voucher through this registrar (redirect flow) or is in the owner's pledge
list for the est-domain flow (its voucher came from the cloud registrar).
Every CSR must prove possession of its key and carry what /csrattrs asked
for; the certificate carries exactly that identity, chains to the owner CA,
and is issued with the CA key in the HSM.

Who may renew (/simplereenroll, RFC 7030 4.2.2): a device whose TLS client
certificate is its current LDevID from this owner CA: issued here, not
revoked, and the latest one the pledge's enrollstatus confirmed (an older or
never confirmed one has been superseded or never been put to use). The CSR
keeps that certificate's subject and subjectAltName. A revoked LDevID is
refused everywhere.

Every LDevID issued is recorded (OwnerStore.record_ldevid) with the
credential that asked for it. With `crl_url` configured, it carries that URL
as its CRL distribution point; the owner registrar serves the CRL there
(crl.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pledgeforge.hsm.chain import build_chain, load_certificate_file, load_certificate_files
from pledgeforge.hsm.errors import CertificateError, UntrustedSignerError
from pledgeforge.hsm.est_wire import CsrAttributes, certs_only, decode_body, encode_body
from pledgeforge.hsm.identity_names import IdentityNameError, check_dns_name
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.wellknown import (CERTS_ONLY_MEDIA_TYPE, CSRATTRS_MEDIA_TYPE, EST_PATH, PKCS7_MEDIA_TYPE,
                                       PKCS10_MEDIA_TYPE)
from pledgeforge.hsm.x509 import check_csr, csr_dns_names, issue_from_csr_async, load_csr, parse_dn, to_pem

from .brski import require_serial
from .config import CsrAttrsSettings, EstSettings
from .db import OwnerStore
from .web import Refusal, media_type, peer_certificate, read_body


SIGNATURE_ALGORITHMS = {
    "ecdsa-with-sha256": "1.2.840.10045.4.3.2",
    "ecdsa-with-sha384": "1.2.840.10045.4.3.3",
    "ecdsa-with-sha512": "1.2.840.10045.4.3.4",
    "sha256withrsaencryption": "1.2.840.113549.1.1.11",
    "sha384withrsaencryption": "1.2.840.113549.1.1.12",
    "sha512withrsaencryption": "1.2.840.113549.1.1.13",
}


# --------------------------------------------------------------------------- wire formats

def decode_request_body(body: bytes, what: str) -> bytes:
    """DER from a request body (base64, RFC 8951); what is not, is the client's mistake (400)."""
    try:
        der = decode_body(body, what)
    except CertificateError as exc:
        raise Refusal(400, f"{exc} (RFC 7030 4.2.1, RFC 8951)") from None
    if not der:
        raise Refusal(400, f"the {what} is empty")
    return der


def subject_oid(keyword: str) -> x509.ObjectIdentifier:
    """The OID of a DN keyword such as CN or serialNumber."""
    try:
        return next(iter(parse_dn(f"{keyword}=x"))).oid
    except CertificateError as exc:
        raise CertificateError(f"csrattrs subject: {exc}") from None


def signature_algorithm_oid(name: str) -> str:
    if name[0].isdigit():
        return name
    try:
        return SIGNATURE_ALGORITHMS[name.lower()]
    except KeyError:
        raise CertificateError(f"unknown signature algorithm {name!r} "
                               f"(known: {', '.join(SIGNATURE_ALGORITHMS)}, or a dotted OID)") from None


def requested_dns_names(policy: CsrAttrsSettings, serial: str) -> list[str]:
    """The dNSName values a pledge must request: the templates with its serial number.

    The serial number was checked (brski.require_serial) and the templates were checked
    with a short one (config.py); a long serial can still overflow a label or the name,
    and then this pledge gets no LDevID rather than one with an invalid name (403)."""
    names = []
    for template in policy.san_dns:
        name = template.replace("{serial}", serial).lower()
        try:
            names.append(check_dns_name(name, "dNSName"))
        except IdentityNameError as exc:
            raise Refusal(403, f"serial number {serial} does not fit this registrar's dNSName "
                               f"template {template!r}: {exc}") from None
    return names


def csr_attributes_for(policy: CsrAttrsSettings, serial: str) -> CsrAttributes:
    """What /csrattrs asks of one pledge (its serial fills "{serial}")."""
    return CsrAttributes(
        subject_oids=[subject_oid(k).dotted_string for k in policy.subject],
        subject_alt_names=[x509.DNSName(n) for n in requested_dns_names(policy, serial)],
        signature_oid=signature_algorithm_oid(policy.signature_algorithm) if policy.signature_algorithm else None)


def check_csr_identity(csr: x509.CertificateSigningRequest, policy: CsrAttrsSettings,
                       serial: str) -> list[str]:
    """Raise Refusal(400) unless the CSR carries what csrattrs asked; return the DNS names to certify."""
    for keyword in policy.subject:
        values = csr.subject.get_attributes_for_oid(subject_oid(keyword))
        if not values:
            raise Refusal(400, f"the CSR subject lacks {keyword}, which /csrattrs asks for")
    for attr in csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        if attr.value != serial:
            raise Refusal(400, f"the CSR subject serialNumber {attr.value!r} is not the pledge's "
                               f"serial number {serial!r}")
    wanted = requested_dns_names(policy, serial)
    have = csr_dns_names(csr)
    missing = [n for n in wanted if n not in have]
    if missing:
        raise Refusal(400, f"the CSR does not request the subjectAltName dNSName(s) "
                           f"{', '.join(missing)} that /csrattrs asks for")
    if policy.san_dns:
        return wanted
    for name in have:  # no template: the CSR's own names, if they are host names
        try:
            check_dns_name(name, "the CSR's dNSName")
        except IdentityNameError as exc:
            raise Refusal(400, str(exc)) from None
    return have


# --------------------------------------------------------------------------- the server

@dataclass(frozen=True)
class Client:
    """Who is on the other end of the TLS connection."""

    serial: str
    certificate: x509.Certificate
    kind: str  # "idevid" or "ldevid"


class EstServer:
    def __init__(self, settings: EstSettings, store: OwnerStore,
                 manufacturer_cas: Sequence[x509.Certificate], check_time: bool = True):
        self.settings = settings
        self.store = store
        self.manufacturer_cas = list(manufacturer_cas)
        self.check_time = check_time
        self.ca_signer = open_signer(settings.ca_key_uri)
        self.ca_cert = load_certificate_file(str(settings.ca_cert), "EST CA certificate")[0]
        self.ca_chain = load_certificate_files(settings.ca_chain, "EST CA chain")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{EST_PATH}/cacerts", self.cacerts)
        app.router.add_get(f"{EST_PATH}/csrattrs", self.csrattrs)
        app.router.add_post(f"{EST_PATH}/simpleenroll", self.simpleenroll)
        app.router.add_post(f"{EST_PATH}/simplereenroll", self.simplereenroll)

    # ------------------------------------------------------------------ identity

    def identify(self, request: web.Request) -> Client:
        """The pledge by its IDevID, or an enrolled device by the LDevID issued here."""
        cert = peer_certificate(request)
        if cert is None:
            raise Refusal(401, "present a client certificate (the IDevID, or the LDevID issued here)")
        try:
            build_chain(cert, self.manufacturer_cas, check_time=self.check_time)
            return Client(require_serial(cert), cert, "idevid")
        except UntrustedSignerError:
            pass
        issued = self.store.ldevid(cert.serial_number)
        if issued is None or issued.certificate_pem != to_pem(cert).decode():
            raise Refusal(403, f"the client certificate {cert.subject.rfc4514_string()} is neither an "
                               "IDevID of an accepted manufacturer nor a certificate issued here")
        if issued.revoked_at is not None:
            raise Refusal(403, f"LDevID {issued.certificate_serial} of pledge {issued.serial} was revoked "
                               f"({issued.revocation_reason}); the pledge must bootstrap again with its IDevID")
        return Client(issued.serial, cert, "ldevid")

    def may_renew(self, client: Client) -> None:
        """Only the pledge's current LDevID renews (RFC 7030 4.2.2: the certificate being renewed)."""
        if client.kind != "ldevid":
            raise Refusal(403, "renew with the certificate issued here as TLS client certificate")
        presented = f"{client.certificate.serial_number:x}"
        current = self.store.current_ldevid(client.serial)
        if current is None or current.certificate_serial != presented:
            now = (f"its current LDevID is {current.certificate_serial}" if current else
                   "no enrollstatus confirmed any of its LDevIDs")
            raise Refusal(403, f"LDevID {presented} is not pledge {client.serial}'s current one ({now}); "
                               "renew with the current LDevID, or bootstrap again")

    def may_enroll(self, client: Client) -> None:
        """Redirect flow: a voucher was obtained here; est-domain flow: the pledge list says so."""
        if client.kind != "idevid":
            raise Refusal(403, "enroll with the IDevID; an LDevID renews with /simplereenroll")
        flow = self.store.pledge_flow(client.serial)
        if flow == "est-domain" or self.store.has_voucher(client.serial):
            return
        if flow is None:
            raise Refusal(403, f"pledge {client.serial} is not in this owner's pledge list")
        raise Refusal(403, f"no voucher was issued for pledge {client.serial} through this registrar; "
                           "request one at /.well-known/brski/requestvoucher first")

    # ------------------------------------------------------------------ handlers

    async def cacerts(self, request: web.Request) -> web.Response:
        body = encode_body(certs_only([self.ca_cert, *self.ca_chain]))
        return web.Response(body=body, headers={"Content-Type": PKCS7_MEDIA_TYPE})

    async def csrattrs(self, request: web.Request) -> web.Response:
        client = self.identify(request)
        der = csr_attributes_for(self.settings.csrattrs, client.serial).encode()
        return web.Response(body=encode_body(der), headers={"Content-Type": CSRATTRS_MEDIA_TYPE})

    async def _read_csr(self, request: web.Request) -> x509.CertificateSigningRequest:
        got = media_type(request.headers.get("Content-Type"))
        if got != PKCS10_MEDIA_TYPE:
            raise Refusal(415, f"Content-Type must be {PKCS10_MEDIA_TYPE}, not {got or 'missing'}")
        der = decode_request_body(await read_body(request), "PKCS#10 request")
        try:
            csr = load_csr(der)
            check_csr(csr)
        except CertificateError as exc:
            raise Refusal(400, str(exc)) from None
        return csr

    async def _issue(self, client: Client, kind: str, csr: x509.CertificateSigningRequest,
                     dns_names: list[str]) -> x509.Certificate:
        """Sign in the HSM (or have the signing service build it), then record the LDevID and
        who asked for it."""
        cert = await issue_from_csr_async(
            self.ca_signer, self.ca_cert, csr, days=self.settings.certificate_days,
            extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH], dns_names=dns_names,
            crl_urls=[self.settings.crl_url] if self.settings.crl_url else [])
        asked = client.certificate
        self.store.record_ldevid(
            client.serial, kind, to_pem(cert).decode(), cert.serial_number, cert.subject.rfc4514_string(),
            cert.not_valid_after_utc,
            f"{client.kind} {asked.subject.rfc4514_string()} (certificate {asked.serial_number:x})")
        return cert

    def _answer(self, cert: x509.Certificate) -> web.Response:
        return web.Response(body=encode_body(certs_only([cert])),
                            headers={"Content-Type": CERTS_ONLY_MEDIA_TYPE})

    async def simpleenroll(self, request: web.Request) -> web.Response:
        client = self.identify(request)
        self.may_enroll(client)
        csr = await self._read_csr(request)
        dns_names = check_csr_identity(csr, self.settings.csrattrs, client.serial)
        return self._answer(await self._issue(client, "enroll", csr, dns_names))

    async def simplereenroll(self, request: web.Request) -> web.Response:
        client = self.identify(request)
        self.may_renew(client)
        csr = await self._read_csr(request)
        # RFC 7030 4.2.2: the subject and subjectAltName stay those of the current certificate.
        if csr.subject != client.certificate.subject:
            raise Refusal(400, "a re-enrollment CSR must carry the current certificate's subject "
                               f"{client.certificate.subject.rfc4514_string()}")
        if _subject_alt_names(csr) != _subject_alt_names(client.certificate):
            raise Refusal(400, "a re-enrollment CSR must request the current certificate's "
                               "subjectAltName, no more and no less")
        current = [n.lower() for n in _dns_names(client.certificate)]
        return self._answer(await self._issue(client, "reenroll", csr, current))


def _subject_alt_names(item: x509.Certificate | x509.CertificateSigningRequest) -> set:
    """Every subjectAltName entry, DNS names compared without case."""
    try:
        names = item.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {x509.DNSName(n.value.lower()) if isinstance(n, x509.DNSName) else n for n in names}


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)
