"""EST (RFC 7030) wire formats shared by the pledge and the EST server.

- certs-only PKCS#7 (/cacerts, /simpleenroll responses): a degenerate
  SignedData with certificates and no signers;
- CSR attributes (/csrattrs): SEQUENCE OF AttrOrOID, where a bare OID asks
  for something (a subject attribute, a signature algorithm) and an Attribute
  gives a value (here: subjectAltName, as RFC 8994 and
  draft-ietf-lamps-rfc7030-csrattrs put it, directly or in an extensionRequest);
- bodies are base64 (RFC 7030 §4, clarified by RFC 8951: line breaks allowed).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from asn1crypto import cms, core
from asn1crypto import parser as asn1_parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from .asn1_messages import asn1_problem
from .errors import CertificateError

ID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
ID_SUBJECT_ALT_NAME = "2.5.29.17"
ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"
_SIGNATURE_HASHES = {ECDSA_WITH_SHA256: "sha256", ECDSA_WITH_SHA384: "sha384",
                     "1.2.840.113549.1.1.11": "sha256", "1.2.840.113549.1.1.12": "sha384"}
SUBJECT_OIDS = {"2.5.4.3": "CN", "2.5.4.5": "serialNumber", "2.5.4.10": "O", "2.5.4.11": "OU"}


# --------------------------------------------------------------------------- base64 bodies

def encode_body(der: bytes) -> bytes:
    """base64 with 64-column lines, as EST servers conventionally send."""
    text = base64.b64encode(der)
    return b"\n".join(text[i:i + 64] for i in range(0, len(text), 64)) + b"\n"


def decode_body(body: bytes, what: str) -> bytes:
    """base64 (any line breaks) to DER; a body that is already DER passes through."""
    if body[:1] == b"\x30":
        return body
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError(f"{what} is not base64 (RFC 7030 §4)") from None


# --------------------------------------------------------------------------- certs-only

def certs_only(certificates: Iterable[x509.Certificate]) -> bytes:
    """DER of a certs-only SignedData (RFC 7030 §4.1.3), as cryptography writes it.

    DER orders the certificates SET by encoding, so the order given is not kept
    (RFC 7030 gives it no meaning); `openssl crl2pkcs7 -nocrl` writes the same
    bytes for certificates given in that order."""
    certs = list(certificates)
    if not certs:
        raise ValueError("a certs-only PKCS#7 needs at least one certificate")
    return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)


def parse_certs_only(body: bytes, what: str = "certs-only PKCS#7") -> list[x509.Certificate]:
    """Certificates of a certs-only PKCS#7, from base64 or DER, in the order sent.

    Read with asn1crypto rather than cryptography's load_der_pkcs7_certificates:
    OpenSSL-based EST servers write a chain in its own order (not DER's sorted
    SET), which cryptography reads only through a BER fallback that raises a
    UserWarning and that its maintainers plan to turn into an error; asn1crypto
    reads both, and its errors name the broken structure."""
    der = decode_body(body, what)
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise CertificateError(f"{what} is not a SignedData")
        certs = [x509.load_der_x509_certificate(c.chosen.dump())
                 for c in (info["content"]["certificates"] or []) if c.name == "certificate"]
    except CertificateError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CertificateError(f"{what} is malformed: {asn1_problem(exc)}") from None
    if not certs:
        raise CertificateError(f"{what} carries no certificate")
    return certs


# --------------------------------------------------------------------------- CSR attributes

class _AnySet(core.SetOf):
    _child_spec = core.Any


class _Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", _AnySet)]


class _AttrOrOid(core.Choice):
    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", _Attribute)]


class _CsrAttrs(core.SequenceOf):
    _child_spec = _AttrOrOid


@dataclass
class CsrAttributes:
    """What an EST server asks the CSR to contain."""

    #: subject attributes asked for by bare OID, e.g. {"2.5.4.5"} for serialNumber
    subject_oids: list[str] = field(default_factory=list)
    #: subjectAltName entries the server wants in the CSR, verbatim
    subject_alt_names: list[x509.GeneralName] = field(default_factory=list)
    #: the signature hash the server asked for, if any
    hash_name: str | None = None
    #: the signature algorithm OID itself (ECDSA or RSA); encode() derives an
    #: ECDSA one from hash_name when this is not set
    signature_oid: str | None = None
    #: OIDs we did not understand (kept for logs; RFC 7030 lets clients ignore them)
    unknown: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        """DER CsrAttrs; the subjectAltName goes in an extensionRequest (RFC 9908's form)."""
        items = [_AttrOrOid(name="oid", value=oid) for oid in self.subject_oids]
        signature = self.signature_oid or (
            (ECDSA_WITH_SHA384 if self.hash_name == "sha384" else ECDSA_WITH_SHA256) if self.hash_name else None)
        if signature:
            items.append(_AttrOrOid(name="oid", value=signature))
        if self.subject_alt_names:
            san = x509.SubjectAlternativeName(self.subject_alt_names).public_bytes()
            extensions = asn1_x509.Extensions([{
                "extn_id": "subject_alt_name", "critical": False,
                "extn_value": asn1_x509.GeneralNames.load(san)}])
            items.append(_AttrOrOid(name="attribute", value={
                "type": ID_EXTENSION_REQUEST, "values": [core.Any.load(extensions.dump())]}))
        return _CsrAttrs(items).dump()

    @classmethod
    def decode(cls, body: bytes) -> "CsrAttributes":
        der = decode_body(body, "CSR attributes")
        result = cls()
        try:
            parsed = _CsrAttrs.load(der, strict=True)
            for item in parsed:
                if item.name == "oid":
                    oid = item.chosen.dotted
                    if oid in SUBJECT_OIDS:
                        result.subject_oids.append(oid)
                    elif oid in _SIGNATURE_HASHES:
                        result.hash_name = _SIGNATURE_HASHES[oid]
                        result.signature_oid = oid
                    else:
                        result.unknown.append(oid)
                    continue
                attr_type = item.chosen["type"].dotted
                for value in item.chosen["values"]:
                    raw = value.dump()
                    if attr_type == ID_SUBJECT_ALT_NAME:
                        result.subject_alt_names += _general_names(raw)
                    elif attr_type == ID_EXTENSION_REQUEST:
                        for ext in asn1_x509.Extensions.load(raw):
                            if ext["extn_id"].dotted == ID_SUBJECT_ALT_NAME:
                                result.subject_alt_names += _general_names(ext["extn_value"].contents)
                    else:
                        result.unknown.append(attr_type)
        except CertificateError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise CertificateError(f"CSR attributes are malformed: {asn1_problem(exc)}") from None
        return result


def _general_names(der: bytes) -> list[x509.GeneralName]:
    """GeneralNames DER to cryptography objects (the forms CSR attributes use)."""
    names = []
    try:
        parsed = list(asn1_x509.GeneralNames.load(der, strict=True))
    except ValueError as exc:
        raise CertificateError(f"subjectAltName in CSR attributes is malformed: {asn1_problem(exc)}") from None
    for gn in parsed:
        if gn.name == "dns_name":
            names.append(x509.DNSName(gn.native))
        elif gn.name == "ip_address":
            names.append(x509.IPAddress(ipaddress.ip_address(gn.native.split("/")[0])))
        elif gn.name == "uniform_resource_identifier":
            names.append(x509.UniformResourceIdentifier(gn.native))
        elif gn.name == "rfc822_name":
            names.append(x509.RFC822Name(gn.native))
        elif gn.name == "other_name":
            # value is [0] EXPLICIT; cryptography wants the inner DER.
            inner = asn1_parser.parse(gn.chosen["value"].dump())[4]
            names.append(x509.OtherName(x509.ObjectIdentifier(gn.chosen["type_id"].dotted), inner))
        else:
            raise CertificateError(f"unsupported subjectAltName form {gn.name} in CSR attributes")
    return names
