"""The lab's servers under hostile input: IDevIDs of another manufacturer's making with serial
numbers no valid device has."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from registrar_standin import StandIn, https, post_voucher_request
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER
from pledgeforge.hsm.x509 import IDEVID_NOT_AFTER, issue_certificate, to_der
from pledgeforge.registrar.db import MASA_METADATA, OWNER_METADATA, table_contents

EST = "/.well-known/est"
BAD_SERIALS = ["../../../../tmp/x", "/etc/passwd", " ", "x" * 64]


def _state(lab):
    return (table_contents(lab.owner_store().engine, OWNER_METADATA),
            table_contents(lab.masa_store().engine, MASA_METADATA))


def foreign_idevid(lab, directory, serial: str) -> StandIn:
    """A pledge whose IDevID was issued by a CA without our serial checks (another
    manufacturer's line), here signed with the lab's manufacturer CA key."""
    ca = open_signer(lab.key_uri("vendor", "manufacturer-ca"))
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
    signer = open_signer(lab.key_uri("owner", "registrar-signer"))
    cert = load_certificate_file(str(lab.pki("registrar-signer")))[0]
    return sign_cms((body[:-2] + extra_json + "}}").encode(), signer, cert, content_type="voucher")


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
