"""Where the reference's answer comes from cryptography's parser: name strings and RSA
keys. The profile's NAME_STRING_TYPES must be what cryptography reads, and the
fastpath must agree with the reference on certificates that use them."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import verify_certificate_item, verify_cms_item
from pledgeforge.hsm import verification_profile as profile
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, make_ca

CN = bytes.fromhex("0603550403")            # OBJECT IDENTIFIER commonName
UNIQUE_ID = bytes.fromhex("060355042d")     # OBJECT IDENTIFIER x500UniqueIdentifier
SERIAL = bytes.fromhex("0603550405")        # OBJECT IDENTIFIER serialNumber


def _tlv(tag: int, value: bytes) -> bytes:
    assert len(value) < 0x80
    return bytes([tag, len(value)]) + value


def _long_tlv(tag: int, value: bytes) -> bytes:
    if len(value) < 0x80:
        return _tlv(tag, value)
    size = len(value).to_bytes((len(value).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _certificate_with_attribute(key, attribute: bytes) -> bytes:
    """A certificate whose subject is serialNumber "SN-7" plus one RDN holding
    `attribute` (an AttributeTypeAndValue's contents, written as given), signed by key."""
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    template = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(7)
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
                .sign(key, hashes.SHA256())).tbs_certificate_bytes
    subject = _tlv(0x30, _tlv(0x31, _tlv(0x30, SERIAL + _tlv(0x13, b"SN-7")))
                   + _tlv(0x31, _tlv(0x30, attribute)))
    # The template's subject is its issuer's name again: the second copy is the subject.
    header = 2 + (template[1] & 0x7F if template[1] & 0x80 else 0)
    content, name = template[header:], issuer.public_bytes()
    at = content.index(name, content.index(name) + 1)
    tbs = _long_tlv(0x30, content[:at] + subject + content[at + len(name):])
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    return _long_tlv(0x30, tbs + algorithm + _long_tlv(0x03, b"\x00" + signature))


def _strings():
    """(attribute, whether cryptography reads the name) for every universal string tag."""
    for tag in range(1, 31):
        value = {0x1C: b"\x00\x00\x00a\x00\x00\x00b", 0x1E: b"\x00a\x00b", 0x03: b"\x00ab",
                 0x01: b"\xff", 0x05: b""}.get(tag, b"ab")
        yield CN + _tlv(tag, value), tag
    yield UNIQUE_ID + _tlv(0x0C, b"ab"), 0x0C
    yield UNIQUE_ID + _tlv(0x03, b"\x00ab"), "bit string"


@pytest.fixture(scope="module")
def issuer_key():
    return ec.generate_private_key(ec.SECP256R1())


def test_name_string_types_are_what_cryptography_reads_and_both_verifiers_agree(issuer_key):
    items, readable = [], {}
    for attribute, kind in _strings():
        try:
            der = _certificate_with_attribute(issuer_key, attribute)
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue                            # does not load at all: not a name string
        try:
            cert.subject.rfc4514_string()
            readable[(attribute[:5], kind)] = True
        except (ValueError, TypeError):
            readable[(attribute[:5], kind)] = False
        items.append(der)
    assert {kind for (oid, kind), ok in readable.items() if ok and oid == CN} == \
        set(profile.NAME_STRING_TYPES)
    assert readable[(UNIQUE_ID, 0x0C)] and readable[(UNIQUE_ID, "bit string")]
    assert not readable.get((CN, 0x03), False)
    # The fastpath's answers and serials follow: unreadable names are MALFORMED and
    # carry no serial; readable ones chain to nothing here.
    anchor = make_ca(SoftwareSigner.generate(KeyAlgorithm.EC_P256), "CN=unrelated")
    results = BulkVerifier([anchor], threads=1, check_time=False).verify_batch(items, certificates=True)
    for der, got in zip(items, results):
        assert (got.code, got.serial) == verify_certificate_item(der, [anchor], check_time=False)
    assert {r.code for r in results} == {Result.MALFORMED, Result.UNTRUSTED_SIGNER}


def test_rsa_keys_cryptography_cannot_read_make_the_item_malformed_for_both():
    ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = make_ca(ca_key, "CN=RSA keys CA")
    key = SoftwareSigner.generate(KeyAlgorithm.RSA_2048)
    signer = issue_certificate(ca_key, ca, key.public_key, "CN=rsa signer")
    good = sign_cms(b'{"x": 1}', key, signer)
    modulus = b"\x02\x82\x01\x01\x00"           # INTEGER, 257 octets: 00 then the top byte >= 0x80
    at = good.index(modulus) + len(modulus) - 1
    negative = good[:at] + b"\x80" + good[at + 1:]
    padded = good[:at + 1] + b"\x2a" + good[at + 2:]
    verifier = BulkVerifier([ca], threads=1, check_time=False)
    for item in (good, negative, padded):
        want = verify_cms_item(item, [ca], check_time=False)[0]
        assert verifier.verify_batch([item])[0].code == want
        assert want == (Result.OK if item is good else Result.MALFORMED)
