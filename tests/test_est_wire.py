"""EST wire formats, checked against OpenSSL's reading of them."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509

from clirunner import openssl
from pledgeforge.hsm import x509 as hx509
from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.est_wire import (CsrAttributes, certs_only, decode_body, encode_body,
                                      parse_certs_only)
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner


def test_certs_only_round_trip_and_openssl_reads_it(tmp_path):
    ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = hx509.make_ca(ca_key, "CN=EST CA")
    leaf = hx509.issue_certificate(ca_key, ca, SoftwareSigner.generate(KeyAlgorithm.EC_P256).public_key, "CN=dev")
    body = encode_body(certs_only([leaf, ca]))
    assert max(len(line) for line in body.splitlines()) <= 64
    assert parse_certs_only(body) == [leaf, ca]
    (tmp_path / "p7.der").write_bytes(decode_body(body, "test"))
    printed = openssl("pkcs7", "-inform", "DER", "-in", tmp_path / "p7.der", "-print_certs").stdout.decode()
    assert "subject=CN = dev" in printed and "subject=CN = EST CA" in printed


def test_certs_only_errors():
    for bad in (b"@@@", b"MAo=", encode_body(b"\x30\x00")):
        with pytest.raises(CertificateError):
            parse_certs_only(bad)


def test_csr_attributes_round_trip_and_openssl_parses_them(tmp_path):
    asked = CsrAttributes(subject_oids=["2.5.4.5", "2.5.4.3"], hash_name="sha384",
                          subject_alt_names=[x509.DNSName("pledge.example"),
                                             x509.IPAddress(ipaddress.ip_address("fd00::7")),
                                             hx509.hardware_module_name("1.3.6.1.4.1.60000.1", b"SN-1")])
    der = asked.encode()
    got = CsrAttributes.decode(encode_body(der))
    assert got.subject_oids == asked.subject_oids and got.hash_name == "sha384"
    assert got.subject_alt_names == asked.subject_alt_names
    (tmp_path / "attrs.der").write_bytes(der)
    parsed = openssl("asn1parse", "-inform", "DER", "-in", tmp_path / "attrs.der").stdout.decode()
    assert ":serialNumber" in parsed and ":ecdsa-with-SHA384" in parsed and "Subject Alternative Name" in parsed


def test_csr_attributes_in_extension_request_form_and_unknown_oids():
    # SEQUENCE { OID 1.2.3.4, Attribute { extensionRequest, SET { Extensions { SAN dns:x.example } } } }
    san = x509.SubjectAlternativeName([x509.DNSName("x.example")]).public_bytes()
    ext = bytes([0x30, len(san) + 7]) + bytes.fromhex("0603551d11") + bytes([0x04, len(san)]) + san
    exts = bytes([0x30, len(ext)]) + ext
    attr_values = bytes([0x31, len(exts)]) + exts
    attr = bytes([0x30, len(attr_values) + 11]) + bytes.fromhex("06092a864886f70d01090e") + attr_values
    body = bytes.fromhex("06032a0304") + attr
    got = CsrAttributes.decode(bytes([0x30, len(body)]) + body)
    assert got.subject_alt_names == [x509.DNSName("x.example")] and got.unknown == ["1.2.3.4"]
    with pytest.raises(CertificateError):
        CsrAttributes.decode(b"\x30\x03\x02\x01\x01")
