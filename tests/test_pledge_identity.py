"""The one pledge identity: its stored form (a board's flash, a lab pledge's directory) and back."""

from __future__ import annotations

import hashlib
import json

import pytest

from pledgeforge.boards.flash import FLASH_FILE, Flash, FlashCorruptError, FlashState
from pledgeforge.firmware.identity import IdentityError, PledgeIdentity
from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_idevid, make_ca, to_pem


@pytest.fixture(scope="module")
def certificates():
    ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = make_ca(ca_key, "CN=Identity Test Manufacturer CA")
    web = make_ca(SoftwareSigner.generate(KeyAlgorithm.EC_P256), "CN=Identity Test Web CA")
    device = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    return ca, web, issue_idevid(ca_key, ca, device.public_key, "ID-0001", masa_url="masa.example")


def test_the_stored_form_reads_back_as_the_same_identity(certificates, tmp_path):
    ca, web, idevid = certificates
    identity = PledgeIdentity.from_certificates(
        "pkcs11:token=pledges;object=idevid-ID-0001?pin-source=file:/lab/pledges.pin", idevid,
        builtin_anchors=[web], masa_anchors=[ca], cloud_registrar_url="https://cloud.example:8443",
        ldevid_key_uri="pkcs11:token=pledges;object=ldevid-ID-0001")
    assert identity.serial == "ID-0001"
    assert identity.idevid == idevid and identity.builtin_anchors == [web] and identity.masa_anchors == [ca]
    assert identity.idevid_chain == []
    stored = json.loads(json.dumps(identity.to_json()))
    assert PledgeIdentity.from_json(stored) == identity
    assert PledgeIdentity.load(identity.save(tmp_path).parent) == identity


def test_a_flash_written_before_the_identity_type_still_reads(certificates, tmp_path):
    ca, web, idevid = certificates
    # The flash's identity object as boards wrote it: no URL (the flash keeps it in its configuration).
    old = {"idevid_pem": to_pem(idevid).decode(), "key_uri": "tpm:handle=0x81020000?tcti=swtpm:path=/b/tpm.sock",
           "trust_anchors_pem": [to_pem(web).decode()], "masa_anchors_pem": [to_pem(ca).decode()]}
    identity = PledgeIdentity.from_json(old)
    assert identity.to_json() == old
    assert identity.cloud_registrar_url is None and identity.builtin_anchors == [web]

    flash = Flash.in_state_dir(tmp_path, 64 * 1024)
    flash.set_identity(identity)
    assert Flash.in_state_dir(tmp_path, 64 * 1024).state.identity == identity


@pytest.mark.parametrize("stored", [
    {"key_uri": "pkcs11:token=t;object=k"},                                  # no IDevID
    {"idevid_pem": "x", "key_uri": 7},                                       # not a URI
    {"idevid_pem": "x", "key_uri": "pkcs11:token=t", "masa_anchors_pem": [1]},
    ["not", "an", "object"],
])
def test_a_damaged_stored_identity_is_refused_where_it_is_read(stored, tmp_path):
    with pytest.raises((KeyError, TypeError)):
        PledgeIdentity.from_json(stored)
    (tmp_path / "identity.json").write_text(json.dumps(stored))
    with pytest.raises(IdentityError, match="identity.json is not a pledge identity"):
        PledgeIdentity.load(tmp_path)
    # In a board's flash the same damage is a corrupt flash, reported when it is opened
    # (the image's checksum is right: the damage is in what it says).
    body = json.dumps({**json.loads(FlashState(serial_number="ID-0001").to_json()), "identity": stored}).encode()
    (tmp_path / FLASH_FILE).write_bytes(b"PLEDGEFORGE-FLASH 1 " + hashlib.sha256(body).hexdigest().encode()
                                        + b"\n" + body)
    with pytest.raises(FlashCorruptError, match="malformed body"):
        Flash.in_state_dir(tmp_path, 64 * 1024)


def test_certificates_that_do_not_parse_are_kept_and_reported_when_used(tmp_path):
    identity = PledgeIdentity(idevid_key_uri="pkcs11:token=t;object=k", idevid_pem="not a certificate")
    assert PledgeIdentity.from_json(identity.to_json()) == identity
    with pytest.raises(CertificateError, match="the IDevID"):
        identity.serial
    with pytest.raises(IdentityError, match="cannot read the pledge identity"):
        PledgeIdentity.load(tmp_path / "nowhere")
