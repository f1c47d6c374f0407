"""BRSKI steps the registrars and the MASA share: reading a pledge's voucher-request,
building a registrar voucher-request, reading status telemetry.

Status codes follow RFC 8995 5.3 and 5.6 and draft-ietf-anima-brski-cloud-20
("Cloud Registrar Processes Voucher Request Message"):

- 400: the request is malformed: not CMS, not a voucher-request, or its
  serial-number differs from the serialNumber of the certificate that signed
  it. brski-cloud has the registrar check "the request for correctness" before
  ownership and answer 400 for a malformed request; a request whose claimed
  serial contradicts its own authenticated IDevID is exactly that, so it is
  400 for the registrars and for the MASA alike.
- 401: the pledge pinned another registrar's certificate (RFC 8995 5.2:
  proximity-registrar-cert differs: an on-path attacker), or presented no
  client certificate where one is needed.
- 403: the request is not signed correctly or its signer is not trusted
  (RFC 8995 5.6), or the requester has no right to the device.
- 404: the device is unknown. 406: the Accept header excludes
  application/voucher-cms+json. 415: the body is not application/voucher-cms+json.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from cryptography import x509

from pledgeforge.hsm.cms import load_cms_input, sign_cms_async, verify_cms
from pledgeforge.hsm.errors import (BadSignatureError, CmsError, DigestMismatchError,
                                    MalformedCmsError, UnexpectedContentTypeError,
                                    UntrustedSignerError, VoucherError)
from pledgeforge.hsm.identity_names import IdentityNameError, check_serial_number
from pledgeforge.hsm.signer import Signer
from pledgeforge.hsm.voucher import Voucher, parse_json
from pledgeforge.hsm.x509 import serial_number_of, to_der

from .db import ParsedReport
from .web import Refusal


def verified_signed_json(der: bytes, anchors: Sequence[x509.Certificate],
                         extra: Iterable[x509.Certificate] = (), *, check_time: bool = True,
                         what: str = "voucher-request"):
    """verify_cms with each failure mapped to its status: 400 malformed, 403 bad or untrusted signature."""
    try:
        return verify_cms(der, anchors, extra, check_time=check_time)
    except (MalformedCmsError, UnexpectedContentTypeError) as exc:
        raise Refusal(400, f"the {what} is not a usable CMS SignedData: {exc}") from None
    except (DigestMismatchError, BadSignatureError) as exc:
        raise Refusal(403, f"the {what} is not signed correctly: {exc}") from None
    except UntrustedSignerError as exc:
        raise Refusal(403, f"the {what}'s signer is not trusted: {exc}") from None
    except CmsError as exc:
        raise Refusal(400, f"the {what} cannot be verified: {exc}") from None


def decode_cms_body(body: bytes, what: str = "voucher-request") -> bytes:
    """The DER of a CMS body (binary as RFC 8366 sends it; base64 and PEM are tolerated)."""
    try:
        return load_cms_input(body)
    except MalformedCmsError as exc:
        raise Refusal(400, f"the {what} is not CMS: {exc}") from None


def parse_request_json(content: bytes, what: str = "voucher-request") -> Voucher:
    try:
        return Voucher.from_json(content, expect_request=True)
    except VoucherError as exc:
        raise Refusal(400, f"the {what} JSON is malformed: {exc}") from None


@dataclass(frozen=True)
class PledgeRequest:
    """A pledge voucher-request whose signature and serial number have been checked."""

    cms: bytes
    request: Voucher
    idevid: x509.Certificate
    serial: str


def require_serial(idevid: x509.Certificate) -> str:
    """The device serial number of an IDevID: 403 without one, 400 when it is no valid
    serial number (another manufacturer's CA may certify anything; the serial becomes
    file names, database keys and the LDevID's dNSName here)."""
    serial = serial_number_of(idevid)
    if not serial:
        raise Refusal(403, f"the IDevID {idevid.subject.rfc4514_string()} carries no serialNumber, "
                           "so it names no device")
    try:
        return check_serial_number(serial, "the IDevID's serialNumber")
    except IdentityNameError as exc:
        raise Refusal(400, str(exc)) from None


def check_serial(claimed: str | None, serial: str, what: str) -> None:
    if claimed != serial:
        raise Refusal(400, f"the {what} claims serial-number {claimed!r}, but its IDevID "
                           f"certificate says {serial!r}")


def read_pledge_request(der: bytes, manufacturer_cas: Sequence[x509.Certificate], *,
                        tls_idevid: x509.Certificate | None = None,
                        check_time: bool = True) -> PledgeRequest:
    """Verify a pledge voucher-request: signed by an IDevID of a configured manufacturer
    (the TLS client's, when given), serial-number equal to the IDevID's serialNumber."""
    extra = [tls_idevid] if tls_idevid is not None else []
    verified = verified_signed_json(der, manufacturer_cas, extra, check_time=check_time,
                                    what="pledge voucher-request")
    if tls_idevid is not None and verified.signer_cert != tls_idevid:
        raise Refusal(403, "the voucher-request is signed by "
                           f"{verified.signer_cert.subject.rfc4514_string()}, not by the IDevID "
                           f"{tls_idevid.subject.rfc4514_string()} the TLS connection presented")
    request = parse_request_json(verified.content, "pledge voucher-request")
    serial = require_serial(verified.signer_cert)
    check_serial(request.serial_number, serial, "pledge voucher-request")
    return PledgeRequest(der, request, verified.signer_cert, serial)


def check_proximity(request: Voucher, own_certificate: x509.Certificate) -> None:
    """RFC 8995 5.2: a pinned proximity-registrar-cert must be this registrar's certificate."""
    pinned = request.proximity_registrar_cert
    if pinned is not None and pinned != to_der(own_certificate):
        raise Refusal(401, "proximity-registrar-cert is not this registrar's TLS certificate "
                           "(an on-path attacker, or the pledge talked to another server)")


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


async def registrar_voucher_request(pledge: PledgeRequest, signer: Signer, cert: x509.Certificate,
                                    chain: Sequence[x509.Certificate] = ()) -> bytes:
    """RFC 8995 5.5: serial from the IDevID, nonce copied, the pledge's request enclosed."""
    request = Voucher(
        is_request=True,
        serial_number=pledge.serial,
        created_on=dt.datetime.now(dt.timezone.utc),
        nonce=pledge.request.nonce,
        nonce_text=pledge.request.nonce_text,
        idevid_issuer=_authority_key_id(pledge.idevid),
        prior_signed_voucher_request=pledge.cms,
    )
    return await sign_cms_async(request.to_json(), signer, cert, chain, content_type="voucher")


def nonce_text(voucher: Voucher) -> str | None:
    """The nonce as the audit log and our tables keep it (base64), or None."""
    return None if voucher.nonce is None else base64.b64encode(voucher.nonce).decode("ascii")


def parse_status_report(body: bytes) -> ParsedReport:
    """voucher_status / enrollstatus: a JSON object with a boolean status (RFC 8995 5.7).

    Unknown members are kept (the RFC says to log them, not to refuse), and
    `version` may be a number or, as in the RFC's own example, a string.
    """
    try:
        obj = parse_json(body, "the status report")
    except VoucherError as exc:
        raise Refusal(400, str(exc)) from None
    if not isinstance(obj, dict):
        raise Refusal(400, "the status report must be a JSON object")
    if not isinstance(obj.get("status"), bool):
        raise Refusal(400, "the status report needs a boolean 'status'")
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Refusal(400, "the status report's 'reason' must be a string")
    return ParsedReport(obj["status"], reason, json.dumps(obj, separators=(",", ":"), sort_keys=True))
