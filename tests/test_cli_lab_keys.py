"""Key, CA and CMS commands on a lab's tokens with `--lab D`, the error that names why a token is
not found, and p11tool (GnuTLS) on the URIs pledgeforge prints.

The lab has one token and PIN per trust role; `--lab D` gives a `pkcs11:token=T;object=O` the
lab's SoftHSM configuration and T's PIN file. Everything is checked with openssl, jq and p11tool.
"""

from __future__ import annotations

import os
import subprocess

from clirunner import jq, openssl, run_cli

OWNER_CA = "pkcs11:token=owner;object=owner-ca"
VOUCHER_SIGNER = "pkcs11:token=masa;object=voucher-signer"
MANUFACTURER_CA = "pkcs11:token=manufacturer;object=manufacturer-ca"


def without_softhsm_conf() -> dict:
    """The environment of a user who never heard of SOFTHSM2_CONF."""
    return {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}


def ok(*args, env=None) -> bytes:
    result = run_cli(*args, env=env or without_softhsm_conf())
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def failure(*args, env=None) -> tuple[int, str]:
    result = run_cli(*args, env=env or without_softhsm_conf())
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return result.returncode, err


def certificate_public_key(path) -> bytes:
    out = openssl("x509", "-in", path, "-noout", "-pubkey")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_keys_list_with_lab_lists_each_role_on_its_own_token(lab):
    rows = jq(ok("keys", "list", "--lab", lab.dir, "--json"), "[.token, .label, .sensitive, .extractable]")
    assert ["owner", "owner-ca", True, False] in rows
    assert ["masa", "voucher-signer", True, False] in rows
    assert ["manufacturer", "manufacturer-ca", True, False] in rows
    assert {token for token, *_ in rows} <= set(lab.tokens)
    [owner] = jq(ok("keys", "list", "--lab", lab.dir, "--token", "owner", "--json"))
    assert (owner["token"], owner["label"]) == ("owner", "owner-ca")
    # The URI it prints reaches the key on its own: configuration and PIN source travel with it.
    assert "x-module-env=SOFTHSM2_CONF=" in owner["uri"] and "pin-source=file:" in owner["uri"]
    assert ok("keys", "public", "--key", owner["uri"]) == certificate_public_key(lab.pki("owner-ca"))
    text = ok("keys", "list", "--lab", lab.dir, "--token", "owner").decode()
    assert text.startswith("token=owner  label=owner-ca  ") and len(text.splitlines()) == 1


def test_keys_ca_and_cms_commands_take_a_lab_key_by_token_and_label(lab, tmp_path):
    public = ok("keys", "public", "--lab", lab.dir, "--key", OWNER_CA)
    assert public == certificate_public_key(lab.pki("owner-ca"))

    (tmp_path / "voucher.json").write_text('{"ietf-voucher:voucher": {"serial-number": "LAB-1"}}')
    ok("cms", "sign", "--lab", lab.dir, "--key", VOUCHER_SIGNER, "--cert", lab.pki("masa-signer"),
       "--in", tmp_path / "voucher.json", "--out", tmp_path / "voucher.cms")
    verified = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "voucher.cms",
                       "-CAfile", lab.pki("manufacturer-ca"), "-purpose", "any")
    assert verified.returncode == 0 and b"LAB-1" in verified.stdout, verified.stderr

    ok("keys", "generate", "--lab", lab.dir, "--key", "pkcs11:token=pledges;object=cli-device")
    ok("csr", "--lab", lab.dir, "--key", "pkcs11:token=pledges;object=cli-device", "--subject", "CN=cli-device",
       "--out", tmp_path / "device.csr")
    [issued] = jq(ok("ca", "issue-idevid", "--lab", lab.dir, "--ca-key", MANUFACTURER_CA,
                     "--ca-cert", lab.pki("manufacturer-ca"), "--csr", tmp_path / "device.csr",
                     "--serial", "CLI-LAB-1", "--out", tmp_path / "idevid.pem", "--json"))
    assert issued["serial_number"] == "CLI-LAB-1"
    verified = openssl("verify", "-CAfile", lab.pki("manufacturer-ca"), tmp_path / "idevid.pem")
    assert verified.returncode == 0, verified.stderr
    ok("ca", "init", "--lab", lab.dir, "--key", OWNER_CA, "--subject", "CN=again", "--out", tmp_path / "ca.pem")
    assert certificate_public_key(tmp_path / "ca.pem") == public
    ok("keys", "delete", "--lab", lab.dir, "--key", "pkcs11:token=pledges;object=cli-device", "--yes")


def test_a_token_not_found_names_the_likely_cause(lab):
    # No configuration at all: SoftHSM read its default one. Say so, and how to give one.
    status, err = failure("keys", "public", "--key", OWNER_CA)
    assert status == 3
    assert "no PKCS#11 token labelled 'owner'" in err
    assert "no configuration" in err and "x-module-env=SOFTHSM2_CONF=PATH" in err and "--lab DIR" in err
    # A configuration that was given but holds no such token: the tokens it does hold.
    conf = lab.softhsm.conf
    status, err = failure("keys", "public", "--key", f"pkcs11:token=ownr;object=owner-ca?x-module-env=SOFTHSM2_CONF={conf}")
    assert status == 3 and f"SOFTHSM2_CONF={conf}" in err and "tokens present: " in err and "owner" in err
    assert "--lab" not in err
    # The lab has no such token: its tokens.
    status, err = failure("keys", "list", "--lab", lab.dir, "--token", "ownr")
    assert status == 3 and "has no token 'ownr'" in err and "owner" in err and "masa" in err
    # --token belongs to a lab.
    status, err = failure("keys", "list", "--token", "owner")
    assert status == 2 and "--lab DIR" in err
    status, err = failure("keys", "list", "--lab", lab.dir / "nowhere")
    assert status == 3 and "holds no lab" in err


def test_p11tool_uses_a_listed_uri_given_softhsm2_conf_and_gnutls_pin(lab):
    """p11tool reads neither x-module-env nor pin-source; the route the README documents:
    SOFTHSM2_CONF for the module, GNUTLS_PIN for the PIN."""
    [owner] = jq(ok("keys", "list", "--lab", lab.dir, "--token", "owner", "--json"), ".uri")
    env = {**without_softhsm_conf(), "SOFTHSM2_CONF": str(lab.softhsm.conf),
           "GNUTLS_PIN": lab.pin_file("owner").read_text().strip()}

    def p11tool(*args, env):
        return subprocess.run(["p11tool", "--login", *args, owner], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60)

    exported = p11tool("--export-pubkey", env=env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == ok("keys", "public", "--key", owner)
    signed = p11tool("--test-sign", env=env)   # signs inside the token with the private key
    # (p11tool reports on stderr)
    assert signed.returncode == 0 and b"Verifying against public key in the token... ok" in signed.stderr, \
        signed.stdout + signed.stderr
    # Without GNUTLS_PIN it asks for the PIN: the URI's pin-source is not read.
    no_pin = {k: v for k, v in env.items() if k != "GNUTLS_PIN"}
    assert p11tool("--test-sign", env=no_pin).returncode != 0
