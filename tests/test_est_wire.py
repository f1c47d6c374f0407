"""EST wire formats, checked against OpenSSL's reading of them."""

from __future__ import annotations

import ipaddress
import itertools
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

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


def _chain() -> list[x509.Certificate]:
    """A root, an intermediate and a leaf (three different encodings to order)."""
    root_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    root = hx509.make_ca(root_key, "CN=EST root")
    sub_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    sub = hx509.issue_certificate(root_key, root, sub_key.public_key, "CN=EST issuing CA", is_ca=True)
    leaf = hx509.issue_certificate(sub_key, sub, SoftwareSigner.generate(KeyAlgorithm.EC_P256).public_key,
                                   "CN=pledge")
    return [leaf, sub, root]


def _openssl_certs_only(certs, tmp_path) -> bytes:
    pem = tmp_path / "certs.pem"
    pem.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
    out = openssl("crl2pkcs7", "-nocrl", "-certfile", pem, "-outform", "DER")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_certs_only_is_the_der_openssl_crl2pkcs7_writes(tmp_path):
    chain = _chain()
    # DER sorts the certificates SET by encoding; OpenSSL writes the order it is given.
    der_order = sorted(chain, key=lambda c: c.public_bytes(Encoding.DER))
    expected = _openssl_certs_only(der_order, tmp_path)
    for order in itertools.permutations(chain):
        assert certs_only(order) == expected
    for cert in chain:
        assert certs_only([cert]) == _openssl_certs_only([cert], tmp_path)


def test_parse_certs_only_reads_what_openssl_writes_in_its_order(tmp_path):
    chain = _chain()
    for order in (chain, chain[::-1]):
        written = _openssl_certs_only(order, tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert parse_certs_only(written) == order
            assert parse_certs_only(encode_body(written)) == order


def test_cryptography_reads_openssl_chain_order_only_with_a_warning(tmp_path):
    # Why parse_certs_only reads with asn1crypto: a chain not in DER order, as
    # OpenSSL-based EST servers send it, goes through cryptography's BER fallback.
    order = sorted(_chain(), key=lambda c: c.public_bytes(Encoding.DER), reverse=True)
    written = _openssl_certs_only(order, tmp_path)
    with pytest.warns(UserWarning, match="could not be parsed as DER"):
        assert pkcs7.load_der_pkcs7_certificates(written) == order


def test_certs_only_errors():
    for bad in (b"@@@", b"MAo=", encode_body(b"\x30\x00")):
        with pytest.raises(CertificateError):
            parse_certs_only(bad)
    with pytest.raises(ValueError):
        certs_only([])


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
