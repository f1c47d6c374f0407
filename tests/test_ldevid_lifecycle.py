"""The LDevID's life with the lab's registrars: bootstrap again after power cuts, renewal by
/simplereenroll, unconfirmed LDevIDs reported and revoked, the owner CA's CRL.

Everything goes through the `pledgeforge` CLI as users run it, and is checked with
openssl, pkcs11-tool and tpm2-tools.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clirunner import PLEDGEFORGE, jq, openssl, run_cli
from registrar_standin import StandIn, https
from pledgeforge.hsm.swtpm import Swtpm
from pledgeforge.hsm.x509 import to_der, to_pem
from pledgeforge.hsm.est_wire import parse_certs_only
from pledgeforge.registrar.db import OWNER_METADATA, table_contents

EST = "/.well-known/est"
BRSKI = "/.well-known/brski"


def new_serial(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3).upper()}"


def bootstrap(lab, serial: str, *extra: str) -> dict:
    out = run_cli("pledge", "bootstrap", "--lab", lab.dir, "--serial", serial, "--json", *extra)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    [result] = jq(out.stdout)  # --json: one JSON object, nothing else on stdout
    return result


def key_store(lab, serial: str, keystore: str) -> list[str]:
    """The pledge's keys as tools nobody here wrote list them: object labels on the lab's pledge
    token (pkcs11-tool), or the persistent handles of its TPM (tpm2_getcap, TPM started for it)."""
    if keystore == "pkcs11":
        out = subprocess.run(
            ["pkcs11-tool", "--module", lab.softhsm.module_path, "--token-label", "pledges", "--login",
             "--pin", lab.pin_file("pledges").read_text().strip(), "--list-objects"],
            env=lab.softhsm.env(), capture_output=True, text=True, timeout=60, check=True).stdout
        return sorted(line.split(":", 1)[1].strip() for line in out.splitlines()
                      if line.strip().startswith("label:") and serial in line)
    tpm = Swtpm(lab.dir / "swtpm" / serial, key_file=lab.dir / "pledges" / serial / "tpm-state.key").start()
    try:
        out = subprocess.run(["tpm2_getcap", "handles-persistent"], env=tpm.env(), capture_output=True,
                             text=True, timeout=60, check=True).stdout
    finally:
        tpm.stop()
    return sorted(line.strip("- \n") for line in out.splitlines() if line.strip())


def cut_power(lab, serial: str, at_state: str) -> list[str]:
    """Run `pledge bootstrap` again and kill it (with its TPM and module host) as soon as it
    enters `at_state`; the states it printed."""
    proc = subprocess.Popen([PLEDGEFORGE, "pledge", "bootstrap", "--lab", str(lab.dir), "--serial", serial],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    try:
        for line in proc.stdout:
            if line.startswith(b"  "):
                seen.append(line.split()[0].decode())
                if seen[-1] == at_state:
                    break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert seen[-1] == at_state, seen
    return seen


# --------------------------------------------------------------------------- bootstrap again

@pytest.mark.slow
@pytest.mark.parametrize("keystore", ["pkcs11", "tpm"])
def test_bootstrap_again_after_power_cuts_keeps_the_key_store_the_same_size(lab, keystore):
    serial = new_serial("PC")
    first = bootstrap(lab, serial, "--keystore", keystore)
    enrolled = key_store(lab, serial, keystore)
    assert len(enrolled) == (4 if keystore == "pkcs11" else 2)  # IDevID and one LDevID
    ldevids = {first["ldevid_key"]}
    left_behind = []
    for at_state in ("est-enroll", "est-status", "est-csrattrs", "est-status"):
        cut_power(lab, serial, at_state)
        cut = key_store(lab, serial, keystore)
        assert len(cut) <= len(enrolled) + (2 if keystore == "pkcs11" else 1)
        left_behind.append(len(cut) - len(enrolled))
        again = bootstrap(lab, serial)
        assert again["state"] == "enrolled" and again["keystore"] == keystore
        assert len(key_store(lab, serial, keystore)) == len(enrolled)
        ldevids.add(again["ldevid_key"])
        verify = openssl("verify", "-CAfile", lab.pki("owner-ca"), again["ldevid"])
        assert verify.returncode == 0, verify.stderr
    assert len(ldevids) == 2  # the two slots, taken in turn
    # A cut once the certificate was issued (est-status) left the new key behind; the next
    # bootstrap deleted it.
    assert left_behind[1] > 0 and left_behind[3] > 0, left_behind
    # Every LDevID the owner CA issued is on record: the five the pledge stored, confirmed, and
    # those issued just before a cut, unconfirmed (or confirmed, when the cut came after the report).
    issued = lab.owner_store().ldevids(serial)
    assert len(issued) >= 5 and {i.state for i in issued} <= {"confirmed", "unconfirmed"}
    stored = openssl("x509", "-in", again["ldevid"], "-noout", "-serial").stdout.decode().split("=")[1]
    assert issued[-1].state == "confirmed" and int(issued[-1].certificate_serial, 16) == int(stored, 16)


def test_bootstrap_again_refuses_options_that_contradict_the_pledge(lab):
    serial = new_serial("PO")
    bootstrap(lab, serial, "--keystore", "pkcs11")
    out = run_cli("pledge", "bootstrap", "--lab", lab.dir, "--serial", serial, "--keystore", "tpm")
    assert out.returncode != 0  # a usage error (its exit status is the CLI's to choose)
    err = out.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "--keystore pkcs11" in err and "Traceback" not in err


# --------------------------------------------------------------------------- renewal

def public_key_pem(path) -> bytes:
    out = openssl("x509", "-in", path, "-noout", "-pubkey")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("keystore", ["pkcs11", "tpm"])
def test_reenroll_renews_with_a_new_key_and_deletes_the_old_one(lab, keystore, tmp_path):
    serial = new_serial("RE")
    first = bootstrap(lab, serial, "--keystore", keystore)
    old_pem = tmp_path / "old.pem"
    old_pem.write_bytes(open(first["ldevid"], "rb").read())
    before = key_store(lab, serial, keystore)

    out = run_cli("pledge", "reenroll", "--lab", lab.dir, "--serial", serial, "--json")
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    [renewed] = jq(out.stdout)  # --json: nothing else on stdout
    assert renewed["renewed"] and renewed["enrollstatus"].startswith("answered 200")
    assert renewed["previous_ldevid_key"] == first["ldevid_key"] != renewed["ldevid_key"]

    verify = openssl("verify", "-CAfile", lab.pki("owner-ca"), renewed["ldevid"])
    assert verify.returncode == 0, verify.stderr
    assert public_key_pem(renewed["ldevid"]) != public_key_pem(old_pem)
    names = lambda path: openssl("x509", "-in", path, "-noout", "-subject", "-ext", "subjectAltName").stdout
    assert names(renewed["ldevid"]) == names(old_pem)
    serials = lambda path: openssl("x509", "-in", path, "-noout", "-serial").stdout
    assert serials(renewed["ldevid"]) != serials(old_pem)
    # The old slot's key is gone; the store holds as many keys as before.
    after = key_store(lab, serial, keystore)
    assert len(after) == len(before) and after != before
    if keystore == "pkcs11":
        assert f"ldevid-{serial}-a" in before and f"ldevid-{serial}-a" not in after
    else:
        assert "0x81020001" in before and "0x81020001" not in after and "0x81020002" in after
    # The registrar has the renewal, asked for by the old LDevID, confirmed over the new one.
    issued = lab.owner_store().ldevids(serial)
    assert [(i.kind, i.state) for i in issued] == [("enroll", "confirmed"), ("reenroll", "confirmed")]
    assert issued[1].requester.endswith(f"(certificate {issued[0].certificate_serial})")


def test_a_renewal_that_cannot_authenticate_the_est_server_leaves_no_key_behind(lab):
    serial = new_serial("RA")
    bootstrap(lab, serial, "--keystore", "pkcs11")
    before = key_store(lab, serial, "pkcs11")
    # The pledge's record now trusts another CA for its EST server than the one that serves it.
    record_path = lab.dir / "pledges" / serial / "ldevid.json"
    record = json.loads(record_path.read_text())
    record["ca_certificates"] = lab.pki("web-ca").read_text()
    record_path.write_text(json.dumps(record))
    out = run_cli("pledge", "reenroll", "--lab", lab.dir, "--serial", serial, "--json")
    assert out.returncode == 1
    [result] = jq(out.stdout)
    assert not result["renewed"] and "no chain to a trusted anchor" in result["reason"]
    assert result["deleted_keys"] and key_store(lab, serial, "pkcs11") == before
    assert [i.kind for i in lab.owner_store().ldevids(serial)] == ["enroll"]


def test_reenroll_of_a_pledge_never_enrolled_is_one_clear_error(lab):
    serial = new_serial("NE")
    run_cli("pledge", "bootstrap", "--lab", lab.dir, "--serial", serial, "--timeout", "0.5",
            "--keystore", "pkcs11")  # provisions it, whatever the outcome
    (lab.dir / "pledges" / serial / "ldevid.json").unlink(missing_ok=True)
    out = run_cli("pledge", "reenroll", "--lab", lab.dir, "--serial", serial)
    assert out.returncode != 0 and b"bootstrap it first" in out.stderr and b"Traceback" not in out.stderr
    out = run_cli("pledge", "reenroll", "--lab", lab.dir, "--serial", "../../etc")
    assert out.returncode != 0 and b"Traceback" not in out.stderr


# --------------------------------------------------------------------------- unconfirmed, revoked, CRL

def standin_ldevid(lab, tmp_path, serial: str):
    """An LDevID issued to a stand-in pledge that then loses power: it never sends enrollstatus."""
    pledge = StandIn.create(tmp_path / serial, serial, lab.issue_idevid)
    lab.register_pledge(serial, "est-domain")
    key, csr = pledge.csr(f"CN={serial},serialNumber={serial}",
                          [f"{serial.lower()}.pledges.lab.pledgeforge.test"])
    answer = https(lab.url("owner") + f"{EST}/simpleenroll", "POST", base64.encodebytes(to_der(csr)),
                   identity=pledge, anchors=[lab.pki("owner-ca")], headers={"Content-Type": "application/pkcs10"})
    assert answer.status == 200, answer.body
    cert = parse_certs_only(answer.body)[0]
    return pledge, cert, key, key_files(tmp_path, f"{serial}-ldevid", cert, key)


def owner_config(lab) -> str:
    return str(lab.config_path("owner"))


def fetch_crl(lab, path) -> None:
    answer = https(lab.url("owner") + "/crl", anchors=[lab.pki("owner-ca")])
    assert answer.status == 200 and answer.header("content-type") == "application/pkix-crl"
    converted = openssl("crl", "-inform", "DER", "-outform", "PEM", "-out", path, input=answer.body)
    assert converted.returncode == 0, converted.stderr
    checked = openssl("crl", "-in", path, "-noout", "-verify", "-CAfile", lab.pki("owner-ca"))
    assert checked.returncode == 0 and b"verify OK" in checked.stdout + checked.stderr, checked.stderr


def test_an_ldevid_never_confirmed_is_listed_revoked_and_published_in_the_crl(lab, tmp_path):
    serial = new_serial("UC")
    _, cert, _, files = standin_ldevid(lab, tmp_path, serial)
    cert_serial = f"{cert.serial_number:x}"
    # The owner CA's LDevIDs carry the registrar's CRL as their distribution point.
    dp = openssl("x509", "-in", files[0], "-noout", "-ext", "crlDistributionPoints").stdout.decode()
    assert f"URI:{lab.url('owner')}/crl" in dp

    listed = run_cli("registrar", "ldevids", "--config", owner_config(lab), "--unconfirmed", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = jq(listed.stdout)
    mine = [r for r in rows if r["serial"] == serial]
    assert mine and mine[0]["certificate_serial"] == cert_serial and mine[0]["state"] == "unconfirmed"
    assert mine[0]["requester"].startswith("idevid ") and mine[0]["kind"] == "enroll"

    fetch_crl(lab, tmp_path / "before.pem")
    ok = openssl("verify", "-crl_check", "-CRLfile", tmp_path / "before.pem", "-CAfile", lab.pki("owner-ca"),
                 files[0])
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # openssl prints serials in upper case: the CLI takes them so.
    upper = openssl("x509", "-in", files[0], "-noout", "-serial").stdout.decode().strip().split("=")[1]
    revoked = run_cli("registrar", "revoke", "--config", owner_config(lab), "--cert-serial", upper,
                      "--reason", "keyCompromise", "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert jq(revoked.stdout, ".state") == ["revoked"]
    listed = run_cli("registrar", "ldevids", "--config", owner_config(lab), "--unconfirmed", "--json")
    assert serial not in listed.stdout.decode()

    fetch_crl(lab, tmp_path / "after.pem")
    text = openssl("crl", "-in", tmp_path / "after.pem", "-noout", "-text").stdout.decode()
    assert upper in text.replace(":", "").upper() and "Key Compromise" in text
    refused = openssl("verify", "-crl_check", "-CRLfile", tmp_path / "after.pem", "-CAfile",
                      lab.pki("owner-ca"), files[0])
    assert refused.returncode != 0 and b"certificate revoked" in refused.stdout + refused.stderr


def key_files(tmp_path, name: str, cert: x509.Certificate, key) -> tuple:
    files = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    files[0].write_bytes(to_pem(cert))
    files[1].write_bytes(key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def report_over(lab, files, ok: bool = True):
    return https(lab.url("owner") + f"{BRSKI}/enrollstatus", "POST",
                 json.dumps({"version": 1, "status": ok}).encode(), client_files=files,
                 anchors=[lab.pki("owner-ca")], headers={"Content-Type": "application/json"})


def test_only_the_current_unrevoked_ldevid_renews(lab, tmp_path):
    serial = new_serial("RV")
    pledge, first, _, first_files = standin_ldevid(lab, tmp_path, serial)
    san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    def renew(files):
        key, csr = pledge.csr(first.subject, san.get_values_for_type(x509.DNSName))
        answer = https(lab.url("owner") + f"{EST}/simplereenroll", "POST", base64.encodebytes(to_der(csr)),
                       client_files=files, anchors=[lab.pki("owner-ca")],
                       headers={"Content-Type": "application/pkcs10"})
        return answer, key

    # Never confirmed: never put to use, so it cannot renew either.
    refused, _ = renew(first_files)
    assert refused.status == 403 and b"no enrollstatus confirmed" in refused.body
    assert report_over(lab, first_files).status == 200
    answer, key = renew(first_files)
    assert answer.status == 200, answer.body
    second_files = key_files(tmp_path, "second", parse_certs_only(answer.body)[0], key)
    assert report_over(lab, second_files).status == 200
    # Superseded by the confirmed renewal: the first one renews no more.
    refused, _ = renew(first_files)
    assert refused.status == 403 and b"not pledge" in refused.body and b"current one" in refused.body

    out = run_cli("registrar", "revoke", "--config", owner_config(lab), "--serial-number", serial,
                  "--reason", "cessationOfOperation")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.decode().splitlines()) == 2
    issued = table_contents(lab.owner_store().engine, OWNER_METADATA)["owner_ldevids"]
    refused, _ = renew(second_files)
    assert refused.status == 403 and b"revoked" in refused.body
    assert report_over(lab, second_files).status == 403  # a revoked LDevID is refused everywhere
    assert table_contents(lab.owner_store().engine, OWNER_METADATA)["owner_ldevids"] == issued
    again = run_cli("registrar", "revoke", "--config", owner_config(lab), "--serial-number", serial)
    assert again.returncode == 0 and b"already revoked" in again.stderr


def test_the_pledge_reenroll_of_a_revoked_ldevid_fails_and_keeps_its_key_store(lab):
    serial = new_serial("RP")
    bootstrap(lab, serial, "--keystore", "pkcs11")
    before = key_store(lab, serial, "pkcs11")
    out = run_cli("registrar", "revoke", "--config", owner_config(lab), "--serial-number", serial)
    assert out.returncode == 0, out.stderr
    out = run_cli("pledge", "reenroll", "--lab", lab.dir, "--serial", serial, "--json")
    assert out.returncode == 1
    [result] = jq(out.stdout)
    assert not result["renewed"] and "403" in result["reason"] and "revoked" in result["reason"]
    assert key_store(lab, serial, "pkcs11") == before


@pytest.mark.parametrize("args, problem", [
    ((), "either --serial-number"),
    (("--serial-number", "X", "--cert-serial", "1f"), "either --serial-number"),
    (("--cert-serial", "zz"), "not a hexadecimal number"),
    (("--cert-serial", "abcdef0123"), "issued no LDevID"),
    (("--serial-number", "../x"), "serial number"),
])
def test_revoke_errors_are_one_line(lab, args, problem):
    out = run_cli("registrar", "revoke", "--config", owner_config(lab), *args)
    err = out.stderr.decode().strip()
    assert out.returncode != 0 and len(err.splitlines()) == 1 and problem in err, err
