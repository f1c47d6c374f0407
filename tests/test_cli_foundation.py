"""The foundation CLI end to end, as a user runs it: real SoftHSM2, OpenSSL at the other end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clirunner import openssl, run_cli
from test_cms import VECTOR_CASES
from vectors import APPC, VECTORS


def ok(result):
    assert result.returncode == 0, result.stderr.decode()
    return result


def one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_manufacturing_flow_with_keys_in_softhsm(token, tmp_path):
    env = token.hsm.env()
    ca_uri, dev_uri = token.uri_text("mfg-ca"), token.uri_text("device")
    ok(run_cli("keys", "generate", "--key", ca_uri, "--algorithm", "ec-p384", env=env))
    ok(run_cli("ca", "init", "--key", ca_uri, "--subject", "CN=Example Mfg CA,O=Example",
               "--out", tmp_path / "ca.pem", env=env))
    ok(run_cli("keys", "generate", "--key", dev_uri, "--algorithm", "ec-p256", env=env))
    ok(run_cli("csr", "--key", dev_uri, "--subject", "CN=router,O=Example", "--out", tmp_path / "csr.pem", env=env))
    assert openssl("req", "-verify", "-noout", "-in", tmp_path / "csr.pem").returncode == 0
    ok(run_cli("ca", "issue-idevid", "--ca-key", ca_uri, "--ca-cert", tmp_path / "ca.pem",
               "--csr", tmp_path / "csr.pem", "--serial", "PF-000123",
               "--masa-url", "masa.example.com:9443", "--hw-type", "1.3.6.1.4.1.60000.1",
               "--out", tmp_path / "idevid.pem", env=env))
    verify = openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "idevid.pem")
    assert verify.returncode == 0 and b"OK" in verify.stdout, verify.stderr
    text = openssl("x509", "-in", tmp_path / "idevid.pem", "-noout", "-text").stdout.decode()
    assert "serialNumber = PF-000123" in text
    assert "1.3.6.1.5.5.7.1.32:" in text and "masa.example.com:9443" in text
    assert "Not After : Dec 31 23:59:59 9999 GMT" in text
    assert "X509v3 Key Usage: critical" in text and "Digital Signature" in text
    assert "Subject Key Identifier" in text and "Authority Key Identifier" in text
    # notAfter is a GeneralizedTime in the DER itself.
    parsed = openssl("asn1parse", "-in", tmp_path / "idevid.pem").stdout.decode()
    assert "GENERALIZEDTIME   :99991231235959Z" in parsed
    # The device key signs a voucher-request; OpenSSL and we both verify it.
    (tmp_path / "vr.json").write_bytes(b'{"ietf-voucher-request:voucher":{"serial-number":"PF-000123"}}')
    ok(run_cli("cms", "sign", "--key", dev_uri, "--cert", tmp_path / "idevid.pem", "--in", tmp_path / "vr.json",
               "--out", tmp_path / "vr.cms", env=env))
    assert openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "vr.cms", "-CAfile", tmp_path / "ca.pem",
                   "-purpose", "any").stdout == (tmp_path / "vr.json").read_bytes()
    shown = ok(run_cli("cms", "verify", "--in", tmp_path / "vr.cms", "--anchors", tmp_path / "ca.pem"))
    assert shown.stdout == (tmp_path / "vr.json").read_bytes()
    # keys public / list
    pub = ok(run_cli("keys", "public", "--key", dev_uri, env=env)).stdout
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert openssl("x509", "-in", tmp_path / "idevid.pem", "-noout", "-pubkey").stdout == pub
    listing = ok(run_cli("keys", "list", "--token-uri", token.uri_text(), env=env)).stdout.decode()
    assert "label=mfg-ca" in listing and "label=device" in listing and "extractable=False" in listing


@pytest.mark.parametrize("cms_file,anchor,certfile", VECTOR_CASES)
def test_cli_verifies_published_vectors_and_rejects_tampering(tmp_path, cms_file, anchor, certfile):
    extra = ["--certfile", VECTORS / certfile] if certfile else []
    result = ok(run_cli("cms", "verify", "--in", VECTORS / cms_file, "--anchors", VECTORS / anchor,
                        *extra, "--no-check-time"))
    assert b'"serial-number":"00-D0-E5-F2-00-02"' in result.stdout
    one_line_error(run_cli("cms", "verify", "--in", VECTORS / cms_file, "--anchors", VECTORS / anchor, *extra),
                   "expired")
    import base64

    der = base64.b64decode(b"".join((VECTORS / cms_file).read_bytes().split()))
    for position in (der.index(b"serial-number"), len(der) - 5, len(der) // 3):
        tampered = tmp_path / f"tampered-{position}.der"
        tampered.write_bytes(der[:position] + bytes([der[position] ^ 0x01]) + der[position + 1:])
        one_line_error(run_cli("cms", "verify", "--in", tampered, "--anchors", VECTORS / anchor, *extra,
                               "--no-check-time"))


def test_cli_accepts_der_pem_and_base64(tmp_path):
    der_path = APPC / "vr_00-D0-E5-F2-00-02.der"
    pem = openssl("cms", "-cmsout", "-inform", "DER", "-in", der_path, "-outform", "PEM").stdout
    (tmp_path / "vr.pem").write_bytes(pem)
    outputs = {ok(run_cli("cms", "verify", "--in", p, "--anchors", APPC / "vendor.crt", "--no-check-time")).stdout
               for p in (der_path, tmp_path / "vr.pem", APPC / "vr_00-D0-E5-F2-00-02.b64")}
    assert len(outputs) == 1


def test_c15_text_idevid_is_untrusted_the_other_copy_chains():
    good = ok(run_cli("cert", "verify", "--in", APPC / "idevid_00-D0-E5-F2-00-02.crt",
                      "--anchors", APPC / "vendor.crt", "--no-check-time")).stdout.decode()
    assert "serial-number: 00-D0-E5-F2-00-02" in good and "highway-test.example.com:9443" in good
    one_line_error(run_cli("cert", "verify", "--in", APPC / "idevid_00-D0-E5-F2-00-02.rfc8995-C.1.5-text.crt",
                           "--anchors", APPC / "vendor.crt", "--no-check-time"), "does not chain")


def test_cli_errors_are_one_clear_line(token, tmp_path):
    env = token.hsm.env()
    ok(run_cli("keys", "generate", "--key", token.uri_text("k"), env=env))
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("000000")
    err = one_line_error(run_cli("keys", "public", "--key",
                                 f"pkcs11:token={token.label};object=k?pin-source=file:{bad_pin}", env=env),
                         "wrong PIN", token.label)
    assert "000000" not in err
    one_line_error(run_cli("keys", "public", "--key", f"pkcs11:token=ghost;object=k?pin-source=file:{bad_pin}",
                           env=env), "no PKCS#11 token labelled 'ghost'")
    one_line_error(run_cli("keys", "public", "--key", f"pkcs11:token={token.label};object=k?pin-value=1234",
                           env=env), "pin-value")
    one_line_error(run_cli("keys", "generate", "--key", token.uri_text("k"), env=env), "already holds")
    truncated = tmp_path / "t.der"
    truncated.write_bytes((APPC / "vr_00-D0-E5-F2-00-02.der").read_bytes()[:700])
    one_line_error(run_cli("cms", "verify", "--in", truncated, "--anchors", APPC / "vendor.crt", "--no-check-time"),
                   "well-formed")
    one_line_error(run_cli("cms", "verify", "--in", APPC / "vr_00-D0-E5-F2-00-02.der",
                           "--anchors", APPC / "masa.crt", "--no-check-time"), "does not chain")
    one_line_error(run_cli("cms", "verify", "--in", tmp_path / "missing.der", "--anchors", APPC / "vendor.crt"),
                   "cannot read")


def test_tpm_device_key_idevid_and_cms_with_openssl(token, swtpm, tpm_uri, tmp_path):
    """The device key in swtpm, the manufacturer CA in SoftHSM2: as on a production line."""
    env = {**token.hsm.env(), "TPM2TOOLS_TCTI": swtpm.tcti}
    ca_uri, dev_uri = token.uri_text("mfg-ca"), str(tpm_uri(0x81020001))
    ok(run_cli("keys", "generate", "--key", ca_uri, "--algorithm", "ec-p384", env=env))
    ok(run_cli("ca", "init", "--key", ca_uri, "--subject", "CN=TPM line CA", "--out", tmp_path / "ca.pem", env=env))
    ok(run_cli("keys", "generate", "--key", dev_uri, "--algorithm", "ec-p256", env=env))
    readpublic = subprocess.run(["tpm2_readpublic", "-c", "0x81020001"], env=env, capture_output=True,
                                text=True, timeout=30)
    assert readpublic.returncode == 0, readpublic.stderr
    attributes = next(l for l in readpublic.stdout.splitlines() if "attributes:" in l or "value:" in l)
    assert "fixedtpm" in readpublic.stdout and "fixedparent" in readpublic.stdout, attributes
    ok(run_cli("csr", "--key", dev_uri, "--subject", "CN=gateway", "--out", tmp_path / "csr.pem", env=env))
    ok(run_cli("ca", "issue-idevid", "--ca-key", ca_uri, "--ca-cert", tmp_path / "ca.pem", "--csr",
               tmp_path / "csr.pem", "--serial", "TPM-0001", "--masa-url", "masa.example.com",
               "--out", tmp_path / "idevid.pem", env=env))
    assert openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "idevid.pem").returncode == 0
    (tmp_path / "vr.json").write_bytes(b'{"ietf-voucher-request:voucher":{"serial-number":"TPM-0001"}}')
    ok(run_cli("cms", "sign", "--key", dev_uri, "--cert", tmp_path / "idevid.pem", "--in", tmp_path / "vr.json",
               "--out", tmp_path / "vr.cms", env=env))
    checked = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "vr.cms",
                      "-CAfile", tmp_path / "ca.pem", "-purpose", "any")
    assert checked.returncode == 0 and checked.stdout == (tmp_path / "vr.json").read_bytes(), checked.stderr
    listing = ok(run_cli("keys", "list", "--token-uri", f"tpm:?tcti={swtpm.tcti}", env=env)).stdout.decode()
    assert "81020001" in listing
    # The handle is taken now: a second generate names it and how to free it.
    one_line_error(run_cli("keys", "generate", "--key", dev_uri, env=env), "0x81020001", "tpm2_evictcontrol")


def test_unreachable_tpm_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line_error(run_cli("keys", "public", "--key", f"tpm:handle=0x81020000?tcti=swtpm:host=127.0.0.1,port={port}"),
                   f"port={port}")


def test_the_cli_imports_a_command_only_when_it_runs():
    """`pledgeforge pledge bootstrap` loads the pledge and the lab, not the board emulator, the
    other commands, or the servers' web framework."""
    code = ("import sys, click\n"
            "from pledgeforge.cli import main\n"
            "main.get_command(click.Context(main), 'pledge')\n"
            "import pledgeforge.lab_pledge\n"
            "heavy = ('pledgeforge.commands.board', 'pledgeforge.commands.fleet', 'pledgeforge.boards.runtime',"
            " 'pledgeforge.registrar.web', 'aiohttp', 'rich')\n"
            "print(' '.join(m for m in heavy if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_help_lists_every_command_with_its_own_first_line_and_imports_none():
    """`pledgeforge --help` reads the command table; each summary there is the command's own."""
    from pledgeforge.commands import COMMANDS, load_command

    for name, entry in COMMANDS.items():
        assert entry.summary == load_command(name).get_short_help_str(limit=1000), name
    code = ("import sys\n"
            "from pledgeforge.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(' '.join(m for m in sys.modules if m.startswith('pledgeforge.commands.')),"
            " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == sorted(COMMANDS)
    assert done.stderr.strip() == ""
