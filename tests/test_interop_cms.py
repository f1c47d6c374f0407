"""CMS as other BRSKI implementations and the OpenSSL command line write it.

SignedData version 3 with id-ct-animaJSONVoucher (what `openssl cms -sign
-econtent_type` writes and RFC 5652 5.1 requires), version 1 with it (older
implementations), a SignerInfo signatureAlgorithm of id-ecPublicKey: each is
made here by OpenSSL or by a DER edit, read by `cms verify`, hsm.cms, the
fastpath and its reference alike. What pledgeforge writes is checked by
`openssl cms`. Input that is not CMS gets one line saying what was expected
and what came.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from asn1crypto import cms as acms
from cryptography.hazmat.primitives import serialization

from clirunner import openssl, run_cli
from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import verify_cms_item
from pledgeforge.hsm.cms import (ID_CT_ANIMA_JSON_VOUCHER, ID_DATA, embedded_certificates,
                                 load_cms_input, sign_cms, unverified_content, verify_cms)
from pledgeforge.hsm.errors import BadSignatureError, MalformedCmsError
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_idevid, make_ca, to_pem

VOUCHER = b'{"ietf-voucher:voucher":{"serial-number":"IO-0001","assertion":"logged"}}'
ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"


class Pki:
    """A CA and a device, as PEM files for openssl and as objects for pledgeforge."""

    def __init__(self, directory: Path, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256):
        self.dir = directory
        self.ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.ca = make_ca(self.ca_key, "CN=interop CA")
        self.key = SoftwareSigner.generate(algorithm)
        self.cert = issue_idevid(self.ca_key, self.ca, self.key.public_key, "IO-0001")
        self.ca_pem = self._write("ca.pem", to_pem(self.ca))
        self.cert_pem = self._write("device.pem", to_pem(self.cert))
        self.key_pem = self._write("device.key", self.key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def _write(self, name: str, data: bytes) -> Path:
        (self.dir / name).write_bytes(data)
        return self.dir / name

    def openssl_sign(self, content: bytes, *args: str) -> bytes:
        """`openssl cms -sign -binary -nodetach` over content, DER out."""
        src, out = self._write("content.json", content), self.dir / "signed.der"
        made = openssl("cms", "-sign", "-binary", "-nodetach", "-outform", "DER", "-in", src,
                       "-signer", self.cert_pem, "-inkey", self.key_pem, "-out", out, *args)
        assert made.returncode == 0, made.stderr.decode()
        return out.read_bytes()

    def openssl_verify(self, der: bytes) -> tuple[int, bytes]:
        path = self._write("to-verify.der", der)
        done = openssl("cms", "-verify", "-inform", "DER", "-in", path, "-CAfile", self.ca_pem,
                       "-purpose", "any")
        return done.returncode, done.stdout

    def openssl_print(self, der: bytes) -> str:
        path = self._write("to-print.der", der)
        printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", path)
        assert printed.returncode == 0, printed.stderr.decode()
        return printed.stdout.decode()


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def versions_printed(printed: str) -> tuple[int, int]:
    """(SignedData version, SignerInfo version) from `openssl cms -cmsout -print`."""
    signed_data = int(re.search(r"^\s*d\.signedData:\s*\n\s*version: (\d+)", printed, re.M).group(1))
    signer_info = int(re.search(r"signerInfos:\s*\n\s*version: (\d+)", printed).group(1))
    return signed_data, signer_info


def agree(items, anchors, extra=()) -> list[Result]:
    """Fastpath and reference on every item, in CMS mode; their common codes."""
    fast = BulkVerifier(anchors, extra, threads=2).verify_batch(list(items))
    ref = [verify_cms_item(i, anchors, extra)[0] for i in items]
    assert [r.code for r in fast] == ref
    return ref


def with_version(der: bytes, version: str) -> bytes:
    """The SignedData version rewritten (the signature does not cover it)."""
    info = acms.ContentInfo.load(der)
    info["content"]["version"] = version
    return info.dump()


# --------------------------------------------------------------------------- version 3 read

def test_openssl_version_3_voucher_is_read_by_every_verifier(pki, tmp_path):
    der = pki.openssl_sign(VOUCHER, "-econtent_type", ID_CT_ANIMA_JSON_VOUCHER)
    assert versions_printed(pki.openssl_print(der))[0] == 3
    verified = verify_cms(der, [pki.ca])
    assert verified.content == VOUCHER and verified.content_type == ID_CT_ANIMA_JSON_VOUCHER
    assert unverified_content(der) == VOUCHER and embedded_certificates(der) == [pki.cert]
    cli = run_cli("cms", "verify", "--in", tmp_path / "signed.der", "--anchors", pki.ca_pem)
    assert cli.returncode == 0, cli.stderr.decode()
    assert cli.stdout == VOUCHER
    # Older implementations: version 1 with the voucher content type, still read.
    older = with_version(der, "v1")
    assert versions_printed(pki.openssl_print(older))[0] == 1
    assert pki.openssl_verify(older) == (0, VOUCHER)
    assert verify_cms(older, [pki.ca]).content == VOUCHER
    tampered = bytearray(der)
    tampered[tampered.index(b"IO-0001")] ^= 1
    assert agree([der, older, bytes(tampered)], [pki.ca]) == \
        [Result.OK, Result.OK, Result.DIGEST_MISMATCH]


@pytest.mark.parametrize("version", ["v0", "v2", "v4", "v5"])
def test_other_versions_are_not_judged_as_openssl_does_not(pki, version):
    der = with_version(pki.openssl_sign(VOUCHER, "-econtent_type", ID_CT_ANIMA_JSON_VOUCHER), version)
    assert pki.openssl_verify(der) == (0, VOUCHER)
    assert verify_cms(der, [pki.ca]).content == VOUCHER
    assert agree([der], [pki.ca]) == [Result.OK]


def test_structured_content_types_are_malformed_in_every_version(pki):
    """An eContentType naming a structure (here signedData) is no voucher, whichever
    ContentInfo form asn1crypto reads it with; both verifiers agree."""
    der = pki.openssl_sign(VOUCHER, "-econtent_type", "1.2.840.113549.1.7.2")
    items = [with_version(der, v) for v in ("v1", "v3")]
    assert agree(items, [pki.ca]) == [Result.MALFORMED, Result.MALFORMED]


# --------------------------------------------------------------------------- version 3 written

@pytest.mark.parametrize("content_type,expected", [("voucher", (3, 1)), ("data", (1, 1))])
def test_pledgeforge_writes_the_version_rfc5652_asks_for(pki, content_type, expected):
    der = sign_cms(VOUCHER, pki.key, pki.cert, content_type=content_type)
    assert versions_printed(pki.openssl_print(der)) == expected
    assert pki.openssl_verify(der) == (0, VOUCHER)
    assert verify_cms(der, [pki.ca]).content_type == \
        (ID_CT_ANIMA_JSON_VOUCHER if content_type == "voucher" else ID_DATA)
    assert agree([der], [pki.ca]) == [Result.OK]


# --------------------------------------------------------------------------- id-ecPublicKey

def with_signature_algorithm(der: bytes, oid: str) -> bytes:
    """The SignerInfo's signatureAlgorithm OID replaced; the signature does not cover it."""
    info = acms.ContentInfo.load(der)
    info["content"]["signer_infos"][0]["signature_algorithm"] = {"algorithm": oid}
    return info.dump()


@pytest.mark.parametrize("algorithm,hash_name", [
    (KeyAlgorithm.EC_P256, "sha256"), (KeyAlgorithm.EC_P384, "sha384"), (KeyAlgorithm.EC_P256, "sha512"),
])
def test_id_ec_public_key_as_signature_algorithm_verifies_as_openssl_does(tmp_path, algorithm, hash_name):
    pki = Pki(tmp_path, algorithm)
    der = with_signature_algorithm(sign_cms(VOUCHER, pki.key, pki.cert, hash_name=hash_name),
                                   ID_EC_PUBLIC_KEY)
    assert f"algorithm: id-ecPublicKey ({ID_EC_PUBLIC_KEY})" in pki.openssl_print(der)
    assert pki.openssl_verify(der) == (0, VOUCHER)
    assert verify_cms(der, [pki.ca]).content == VOUCHER
    tampered = bytearray(der)
    tampered[-2] ^= 1
    assert agree([der, bytes(tampered)], [pki.ca]) == [Result.OK, Result.BAD_SIGNATURE]


def test_id_ec_public_key_with_an_rsa_signer_is_a_bad_signature(tmp_path):
    pki = Pki(tmp_path, KeyAlgorithm.RSA_2048)
    der = with_signature_algorithm(sign_cms(VOUCHER, pki.key, pki.cert), ID_EC_PUBLIC_KEY)
    assert pki.openssl_verify(der)[0] != 0
    with pytest.raises(BadSignatureError, match="id-ecPublicKey"):
        verify_cms(der, [pki.ca])
    assert agree([der], [pki.ca]) == [Result.BAD_SIGNATURE]


# --------------------------------------------------------------------------- clear errors

def test_unsigned_json_where_cms_is_expected_says_what_came(pki, tmp_path):
    for reader in (load_cms_input, lambda d: verify_cms(d, [pki.ca]), unverified_content):
        with pytest.raises(MalformedCmsError, match=r"expected a .*CMS SignedData.*got JSON text"):
            reader(VOUCHER)
    (tmp_path / "unsigned.json").write_bytes(b"  " + VOUCHER + b"\n")
    cli = run_cli("cms", "verify", "--in", tmp_path / "unsigned.json", "--anchors", pki.ca_pem)
    assert cli.returncode == 1
    assert cli.stderr.decode().splitlines() == [
        "pledgeforge: error: expected a CMS SignedData (DER, PEM or base64), got JSON text: "
        "unsigned vouchers and voucher-requests are not accepted"]
    with pytest.raises(MalformedCmsError, match="got a PEM CERTIFICATE"):
        load_cms_input(to_pem(pki.cert))


def test_parser_errors_are_one_line_naming_the_object(pki, tmp_path):
    der = sign_cms(VOUCHER, pki.key, pki.cert)
    bad_tag = bytearray(der)
    bad_tag[4] = 0x02                                   # contentType OID tagged INTEGER
    cases = {
        "truncated": (der[:200], "truncated"),
        "trailing": (der + b"\x00\x00", "2 byte(s) of trailing data"),
        "wrong tag": (bytes(bad_tag), "ContentType: tag should have been 6, but 2 was found "
                                      "(inside ContentInfo)"),
    }
    for name, (data, words) in cases.items():
        with pytest.raises(MalformedCmsError) as raised:
            verify_cms(data, [pki.ca])
        message = str(raised.value)
        assert "\n" not in message and "asn1crypto" not in message, (name, message)
        assert words in message, (name, message)
        (tmp_path / "bad.der").write_bytes(data)
        cli = run_cli("cms", "verify", "--in", tmp_path / "bad.der", "--anchors", pki.ca_pem)
        assert cli.returncode == 1 and len(cli.stderr.decode().splitlines()) == 1, cli.stderr
        assert b"Traceback" not in cli.stderr
