"""Certificate paths signed with every supported scheme: the fastpath and the reference agree.

Root and intermediate CAs sign with ECDSA P-256/P-384 (SHA-256/384/512), RSA
PKCS#1 v1.5, RSA-PSS and Ed25519; leaves are P-256 registrars and pledges.
Each chain is checked in both modes (CMS items naming the leaf as signer, and
bare certificates, the manufacturing case) with and without the intermediate.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import verify_certificate_item, verify_cms_item
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, make_ca


@dataclass
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaves: list[tuple[SoftwareSigner, x509.Certificate]]


def _leaf_name(serial: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device {serial}"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)])


def _signer_pki(alg: KeyAlgorithm, hash_name: str, pad: Padding) -> Pki:
    """Root and intermediate keys of `alg`, every certificate signed with hash_name/pad."""
    root_key = SoftwareSigner.generate(alg)
    root = make_ca(root_key, f"CN=root {alg.value}", hash_name=hash_name, pad=pad)
    mid_key = SoftwareSigner.generate(alg)
    mid = issue_certificate(root_key, root, mid_key.public_key, f"CN=intermediate {alg.value}",
                            is_ca=True, hash_name=hash_name, pad=pad)
    leaves = []
    for i in range(2):
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        leaves.append((key, issue_certificate(mid_key, mid, key.public_key,
                                              _leaf_name(f"{alg.value}-{i}"),
                                              hash_name=hash_name, pad=pad)))
    return Pki(root, mid, leaves)


def _ed25519_cert(issuer_key, issuer_name, public_key, subject, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(issuer_key, None)


def _ed25519_pki() -> Pki:
    """Ed25519 CAs: no Signer backend holds such keys, so cryptography signs them."""
    root_key = ed25519.Ed25519PrivateKey.generate()
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root ed25519")])
    root = _ed25519_cert(root_key, root_name, root_key.public_key(), root_name, ca=True)
    mid_key = ed25519.Ed25519PrivateKey.generate()
    mid_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate ed25519")])
    mid = _ed25519_cert(root_key, root_name, mid_key.public_key(), mid_name, ca=True)
    leaves = []
    for i in range(2):
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        leaves.append((key, _ed25519_cert(mid_key, mid_name, key.public_key,
                                          _leaf_name(f"ed25519-{i}"), ca=False)))
    return Pki(root, mid, leaves)


SCHEMES = {
    "ecdsa-p256-sha256": (KeyAlgorithm.EC_P256, "sha256", Padding.PKCS1V15),
    "ecdsa-p256-sha512": (KeyAlgorithm.EC_P256, "sha512", Padding.PKCS1V15),
    "ecdsa-p384-sha384": (KeyAlgorithm.EC_P384, "sha384", Padding.PKCS1V15),
    "rsa-pkcs1-sha256": (KeyAlgorithm.RSA_2048, "sha256", Padding.PKCS1V15),
    "rsa-pkcs1-sha384": (KeyAlgorithm.RSA_2048, "sha384", Padding.PKCS1V15),
    "rsa-pss-sha256": (KeyAlgorithm.RSA_2048, "sha256", Padding.PSS),
    "rsa-pss-sha384": (KeyAlgorithm.RSA_2048, "sha384", Padding.PSS),
}


@pytest.fixture(scope="module", params=[*SCHEMES, "ed25519"])
def pki(request) -> Pki:
    if request.param == "ed25519":
        return _ed25519_pki()
    return _signer_pki(*SCHEMES[request.param])


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def serial_of(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value


def _broken_signature(cert: x509.Certificate) -> bytes:
    """The certificate with the last octet of its signature changed: still readable."""
    der = bytearray(_der(cert))
    der[-1] ^= 0x01
    x509.load_der_x509_certificate(bytes(der))
    return bytes(der)


def test_cms_items_agree(pki):
    (key0, leaf0), (key1, leaf1) = pki.leaves
    content = json.dumps({"ietf-voucher-request:voucher": {"serial-number": "x"}}).encode()
    with_chain = sign_cms(content, key0, leaf0, chain=[pki.intermediate])
    without_chain = sign_cms(content, key1, leaf1)
    forged_leaf = bytearray(with_chain)
    leaf_der = _der(leaf0)
    at = forged_leaf.index(leaf_der)
    forged_leaf[at:at + len(leaf_der)] = _broken_signature(leaf0)
    items = [with_chain, without_chain, bytes(forged_leaf)]

    for extra, expected in (([], [Result.OK, Result.UNTRUSTED_SIGNER, Result.UNTRUSTED_SIGNER]),
                            ([pki.intermediate], [Result.OK, Result.OK, Result.UNTRUSTED_SIGNER])):
        verifier = BulkVerifier([pki.root], extra, threads=2)
        fast = verifier.verify_batch(items)
        for der, got in zip(items, fast):
            want, content_out = verify_cms_item(der, [pki.root], extra)
            assert got.code is want
            if want is Result.OK:
                assert der[got.content_offset:got.content_offset + got.content_length] == content_out
        assert [r.code for r in fast] == expected
        assert [r.serial for r in fast[:2]] == [serial_of(leaf0), serial_of(leaf1)]


def test_bare_certificates_agree(pki):
    (_, leaf0), (_, leaf1) = pki.leaves
    items = [_der(leaf0), _der(leaf1), _der(pki.intermediate), _der(pki.root),
             _broken_signature(leaf0), _broken_signature(pki.intermediate)]
    verifier = BulkVerifier([pki.root], [pki.intermediate], threads=2)
    fast = verifier.verify_batch(items, certificates=True)
    for der, got in zip(items, fast):
        want, serial = verify_certificate_item(der, [pki.root], [pki.intermediate])
        assert got.code is want
        assert got.serial == serial
    assert [r.code for r in fast] == [Result.OK] * 4 + [Result.UNTRUSTED_SIGNER] * 2
    assert [r.serial for r in fast[:2]] == [serial_of(leaf0), serial_of(leaf1)]
    # Without the intermediate the leaves have no path; the intermediate still has one.
    alone = BulkVerifier([pki.root], threads=1).verify_batch(items[:3], certificates=True)
    assert [r.code for r in alone] == [Result.UNTRUSTED_SIGNER] * 2 + [Result.OK]


def test_each_certificate_signature_is_checked_once_per_batch(pki):
    """Many items naming the same two leaves: the leaf and intermediate signatures are
    each verified once, not once per item."""
    items = [sign_cms(str(i).encode(), key, cert, chain=[pki.intermediate])
             for i, (key, cert) in zip(range(40), pki.leaves * 20)]
    verifier = BulkVerifier([pki.root], threads=2)
    assert all(r.ok for r in verifier.verify_batch(items))
    # leaf0 <- intermediate, leaf1 <- intermediate, intermediate <- root
    assert verifier.stats["cert_verifies"] == 3
    assert verifier.stats["cert_parses"] == 4
