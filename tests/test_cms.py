"""CMS SignedData signed inside SoftHSM2, checked by OpenSSL, and the published vectors."""

from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import cms as acms
from asn1crypto import x509 as asn1_x509

from clirunner import openssl
from pledgeforge.hsm import keystore
from pledgeforge.hsm import x509 as hx509
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import (ID_CT_ANIMA_JSON_VOUCHER, ID_DATA, load_cms_input, sign_cms,
                                 verify_cms)
from pledgeforge.hsm.errors import (BadSignatureError, DigestMismatchError,
                                    ExpiredCertificateError, MalformedCmsError,
                                    UnexpectedContentTypeError, UntrustedSignerError)
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, SoftwareSigner

from vectors import VECTORS
CONTENT = b'{"ietf-voucher:voucher":{"serial-number":"PF-0001","assertion":"logged"}}'


def _ca_in_token(token, algorithm="ec-p256", label="ca"):
    signer = keystore.generate_key(token.uri(label), algorithm)
    return signer, hx509.make_ca(signer, f"CN=Test {label} {algorithm},O=pledgeforge tests")


@pytest.mark.parametrize("algorithm,pad", [("ec-p256", Padding.PKCS1V15), ("ec-p384", Padding.PKCS1V15),
                                           ("rsa-2048", Padding.PKCS1V15), ("rsa-2048", Padding.PSS)])
@pytest.mark.parametrize("content_type", ["voucher", "data"])
def test_cms_signed_in_softhsm_verifies_with_openssl(token, tmp_path, algorithm, pad, content_type):
    ca_signer, ca_cert = _ca_in_token(token, "ec-p384")
    key = keystore.generate_key(token.uri("signer"), algorithm)
    cert = hx509.issue_certificate(ca_signer, ca_cert, key.public_key, "CN=MASA,O=pledgeforge tests")
    der = sign_cms(CONTENT, key, cert, content_type=content_type, pad=pad)
    (tmp_path / "ca.pem").write_bytes(hx509.to_pem(ca_cert))
    (tmp_path / "v.der").write_bytes(der)
    result = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "v.der",
                     "-CAfile", tmp_path / "ca.pem", "-purpose", "any")
    assert result.returncode == 0, result.stderr
    assert result.stdout == CONTENT
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "v.der").stdout
    expected = b"(1.2.840.113549.1.9.16.1.40)" if content_type == "voucher" else b"pkcs7-data"
    econtent_line = next(l for l in printed.splitlines() if b"eContentType:" in l)
    assert expected in econtent_line
    # RFC 5652 5.1: version 3 when eContentType is not id-data; the SignerInfo (sid
    # issuerAndSerialNumber) is version 1.
    versions = [l.strip() for l in printed.splitlines() if l.strip().startswith(b"version:")]
    assert versions[0] == (b"version: 3" if content_type == "voucher" else b"version: 1")
    assert versions[-1] == b"version: 1"
    for attr in (b"contentType", b"signingTime", b"messageDigest"):
        assert attr in printed
    ours = verify_cms(der, [ca_cert])
    assert ours.content == CONTENT and ours.signer_cert == cert and ours.chain[-1] == ca_cert
    assert ours.content_type == (ID_CT_ANIMA_JSON_VOUCHER if content_type == "voucher" else ID_DATA)


def test_chain_certificates_are_included_and_used(token):
    root_signer, root = _ca_in_token(token, "ec-p384", "root")
    inter_key = keystore.generate_key(token.uri("inter"), "ec-p256")
    inter = hx509.issue_certificate(root_signer, root, inter_key.public_key, "CN=Intermediate",
                                    is_ca=True)
    leaf_key = keystore.generate_key(token.uri("leaf"), "ec-p256")
    leaf = hx509.issue_certificate(inter_key, inter, leaf_key.public_key, "CN=Leaf")
    der = sign_cms(CONTENT, leaf_key, leaf, chain=[inter])
    assert [c.subject for c in verify_cms(der, [root]).chain] == [leaf.subject, inter.subject, root.subject]
    without_chain = sign_cms(CONTENT, leaf_key, leaf)
    with pytest.raises(UntrustedSignerError):
        verify_cms(without_chain, [root])
    assert verify_cms(without_chain, [root], extra_certs=[inter]).content == CONTENT


@pytest.mark.parametrize("algorithm,pad", [(KeyAlgorithm.EC_P256, Padding.PKCS1V15),
                                           (KeyAlgorithm.RSA_2048, Padding.PSS)])
@pytest.mark.parametrize("content_type", ["voucher", "data"])
@pytest.mark.parametrize("size", [1, 300, 70_000])
def test_signed_data_is_the_der_asn1crypto_writes(algorithm, pad, content_type, size):
    """The builder frames precomputed parts by hand: asn1crypto, re-encoding every value
    from what it parsed, must write the very same bytes (definite lengths, sorted SETs,
    the versions and signing-time type of RFC 5652)."""
    ca = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca_cert = hx509.make_ca(ca, "CN=Unit CA")
    key = SoftwareSigner.generate(algorithm)
    cert = hx509.issue_certificate(ca, ca_cert, key.public_key, "CN=Unit signer")
    content = b"v" * size
    for when in (dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                 dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)):
        der = sign_cms(content, key, cert, [ca_cert], content_type=content_type, pad=pad,
                       signing_time=when)
        info = acms.ContentInfo.load(der)
        assert info.dump(force=True) == der
        signer_info = info["content"]["signer_infos"][0]
        times = [a["values"][0] for a in signer_info["signed_attrs"] if a["type"].native == "signing_time"]
        assert times[0].name == ("utc_time" if when.year < 2050 else "generalized_time")
        assert times[0].native == when
        assert verify_cms(der, [ca_cert], check_time=False).content == content


# ----------------------------------------------------------------- failures, each with its name

@pytest.fixture(scope="module")
def signed():
    ca = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca_cert = hx509.make_ca(ca, "CN=Unit CA")
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    cert = hx509.issue_certificate(ca, ca_cert, key.public_key, "CN=Unit signer", days=30)
    return ca_cert, cert, key, sign_cms(CONTENT, key, cert)


def test_digest_mismatch_when_content_altered(signed):
    ca_cert, _, _, der = signed
    at = der.index(b"PF-0001")
    tampered = der[:at] + b"X" + der[at + 1:]
    with pytest.raises(DigestMismatchError):
        verify_cms(tampered, [ca_cert])


def test_bad_signature_when_signature_altered(signed):
    ca_cert, _, _, der = signed
    tampered = der[:-3] + bytes([der[-3] ^ 0x01]) + der[-2:]
    with pytest.raises((BadSignatureError, MalformedCmsError)):
        verify_cms(tampered, [ca_cert])
    # Structurally perfect, but signed by another key than the certificate's.
    _, cert, _, _ = signed
    impostor = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    info = acms.ContentInfo.load(sign_cms(CONTENT, impostor, hx509.make_ca(impostor, "CN=Impostor")))
    real = asn1_x509.Certificate.load(hx509.to_der(cert))
    info["content"]["certificates"] = [acms.CertificateChoices({"certificate": real})]
    info["content"]["signer_infos"][0]["sid"] = acms.SignerIdentifier({"issuer_and_serial_number": {
        "issuer": real.issuer, "serial_number": real.serial_number}})
    with pytest.raises(BadSignatureError):
        verify_cms(info.dump(force=True), [ca_cert])


def test_untrusted_and_expired_are_distinct(signed):
    ca_cert, cert, _, der = signed
    stranger = hx509.make_ca(SoftwareSigner.generate(KeyAlgorithm.EC_P256), "CN=Unit CA")
    with pytest.raises(UntrustedSignerError) as info:
        verify_cms(der, [stranger])
    assert not isinstance(info.value, ExpiredCertificateError)
    later = cert.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(ExpiredCertificateError):
        verify_cms(der, [ca_cert], at_time=later)
    assert verify_cms(der, [ca_cert], at_time=later, check_time=False).content == CONTENT


def test_truncated_and_garbage_are_malformed(signed):
    ca_cert, _, _, der = signed
    for bad in (der[: len(der) // 2], der[:10], b"", b"\x30\x03\x02\x01\x01", der + b"\x00"):
        with pytest.raises(MalformedCmsError):
            verify_cms(bad, [ca_cert])
    with pytest.raises(MalformedCmsError):
        load_cms_input(b"this is not base64 at all!")


def test_unexpected_content_type_from_openssl(tmp_path):
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca_cert = hx509.make_ca(key, "CN=Self")
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "key.pem").write_bytes(key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "cert.pem").write_bytes(hx509.to_pem(ca_cert))
    (tmp_path / "in.json").write_bytes(CONTENT)
    made = openssl("cms", "-sign", "-nodetach", "-binary", "-outform", "DER", "-in", tmp_path / "in.json",
                   "-signer", tmp_path / "cert.pem", "-inkey", tmp_path / "key.pem",
                   "-econtent_type", "1.2.3.4", "-out", tmp_path / "odd.der")
    assert made.returncode == 0, made.stderr
    with pytest.raises(UnexpectedContentTypeError, match="1.2.3.4"):
        verify_cms((tmp_path / "odd.der").read_bytes(), [ca_cert])
    # And OpenSSL's own id-data signature verifies with us.
    made = openssl("cms", "-sign", "-nodetach", "-binary", "-outform", "DER", "-in", tmp_path / "in.json",
                   "-signer", tmp_path / "cert.pem", "-inkey", tmp_path / "key.pem", "-out", tmp_path / "d.der")
    assert made.returncode == 0, made.stderr
    assert verify_cms((tmp_path / "d.der").read_bytes(), [ca_cert]).content == CONTENT


# ----------------------------------------------------------------- published vectors

VECTOR_CASES = [
    ("rfc8995-appendixC/vr_00-D0-E5-F2-00-02.b64", "rfc8995-appendixC/vendor.crt", None),
    ("rfc8995-appendixC/voucher_00-D0-E5-F2-00-02.b64", "rfc8995-appendixC/vendor.crt", "rfc8995-appendixC/masa.crt"),
    ("rfc8995-appendixC/parboiled_vr_00-D0-E5-F2-00-02.b64", "rfc8995-appendixC/ownerca_secp384r1.crt", None),
    ("rfc8366bis/vr_00-D0-E5-F2-00-02.b64", "rfc8995-appendixC/vendor.crt", None),
    ("rfc8366bis/voucher_00-D0-E5-F2-00-02.b64", "rfc8995-appendixC/vendor.crt", "rfc8366bis/masa-00-D0-E5-F2-00-02.crt"),
]


@pytest.mark.parametrize("cms_file,anchor,certfile", VECTOR_CASES)
def test_published_vectors_verify_and_tampering_is_caught(cms_file, anchor, certfile):
    der = load_cms_input((VECTORS / cms_file).read_bytes())
    anchors = load_certificate_file(str(VECTORS / anchor))
    extra = load_certificate_file(str(VECTORS / certfile)) if certfile else []
    result = verify_cms(der, anchors, extra, check_time=False)
    assert b'"serial-number":"00-D0-E5-F2-00-02"' in result.content
    assert result.content_type == ID_DATA
    with pytest.raises(ExpiredCertificateError):
        verify_cms(der, anchors, extra)  # the vectors' certificates expired years ago
    at = der.index(b"serial-number")
    tampered = der[:at] + bytes([der[at] ^ 0x20]) + der[at + 1:]
    with pytest.raises(DigestMismatchError):
        verify_cms(tampered, anchors, extra, check_time=False)


def test_rfc8366bis_does_not_chain_to_its_shipped_rsa_vendor():
    der = load_cms_input((VECTORS / "rfc8366bis/vr_00-D0-E5-F2-00-02.b64").read_bytes())
    with pytest.raises(UntrustedSignerError):
        verify_cms(der, load_certificate_file(str(VECTORS / "rfc8366bis/vendor-00-D0-E5-F2-00-02.crt")),
                   check_time=False)
