"""Certificate profiles and names (pure logic, software keys: no key store needed here)."""

from __future__ import annotations

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import NameOID

from pledgeforge.hsm import x509 as hx509
from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner


def test_dn_forms():
    a = hx509.parse_dn("CN=router 7,O=Example\\, Inc.,C=DE")
    b = hx509.parse_dn("/C=DE/O=Example, Inc./CN=router 7")
    assert a == b
    assert a.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example, Inc."
    for bad in ("", "CN", "XX=1"):
        with pytest.raises(CertificateError):
            hx509.parse_dn(bad)


def test_masa_url_forms():
    assert hx509.masa_base_url("highway-test.example.com:9443") == "https://highway-test.example.com:9443/.well-known/brski"
    assert hx509.masa_base_url("https://m.example/custom/") == "https://m.example/custom"
    assert hx509.masa_base_url("https://m.example") == "https://m.example/.well-known/brski"


def test_idevid_profile_details():
    ca = SoftwareSigner.generate(KeyAlgorithm.EC_P384)
    ca_cert = hx509.make_ca(ca, "CN=Mfg CA")
    dev = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    long_url = "masa.example.com/" + "p" * 200
    cert = hx509.issue_idevid(ca, ca_cert, dev.public_key, "SN-9", subject="CN=box,serialNumber=ignored",
                              masa_url=long_url, hardware_module=("1.3.6.1.4.1.9.21.2.3", b"SN-9"))
    assert hx509.serial_number_of(cert) == "SN-9"
    assert hx509.masa_url_of(cert) == long_url  # long form DER length
    assert cert.not_valid_after_utc.year == 9999
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    other = san.get_values_for_type(x509.OtherName)[0]
    assert other.type_id == hx509.ID_ON_HARDWARE_MODULE_NAME
    seq = core.Sequence.load(other.value)
    assert seq[0].dotted == "1.3.6.1.4.1.9.21.2.3" and seq[1].native == b"SN-9"
    cert.verify_directly_issued_by(ca_cert)


def test_csr_proof_of_possession():
    key = SoftwareSigner.generate(KeyAlgorithm.RSA_2048)
    csr = hx509.make_csr(key, "CN=dev", dns_names=["dev.example"])
    hx509.check_csr(csr)
    assert csr.public_key().public_numbers() == key.public_key.public_numbers()
    # Splice another key's subjectPublicKeyInfo in: the signature no longer proves possession.
    from asn1crypto import csr as acsr, keys as akeys

    other = SoftwareSigner.generate(KeyAlgorithm.RSA_2048)
    req = acsr.CertificationRequest.load(hx509.to_der(csr))
    req["certification_request_info"]["subject_pk_info"] = akeys.PublicKeyInfo.load(other.public_key_der())
    forged = x509.load_der_x509_csr(req.dump(force=True))
    with pytest.raises(CertificateError, match="does not verify"):
        hx509.check_csr(forged)


def test_issuer_key_must_match_ca_certificate():
    ca_cert = hx509.make_ca(SoftwareSigner.generate(KeyAlgorithm.EC_P256), "CN=A")
    with pytest.raises(CertificateError, match="does not belong"):
        hx509.issue_certificate(SoftwareSigner.generate(KeyAlgorithm.EC_P256), ca_cert,
                                SoftwareSigner.generate(KeyAlgorithm.EC_P256).public_key, "CN=x")
