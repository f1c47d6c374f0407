"""PKCS#11 key evidence against a real SoftHSM2 token: the token's report and the station's check.

A secure element's board reports the attributes of its IDevID key; the
station accepts a key generated on the token that can never leave it, whose
CSR it signed, as the weaker `token-reported` assurance. pkcs11-tool, which
nobody here wrote, reads the same attributes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pledgeforge.hsm import keystore, pkcs11_backend
from pledgeforge.hsm.key_evidence import (Assurance, CsrKeyMismatchError, DeviceKeyAttributesError,
                                          MalformedEvidenceError, TokenKeyReport, verify_token_key)
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import make_csr

SUBJECT = "CN=IDevID PF-0042,serialNumber=PF-0042"


def pkcs11_tool(token, *args: str) -> str:
    out = subprocess.run(["pkcs11-tool", "--module", token.hsm.module_path, "--token-label",
                          token.label, "--login", "--pin", token.pin, *args],
                         env=token.hsm.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def import_software_key(token, tmp_path, label: str) -> SoftwareSigner:
    """A key made outside the token, written into it as pkcs11-tool does (as an importer would)."""
    software = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    (tmp_path / "key.der").write_bytes(software.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "pub.der").write_bytes(software.public_key_der())
    for kind, path in (("privkey", "key.der"), ("pubkey", "pub.der")):
        pkcs11_tool(token, "--write-object", str(tmp_path / path), "--type", kind, "--id", "4242",
                    "--label", label, "--usage-sign")
    return software


def test_a_key_generated_on_the_token_is_reported_as_pkcs11_tool_sees_it(token):
    signer = keystore.generate_key(token.uri("idevid"), "ec-p256")
    report = pkcs11_backend.key_report(token.uri("idevid"))
    assert not signer.in_process  # this process reaches the token through a module host
    assert (report.local, report.never_extractable, report.sensitive, report.always_sensitive,
            report.extractable) == (True, True, True, True, False)
    assert report.public_key_der == signer.public_key_der()
    listing = pkcs11_tool(token, "--list-objects", "--type", "privkey")
    access = next(line for line in listing.splitlines() if "Access:" in line)
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= {
        word.strip() for word in access.split(":", 1)[1].split(",")}


def test_the_report_is_the_same_from_a_module_loaded_in_process(softhsm, token):
    keystore.generate_key(token.uri("idevid"), "ec-p384")
    program = ("import json, sys\n"
               "from pledgeforge.hsm import keystore, pkcs11_backend\n"
               "uri = keystore.parse_key_uri(sys.argv[1])\n"
               "r = pkcs11_backend.key_report(uri)\n"
               "print(json.dumps({'in_process': keystore.open_signer(uri).in_process,\n"
               "                  'flags': [r.local, r.never_extractable, r.sensitive,\n"
               "                            r.always_sensitive, r.extractable],\n"
               "                  'spki': r.public_key_der.hex()}))\n")
    child = subprocess.run([sys.executable, "-c", program, token.uri_text("idevid")],
                           env=softhsm.env(), capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    here = pkcs11_backend.key_report(token.uri("idevid"))
    assert seen["in_process"] is True
    assert seen["flags"] == [here.local, here.never_extractable, here.sensitive,
                             here.always_sensitive, here.extractable]
    assert bytes.fromhex(seen["spki"]) == here.public_key_der


def test_the_station_accepts_a_token_key_as_the_weaker_assurance(token):
    signer = keystore.generate_key(token.uri("idevid"), "ec-p256")
    verified = verify_token_key(pkcs11_backend.key_report(token.uri("idevid")),
                                make_csr(signer, SUBJECT))
    assert verified.assurance is Assurance.TOKEN_REPORTED
    assert "weaker" in verified.assurance.description
    assert verified.public_key_der == signer.public_key_der()
    assert verified.evidence == {"CKA_LOCAL": "true", "CKA_NEVER_EXTRACTABLE": "true",
                                 "CKA_SENSITIVE": "true", "CKA_ALWAYS_SENSITIVE": "true",
                                 "CKA_EXTRACTABLE": "false"}
    assert verified.iak_public_key is None and verified.ek_certificate is None


def test_an_imported_key_is_refused(token, tmp_path):
    software = import_software_key(token, tmp_path, "imported")
    report = pkcs11_backend.key_report(token.uri("imported"))
    assert not report.local and not report.never_extractable
    listing = pkcs11_tool(token, "--list-objects", "--type", "privkey")
    assert "local" not in next(line for line in listing.splitlines() if "Access:" in line)
    csr = make_csr(keystore.open_signer(token.uri("imported")), SUBJECT)
    assert csr.public_key() == software.public_key
    with pytest.raises(DeviceKeyAttributesError,
                       match="^the token key was imported, not generated on the token "
                             r"\(CKA_LOCAL false\); it was exportable once"):
        verify_token_key(report, csr)


def test_a_csr_signed_by_a_key_outside_the_token_is_refused(token):
    keystore.generate_key(token.uri("idevid"), "ec-p256")
    report = pkcs11_backend.key_report(token.uri("idevid"))
    software = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    with pytest.raises(CsrKeyMismatchError, match="^the CSR's key is not the token key whose "
                                                  "attributes were reported"):
        verify_token_key(report, make_csr(software, SUBJECT))


@pytest.mark.parametrize("change, words", [
    ({"extractable": True}, "can be exported (CKA_EXTRACTABLE true)"),
    ({"never_extractable": False}, "was exportable once (CKA_NEVER_EXTRACTABLE false)"),
    ({"sensitive": False}, "is not sensitive (CKA_SENSITIVE false)"),
    ({"always_sensitive": False}, "was not sensitive from its creation"),
])
def test_each_weak_attribute_is_named(change, words):
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    good = TokenKeyReport(spki, local=True, never_extractable=True, sensitive=True,
                          always_sensitive=True, extractable=False)
    assert good.problems() == []
    with pytest.raises(DeviceKeyAttributesError, match=f"^the token key {re.escape(words)}"):
        verify_token_key(replace(good, **change), make_csr(SoftwareSigner(key), SUBJECT))


def test_a_report_without_a_readable_key_is_malformed():
    report = TokenKeyReport(b"\x30\x03junk", True, True, True, True, False)
    with pytest.raises(MalformedEvidenceError, match="no readable public key"):
        verify_token_key(report, make_csr(SoftwareSigner.generate(KeyAlgorithm.EC_P256), SUBJECT))


def test_a_report_of_no_key_is_refused_before_reaching_the_token(token):
    with pytest.raises(Exception, match="names no key"):
        pkcs11_backend.key_report(token.uri(None))
