"""Certificates as the OpenSSL command line writes them: an IDevID whose id-pe-masa-url
is a UTF8String, and chains where an authorityKeyIdentifier does not match the
issuer's subjectKeyIdentifier. `cert verify`, `cms verify`, `verify --bulk`, the
fastpath and its reference give OpenSSL's answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clirunner import openssl, run_cli
from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import verify_certificate_item, verify_cms_item
from pledgeforge.hsm.chain import build_chain, load_certificate_file
from pledgeforge.hsm.errors import CertificateError, UntrustedSignerError
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import (MasaUrl, issue_idevid, make_ca, masa_base_url, masa_url_of,
                                  read_masa_url, to_der)

MASA_URL_OID = "1.3.6.1.5.5.7.1.32"
CA_EXTENSIONS = ("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                 "authorityKeyIdentifier=keyid\n")
LEAF_EXTENSIONS = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")


class OpensslPki:
    """Keys and certificates made by the openssl command line in a directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.path("root.key"), "-out", self.path("root.pem"),
                 "-subj", "/CN=openssl root CA", "-days", "30")

    def path(self, name: str) -> Path:
        return self.dir / name

    def run(self, *args) -> None:
        done = openssl(*args)
        assert done.returncode == 0, done.stderr.decode()

    def request(self, name: str, subject: str) -> Path:
        self.run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.path(f"{name}.key"), "-out", self.path(f"{name}.csr"), "-subj", subject)
        return self.path(f"{name}.csr")

    def sign(self, csr: Path, name: str, issuer: str, extensions: str) -> Path:
        """`openssl x509 -req -extfile`: the certificate `name`.pem for csr, issued by `issuer`."""
        ext = self.path(f"{name}.cnf")
        ext.write_text(extensions)
        self.run("x509", "-req", "-in", csr, "-CA", self.path(f"{issuer}.pem"),
                 "-CAkey", self.path(f"{issuer}.key"), "-CAcreateserial", "-days", "30",
                 "-extfile", ext, "-out", self.path(f"{name}.pem"))
        return self.path(f"{name}.pem")

    def cert(self, name: str):
        return load_certificate_file(str(self.path(f"{name}.pem")))[0]

    def der(self, name: str) -> bytes:
        return to_der(self.cert(name))

    def cms_signed_by(self, signer: str, *, certfile: str | None = None) -> Path:
        content = self.path("content.json")
        content.write_bytes(b'{"ietf-voucher-request:voucher":{"serial-number":"IO-2"}}')
        out = self.path(f"{signer}-signed.der")
        extra = ["-certfile", self.path(f"{certfile}.pem")] if certfile else []
        self.run("cms", "-sign", "-binary", "-nodetach", "-outform", "DER", "-in", content,
                 "-econtent_type", "1.2.840.113549.1.9.16.1.40", "-signer", self.path(f"{signer}.pem"),
                 "-inkey", self.path(f"{signer}.key"), "-out", out, *extra)
        return out


def agree_certificates(items, anchors, extra=()) -> list[Result]:
    """Fastpath and reference in certificate mode; their common codes."""
    fast = BulkVerifier(anchors, extra, threads=2).verify_batch(list(items), certificates=True)
    ref = [verify_certificate_item(i, anchors, extra)[0] for i in items]
    assert [r.code for r in fast] == ref
    return ref


def agree_cms(items, anchors, extra=()) -> list[Result]:
    fast = BulkVerifier(anchors, extra, threads=2).verify_batch(list(items))
    ref = [verify_cms_item(i, anchors, extra)[0] for i in items]
    assert [r.code for r in fast] == ref
    return ref


# --------------------------------------------------------------------------- id-pe-masa-url

@pytest.fixture
def utf8_idevid(tmp_path) -> OpensslPki:
    pki = OpensslPki(tmp_path)
    pki.sign(pki.request("idevid", "/CN=IDevID IO-2/serialNumber=IO-2"), "idevid", "root",
             LEAF_EXTENSIONS + f"{MASA_URL_OID}=ASN1:UTF8String:masa.example.com:9443\n")
    return pki


def test_utf8string_masa_url_is_read_and_reported(utf8_idevid, tmp_path):
    pki = utf8_idevid
    parsed = openssl("asn1parse", "-in", pki.path("idevid.pem")).stdout.decode()
    assert "0C156D6173612E6578616D706C652E636F6D3A39343433" in parsed     # UTF8String, tag 0x0C
    assert openssl("verify", "-CAfile", pki.path("root.pem"), pki.path("idevid.pem")).returncode == 0
    idevid = pki.cert("idevid")
    assert read_masa_url(idevid) == MasaUrl("masa.example.com:9443", "UTF8String")
    assert masa_base_url(masa_url_of(idevid)) == "https://masa.example.com:9443/.well-known/brski"

    as_json = run_cli("cert", "verify", "--in", pki.path("idevid.pem"), "--anchors", pki.path("root.pem"),
                      "--json")
    assert as_json.returncode == 0, as_json.stderr.decode()
    report = json.loads(as_json.stdout)
    assert report["masa-url"] == "masa.example.com:9443" and report["serial-number"] == "IO-2"
    assert len(report["nonconformances"]) == 1 and "UTF8String" in report["nonconformances"][0]
    assert "RFC 8995" in report["nonconformances"][0]
    text = run_cli("cert", "verify", "--in", pki.path("idevid.pem"), "--anchors", pki.path("root.pem"))
    assert text.returncode == 0, text.stderr.decode()
    lines = text.stdout.decode().splitlines()
    assert "masa-url: masa.example.com:9443" in lines
    assert [line for line in lines if line.startswith("nonconformance: ")] == \
        [f"nonconformance: {read_masa_url(idevid).problem}"]

    # Fastpath and reference pass it, as a certificate and as the signer of a voucher-request.
    anchors = [pki.cert("root")]
    assert agree_certificates([pki.der("idevid")], anchors) == [Result.OK]
    assert agree_cms([pki.cms_signed_by("idevid").read_bytes()], anchors) == [Result.OK]


def test_masa_url_is_written_as_ia5string():
    ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = make_ca(ca_key, "CN=ours")
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    idevid = issue_idevid(ca_key, ca, key.public_key, "IO-3", masa_url="masa.example.com")
    assert read_masa_url(idevid) == MasaUrl("masa.example.com", "IA5String")
    assert read_masa_url(idevid).problem is None
    parsed = openssl("asn1parse", "-inform", "DER", input=to_der(idevid)).stdout.decode()
    assert "[HEX DUMP]:1610" + b"masa.example.com".hex().upper() in parsed   # IA5String, tag 0x16


def test_a_masa_url_of_another_type_is_one_clear_error(tmp_path):
    pki = OpensslPki(tmp_path)
    pki.sign(pki.request("idevid", "/CN=IDevID IO-4/serialNumber=IO-4"), "idevid", "root",
             LEAF_EXTENSIONS + f"{MASA_URL_OID}=ASN1:PRINTABLESTRING:masa.example.com\n")
    with pytest.raises(CertificateError, match="PrintableString"):
        read_masa_url(pki.cert("idevid"))
    cli = run_cli("cert", "verify", "--in", pki.path("idevid.pem"), "--anchors", pki.path("root.pem"))
    assert cli.returncode == 1
    assert cli.stderr.decode().splitlines() == [
        "pledgeforge: error: id-pe-masa-url is a PrintableString, not an IA5String "
        "(nor the UTF8String some vendors write)"]


# --------------------------------------------------------------------------- authorityKeyIdentifier

@pytest.fixture
def aki_pki(tmp_path) -> OpensslPki:
    """root -> intermediate -> leaf, and the same intermediate (same key, same name, signed by
    the root) re-issued with a subjectKeyIdentifier that is not the one the leaf names."""
    pki = OpensslPki(tmp_path)
    csr = pki.request("intermediate", "/CN=openssl intermediate CA")
    pki.sign(csr, "intermediate", "root", CA_EXTENSIONS + "subjectKeyIdentifier=hash\n")
    pki.sign(csr, "intermediate-other-ski", "root",
             CA_EXTENSIONS + "subjectKeyIdentifier=00112233445566778899AABBCCDDEEFF00112233\n")
    pki.sign(pki.request("leaf", "/CN=registrar/serialNumber=IO-5"), "leaf", "intermediate",
             LEAF_EXTENSIONS)
    # A root of the same name and key, but another subjectKeyIdentifier, as the anchor.
    pki.run("req", "-x509", "-key", pki.path("root.key"), "-out", pki.path("root-other-ski.pem"),
            "-subj", "/CN=openssl root CA", "-days", "30",
            "-addext", "subjectKeyIdentifier=FFEEDDCCBBAA99887766554433221100FFEEDDCC")
    pki.sign(pki.request("direct", "/CN=direct/serialNumber=IO-6"), "direct", "root", LEAF_EXTENSIONS)
    (pki.path("both.pem")).write_bytes(pki.path("intermediate-other-ski.pem").read_bytes()
                                       + pki.path("intermediate.pem").read_bytes())
    return pki


def _openssl_verifies(pki: OpensslPki, leaf: str, anchor: str, untrusted: str | None) -> bool:
    extra = ["-untrusted", pki.path(f"{untrusted}.pem")] if untrusted else []
    return openssl("verify", "-CAfile", pki.path(f"{anchor}.pem"), *extra,
                   pki.path(f"{leaf}.pem")).returncode == 0


# (leaf, anchor, intermediates, OpenSSL's answer)
AKI_CASES = [
    ("leaf", "root", "intermediate", True),
    ("leaf", "root", "intermediate-other-ski", False),
    ("leaf", "root", "both", True),                      # the path through the matching one
    ("direct", "root", None, True),
    ("direct", "root-other-ski", None, False),           # the anchor itself does not match
]


@pytest.mark.parametrize("leaf,anchor,untrusted,valid", AKI_CASES)
def test_chain_building_follows_the_authority_key_identifier(aki_pki, leaf, anchor, untrusted, valid):
    pki = aki_pki
    assert _openssl_verifies(pki, leaf, anchor, untrusted) is valid
    anchors = [pki.cert(anchor)]
    extra = load_certificate_file(str(pki.path(f"{untrusted}.pem"))) if untrusted else []
    if valid:
        path = build_chain(pki.cert(leaf), anchors, extra)
        assert all(child.issuer == parent.subject for child, parent in zip(path, path[1:]))
        if untrusted:
            assert path[1] == pki.cert("intermediate")
    else:
        with pytest.raises(UntrustedSignerError):
            build_chain(pki.cert(leaf), anchors, extra)

    cli = run_cli("cert", "verify", "--in", pki.path(f"{leaf}.pem"), "--anchors", pki.path(f"{anchor}.pem"),
                  *(["--certfile", pki.path(f"{untrusted}.pem")] if untrusted else []))
    assert (cli.returncode == 0) is valid, cli.stderr.decode()
    if not valid:
        assert "does not chain" in cli.stderr.decode()

    expected = Result.OK if valid else Result.UNTRUSTED_SIGNER
    assert agree_certificates([pki.der(leaf)], anchors, extra) == [expected]


@pytest.mark.parametrize("leaf,anchor,untrusted,valid", AKI_CASES)
def test_cms_verify_and_bulk_follow_the_authority_key_identifier(aki_pki, tmp_path, leaf, anchor,
                                                                  untrusted, valid):
    """The intermediates travel inside the CMS, as a registrar's chain does."""
    pki = aki_pki
    signed = pki.cms_signed_by(leaf, certfile=untrusted)
    verified = openssl("cms", "-verify", "-inform", "DER", "-in", signed, "-CAfile",
                       pki.path(f"{anchor}.pem"), "-purpose", "any")
    assert (verified.returncode == 0) is valid, verified.stderr.decode()
    cli = run_cli("cms", "verify", "--in", signed, "--anchors", pki.path(f"{anchor}.pem"))
    assert (cli.returncode == 0) is valid, cli.stderr.decode()
    bulk = run_cli("verify", "--bulk", signed, "--anchors", pki.path(f"{anchor}.pem"), "--json")
    summary = json.loads(bulk.stdout.decode().splitlines()[-1])["summary"]
    assert summary["OK" if valid else "UNTRUSTED_SIGNER"] == 1, bulk.stdout
    assert (bulk.returncode == 0) is valid
    expected = Result.OK if valid else Result.UNTRUSTED_SIGNER
    assert agree_cms([signed.read_bytes()], [pki.cert(anchor)]) == [expected]
