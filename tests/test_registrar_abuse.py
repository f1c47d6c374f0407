"""The lab's servers under hostile input: IDevIDs of another manufacturer's making with serial
numbers no valid device has, JSON nested deep enough to exhaust a recursive parser, absurd
paths, and request data that tries to write its own lines into the server log."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from registrar_standin import StandIn, https, post_voucher_request
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import ENROLL_STATUS, REQUEST_VOUCHER, VOUCHER_STATUS
from pledgeforge.hsm.x509 import IDEVID_NOT_AFTER, issue_certificate, to_der
from pledgeforge.registrar.db import MASA_METADATA, OWNER_METADATA, table_contents

EST = "/.well-known/est"
DEPTH = 50_000  # far beyond any recursion limit; base64 inside another request fits 256 kB
BAD_SERIALS = ["../../../../tmp/x", "/etc/passwd", " ", "x" * 64]


def _state(lab):
    return (table_contents(lab.owner_store().engine, OWNER_METADATA),
            table_contents(lab.masa_store().engine, MASA_METADATA))


def foreign_idevid(lab, directory, serial: str) -> StandIn:
    """A pledge whose IDevID was issued by a CA without our serial checks (another
    manufacturer's line), here signed with the lab's manufacturer CA key."""
    ca = open_signer(lab.key_uri("manufacturer", "manufacturer-ca"))
    ca_cert = load_certificate_file(str(lab.pki("manufacturer-ca")))[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign device"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)])
    return StandIn.create(directory, serial, lambda pub, s: issue_certificate(
        ca, ca_cert, pub, subject, not_after=IDEVID_NOT_AFTER), file_stem="idevid")


def registrar_request(lab, pledge_cms: bytes, serial: str, nonce: bytes | None,
                      extra_json: str = "") -> bytes:
    """A registrar voucher-request signed with the lab owner registrar's key (as it would);
    `extra_json` is added to its leaves as it is (',"name":value')."""
    body = Voucher(is_request=True, serial_number=serial, nonce=nonce,
                   created_on=dt.datetime.now(dt.timezone.utc),
                   prior_signed_voucher_request=pledge_cms).to_json().decode()
    assert body.endswith("}}")
    signer = open_signer(lab.key_uri("registrar", "registrar-signer"))
    cert = load_certificate_file(str(lab.pki("registrar-signer")))[0]
    return sign_cms((body[:-2] + extra_json + "}}").encode(), signer, cert, content_type="voucher")


def nested(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("serial", BAD_SERIALS, ids=["traversal", "absolute-path", "space", "64-chars"])
def test_registrars_and_masa_refuse_idevids_with_invalid_serial_numbers(lab, tmp_path, serial):
    pledge = foreign_idevid(lab, tmp_path, serial)
    before = _state(lab)
    cms, nonce = pledge.voucher_request()
    owner = post_voucher_request(lab.url("owner") + REQUEST_VOUCHER, cms, identity=pledge)
    assert owner.status == 400, owner.body
    assert b"serial" in owner.body and len(owner.body.decode().strip().splitlines()) == 1
    cloud = post_voucher_request(lab.url("cloud") + REQUEST_VOUCHER, cms, identity=pledge,
                                 anchors=[lab.pki("web-ca")])
    assert cloud.status == 400, cloud.body
    masa = post_voucher_request(lab.url("masa") + REQUEST_VOUCHER,
                                registrar_request(lab, cms, serial, nonce), anchors=[lab.pki("web-ca")])
    assert masa.status == 400, masa.body
    assert b"serial" in masa.body
    # The EST server never builds a dNSName from it, nor issues a certificate.
    attrs = https(lab.url("owner") + EST + "/csrattrs", identity=pledge, anchors=[lab.pki("owner-ca")])
    assert attrs.status == 400, attrs.body
    _, csr = pledge.csr(f"CN=ldevid,serialNumber={serial}" if serial.strip() else "CN=ldevid",
                        dns_names=["valid.pledges.lab.pledgeforge.test"])
    enroll = https(lab.url("owner") + EST + "/simpleenroll", "POST", base64.encodebytes(to_der(csr)),
                   identity=pledge, anchors=[lab.pki("owner-ca")],
                   headers={"Content-Type": "application/pkcs10"})
    assert enroll.status == 400, enroll.body
    assert _state(lab) == before


def test_stores_refuse_invalid_serials_as_keys(lab):
    from pledgeforge.hsm.identity_names import IdentityNameError

    for serial in ("../x", "a\nb", "x" * 300):
        with pytest.raises(IdentityNameError):
            lab.owner_store().add_pledge(serial, "redirect")
        with pytest.raises(IdentityNameError):
            lab.masa_store().set_device(serial, "lab-owner")
        with pytest.raises(IdentityNameError):
            lab.cloud_store().set_response(serial, "unknown")
    with pytest.raises(IdentityNameError):
        lab.masa_store().add_owner("owner\nwith a forged line", "-----BEGIN CERTIFICATE-----")


def test_deeply_nested_status_reports_answer_400(lab, tmp_path):
    pledge = StandIn.create(tmp_path, "AB-NESTED-1", lab.issue_idevid)
    lab.register_pledge(pledge.serial, "redirect")
    body = ('{"version":1,"status":false,"reason-context":' + nested() + "}").encode()
    for url, anchor in ((lab.url("owner") + ENROLL_STATUS, "owner-ca"),
                        (lab.url("owner") + VOUCHER_STATUS, "owner-ca"),
                        (lab.url("cloud") + VOUCHER_STATUS, "web-ca")):
        answer = https(url, "POST", body, identity=pledge, anchors=[lab.pki(anchor)],
                       headers={"Content-Type": "application/json"})
        assert answer.status == 400, f"{url}: {answer.status} {answer.body[:200]!r}"
        assert b"nest" in answer.body


def test_deeply_nested_json_inside_signed_voucher_requests_answers_400(lab, tmp_path):
    pledge = StandIn.create(tmp_path, "AB-NESTED-2", lab.issue_idevid)
    lab.register_pledge(pledge.serial, "redirect")
    before = _state(lab)
    deep = ('{"ietf-voucher-request:voucher":{"serial-number":"AB-NESTED-2","x-test:deep":'
            + nested() + "}}").encode()
    signed = sign_cms(deep, pledge.key, pledge.cert, content_type="voucher")
    answer = post_voucher_request(lab.url("owner") + REQUEST_VOUCHER, signed, identity=pledge)
    assert answer.status == 400, answer.body[:200]
    # The same inside a correctly signed registrar voucher-request, and inside the pledge's.
    good, nonce = pledge.voucher_request()
    for body in (registrar_request(lab, good, pledge.serial, nonce, ',"x-test:deep":' + nested()),
                 registrar_request(lab, signed, pledge.serial, None)):
        answer = post_voucher_request(lab.url("masa") + REQUEST_VOUCHER, body, anchors=[lab.pki("web-ca")])
        assert answer.status == 400, answer.body[:200]
    assert _state(lab) == before


def test_absurd_configuration_paths_are_not_found(lab):
    for name in ("a" * 5000, "..", ".hidden", "x%00y", "%2e%2e%2fconfig%2fowner.toml"):
        answer = https(lab.url("owner") + "/pledge-config/" + name, anchors=[lab.pki("owner-ca")])
        assert answer.status in (404, 414), f"{name[:20]}: {answer.status} {answer.body[:200]!r}"


def test_request_data_cannot_forge_log_lines(lab, tmp_path):
    marker = f"FORGED-{secrets.token_hex(4)}"
    forged = f"2030-01-01 00:00:00,000 INFO pledgeforge.registrar: {marker} enrolled"
    path = "/pledge-config/x%0A" + forged.replace(" ", "%20") + "%0D%0Ay"
    answer = https(lab.url("owner") + path, anchors=[lab.pki("owner-ca")])  # no client certificate
    assert answer.status == 404
    # The reason of a status report is request data too.
    pledge = StandIn.create(tmp_path, "AB-LOG-1", lab.issue_idevid)
    lab.register_pledge(pledge.serial, "redirect")
    report = json.dumps({"version": 1, "status": False, "reason": f"x\n{forged}\u2028{forged}"}).encode()
    answer = https(lab.url("owner") + ENROLL_STATUS, "POST", report, identity=pledge,
                   anchors=[lab.pki("owner-ca")], headers={"Content-Type": "application/json"})
    assert answer.status == 200
    log = lab.log_path("owner").read_text(errors="replace")
    lines = [line for line in log.split("\n") if marker in line]
    assert len(lines) == 2, lines  # the path and the report, each on its own escaped line
    assert not any(line.startswith(forged[:10]) for line in lines), lines
    assert all("\\n" in line and "\r" not in line and "\u2028" not in line for line in lines), lines
