"""X.509 certificates, CRLs and CSRs signed inside a key store.

cryptography's builders only sign with keys they hold. We let a builder do
what it is good at (names, extensions, DER) by signing with a throwaway
key of the same type, then keep its to-be-signed part and replace the
signature with one made by the real Signer. The throwaway key's public key
appears nowhere in the result: in a certificate the subject key is given
separately, and in a CSR we swap the subject key info before signing.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Iterable, Sequence

from asn1crypto import core as asn1_core
from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .asn1_messages import asn1_problem
from .errors import CertificateError
from .identity_names import check_dns_name, check_serial_number
from .signer import (BuildingSigner, Padding, SignatureRequest, Signer, SigningSteps,
                     async_signing_function, hash_algorithm, run_signing, signing_function)

ID_PE_MASA_URL = ObjectIdentifier("1.3.6.1.5.5.7.1.32")
ID_ON_HARDWARE_MODULE_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.4")
IDEVID_NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)

# --------------------------------------------------------------------------- names

_DN_ATTRS = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER, "DC": NameOID.DOMAIN_COMPONENT,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS, "UID": NameOID.USER_ID,
}


def parse_dn(text: str | x509.Name) -> x509.Name:
    """A Name from RFC 4514 text ("CN=x,O=y") or OpenSSL's "/CN=x/O=y" form."""
    if isinstance(text, x509.Name):
        return text
    text = text.strip()
    if not text:
        raise CertificateError("empty subject: give a DN such as 'CN=device,O=Example'")
    if text.startswith("/"):
        parts = [p for p in text.split("/") if p]
    else:
        parts, current, escaped = [], "", False
        for ch in text:
            if escaped:
                current += ch
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == ",":
                parts.append(current)
                current = ""
            else:
                current += ch
        parts.append(current)
        parts.reverse()  # RFC 4514 lists the most specific RDN first
    attrs = []
    for part in parts:
        if "=" not in part:
            raise CertificateError(f"subject component {part!r} is not NAME=value")
        name, value = part.split("=", 1)
        key = name.strip().upper()
        if key not in _DN_ATTRS:
            raise CertificateError(f"unknown subject attribute {name.strip()!r} "
                                   f"(known: {', '.join(sorted(_DN_ATTRS))})")
        attrs.append(x509.NameAttribute(_DN_ATTRS[key], value.strip()))
    return x509.Name(attrs)


def serial_number_of(cert: x509.Certificate) -> str | None:
    """The subject's X520SerialNumber (2.5.4.5): the device serial in an IDevID."""
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(values[0].value) if values else None


@dataclass(frozen=True)
class MasaUrl:
    """id-pe-masa-url as read: its text and the string type it came in.

    RFC 8995 §2.3.2 makes it an IA5String; some deployed IDevIDs carry a
    UTF8String, which OpenSSL accepts. We read both and say so (`problem`);
    we write IA5String only.
    """

    url: str
    string_type: str        # "IA5String" or "UTF8String"

    @property
    def problem(self) -> str | None:
        """The non-conformance, or None for the RFC's encoding."""
        if self.string_type == "IA5String":
            return None
        return (f"id-pe-masa-url is a {self.string_type}; RFC 8995 section 2.3.2 requires an "
                "IA5String (read anyway)")


_MASA_URL_TYPES = {asn1_core.IA5String: "IA5String", asn1_core.UTF8String: "UTF8String"}


def read_masa_url(cert: x509.Certificate) -> MasaUrl | None:
    """The id-pe-masa-url of an IDevID (IA5String, or the UTF8String some vendors write), or None."""
    try:
        raw = cert.extensions.get_extension_for_oid(ID_PE_MASA_URL).value.value
    except x509.ExtensionNotFound:
        return None
    try:
        value = asn1_core.Asn1Value.load(raw, strict=True)
        string_type = _MASA_URL_TYPES.get(type(value))
        text = value.native if string_type else None
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"id-pe-masa-url is not a readable string: {asn1_problem(exc)}") from None
    if string_type is None:
        raise CertificateError(f"id-pe-masa-url is a {type(value).__name__}, "
                               "not an IA5String (nor the UTF8String some vendors write)")
    if not text:
        raise CertificateError("id-pe-masa-url is empty")
    return MasaUrl(text, string_type)


def masa_url_of(cert: x509.Certificate) -> str | None:
    """The text of an IDevID's id-pe-masa-url, or None (see read_masa_url)."""
    found = read_masa_url(cert)
    return found.url if found else None


def masa_base_url(masa_url: str) -> str:
    """RFC 8995 §2.3.2: scheme https implied; a bare authority means /.well-known/brski."""
    url = masa_url if "://" in masa_url else "https://" + masa_url
    scheme, rest = url.split("://", 1)
    authority, slash, path = rest.partition("/")
    if not path:
        return f"{scheme}://{authority}/.well-known/brski"
    return f"{scheme}://{authority}/{path.rstrip('/')}"


def _ia5(text: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) < 0x80:
        return bytes([0x16, len(raw)]) + raw
    n = (len(raw).bit_length() + 7) // 8
    return bytes([0x16, 0x80 | n]) + len(raw).to_bytes(n, "big") + raw


def hardware_module_name(hw_type: str, hw_serial: bytes) -> x509.OtherName:
    """RFC 4108 HardwareModuleName as an otherName SAN."""
    from asn1crypto import core

    class _HMN(core.Sequence):
        _fields = [("hw_type", core.ObjectIdentifier), ("hw_serial_num", core.OctetString)]

    return x509.OtherName(ID_ON_HARDWARE_MODULE_NAME,
                          _HMN({"hw_type": hw_type, "hw_serial_num": hw_serial}).dump())


# --------------------------------------------------------------------------- signing

@functools.lru_cache(maxsize=None)
def _throwaway_key(is_ec: bool):
    # Only its signature algorithm identifier survives into the result.
    if is_ec:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _builder_args(signer: Signer, hash_name: str, pad: Padding) -> dict:
    algo = hash_algorithm(hash_name)
    args = {"private_key": _throwaway_key(signer.algorithm.is_ec), "algorithm": algo}
    if not signer.algorithm.is_ec and pad is Padding.PSS:
        args["rsa_padding"] = padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)
    return args


def _certificate_steps(builder: x509.CertificateBuilder, signer: Signer, hash_name: str,
                       pad: Padding) -> SigningSteps[x509.Certificate]:
    draft = asn1_x509.Certificate.load(
        builder.sign(**_builder_args(signer, hash_name, pad)).public_bytes(serialization.Encoding.DER))
    tbs = draft["tbs_certificate"]
    signature = yield SignatureRequest(signer, tbs.dump(), hash_name, pad)
    final = asn1_x509.Certificate({"tbs_certificate": tbs,
                                   "signature_algorithm": draft["signature_algorithm"],
                                   "signature_value": signature})
    return x509.load_der_x509_certificate(final.dump())


def _defaults(signer: Signer, hash_name: str | None) -> str:
    return hash_name or signer.algorithm.default_hash


def _ski(public_key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _serial() -> int:
    return secrets.randbits(63) | (1 << 62)


def make_ca(signer: Signer, subject: str | x509.Name, *, days: int = 3650,
            path_length: int | None = 1, hash_name: str | None = None,
            pad: Padding = Padding.PKCS1V15, not_before: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed CA certificate whose key stays in `signer`."""
    name = parse_dn(subject)
    start = (not_before or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(minutes=5)
    pub = signer.public_key
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name).public_key(pub)
               .serial_number(_serial())
               .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(_ski(pub), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False))
    return run_signing(_certificate_steps(builder, signer, _defaults(signer, hash_name), pad))


def issued_certificate_steps(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    public_key,
    subject: str | x509.Name,
    *,
    not_after: dt.datetime | None = None,
    days: int = 825,
    is_ca: bool = False,
    key_usage: str = "signature",
    extended_key_usage: Sequence[ObjectIdentifier] = (),
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    other_names: Iterable[x509.OtherName] = (),
    extra_extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    hash_name: str | None = None,
    pad: Padding = Padding.PKCS1V15,
) -> SigningSteps[x509.Certificate]:
    """A certificate for `public_key`, issued by `ca_cert` with the key in `ca_signer`."""
    if ca_cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) \
            != ca_signer.public_key_der():
        raise CertificateError("the CA certificate does not belong to the CA key")
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    # An explicit notAfter is kept as asked (802.1AR's 99991231235959Z);
    # a lifetime in days never outlives the issuing CA.
    end = not_after or min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(parse_dn(subject)).issuer_name(ca_cert.subject).public_key(public_key)
               .serial_number(_serial()).not_valid_before(now).not_valid_after(end)
               .add_extension(_ski(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                              critical=False))
    if is_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    signs_certs = is_ca
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=key_usage == "tls" and isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False, key_agreement=False, key_cert_sign=signs_certs, crl_sign=signs_certs,
        encipher_only=False, decipher_only=False), critical=True)
    if extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
    # A CA never certifies a dNSName that is no host name (TLS server names may be wildcards).
    sans: list[x509.GeneralName] = [x509.DNSName(check_dns_name(d, "subjectAltName dNSName", wildcard=True))
                                    for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    sans += list(other_names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extra_extensions:
        builder = builder.add_extension(ext, critical=critical)
    return (yield from _certificate_steps(builder, ca_signer, _defaults(ca_signer, hash_name), pad))


issue_certificate = signing_function(issued_certificate_steps)
#: issue_certificate for servers: the event loop keeps serving while the CA key signs
issue_certificate_async = async_signing_function(issued_certificate_steps)


def crl_distribution_points(crl_urls: Sequence[str]) -> list[tuple[x509.ExtensionType, bool]]:
    """The cRLDistributionPoints extension naming `crl_urls` (none when there are none), as
    `issued_certificate_steps(extra_extensions=...)` takes it."""
    if not crl_urls:
        return []
    return [(x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier(url) for url in crl_urls], None, None, None)]), False)]


def _csr_profile(csr: x509.CertificateSigningRequest, days: int,
                 extended_key_usage: Sequence[ObjectIdentifier], dns_names: Sequence[str],
                 crl_urls: Sequence[str]) -> dict:
    check_csr(csr)
    return dict(days=days, extended_key_usage=list(extended_key_usage), dns_names=list(dns_names),
                extra_extensions=crl_distribution_points(crl_urls))


def issue_from_csr(ca_signer: Signer, ca_cert: x509.Certificate, csr: x509.CertificateSigningRequest,
                   *, days: int = 825, extended_key_usage: Sequence[ObjectIdentifier] = (),
                   dns_names: Sequence[str] = (), crl_urls: Sequence[str] = ()) -> x509.Certificate:
    """A certificate for the key and subject of `csr`, once the CSR proves possession of its key
    (`crl_urls`: where relying parties find the CA's CRL).

    A key server's CA key (a BuildingSigner) is given the CSR and the profile,
    and checks and builds the certificate itself.
    """
    profile = _csr_profile(csr, days, extended_key_usage, dns_names, crl_urls)
    if isinstance(ca_signer, BuildingSigner):
        return ca_signer.build_certificate(
            csr, days=days, extended_key_usage=[o.dotted_string for o in extended_key_usage],
            dns_names=list(dns_names), crl_urls=list(crl_urls))
    return issue_certificate(ca_signer, ca_cert, csr.public_key(), csr.subject, **profile)


async def issue_from_csr_async(ca_signer: Signer, ca_cert: x509.Certificate,
                               csr: x509.CertificateSigningRequest, *, days: int = 825,
                               extended_key_usage: Sequence[ObjectIdentifier] = (),
                               dns_names: Sequence[str] = (),
                               crl_urls: Sequence[str] = ()) -> x509.Certificate:
    """issue_from_csr for servers: the event loop keeps serving while the CA key signs."""
    profile = _csr_profile(csr, days, extended_key_usage, dns_names, crl_urls)
    if isinstance(ca_signer, BuildingSigner):
        return await ca_signer.build_certificate_async(
            csr, days=days, extended_key_usage=[o.dotted_string for o in extended_key_usage],
            dns_names=list(dns_names), crl_urls=list(crl_urls))
    return await issue_certificate_async(ca_signer, ca_cert, csr.public_key(), csr.subject, **profile)


def revocation_list_steps(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    revoked: Iterable[tuple[int, dt.datetime, x509.ReasonFlags | None]],
    *,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    hash_name: str | None = None,
    pad: Padding = Padding.PKCS1V15,
) -> SigningSteps[x509.CertificateRevocationList]:
    """An RFC 5280 CRL of `ca_cert` listing (certificate serial, revocation time, reason) entries,
    with cRLNumber `number` and the CA's authorityKeyIdentifier, signed with the CA key in `ca_signer`.
    A reason of None or unspecified is left out (RFC 5280 5.3.1)."""
    if ca_cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) \
            != ca_signer.public_key_der():
        raise CertificateError("the CA certificate does not belong to the CA key")
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject).last_update(this_update).next_update(next_update)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                              critical=False))
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason not in (None, x509.ReasonFlags.unspecified):
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    hash_name = _defaults(ca_signer, hash_name)
    draft = asn1_crl.CertificateList.load(
        builder.sign(**_builder_args(ca_signer, hash_name, pad)).public_bytes(serialization.Encoding.DER))
    tbs = draft["tbs_cert_list"]
    signature = yield SignatureRequest(ca_signer, tbs.dump(), hash_name, pad)
    final = asn1_crl.CertificateList({"tbs_cert_list": tbs, "signature_algorithm": draft["signature_algorithm"],
                                      "signature": signature})
    return x509.load_der_x509_crl(final.dump())


_issue_crl_locally_async = async_signing_function(revocation_list_steps)


async def issue_crl_async(ca_signer: Signer, ca_cert: x509.Certificate,
                          revoked: Iterable[tuple[int, dt.datetime, x509.ReasonFlags | None]], *,
                          number: int, this_update: dt.datetime,
                          next_update: dt.datetime) -> x509.CertificateRevocationList:
    """A CRL signed in the HSM, for servers: the event loop keeps serving meanwhile.

    A key server's CA key (a BuildingSigner) is given the entries and the CRL
    number and builds the CRL itself, on its own clock, for as long as
    `next_update - this_update`."""
    if isinstance(ca_signer, BuildingSigner):
        return await ca_signer.build_crl_async(list(revoked), number=number,
                                               validity=next_update - this_update)
    return await _issue_crl_locally_async(ca_signer, ca_cert, revoked, number=number,
                                          this_update=this_update, next_update=next_update)


def issue_idevid(
    ca_signer: Signer,
    ca_cert: x509.Certificate,
    public_key,
    serial: str,
    *,
    subject: str | x509.Name | None = None,
    masa_url: str | None = None,
    hardware_module: tuple[str, bytes] | None = None,
    hash_name: str | None = None,
) -> x509.Certificate:
    """An IEEE 802.1AR IDevID: subject serialNumber, notAfter 99991231235959Z,
    keyUsage digitalSignature (critical), SKI/AKI, id-pe-masa-url, optional
    hardwareModuleName otherName."""
    check_serial_number(serial, "IDevID serial number")
    base = parse_dn(subject) if subject else x509.Name([])
    attrs = [a for a in base if a.oid != NameOID.SERIAL_NUMBER]
    if not any(a.oid == NameOID.COMMON_NAME for a in attrs):
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, f"IDevID {serial}"))
    attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    extra = []
    if masa_url:
        extra.append((x509.UnrecognizedExtension(ID_PE_MASA_URL, _ia5(masa_url)), False))
    other = [hardware_module_name(*hardware_module)] if hardware_module else []
    return issue_certificate(ca_signer, ca_cert, public_key, x509.Name(attrs),
                             not_after=IDEVID_NOT_AFTER, other_names=other,
                             extra_extensions=extra, hash_name=hash_name)


# --------------------------------------------------------------------------- CSRs

def make_csr(
    signer: Signer,
    subject: str | x509.Name,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    other_names: Iterable[x509.OtherName] = (),
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    hash_name: str | None = None,
    pad: Padding = Padding.PKCS1V15,
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request whose proof of possession is signed inside `signer`."""
    hash_name = _defaults(signer, hash_name)
    builder = x509.CertificateSigningRequestBuilder().subject_name(parse_dn(subject))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    sans += list(other_names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    draft = asn1_csr.CertificationRequest.load(
        builder.sign(**_builder_args(signer, hash_name, pad)).public_bytes(serialization.Encoding.DER))
    info = draft["certification_request_info"]
    info = asn1_csr.CertificationRequestInfo({
        "version": info["version"],
        "subject": info["subject"],
        "subject_pk_info": asn1_keys.PublicKeyInfo.load(signer.public_key_der()),
        "attributes": info["attributes"],
    })
    final = asn1_csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": draft["signature_algorithm"],
        "signature": signer.sign(info.dump(), hash_name, pad),
    })
    return x509.load_der_x509_csr(final.dump())


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """Proof of possession: the CSR must be signed by the key it carries."""
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithm in a hostile CSR
        raise CertificateError(f"cannot check the CSR signature: {exc}") from None
    if not valid:
        raise CertificateError("CSR signature does not verify: the requester does not hold the key")


def csr_dns_names(csr: x509.CertificateSigningRequest) -> list[str]:
    """The dNSNames a CSR asks for in its subjectAltName, lower-cased (DNS names compare
    without case)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CertificateError(f"not a readable PKCS#10 CSR: {exc}") from None


def to_pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def to_der(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER)
