"""Foreign encodings end to end through the lab: the owner registrar, the MASA and the pledge.

A pledge voucher-request that OpenSSL wrote in version-3 form, one whose
signatureAlgorithm says id-ecPublicKey, an IDevID (made by OpenSSL) whose
id-pe-masa-url is a UTF8String, a nonce in base64url without padding: each goes
through the owner registrar and the MASA to a voucher that `openssl cms -verify`
accepts. A version-3 voucher that OpenSSL wrote takes the pledge to enrollment.
Unsigned JSON where CMS belongs gets a 400 that says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
from pathlib import Path

import pytest
from asn1crypto import cms as acms
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from clirunner import openssl
from registrar_standin import StandIn, https, post_voucher_request
from rogue_registrar import Reply, RogueServer, tls_files, voucher_reply
from pledgeforge import lab_pledge
from pledgeforge.firmware.pledge_machine import PledgeConfig
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import ID_CT_ANIMA_JSON_VOUCHER, sign_cms, unverified_content
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER, VOUCHER_MEDIA_TYPE
from pledgeforge.hsm.x509 import issue_certificate, masa_url_of, read_masa_url, to_der, to_pem

ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"


def _pem_key(signer: SoftwareSigner) -> bytes:
    return signer.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())


def _lab_ca(lab, token: str, name: str) -> tuple:
    return keystore.open_signer(lab.key_uri(token, name)), load_certificate_file(str(lab.pki(name)))[0]


def openssl_sign(directory: Path, content: bytes, cert_pem: Path, key_pem: Path, *extra) -> bytes:
    """`openssl cms -sign -econtent_type id-ct-animaJSONVoucher`: SignedData version 3."""
    (directory / "content.json").write_bytes(content)
    out = directory / "openssl-signed.der"
    made = openssl("cms", "-sign", "-binary", "-nodetach", "-outform", "DER",
                   "-econtent_type", ID_CT_ANIMA_JSON_VOUCHER, "-in", directory / "content.json",
                   "-signer", cert_pem, "-inkey", key_pem, "-out", out, *extra)
    assert made.returncode == 0, made.stderr.decode()
    return out.read_bytes()


def printed_version(directory: Path, der: bytes) -> int:
    (directory / "print.der").write_bytes(der)
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", directory / "print.der")
    assert printed.returncode == 0, printed.stderr.decode()
    return int(re.search(r"d\.signedData:\s*\n\s*version: (\d+)", printed.stdout.decode()).group(1))


def openssl_verified(lab, directory: Path, voucher: bytes) -> bytes:
    """The content of a voucher, after `openssl cms -verify` against the manufacturer CA."""
    (directory / "voucher.der").write_bytes(voucher)
    out = openssl("cms", "-verify", "-inform", "DER", "-in", directory / "voucher.der",
                  "-CAfile", lab.pki("manufacturer-ca"), "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


def request_json(serial: str, nonce: str) -> bytes:
    return json.dumps({"ietf-voucher-request:voucher": {
        "serial-number": serial, "nonce": nonce,
        "created-on": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}}).encode()


@pytest.fixture
def pledge(lab, tmp_path):
    serial = "IX-" + secrets.token_hex(4).upper()
    standin = StandIn.create(tmp_path, serial, lab.issue_idevid)
    lab.register_pledge(serial, "redirect")
    return standin


def ask_owner(lab, pledge: StandIn, cms: bytes):
    """A voucher-request straight to the owner registrar (provisional TLS, no pin)."""
    return post_voucher_request(lab.url("owner") + REQUEST_VOUCHER, cms, identity=pledge)


# --------------------------------------------------------------------------- pledge voucher-requests

def test_openssl_version_3_pledge_request_gets_a_voucher(lab, pledge, tmp_path):
    nonce = base64.b64encode(secrets.token_bytes(16)).decode()
    cms = openssl_sign(tmp_path, request_json(pledge.serial, nonce), pledge.cert_path, pledge.key_path)
    assert printed_version(tmp_path, cms) == 3
    answer = ask_owner(lab, pledge, cms)
    assert answer.status == 200, answer.body
    voucher = Voucher.from_json(openssl_verified(lab, tmp_path, answer.body), expect_request=False)
    assert voucher.serial_number == pledge.serial and voucher.nonce_text == nonce
    # What the MASA wrote is version 3 too (its eContentType is the voucher's).
    assert printed_version(tmp_path, answer.body) == 3
    assert lab.masa_store().audit_events(pledge.serial)[-1]["requester"].startswith("registrar ")


def _with_ec_public_key(der: bytes) -> bytes:
    info = acms.ContentInfo.load(der)
    info["content"]["signer_infos"][0]["signature_algorithm"] = {"algorithm": ID_EC_PUBLIC_KEY}
    return info.dump()


def test_id_ec_public_key_pledge_request_gets_a_voucher_and_later_checks_still_refuse(lab, pledge, tmp_path):
    cms, nonce = pledge.voucher_request()
    edited = _with_ec_public_key(cms)
    (tmp_path / "edited.der").write_bytes(edited)
    (tmp_path / "idevid-ca.pem").write_bytes(lab.pki("manufacturer-ca").read_bytes())
    assert openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "edited.der", "-CAfile",
                   tmp_path / "idevid-ca.pem", "-purpose", "any").returncode == 0
    answer = ask_owner(lab, pledge, edited)
    assert answer.status == 200, answer.body
    assert Voucher.from_json(openssl_verified(lab, tmp_path, answer.body)).nonce == nonce
    # Signature fine, serial-number not the IDevID's: refused for that, not for the algorithm.
    lying, _ = pledge.voucher_request(serial="SOMEONE-ELSE")
    refused = ask_owner(lab, pledge, _with_ec_public_key(lying))
    assert refused.status == 400, refused.body
    assert b"serial-number" in refused.body and b"algorithm" not in refused.body


def test_base64url_nonce_comes_back_as_it_was_sent(lab, pledge, tmp_path):
    raw = bytes.fromhex("fbff") + secrets.token_bytes(14)    # '+/' in base64, '-_' in base64url
    nonce = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert nonce != base64.b64encode(raw).decode().rstrip("=")
    cms = sign_cms(request_json(pledge.serial, nonce), pledge.key, pledge.cert)
    answer = ask_owner(lab, pledge, cms)
    assert answer.status == 200, answer.body
    content = json.loads(openssl_verified(lab, tmp_path, answer.body))
    assert content["ietf-voucher:voucher"]["nonce"] == nonce


def test_idevid_with_utf8string_masa_url_reaches_the_masa(lab, tmp_path):
    """The owner registrar finds the MASA through the IDevID's id-pe-masa-url, which
    OpenSSL wrote as a UTF8String (under an intermediate CA the lab's manufacturer made)."""
    mfg_key, mfg_cert = _lab_ca(lab, "manufacturer", "manufacturer-ca")
    inter_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    inter = issue_certificate(mfg_key, mfg_cert, inter_key.public_key, "CN=line 7 IDevID CA", is_ca=True)
    (tmp_path / "inter.pem").write_bytes(to_pem(inter))
    (tmp_path / "inter.key").write_bytes(_pem_key(inter_key))
    serial = "IX-UTF8-" + secrets.token_hex(3).upper()
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    (tmp_path / "idevid.key").write_bytes(_pem_key(key))
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        f"1.3.6.1.5.5.7.1.32=ASN1:UTF8String:{lab.masa_url}\n")
    for args in (["req", "-new", "-key", tmp_path / "idevid.key", "-subj", f"/CN=IDevID/serialNumber={serial}",
                  "-out", tmp_path / "idevid.csr"],
                 ["x509", "-req", "-in", tmp_path / "idevid.csr", "-CA", tmp_path / "inter.pem",
                  "-CAkey", tmp_path / "inter.key", "-CAcreateserial", "-days", "30",
                  "-extfile", tmp_path / "ext.cnf", "-out", tmp_path / "idevid.pem"]):
        made = openssl(*args)
        assert made.returncode == 0, made.stderr.decode()
    idevid = load_certificate_file(str(tmp_path / "idevid.pem"))[0]
    assert read_masa_url(idevid).string_type == "UTF8String" and masa_url_of(idevid) == lab.masa_url
    chain_file = tmp_path / "idevid-chain.pem"          # TLS client certificate and its CA
    chain_file.write_bytes(to_pem(idevid) + to_pem(inter))
    pledge = StandIn(serial, key, idevid, tmp_path / "idevid.key", chain_file)
    lab.register_pledge(serial, "redirect")
    nonce = secrets.token_bytes(16)
    request = Voucher(is_request=True, serial_number=serial, nonce=nonce,
                      created_on=dt.datetime.now(dt.timezone.utc))
    answer = ask_owner(lab, pledge, sign_cms(request.to_json(), key, idevid, [inter]))
    assert answer.status == 200, answer.body
    voucher = Voucher.from_json(openssl_verified(lab, tmp_path, answer.body))
    assert voucher.serial_number == serial and voucher.nonce == nonce


# --------------------------------------------------------------------------- registrar voucher-requests at the MASA

@pytest.fixture
def file_registrar(lab, tmp_path):
    """A registrar of the lab's owner whose key is a file, so that OpenSSL can sign with it."""
    owner_key, owner_cert = _lab_ca(lab, "owner", "owner-ca")
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    cert = issue_certificate(owner_key, owner_cert, key.public_key, "CN=file registrar,O=pledgeforge lab owner",
                             extended_key_usage=[ID_KP_CMC_RA, ExtendedKeyUsageOID.CLIENT_AUTH])
    (tmp_path / "registrar.pem").write_bytes(to_pem(cert))
    (tmp_path / "registrar.key").write_bytes(_pem_key(key))
    return tmp_path / "registrar.pem", tmp_path / "registrar.key"


def post_masa(lab, body: bytes):
    return https(lab.url("masa") + REQUEST_VOUCHER, "POST", body, anchors=[lab.pki("web-ca")],
                 headers={"Content-Type": VOUCHER_MEDIA_TYPE, "Accept": VOUCHER_MEDIA_TYPE})


def registrar_json(serial: str, nonce: bytes, prior: bytes) -> bytes:
    return Voucher(is_request=True, serial_number=serial, nonce=nonce,
                   created_on=dt.datetime.now(dt.timezone.utc), prior_signed_voucher_request=prior).to_json()


def test_masa_answers_an_openssl_version_3_registrar_request(lab, pledge, file_registrar, tmp_path):
    pledge_cms, nonce = pledge.voucher_request()
    cms = openssl_sign(tmp_path, registrar_json(pledge.serial, nonce, pledge_cms), *file_registrar)
    assert printed_version(tmp_path, cms) == 3
    answer = post_masa(lab, cms)
    assert answer.status == 200, answer.body
    assert Voucher.from_json(openssl_verified(lab, tmp_path, answer.body)).nonce == nonce
    assert "file registrar" in lab.masa_store().audit_events(pledge.serial)[-1]["requester"]


def test_unsigned_json_where_cms_belongs_says_what_came(lab, pledge, file_registrar, tmp_path):
    unsigned = request_json(pledge.serial, base64.b64encode(b"n" * 16).decode())
    at_owner = ask_owner(lab, pledge, unsigned)
    assert at_owner.status == 400
    text = at_owner.body.decode().strip()
    assert "expected a CMS SignedData" in text and "got JSON text" in text and "\n" not in text
    # At the MASA, inside a signed registrar voucher-request.
    cms = openssl_sign(tmp_path, registrar_json(pledge.serial, b"n" * 16, unsigned), *file_registrar)
    at_masa = post_masa(lab, cms)
    assert at_masa.status == 400
    text = at_masa.body.decode().strip()
    assert "pledge voucher-request" in text and "got JSON text" in text
    assert "Extra data" not in text and "\n" not in text


# --------------------------------------------------------------------------- the pledge

def test_the_pledge_enrolls_with_an_openssl_version_3_voucher(lab, tmp_path):
    """A cloud registrar answers with a voucher OpenSSL signed (version 3, est-domain: the
    owner registrar); the pledge verifies it and enrolls there."""
    mfg_key, mfg_cert = _lab_ca(lab, "manufacturer", "manufacturer-ca")
    web_key, web_cert = _lab_ca(lab, "web", "web-ca")
    masa_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    masa_cert = issue_certificate(mfg_key, mfg_cert, masa_key.public_key, "CN=openssl-signing MASA")
    (tmp_path / "masa.pem").write_bytes(to_pem(masa_cert))
    (tmp_path / "masa.key").write_bytes(_pem_key(masa_key))
    owner_ca = load_certificate_file(str(lab.pki("owner-ca")))[0]
    sent = []

    def voucher_for(request_cms: bytes) -> bytes:
        asked = json.loads(unverified_content(request_cms))["ietf-voucher-request:voucher"]
        content = json.dumps({"ietf-voucher:voucher": {
            "assertion": "logged", "serial-number": asked["serial-number"], "nonce": asked["nonce"],
            "created-on": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pinned-domain-cert": base64.b64encode(to_der(owner_ca)).decode(),
            "est-domain": lab.url("owner")}}).encode()
        voucher = openssl_sign(tmp_path, content, tmp_path / "masa.pem", tmp_path / "masa.key")
        sent.append(voucher)
        return voucher

    def answer(request):
        if request.path == REQUEST_VOUCHER:
            return voucher_reply(voucher_for(request.body))
        return Reply(200)

    pledge = lab.provision_pledge(f"IX-{secrets.token_hex(4).upper()}", flow="est-domain")
    try:
        with RogueServer(tls_files(tmp_path, "cloud", web_key, web_cert), lab.pki("manufacturer-ca"),
                         answer) as cloud:
            identity = lab_pledge.pledge_identity(pledge, cloud.url)
            config = PledgeConfig(cloud_registrar_url=cloud.url, backoff_initial_s=0.05, backoff_max_s=0.1,
                                  max_restarts=0, max_transport_retries=1)
            result, _ = lab_pledge.bootstrap(pledge, config=config, identity=identity, timeout=5.0)
    finally:
        pledge.close()
    assert result.enrolled, [str(t) for t in result.transitions]
    assert len(sent) == 1 and printed_version(tmp_path, sent[0]) == 3
    assert result.voucher == sent[0]
    assert result.ldevid.issuer == owner_ca.subject
