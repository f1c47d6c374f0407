"""The MASA (RFC 8995 5.5-5.8): vouchers for registrars that have a right to the device.

POST /.well-known/brski/requestvoucher takes a registrar voucher-request
(application/voucher-cms+json) from an owner registrar or from a trusted
cloud registrar. In order, each failure with its status:

1. Content-Type (415) and Accept (406);
2. the registrar's CMS: well-formed (400), signature (403);
3. its JSON: a voucher-request (400) carrying prior-signed-voucher-request (400);
4. the pledge's own request inside: signed by an IDevID of a configured
   manufacturer (403 otherwise), its serial-number equal to the IDevID's
   serialNumber (400), and the registrar's serial-number and nonce equal to it (400);
5. the device is in the ownership table (404);
6. the registrar's right (403): its certificate carries id-kp-cmcRA (5.5.4)
   and chains to the owner's domain CA, or to the anchor of a configured cloud
   registrar that may act for this owner.

Before any of that, the source address must have a token in its rate-limit
bucket (429 + Retry-After otherwise). After step 3, with time checks on, the
registrar's created-on must lie at most max_request_age_s in the past and
max_request_future_s in the future (400): a registrar signs its request just
before sending it and retries within seconds, so what is older is a replay or
comes from a registrar whose clock is wrong; the allowance is for clock skew.

A repeated request is answered with the voucher already issued for it, byte
for byte, with no new signature and no new audit record. A request repeats
an earlier one when the same requester (registrar, or cloud registrar for an
owner) asks for the same serial number and pinned domain with the same
nonce. A nonceless request (RFC 8995 5.5: an offline or pre-provisioned
voucher, with an expires-on) has no nonce to match: its voucher is good for
any attempt of the pledge until it expires, so it repeats an earlier
nonceless one to the same requester for the same device while that voucher
still has more than half of its lifetime left (the registrar never gets one
about to expire). Only a voucher that is new takes a token from the
registrar's rate-limit bucket (429 + Retry-After when empty).

The voucher: assertion "logged" (this MASA does not establish proximity),
the pledge's nonce (or, for a nonceless request, an expires-on), serial-number,
created-on, pinned-domain-cert = the owner's domain CA, and est-domain /
additional-configuration-url when the ownership record has them (brski-cloud's
est-domain flow). It is signed in the HSM and logged; the audit log
(POST /.well-known/brski/requestauditlog, 5.8.1) is built from that log, for
requesters with a right to the device (404 for others, as 5.8 says).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ObjectIdentifier

from pledgeforge.hsm.chain import build_chain, load_certificate_file, load_certificate_files
from pledgeforge.hsm.cms import embedded_certificates, sign_cms_async, signer_certificate
from pledgeforge.hsm.errors import MalformedCmsError, UntrustedSignerError
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.voucher import Voucher, format_date
from pledgeforge.hsm.wellknown import JSON_MEDIA_TYPE, REQUEST_AUDIT_LOG, REQUEST_VOUCHER, VOUCHER_MEDIA_TYPE
from pledgeforge.hsm.x509 import to_der

from .brski import (PledgeRequest, check_serial, decode_cms_body, nonce_text,
                    parse_request_json, read_pledge_request, verified_signed_json)
from .config import MasaConfig
from .db import Device, MasaStore
from .rate_limit import Limit, TokenBuckets, charge
from .tls import server_context
from .web import (Refusal, loggable, new_app, read_body, require_acceptable,
                  require_content_type)

log = logging.getLogger("pledgeforge.registrar.masa")

ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")


def domain_id(cert: x509.Certificate) -> str:
    """RFC 8995 5.8.2: the pinned certificate's SubjectKeyIdentifier, else its SPKI
    fingerprint (SHA-256 of the DER SubjectPublicKeyInfo, RFC 7469 2.4); base64."""
    try:
        raw = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        raw = hashlib.sha256(spki).digest()
    return base64.b64encode(raw).decode("ascii")


def _has_cmc_ra(cert: x509.Certificate) -> bool:
    try:
        return ID_KP_CMC_RA in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False


class NoRight(Refusal):
    """403: the requester may not have vouchers for this device."""

    def __init__(self, message: str):
        super().__init__(403, message)


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; we store UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class CheckedRequest:
    pledge: PledgeRequest
    device: Device
    domain_ca: x509.Certificate
    requester: str
    #: the registrar's signing certificate (SHA-256): whose rate-limit bucket pays
    registrar_id: bytes


class _KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or awaits it: two identical
    requests in flight at once must not both sign (the second waits and finds the first's)."""

    def __init__(self):
        self._locks: dict[object, list] = {}  # key -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, key):
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


class Masa:
    def __init__(self, config: MasaConfig):
        self.config = config
        self.store = MasaStore(config.database_url)
        self.signer = open_signer(config.signer.key_uri)
        self.cert = load_certificate_file(str(config.signer.cert), "MASA signing certificate")[0]
        self.chain = load_certificate_files(config.signer.chain, "MASA signing chain")
        self.manufacturer_cas = load_certificate_files(config.manufacturer_cas, "manufacturer CA")
        self.clouds = [(c, load_certificate_files([c.anchor], "cloud registrar anchor"))
                       for c in config.cloud_registrars]
        limits = config.rate_limits
        self.per_address = TokenBuckets(Limit(limits.address_rate_per_s, limits.address_burst),
                                        limits.tracked_clients)
        self.per_registrar = TokenBuckets(Limit(limits.registrar_rate_per_s, limits.registrar_burst),
                                          limits.tracked_clients)
        self.issuing = _KeyedLocks()

    def ssl_context(self):
        # Registrars authenticate by signing their requests (RFC 8995 5.5.4),
        # so the MASA asks for no client certificate.
        return server_context(self.config.server.tls_cert, self.config.server.tls_key)

    async def close(self) -> None:
        self.store.engine.dispose()

    def app(self) -> web.Application:
        app = new_app("masa")
        app.router.add_post(REQUEST_VOUCHER, self.request_voucher)
        app.router.add_post(REQUEST_AUDIT_LOG, self.request_audit_log)
        return app

    # ------------------------------------------------------------------ handlers

    async def request_voucher(self, request: web.Request) -> web.Response:
        self.charge_address(request)
        require_content_type(request, VOUCHER_MEDIA_TYPE)
        require_acceptable(request, VOUCHER_MEDIA_TYPE)
        checked = self.check(await read_body(request))
        requester = loggable(checked.requester)
        async with self.issuing.hold(self.repeat_key(checked)):
            voucher = self.issued_before(checked)
            if voucher is not None:
                log.info("voucher for %s sent again to %s (repeated request)", checked.pledge.serial,
                         requester)
            else:
                charge(self.per_registrar, checked.registrar_id, requester, time.monotonic())
                voucher = await self.issue(checked)
                log.info("voucher for %s issued to %s", checked.pledge.serial, requester)
        return web.Response(body=voucher, content_type=VOUCHER_MEDIA_TYPE)

    async def request_audit_log(self, request: web.Request) -> web.Response:
        self.charge_address(request)
        require_content_type(request, VOUCHER_MEDIA_TYPE)
        require_acceptable(request, JSON_MEDIA_TYPE)
        try:
            checked = self.check(await read_body(request))
        except NoRight:
            raise Refusal(404, "no audit log for this device for this requester") from None
        events = [{
            "date": format_date(_utc(e["created_at"])),
            "domainID": e["domain_id"],
            "nonce": e["nonce"],
            "assertion": e["assertion"],
        } for e in self.store.audit_events(checked.pledge.serial)]
        return web.json_response({"version": 1, "events": events, "truncation": {}})

    # ------------------------------------------------------------------ checks

    def charge_address(self, request: web.Request) -> None:
        address = request.remote or "unknown"
        charge(self.per_address, address, f"address {loggable(address)}", time.monotonic())

    def check_created_on(self, created_on: dt.datetime | None) -> None:
        """The registrar's created-on within the accepted window (see the module docstring)."""
        if created_on is None:
            raise Refusal(400, "the registrar voucher-request has no created-on, so its age cannot "
                               "be checked; a registrar sets it when it signs (RFC 8995 5.5)")
        age = (dt.datetime.now(dt.timezone.utc) - created_on).total_seconds()
        if age > self.config.max_request_age_s:
            raise Refusal(400, f"the registrar voucher-request was created on {format_date(created_on)}, "
                               f"{age:.0f} s ago; this MASA accepts requests up to "
                               f"{self.config.max_request_age_s} s old: send a new one")
        if -age > self.config.max_request_future_s:
            raise Refusal(400, f"the registrar voucher-request's created-on {format_date(created_on)} "
                               f"lies {-age:.0f} s in the future (more than "
                               f"{self.config.max_request_future_s} s): check the registrar's clock")

    def check(self, body: bytes) -> CheckedRequest:
        der = decode_cms_body(body, "registrar voucher-request")
        try:
            signer_cert = signer_certificate(der)
            embedded = embedded_certificates(der)
        except MalformedCmsError as exc:
            raise Refusal(400, f"the registrar voucher-request is not a usable CMS SignedData: {exc}") from None
        # Whose request it is comes below; first that its signer made it.
        verified = verified_signed_json(der, [signer_cert], check_time=self.config.check_time,
                                        what="registrar voucher-request")
        registrar_request = parse_request_json(verified.content, "registrar voucher-request")
        if self.config.check_time:
            self.check_created_on(registrar_request.created_on)
        prior = registrar_request.prior_signed_voucher_request
        if prior is None:
            raise Refusal(400, "the registrar voucher-request lacks prior-signed-voucher-request; "
                               "this MASA issues vouchers only against the pledge's own request")
        pledge = read_pledge_request(prior, self.manufacturer_cas, check_time=self.config.check_time)
        check_serial(registrar_request.serial_number, pledge.serial, "registrar voucher-request")
        if registrar_request.nonce is not None and registrar_request.nonce != pledge.request.nonce:
            raise Refusal(400, "the registrar voucher-request's nonce differs from the pledge's (5.5.6)")
        device = self.store.device(pledge.serial)
        if device is None:
            raise Refusal(404, f"device {pledge.serial} is not known to this MASA")
        domain_ca = x509.load_pem_x509_certificate(device.domain_ca_pem.encode())
        requester = self.authorize(signer_cert, embedded, device, domain_ca)
        return CheckedRequest(pledge, device, domain_ca, requester,
                              hashlib.sha256(to_der(signer_cert)).digest())

    def authorize(self, signer: x509.Certificate, embedded: list[x509.Certificate], device: Device,
                  domain_ca: x509.Certificate) -> str:
        """Who is asking, if they may; Refusal(403) otherwise."""
        name = signer.subject.rfc4514_string()
        if not _has_cmc_ra(signer):
            raise NoRight(f"no right to {device.serial}: the signer {name} is not a registrar "
                               "(its certificate lacks id-kp-cmcRA, RFC 8995 5.5.4)")
        check_time = self.config.check_time
        try:
            build_chain(signer, [domain_ca], embedded, check_time=check_time)
            return f"registrar {name} of {device.owner}"
        except UntrustedSignerError:
            pass
        for cloud, anchors in self.clouds:
            if cloud.acts_for and device.owner not in cloud.acts_for:
                continue
            try:
                build_chain(signer, anchors, embedded, check_time=check_time)
                return f"cloud registrar {cloud.name} for {device.owner}"
            except UntrustedSignerError:
                continue
        raise NoRight(f"no right to {device.serial}: {name} is neither a registrar of its owner "
                           f"{device.owner} nor a cloud registrar acting for it")

    # ------------------------------------------------------------------ issuing

    def repeat_key(self, checked: CheckedRequest) -> tuple:
        return (checked.requester, checked.pledge.serial, domain_id(checked.domain_ca),
                nonce_text(checked.pledge.request))

    def issued_before(self, checked: CheckedRequest) -> bytes | None:
        """The voucher already issued for this request, if it is a repeat (module docstring)."""
        requester, serial, domain, nonce = self.repeat_key(checked)
        issued_after = None
        if nonce is None:
            half_life = dt.timedelta(seconds=self.config.nonceless_lifetime_s / 2)
            issued_after = dt.datetime.now(dt.timezone.utc) - half_life
        return self.store.issued_voucher(serial=serial, requester=requester, domain_id=domain,
                                         nonce=nonce, issued_after=issued_after)

    async def issue(self, checked: CheckedRequest) -> bytes:
        now = dt.datetime.now(dt.timezone.utc)
        nonce = checked.pledge.request.nonce
        device = checked.device
        voucher = Voucher(
            assertion="logged",
            serial_number=checked.pledge.serial,
            nonce=nonce,
            nonce_text=checked.pledge.request.nonce_text,   # the pledge's string, not re-encoded
            created_on=now,
            # RFC 8995 5.6: expires-on is for nonceless vouchers.
            expires_on=None if nonce is not None else now + dt.timedelta(
                seconds=self.config.nonceless_lifetime_s),
            pinned_domain_cert=to_der(checked.domain_ca),
            domain_cert_revocation_checks=False,
            est_domain=device.est_domain,
            additional_configuration=device.additional_configuration_url,
        )
        signed = await sign_cms_async(voucher.to_json(), self.signer, self.cert, self.chain,
                                      content_type="voucher")
        self.store.record_voucher(serial=checked.pledge.serial, owner=device.owner,
                                  domain_id=domain_id(checked.domain_ca),
                                  nonce=nonce_text(checked.pledge.request), assertion="logged",
                                  requester=checked.requester, voucher=signed)
        return signed
