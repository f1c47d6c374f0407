"""CMS SignedData (RFC 5652) signed by any Signer, and its verification.

Vouchers and voucher-requests are SignedData over JSON. RFC 8366 §5.4 names
the eContentType id-ct-animaJSONVoucher; every published implementation emits
id-data. We emit the RFC's by default and accept both.

Versions (RFC 5652 §5.1, §5.3): we write SignedData version 3 when the
eContentType is not id-data (version 1 otherwise), and the SignerInfo version
that goes with its sid form (1 for issuerAndSerialNumber, 3 for
subjectKeyIdentifier). Reading, the version is not judged, as OpenSSL does not:
older implementations write version 1 with id-ct-animaJSONVoucher.

Verification runs its checks in a fixed order so every failure has one name
(the fastpath reproduces the same order item by item):
malformed -> content type -> message digest -> signature -> chain (untrusted / expired).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import verification_profile as profile
from .asn1_messages import asn1_problem, received_encoding
from .chain import build_chain
from .errors import (BadSignatureError, CertificateError, CmsError, DigestMismatchError,
                     MalformedCmsError, UnexpectedContentTypeError)
from .signer import (BuildingSigner, Padding, SignatureRequest, Signer, SigningSteps,
                     async_signing_function, signing_function, verify_signature)

# Content types, digests, signature algorithms and signed attributes are the
# verification profile's (hsm/verification_profile.py), which the fastpath applies too.
CONTENT_TYPES = profile.CONTENT_TYPES
ID_DATA = CONTENT_TYPES["data"]
ID_CT_ANIMA_JSON_VOUCHER = CONTENT_TYPES["voucher"]
ACCEPTED_CONTENT_TYPES = tuple(CONTENT_TYPES.values())

# Teach asn1crypto the voucher content type. A version-1 SignedData is read
# with PKCS #7's ContentInfo, whose content is untyped unless the type is
# known: there the voucher's eContent is the OCTET STRING it is. Other
# versions are read with CMS's EncapsulatedContentInfo, whose eContent is
# already an OCTET STRING: a spec there would look for a second one inside it.
if ID_CT_ANIMA_JSON_VOUCHER not in cms.ContentType._map:
    cms.ContentType._map[ID_CT_ANIMA_JSON_VOUCHER] = "anima_json_voucher"
    cms.ContentType._reverse_map = None
    cms.ContentInfo._oid_specs["anima_json_voucher"] = core.OctetString

_DIGESTS = frozenset(profile.CMS_DIGESTS)
#: The public key each signature scheme of the profile needs.
_SCHEME_KEYS = {"ecdsa": ec.EllipticCurvePublicKey, "rsa-pkcs1": rsa.RSAPublicKey,
                "rsa-pss": rsa.RSAPublicKey, "ed25519": ed25519.Ed25519PublicKey}
_EC_SIG_ALGS = {"sha256": "sha256_ecdsa", "sha384": "sha384_ecdsa", "sha512": "sha512_ecdsa"}


@dataclass(frozen=True)
class VerifiedCms:
    """What a successful verification vouches for."""

    content: bytes
    content_type: str
    signer_cert: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)
    signing_time: dt.datetime | None = None


# --------------------------------------------------------------------------- signing

def _signature_algorithm(signer: Signer, hash_name: str, pad: Padding) -> dict:
    key = signer.public_key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"algorithm": _EC_SIG_ALGS[hash_name]}
    if isinstance(key, rsa.RSAPublicKey):
        if pad is Padding.PSS:
            return {"algorithm": "rsassa_pss", "parameters": _pss_params(hash_name)}
        # rsaEncryption, as OpenSSL emits in CMS.
        return {"algorithm": "rsassa_pkcs1v15"}
    raise MalformedCmsError(f"cannot sign CMS with a {type(key).__name__}")


def _pss_params(hash_name: str) -> algos.RSASSAPSSParams:
    return algos.RSASSAPSSParams({
        "hash_algorithm": {"algorithm": hash_name},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_name}},
        "salt_length": hashlib.new(hash_name).digest_size,
        "trailer_field": "trailer_field_bc",
    })


def signed_data_steps(
    content: bytes,
    signer: Signer,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    content_type: str = "voucher",
    hash_name: str | None = None,
    pad: Padding = Padding.PKCS1V15,
    signing_time: dt.datetime | None = None,
) -> SigningSteps[bytes]:
    """DER ContentInfo/SignedData over `content`, the signature made inside `signer`.

    Everything that depends only on the certificates, the content type and the
    algorithms is encoded once by asn1crypto and kept (`_template`); per
    signature only the three signed attributes, the signature and the content
    are new, and they are framed as DER TLVs around the kept parts. Building
    the whole structure through asn1crypto objects costs about ten ECDSA
    signatures in an HSM; a signing service that builds every voucher it signs
    cannot afford that.
    """
    ct_oid = CONTENT_TYPES.get(content_type, content_type)
    if ct_oid not in ACCEPTED_CONTENT_TYPES:
        raise ValueError(f"content type must be 'voucher' or 'data', not {content_type!r}")
    hash_name = hash_name or signer.algorithm.default_hash
    parts = _template(cert, chain, ct_oid, hash_name, pad, signer)
    if parts.public_key_der != signer.public_key_der():
        raise CmsError("the signer certificate does not belong to the signing key")
    when = (signing_time or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    attrs = [parts.content_type_attribute, _signing_time_attribute(when),
             parts.message_digest_head + hashlib.new(hash_name, content).digest()]
    # DER orders SET OF by encoding; verifiers such as OpenSSL re-encode the
    # attributes before checking, so an unsorted set would not verify there.
    attrs.sort()
    signed_attrs = _tlv(0x31, b"".join(attrs))
    signature = yield SignatureRequest(signer, signed_attrs, hash_name, pad)

    signer_info = _tlv(0x30, b"".join((
        parts.signer_info_head,
        b"\xa0" + signed_attrs[1:],          # [0] IMPLICIT SignedAttributes
        parts.signature_algorithm,
        _tlv(0x04, signature),
    )))
    signed_data = _tlv(0x30, b"".join((
        parts.signed_data_head,
        _tlv(0x30, parts.econtent_type + _tlv(0xA0, _tlv(0x04, content))),
        parts.certificates,
        _tlv(0x31, signer_info),
    )))
    return _tlv(0x30, _CONTENT_INFO_HEAD + _tlv(0xA0, signed_data))


ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SIGNING_TIME = "1.2.840.113549.1.9.5"
_VERSION_DER = {"v1": core.Integer(1).dump(), "v3": core.Integer(3).dump()}


def _tlv(tag: int, content: bytes) -> bytes:
    """One DER tag-length-value (definite length, the shortest form)."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = (n.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + n.to_bytes(size, "big") + content


@functools.lru_cache(maxsize=None)
def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


#: ContentInfo's contentType, id-signedData
_CONTENT_INFO_HEAD = _oid(ID_SIGNED_DATA)


@functools.lru_cache(maxsize=4)
def _signing_time_attribute(when: dt.datetime) -> bytes:
    """RFC 5652 11.3: UTCTime through 2049, GeneralizedTime after (kept: many SignedData
    are signed within one second)."""
    value = core.UTCTime(when) if when.year < 2050 else core.GeneralizedTime(when)
    return _attribute(_OID_SIGNING_TIME, value.dump())


def _attribute(oid: str, value_der: bytes) -> bytes:
    """Attribute ::= SEQUENCE { attrType OBJECT IDENTIFIER, attrValues SET OF value } (one value)."""
    return _tlv(0x30, _oid(oid) + _tlv(0x31, value_der))


@dataclass(frozen=True)
class _Template:
    """What every SignedData of one signer certificate, chain, content type and set of
    algorithms shares, DER-encoded (with the objects it was made from: see `_template`)."""

    made_from: tuple
    public_key_der: bytes
    content_type_attribute: bytes
    #: the messageDigest attribute up to the digest itself (whose length the hash fixes)
    message_digest_head: bytes
    #: SignerInfo's version, sid and digestAlgorithm
    signer_info_head: bytes
    signature_algorithm: bytes
    #: SignedData's version and digestAlgorithms
    signed_data_head: bytes
    econtent_type: bytes
    #: [0] IMPLICIT CertificateSet of the signer's certificate and its chain
    certificates: bytes


_templates: dict[tuple, _Template] = {}
_MAX_TEMPLATES = 64


def _template(cert: x509.Certificate, chain: Sequence[x509.Certificate], ct_oid: str, hash_name: str,
              pad: Padding, signer: Signer) -> _Template:
    """The kept parts for these objects, found by their identities.

    Hashing a certificate costs a pass over its DER (about 2 us), more than the
    rest of a lookup; the template holds the objects it was made from, so while
    it is kept no other object can have their ids."""
    key = (id(cert), *map(id, chain), ct_oid, hash_name, pad, type(signer.public_key))
    parts = _templates.get(key)
    if parts is None:
        if len(_templates) >= _MAX_TEMPLATES:
            _templates.clear()
        parts = _templates[key] = _make_template(cert, tuple(chain), ct_oid, hash_name, pad, signer)
    return parts


def _make_template(cert: x509.Certificate, chain: tuple[x509.Certificate, ...], ct_oid: str,
                   hash_name: str, pad: Padding, signer: Signer) -> _Template:
    public_key_der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    asn1_cert = asn1_x509.Certificate.load(cert_der)
    sid = cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber({
        "issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number})})
    # CertificateChoices' certificate alternative is the untagged Certificate;
    # DER orders the SET OF by encoding.
    ders = {cert_der, *(c.public_bytes(serialization.Encoding.DER) for c in chain)}
    digest_algorithm = algos.DigestAlgorithm({"algorithm": hash_name}).dump()
    digest_size = hashlib.new(hash_name).digest_size
    message_digest = _attribute(_OID_MESSAGE_DIGEST, _tlv(0x04, bytes(digest_size)))
    # RFC 5652 5.1 for what we write (certificates only, a version-1 SignerInfo):
    # version 3 when eContentType is not id-data, else 1.
    version = "v3" if ct_oid != ID_DATA else "v1"
    return _Template(
        made_from=(cert, chain),
        public_key_der=public_key_der,
        content_type_attribute=_attribute(_OID_CONTENT_TYPE, _oid(ct_oid)),
        message_digest_head=message_digest[:-digest_size],
        signer_info_head=(_VERSION_DER[_SIGNER_INFO_VERSION["issuer_and_serial_number"]] + sid.dump()
                          + digest_algorithm),
        signature_algorithm=algos.SignedDigestAlgorithm(_signature_algorithm(signer, hash_name, pad)).dump(),
        signed_data_head=_VERSION_DER[version] + _tlv(0x31, digest_algorithm),
        econtent_type=_oid(ct_oid),
        certificates=_tlv(0xA0, b"".join(sorted(ders))))


#: RFC 5652 §5.3: the SignerInfo version follows the form of its sid.
_SIGNER_INFO_VERSION = {"issuer_and_serial_number": "v1", "subject_key_identifier": "v3"}


_sign_locally = signing_function(signed_data_steps)
_sign_locally_async = async_signing_function(signed_data_steps)


def sign_cms(content: bytes, signer: Signer, cert: x509.Certificate,
             chain: Sequence[x509.Certificate] = (), content_type: str = "voucher",
             hash_name: str | None = None, pad: Padding = Padding.PKCS1V15,
             signing_time: dt.datetime | None = None) -> bytes:
    """DER SignedData over `content` (see signed_data_steps).

    A key server's key (a BuildingSigner) builds the SignedData itself, with
    the certificate, clock and algorithms it holds for the key: it is given
    the content and its type only.
    """
    if isinstance(signer, BuildingSigner):
        return signer.build_signed_data(content, content_type)
    return _sign_locally(content, signer, cert, chain, content_type, hash_name, pad, signing_time)


async def sign_cms_async(content: bytes, signer: Signer, cert: x509.Certificate,
                         chain: Sequence[x509.Certificate] = (), content_type: str = "voucher",
                         hash_name: str | None = None, pad: Padding = Padding.PKCS1V15,
                         signing_time: dt.datetime | None = None) -> bytes:
    """sign_cms for servers: the event loop keeps serving while the key signs."""
    if isinstance(signer, BuildingSigner):
        return await signer.build_signed_data_async(content, content_type)
    return await _sign_locally_async(content, signer, cert, chain, content_type, hash_name, pad,
                                     signing_time)


# --------------------------------------------------------------------------- input

_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


_PEM_CMS_LABELS = {b"CMS", b"PKCS7", b"PKCS #7 SIGNED DATA"}


def _json_text(data: bytes) -> bool:
    """Whether the input is JSON text: what an unsigned voucher looks like."""
    return data.lstrip()[:1] in (b"{", b"[")


def load_cms_input(data: bytes) -> bytes:
    """DER from DER, PEM (CMS / PKCS7) or bare base64 input."""
    stripped = data.strip()
    if stripped[:1] == b"\x30":
        return data
    if _json_text(stripped):
        raise MalformedCmsError("expected a CMS SignedData (DER, PEM or base64), got JSON text: "
                                "unsigned vouchers and voucher-requests are not accepted")
    match = _PEM_RE.search(stripped)
    if match and match.group(1) not in _PEM_CMS_LABELS:
        raise MalformedCmsError(f"expected a CMS SignedData, got a PEM {match.group(1).decode()}")
    body = match.group(2) if match else stripped
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCmsError("input is neither DER, PEM nor base64") from None
    if der[:1] != b"\x30":
        raise MalformedCmsError("decoded input is not a DER SEQUENCE (not CMS)")
    return der


# --------------------------------------------------------------------------- verification

@dataclass
class _Parsed:
    content: bytes
    econtent_type: str
    signer_info: cms.SignerInfo
    signed_attrs_der: bytes  # re-tagged as SET OF: what the signature covers
    attr_content_type: str
    message_digest: bytes
    digest_name: str
    signer_cert: x509.Certificate
    embedded: list[x509.Certificate]
    signing_time: dt.datetime | None


def _parse(der: bytes, extra_certs: Iterable[x509.Certificate]) -> _Parsed:
    if _json_text(der):
        raise MalformedCmsError("expected a DER CMS SignedData, got JSON text: unsigned vouchers "
                                "and voucher-requests are not accepted")
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != profile.SIGNED_DATA:
            raise MalformedCmsError(f"ContentInfo holds {info['content_type'].dotted}, not SignedData")
        sd = info["content"]
        encap = sd["encap_content_info"]
        econtent_type = encap["content_type"].dotted
        content = _econtent(encap)
        infos = sd["signer_infos"]
        if len(infos) != 1:
            raise MalformedCmsError(f"expected exactly one SignerInfo, found {len(infos)}")
        si = infos[0]
        signed_attrs = si["signed_attrs"]
        if signed_attrs.native is None or len(signed_attrs) == 0:
            raise MalformedCmsError("SignerInfo has no signed attributes")
        attrs = {}
        for attr in signed_attrs:
            name = attr["type"].dotted
            if name in attrs:
                raise MalformedCmsError(f"signed attribute {name} appears twice")
            attrs[name] = attr["values"]
        ct_values = attrs.get(profile.CONTENT_TYPE_ATTRIBUTE)
        md_values = attrs.get(profile.MESSAGE_DIGEST_ATTRIBUTE)
        if not ct_values or len(ct_values) != 1:
            raise MalformedCmsError("signed attributes lack a single contentType")
        if not md_values or len(md_values) != 1:
            raise MalformedCmsError("signed attributes lack a single messageDigest")
        attr_content_type = ct_values[0].dotted
        message_digest = md_values[0].native
        signing_time = None
        st_values = attrs.get(profile.SIGNING_TIME_ATTRIBUTE)
        if st_values and len(st_values) == 1:
            signing_time = st_values[0].native
        digest_name = si["digest_algorithm"]["algorithm"].native
        if digest_name not in _DIGESTS:
            raise MalformedCmsError(f"unsupported digest algorithm {digest_name}")
        signed_attrs_der = b"\x31" + signed_attrs.dump()[1:]
        embedded = []
        for number, choice in enumerate(sd["certificates"] or [], 1):
            if choice.name == "certificate":
                embedded.append(_embedded_certificate(choice, number))
        sid = si["sid"]
    except MalformedCmsError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise MalformedCmsError(f"not a well-formed CMS SignedData: {asn1_problem(exc)}") from None
    signer_cert = _find_signer(sid, embedded + list(extra_certs))
    return _Parsed(content, econtent_type, si, signed_attrs_der, attr_content_type,
                   message_digest, digest_name, signer_cert, embedded, signing_time)


def _embedded_certificate(choice, number: int) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(received_encoding(choice.chosen))
    except ValueError as exc:
        raise MalformedCmsError(f"certificate {number} of the SignedData is not a readable "
                                f"X.509 certificate ({asn1_problem(exc)})") from None


def _econtent(encap) -> bytes:
    """The eContent OCTET STRING's bytes, whatever eContentType asn1crypto saw."""
    value = encap["content"]
    if isinstance(value, core.Void) or value.contents is None:
        raise MalformedCmsError("SignedData has no encapsulated content (detached signatures are not vouchers)")
    content = value.native
    if not isinstance(content, bytes):
        raise MalformedCmsError("eContent is not an OCTET STRING")
    return content


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _find_signer(sid: cms.SignerIdentifier, candidates: list[x509.Certificate]) -> x509.Certificate:
    try:
        if sid.name == "issuer_and_serial_number":
            issuer_der = sid.chosen["issuer"].dump()
            serial = sid.chosen["serial_number"].native
            for cert in candidates:
                if cert.serial_number == serial and \
                        asn1_x509.Name.load(cert.issuer.public_bytes()).dump() == issuer_der:
                    return cert
        else:
            key_id = sid.chosen.native
            for cert in candidates:
                if _ski(cert) == key_id:
                    return cert
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise MalformedCmsError(f"unreadable signer identifier: {asn1_problem(exc)}") from None
    raise MalformedCmsError("the signer's certificate is neither in the CMS nor among the extra certificates")


def _signature_params(si: cms.SignerInfo, digest_name: str, public_key) -> tuple[str, Padding]:
    """(hash, padding) the SignerInfo asks for (the profile's CMS_SIGNATURE_ALGORITHMS),
    or raise MalformedCmsError / BadSignatureError."""
    alg = si["signature_algorithm"]
    oid = alg["algorithm"].dotted
    if oid not in profile.CMS_SIGNATURE_ALGORITHMS:
        raise MalformedCmsError(f"unsupported signature algorithm {oid}")
    name, scheme, hash_name = profile.CMS_SIGNATURE_ALGORITHMS[oid]
    if hash_name == profile.DIGEST_ALGORITHM:
        hash_name = digest_name
    elif hash_name == profile.PSS_PARAMETERS:
        params = alg["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
        if mgf_hash != hash_name:
            raise MalformedCmsError("RSASSA-PSS with an MGF1 hash different from the message hash")
    if hash_name not in _DIGESTS:
        raise MalformedCmsError(f"unsupported signature hash {hash_name}")
    if not isinstance(public_key, _SCHEME_KEYS[scheme]):
        raise BadSignatureError(f"signature algorithm {name} does not fit the signer's "
                                f"{type(public_key).__name__.replace('_', '')} key")
    return hash_name, Padding.PSS if scheme == "rsa-pss" else Padding.PKCS1V15


def verify_cms(
    der: bytes,
    anchors: Sequence[x509.Certificate],
    extra_certs: Iterable[x509.Certificate] = (),
    at_time: dt.datetime | None = None,
    check_time: bool = True,
    accept_content_types: Sequence[str] = ACCEPTED_CONTENT_TYPES,
) -> VerifiedCms:
    """Verify a SignedData and its signer's chain to `anchors`; raise the CmsError that names the failure."""
    extra = list(extra_certs)
    p = _parse(der, extra)
    try:
        public_key = p.signer_cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedCmsError(f"the signer's public key cannot be used: {exc}") from None
    try:
        hash_name, pad = _signature_params(p.signer_info, p.digest_name, public_key)
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedCmsError(f"unreadable signature algorithm: {asn1_problem(exc)}") from None

    if p.econtent_type not in accept_content_types:
        raise UnexpectedContentTypeError(f"unexpected content type {p.econtent_type}")
    if p.attr_content_type != p.econtent_type:
        raise UnexpectedContentTypeError(
            f"contentType attribute {p.attr_content_type} differs from eContentType {p.econtent_type}")

    if hashlib.new(p.digest_name, p.content).digest() != p.message_digest:
        raise DigestMismatchError("messageDigest does not match the content (content altered)")

    try:
        signature = p.signer_info["signature"].native
    except (ValueError, TypeError) as exc:
        raise MalformedCmsError(f"unreadable SignerInfo signature: {asn1_problem(exc)}") from None
    if not verify_signature(public_key, signature, p.signed_attrs_der, hash_name, pad):
        raise BadSignatureError("the signature does not verify with the signer's public key")

    try:
        chain = build_chain(p.signer_cert, anchors, p.embedded + extra, at_time=at_time,
                            check_time=check_time)
    except CertificateError as exc:
        raise MalformedCmsError(f"the signer's certificate path cannot be read: {exc}") from None
    return VerifiedCms(p.content, p.econtent_type, p.signer_cert, chain, p.signing_time)


def embedded_certificates(der: bytes) -> list[x509.Certificate]:
    """The certificates a SignedData carries (e.g. the pledge's IDevID in a voucher-request)."""
    try:
        sd = cms.ContentInfo.load(der, strict=True)["content"]
        return [_embedded_certificate(c, number)
                for number, c in enumerate(sd["certificates"] or [], 1) if c.name == "certificate"]
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedCmsError(f"not a well-formed CMS SignedData: {asn1_problem(exc)}") from None


def signer_certificate(der: bytes, extra_certs: Iterable[x509.Certificate] = ()) -> x509.Certificate:
    """The signer's certificate, without verifying anything."""
    return _parse(der, list(extra_certs)).signer_cert


def unverified_content(der: bytes) -> bytes:
    """The encapsulated content, without verifying anything (for routing and logs only)."""
    if _json_text(der):
        raise MalformedCmsError("expected a DER CMS SignedData, got JSON text")
    try:
        encap = cms.ContentInfo.load(der, strict=True)["content"]["encap_content_info"]
        return _econtent(encap)
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedCmsError(f"not a well-formed CMS SignedData: {asn1_problem(exc)}") from None
