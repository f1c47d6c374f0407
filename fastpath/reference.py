"""The pure-Python verifier the extension must agree with, one item at a time.

CMS items go through pledgeforge.hsm.cms.verify_cms, bare certificates through
hsm.chain.build_chain; their exceptions map to Result codes. An exception that
is not one of the CMS errors (cryptography refusing a key, a name or an
extension of a certificate it had to read) means the reference could not read
the item: MALFORMED.

Bulk items are DER. verify_cms also reads BER (indefinite and non-minimal
lengths, constructed strings), which the extension's DER reader refuses, so an
item that is not DER-framed (`der_framed`) is MALFORMED here before either
verifier looks at it.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Sequence

from cryptography import x509

from pledgeforge.hsm import cms
from pledgeforge.hsm.chain import build_chain
from pledgeforge.hsm.errors import (BadSignatureError, DigestMismatchError,
                                    ExpiredCertificateError, MalformedCmsError,
                                    UnexpectedContentTypeError, UntrustedSignerError)

from .der_framing import MAX_NESTING, der_framed
from .results import Result

__all__ = ["MAX_NESTING", "der_framed", "subject_serial", "verify_certificate_item",
           "verify_cms_item"]

# Most specific first: ExpiredCertificateError is an UntrustedSignerError.
_CODES = (
    (MalformedCmsError, Result.MALFORMED),
    (UnexpectedContentTypeError, Result.UNEXPECTED_CONTENT_TYPE),
    (DigestMismatchError, Result.DIGEST_MISMATCH),
    (BadSignatureError, Result.BAD_SIGNATURE),
    (ExpiredCertificateError, Result.EXPIRED),
    (UntrustedSignerError, Result.UNTRUSTED_SIGNER),
)


def _code(exc: Exception) -> Result:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return Result.MALFORMED


def subject_serial(cert: x509.Certificate) -> str | None:
    """The subject serialNumber attribute (2.5.4.5), None when absent or unreadable."""
    try:
        attrs = cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    except (ValueError, TypeError):
        return None
    return attrs[0].value if attrs else None


def verify_cms_item(der: bytes, anchors: Sequence[x509.Certificate],
                    extra_certs: Iterable[x509.Certificate] = (), *,
                    at_time: dt.datetime | None = None,
                    check_time: bool = True) -> tuple[Result, bytes | None]:
    """(code, verified content or None)."""
    if not der_framed(der):
        return Result.MALFORMED, None
    try:
        verified = cms.verify_cms(der, anchors, extra_certs, at_time=at_time, check_time=check_time)
    except Exception as exc:  # noqa: BLE001 - every failure is a code here
        return _code(exc), None
    return Result.OK, verified.content


def verify_certificate_item(der: bytes, anchors: Sequence[x509.Certificate],
                            extra_certs: Iterable[x509.Certificate] = (), *,
                            at_time: dt.datetime | None = None,
                            check_time: bool = True) -> tuple[Result, str | None]:
    """(code, subject serialNumber) for one DER certificate."""
    if not der_framed(der):
        return Result.MALFORMED, None
    try:
        cert = x509.load_der_x509_certificate(der)
    except Exception:  # noqa: BLE001
        return Result.MALFORMED, None
    try:
        build_chain(cert, anchors, extra_certs, at_time=at_time, check_time=check_time)
    except Exception as exc:  # noqa: BLE001
        return _code(exc), subject_serial(cert)
    return Result.OK, subject_serial(cert)
