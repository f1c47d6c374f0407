"""What the service builds and signs: checked inputs in, whole signed objects out.

The service is a key server, not a signing oracle (IETF LURK's keyless mode):

- voucher: the client sends a voucher's fields (the ietf-voucher:voucher JSON);
  they are parsed and checked (RFC 8366 leaves, serial number, a nonce or an
  expires-on, created-on near the service's clock, a readable
  pinned-domain-cert), the JSON is written again from what was parsed, and
  the SignedData around it is built here (hsm.cms.signed_data_steps);
- voucher-request: the same for a registrar voucher-request, whose
  prior-signed-voucher-request must be a pledge request signed by the IDevID
  it carries, for the same serial number and nonce (RFC 8995 5.5);
- certificate: a CSR that proves possession of its key, certified with its
  subject and the dNSNames asked for (each one the CSR requests), with the
  extended key usages and lifetime the delegation allows;
- delegation-certificate: a short-term registrar certificate (id-kp-cmcRA)
  for a CSR, valid for the delegation's certificate_hours and never beyond
  the delegation's end: a registrar node keeps its own key and signs its
  voucher-requests locally, and stops being trusted when it is no longer
  renewed;
- crl: the CA's revocation list, from the entries (certificate serial,
  revocation time, reason) and the cRLNumber the client sends, dated by the
  service's clock;
- digest: a raw signature over a digest, for delegations that grant it.

`prepare` checks an item and says what it asserts (its Scope, for the
policy); `Prepared.build(delegation)` makes the SigningSteps (hsm/cms.py,
hsm/x509.py: the one CMS and X.509 builder) or the raw digest; `sign_all`
drives many items with one round trip to the key's worker per signing step.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm.cms import signed_data_steps, signer_certificate, verify_cms
from pledgeforge.hsm.errors import CmsError, VoucherError
from pledgeforge.hsm.identity_names import IdentityNameError, check_dns_name, check_serial_number
from pledgeforge.hsm.signer import Padding, SignatureRequest, SigningSteps, check_digest_length, digest
from pledgeforge.hsm.voucher import Voucher, format_date, parse_date
from pledgeforge.hsm.x509 import (check_csr, crl_distribution_points, csr_dns_names, issued_certificate_steps,
                                  load_csr, revocation_list_steps, serial_number_of, to_der, to_pem)

from .policy import (CERTIFICATE, CRL, DELEGATION_CERTIFICATE, DIGEST, VOUCHER, VOUCHER_REQUEST,
                     Delegation, Denied, Scope, subject_text)
from .workers import ServedKey

ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")


class Invalid(Exception):
    """An item the service will not build: 400 with the reason."""


@dataclass(frozen=True)
class RawDigest:
    """A digest to sign as it is (the digest operation)."""

    value: bytes
    hash_name: str


@dataclass
class Prepared:
    """A checked item: what it asserts, what to audit it as, how to build it."""

    scope: Scope
    #: the audit record's subject: serial number or certificate subject
    subject: str
    build: Callable[[Delegation], "SigningSteps | RawDigest"]
    #: the JSON answer for the built object
    answer: Callable[[Any], dict] = field(default=lambda result: {})
    #: the bytes whose SHA-256 the audit record keeps
    audited_bytes: Callable[[Any], bytes] = field(default=lambda result: b"")


def prepare(operation: str, item: Any, key: ServedKey, now: dt.datetime, window_s: int) -> Prepared:
    if not isinstance(item, dict):
        raise Invalid("each item must be a JSON object")
    try:
        return _PREPARE[operation](item, key, now, window_s)
    except (VoucherError, CmsError, IdentityNameError) as exc:
        raise Invalid(str(exc)) from None
    except PledgeforgeError as exc:   # a CSR or certificate that cannot be read
        raise Invalid(str(exc)) from None


# --------------------------------------------------------------------------- vouchers

def _voucher_fields(item: dict, member: str, is_request: bool, now: dt.datetime,
                    window_s: int) -> Voucher:
    obj = item.get(member)
    if not isinstance(obj, dict):
        raise Invalid(f"the item needs {member!r}: the JSON object of the "
                      f"{'ietf-voucher-request:voucher' if is_request else 'ietf-voucher:voucher'}")
    voucher = Voucher.from_json(obj, expect_request=is_request)
    check_serial_number(voucher.serial_number, "serial-number")
    if voucher.created_on is None:
        raise Invalid(f"the {member} lacks created-on")
    skew = abs((now - voucher.created_on).total_seconds())
    if skew > window_s:
        raise Invalid(f"the {member}'s created-on {format_date(voucher.created_on)} is {skew:.0f} s "
                      f"from the service's clock; at most {window_s} s is accepted")
    return voucher


def _cms_answer(der: bytes) -> dict:
    return {"cms": base64.b64encode(der).decode("ascii")}


def _signed_voucher(voucher: Voucher, key: ServedKey) -> Callable[[Delegation], SigningSteps]:
    content = voucher.to_json()   # written again from the fields that were checked
    return lambda delegation: signed_data_steps(content, key.signer, key.cert, key.chain, "voucher")


@functools.lru_cache(maxsize=256)
def _readable_certificate(der: bytes) -> bool:
    """Whether `der` is an X.509 certificate (an owner's CA is pinned in many vouchers)."""
    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        return False
    return True


def _prepare_voucher(item: dict, key: ServedKey, now: dt.datetime, window_s: int) -> Prepared:
    voucher = _voucher_fields(item, "voucher", False, now, window_s)
    if voucher.assertion is None:
        raise Invalid("the voucher lacks assertion (RFC 8366)")
    if voucher.pinned_domain_cert is None and voucher.pinned_domain_pubk is None:
        raise Invalid("the voucher pins nothing: give pinned-domain-cert (RFC 8366)")
    if voucher.pinned_domain_cert is not None and not _readable_certificate(voucher.pinned_domain_cert):
        raise Invalid("pinned-domain-cert is not a DER X.509 certificate")
    if voucher.nonce is None and voucher.expires_on is None:
        raise Invalid("a voucher needs a nonce, or (nonceless) an expires-on (RFC 8366)")
    if voucher.expires_on is not None and voucher.expires_on <= voucher.created_on:
        raise Invalid("the voucher expires before it is created")
    names = []
    for leaf, url in (("est-domain", voucher.est_domain),
                      ("additional-configuration-url", voucher.additional_configuration)):
        if url is not None:
            host = urlsplit(url if "://" in url else f"https://{url}").hostname
            if not host:
                raise Invalid(f"{leaf} {url!r} names no host")
            names.append(host)
    return Prepared(Scope(serial=voucher.serial_number, dns_names=tuple(names)),
                    voucher.serial_number, _signed_voucher(voucher, key), _cms_answer, lambda der: der)


def _prepare_voucher_request(item: dict, key: ServedKey, now: dt.datetime, window_s: int) -> Prepared:
    request = _voucher_fields(item, "voucher-request", True, now, window_s)
    prior = request.prior_signed_voucher_request
    if prior is None:
        raise Invalid("a registrar voucher-request carries the pledge's request as "
                      "prior-signed-voucher-request (RFC 8995 5.5)")
    idevid = signer_certificate(prior)
    # The pledge signed it with the IDevID it carries; whose IDevID that is the
    # registrar has checked against its manufacturers.
    pledge = Voucher.from_json(verify_cms(prior, [idevid]).content, expect_request=True)
    serial = serial_number_of(idevid)
    if serial != request.serial_number or pledge.serial_number != request.serial_number:
        raise Invalid(f"serial-number {request.serial_number!r} is not the pledge's: its request says "
                      f"{pledge.serial_number!r} and its IDevID {serial!r}")
    if request.nonce is not None and request.nonce != pledge.nonce:
        raise Invalid("the voucher-request's nonce is not the pledge's (RFC 8995 5.5.6)")
    return Prepared(Scope(serial=request.serial_number), request.serial_number,
                    _signed_voucher(request, key), _cms_answer, lambda der: der)


# --------------------------------------------------------------------------- certificates

def _csr(item: dict) -> x509.CertificateSigningRequest:
    text = item.get("csr")
    if not isinstance(text, str) or not text.strip():
        raise Invalid("the item needs 'csr': a PKCS#10 request, PEM or base64 DER")
    data = text.encode()
    if b"-----BEGIN" not in data:
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("'csr' is neither PEM nor base64") from None
    csr = load_csr(data)
    check_csr(csr)   # proof of possession
    return csr


def _certificate_answer(key: ServedKey) -> Callable[[x509.Certificate], dict]:
    chain = [to_pem(key.cert).decode()] + [to_pem(c).decode() for c in key.chain]
    return lambda cert: {"certificate": to_pem(cert).decode(), "chain": chain}


def _crl_urls(item: dict) -> list[str]:
    urls = item.get("crl_urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise Invalid("'crl_urls' must be a list of http:// or https:// URLs")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"CRL distribution point {url!r} is no http:// or https:// URL")
    return urls


def _prepare_certificate(item: dict, key: ServedKey, now: dt.datetime, window_s: int) -> Prepared:
    csr = _csr(item)
    requested = csr_dns_names(csr)
    dns_names = item.get("dns_names", requested)
    if not isinstance(dns_names, list) or not all(isinstance(n, str) for n in dns_names):
        raise Invalid("'dns_names' must be a list of DNS names")
    dns_names = [check_dns_name(n.lower(), "dNSName") for n in dns_names]
    for name in dns_names:
        if name not in requested:
            raise Invalid(f"dNSName {name} is not requested by the CSR")
    usages = item.get("extended_key_usage", [])
    if not isinstance(usages, list) or not all(isinstance(u, str) for u in usages):
        raise Invalid("'extended_key_usage' must be a list of dotted OIDs")
    days = item.get("days")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or days < 1):
        raise Invalid("'days' must be a positive whole number")
    crl_urls = _crl_urls(item)

    def build(delegation: Delegation) -> SigningSteps:
        for usage in usages:
            if usage not in delegation.extended_key_usages:
                raise Denied(f"delegation {delegation.name} does not allow extended key usage {usage}")
        if days is not None and days > delegation.certificate_days:
            raise Denied(f"delegation {delegation.name} allows certificates of at most "
                         f"{delegation.certificate_days} days, not {days}")
        return issued_certificate_steps(
            key.signer, key.cert, csr.public_key(), csr.subject,
            days=days or delegation.certificate_days,
            extended_key_usage=[ObjectIdentifier(u) for u in usages], dns_names=dns_names,
            extra_extensions=crl_distribution_points(crl_urls))

    subject = subject_text(csr.subject)
    return Prepared(Scope(subject=subject, dns_names=tuple(dns_names)), subject, build,
                    _certificate_answer(key), to_der)


def _prepare_delegation_certificate(item: dict, key: ServedKey, now: dt.datetime,
                                    window_s: int) -> Prepared:
    csr = _csr(item)
    if csr_dns_names(csr):
        raise Invalid("a delegation certificate names a registrar by its subject only; "
                      "the CSR must request no subjectAltName")

    def build(delegation: Delegation) -> SigningSteps:
        end = min(now + dt.timedelta(hours=delegation.certificate_hours), delegation.not_after,
                  key.cert.not_valid_after_utc)
        return issued_certificate_steps(key.signer, key.cert, csr.public_key(), csr.subject,
                                        not_after=end, extended_key_usage=[ID_KP_CMC_RA])

    subject = subject_text(csr.subject)
    return Prepared(Scope(subject=subject), subject, build, _certificate_answer(key), to_der)


# --------------------------------------------------------------------------- revocation lists

#: the longest a CRL may be valid (its nextUpdate, from the service's clock)
MAX_CRL_VALIDITY = dt.timedelta(days=366)
#: RFC 5280 5.2.3: a cRLNumber is at most 20 octets
MAX_CRL_NUMBER = (1 << 159) - 1


def _revoked_entry(entry: Any, i: int) -> tuple[int, dt.datetime, x509.ReasonFlags | None]:
    if not isinstance(entry, dict):
        raise Invalid(f"revoked[{i}] must be an object with serial, revoked_at and reason")
    try:
        serial = int(str(entry.get("serial", "")), 16)
    except ValueError:
        raise Invalid(f"revoked[{i}].serial must be the certificate serial number in hex") from None
    if not 0 < serial <= MAX_CRL_NUMBER:
        raise Invalid(f"revoked[{i}].serial is no certificate serial number (1 to 20 octets)")
    when = parse_date(entry.get("revoked_at"), f"revoked[{i}].revoked_at")
    reason = entry.get("reason")
    if reason is None:
        return serial, when, None
    try:
        return serial, when, x509.ReasonFlags(reason)
    except ValueError:
        raise Invalid(f"revoked[{i}].reason {reason!r} is no RFC 5280 reason "
                      f"({', '.join(r.value for r in x509.ReasonFlags)})") from None


def _prepare_crl(item: dict, key: ServedKey, now: dt.datetime, window_s: int) -> Prepared:
    revoked = item.get("revoked")
    if not isinstance(revoked, list):
        raise Invalid("the item needs 'revoked': a list of {serial, revoked_at, reason}")
    entries = [_revoked_entry(entry, i) for i, entry in enumerate(revoked)]
    number = item.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= MAX_CRL_NUMBER:
        raise Invalid("'number' must be the cRLNumber: a whole number from 0 to 2^159-1")
    validity = item.get("validity_s")
    if not isinstance(validity, int) or isinstance(validity, bool) or \
            not 0 < validity <= MAX_CRL_VALIDITY.total_seconds():
        raise Invalid(f"'validity_s' must be the CRL's lifetime in seconds, at most "
                      f"{MAX_CRL_VALIDITY.days} days")

    def build(delegation: Delegation) -> SigningSteps:
        return revocation_list_steps(key.signer, key.cert, entries, number=number, this_update=now,
                                     next_update=now + dt.timedelta(seconds=validity))

    return Prepared(Scope(), f"CRL {number}", build,
                    lambda crl: {"crl": base64.b64encode(to_der(crl)).decode("ascii")}, to_der)


# --------------------------------------------------------------------------- raw digests

def _prepare_digest(item: dict, key: ServedKey, now: dt.datetime, window_s: int) -> Prepared:
    hash_name = item.get("hash", "sha256")
    if hash_name not in ("sha256", "sha384", "sha512"):
        raise Invalid(f"'hash' must be sha256, sha384 or sha512, not {hash_name!r}")
    try:
        value = base64.b64decode(str(item.get("digest", "")), validate=True)
        check_digest_length(value, hash_name)
    except (binascii.Error, ValueError) as exc:
        raise Invalid(f"'digest' must be a base64 {hash_name} digest: {exc}") from None
    raw = RawDigest(value, hash_name)
    return Prepared(Scope(), "", lambda delegation: raw,
                    lambda signature: {"signature": base64.b64encode(signature).decode("ascii")},
                    lambda signature: value)


_PREPARE = {VOUCHER: _prepare_voucher, VOUCHER_REQUEST: _prepare_voucher_request,
            CERTIFICATE: _prepare_certificate, DELEGATION_CERTIFICATE: _prepare_delegation_certificate,
            CRL: _prepare_crl, DIGEST: _prepare_digest}


# --------------------------------------------------------------------------- signing many

async def sign_all(key: ServedKey, work: list["SigningSteps | RawDigest"]) -> list[Any]:
    """Run every item's signing steps with `key`: each round's digests go to one worker in one
    call. The result of each item, or the exception that ended it."""
    results: list[Any] = [None] * len(work)
    waiting: dict[int, SignatureRequest | RawDigest] = {}
    steps: dict[int, SigningSteps] = {}
    for i, item in enumerate(work):
        if isinstance(item, RawDigest):
            waiting[i] = item
        else:
            steps[i] = item
            _advance(i, item, None, waiting, results, first=True)
    while waiting:
        groups: dict[tuple[str, Padding], list[int]] = {}
        for i, request in waiting.items():
            pad = request.padding if isinstance(request, SignatureRequest) else Padding.PKCS1V15
            groups.setdefault((request.hash_name, pad), []).append(i)
        current, waiting = waiting, {}
        for (hash_name, pad), indices in groups.items():
            digests = [r.value if isinstance(r, RawDigest) else digest(r.data, hash_name)
                       for r in (current[i] for i in indices)]
            try:
                signatures = await key.sign_digests_async(digests, hash_name, pad)
            except Exception as exc:
                for i in indices:
                    results[i] = exc
                continue
            for i, signature in zip(indices, signatures):
                if i in steps:
                    _advance(i, steps[i], signature, waiting, results)
                else:
                    results[i] = signature
    return results


def _advance(i: int, steps: SigningSteps, signature: bytes | None, waiting: dict, results: list,
             first: bool = False) -> None:
    try:
        waiting[i] = next(steps) if first else steps.send(signature)
    except StopIteration as done:
        results[i] = done.value
    except Exception as exc:
        results[i] = exc


def object_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
