"""With --json, stdout carries JSON only: jq reads every --json output, and the commands
without --json are the ones whose output is data, is always JSON, or is a server's."""

from __future__ import annotations

import click

from boardrunner import BoardProcess
from clirunner import jq, run_cli
from pledgeforge.boards.image_signing import firmware_payload
from pledgeforge.cli import main
from pledgeforge.hsm.x509 import to_pem
from vectors import APPC

# Commands without --json, and why (the README says the same).
NO_JSON = {
    "board run": "always prints one JSON line (console, power, key store) and nothing else",
    "board pty-bridge": "always prints one JSON line (url, pty, link) and nothing else",
    "cms sign": "writes the signed data (DER) and reports nothing",
    "keys public": "prints the public key (PEM): the output is the data",
    "masa serve": "a server: it logs and reports nothing on stdout",
    "provision export": "writes the import file itself (JSON lines) to --out or stdout",
    "registrar serve": "a server: it logs and reports nothing on stdout",
    "signer serve": "a server: it logs and reports nothing on stdout",
}
# Where each --json output goes through jq.
JQ_CHECKED = {
    "keys generate", "keys list", "keys delete", "ca init", "csr", "ca issue-idevid", "cert verify", "cms verify",
    "image sign", "image verify", "image info",
    "board profiles", "board power", "board console-log", "board set-verify-key",
    "registrar add-pledge", "registrar set-response", "registrar overload",
    "masa add-owner", "masa add-device", "pledge bootstrap", "verify",
    "pledge reenroll", "registrar ldevids", "registrar revoke",  # test_ldevid_lifecycle.py
    "lab up", "lab status", "lab down",         # test_lab.py
    "demo",                                     # test_demo.py
    "fleet run",                                # test_fleet.py
    "signer check",                             # test_signer_policy.py
    "signer audit verify", "signer audit show",  # test_signer_service.py
    "signer renew",                             # test_signer_lab.py
    "provision",                                # test_station.py
}


def commands(group: click.Group = main, prefix: str = ""):
    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            if command.invoke_without_command:  # a command of its own too (`provision`)
                yield f"{prefix}{name}", command
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_command_that_reports_something_has_json():
    with_json = set()
    for name, command in commands():
        has_json = any("--json" in p.opts for p in command.params)
        assert has_json != (name in NO_JSON), f"{name}: give it --json or say in NO_JSON why not"
        if has_json:
            with_json.add(name)
    assert with_json == JQ_CHECKED


def out(*args, env=None) -> bytes:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def one(stdout: bytes, program: str = "."):
    [value] = jq(stdout, program)
    return value


def test_key_certificate_and_cms_commands(token, tmp_path):
    env = token.hsm.env()
    ca, dev = token.uri_text("ca"), token.uri_text("dev")
    generated = out("keys", "generate", "--key", ca, "--json", env=env)
    assert one(generated, ".algorithm") == "ec-p256"
    assert one(generated, ".public_key").startswith("-----BEGIN PUBLIC KEY-----")
    out("keys", "generate", "--key", dev, env=env)
    labels = jq(out("keys", "list", "--token-uri", token.uri_text(), "--json", env=env), ".label")
    assert sorted(set(labels)) == ["ca", "dev"]
    made = out("ca", "init", "--key", ca, "--subject", "CN=JSON CA", "--out", tmp_path / "ca.pem",
               "--json", env=env)
    assert one(made, ".subject") == "CN=JSON CA" and one(made, ".out") == str(tmp_path / "ca.pem")
    assert one(out("csr", "--key", dev, "--subject", "CN=dev", "--out", tmp_path / "csr.pem", "--json",
                   env=env), ".subject") == "CN=dev"
    issued = out("ca", "issue-idevid", "--ca-key", ca, "--ca-cert", tmp_path / "ca.pem",
                 "--csr", tmp_path / "csr.pem", "--serial", "JSON-1", "--masa-url", "masa.example",
                 "--out", tmp_path / "idevid.pem", "--json", env=env)
    assert one(issued, "[.serial_number, .issuer, .masa_url]") == ["JSON-1", "CN=JSON CA", "masa.example"]
    verified = out("cert", "verify", "--in", tmp_path / "idevid.pem", "--anchors", tmp_path / "ca.pem",
                   "--json")
    assert one(verified, '.["serial-number"]') == "JSON-1"
    (tmp_path / "vr.json").write_text('{"ietf-voucher-request:voucher":{"serial-number":"JSON-1"}}')
    out("cms", "sign", "--key", dev, "--cert", tmp_path / "idevid.pem", "--in", tmp_path / "vr.json",
        "--out", tmp_path / "vr.cms", env=env)
    content = out("cms", "verify", "--in", tmp_path / "vr.cms", "--anchors", tmp_path / "ca.pem", "--json")
    assert one(content, '.content["ietf-voucher-request:voucher"]["serial-number"]') == "JSON-1"
    assert one(content, "[.valid, .signer]") == [True, one(issued, ".subject")]
    # --json and a PEM on stdout cannot share it.
    both = run_cli("csr", "--key", dev, "--subject", "CN=dev", "--out", "-", "--json", env=env)
    assert both.returncode == 2 and b"give --out a file name" in both.stderr
    deleted = out("keys", "delete", "--key", dev, "--yes", "--json", env=env)
    assert one(deleted, ".deleted").startswith("pkcs11:") and "object=dev" in one(deleted, ".deleted")
    labels = jq(out("keys", "list", "--token-uri", token.uri_text(), "--json", env=env), ".label")
    assert sorted(set(labels)) == ["ca"]


def test_image_commands(token, tmp_path):
    env = token.hsm.env()
    uri = token.uri_text("fw")
    out("keys", "generate", "--key", uri, env=env)
    (tmp_path / "fw.pem").write_bytes(out("keys", "public", "--key", uri, env=env))
    (tmp_path / "app.bin").write_bytes(firmware_payload("mcu-se", "1.2.3"))
    signed = out("image", "sign", "--key", uri, "--version", "1.2.3", "--in", tmp_path / "app.bin",
                 "--out", tmp_path / "app.img", "--json", env=env)
    image_hash = one(signed, ".hash")
    assert one(signed, ".version") == "1.2.3"
    verified = out("image", "verify", "--in", tmp_path / "app.img", "--key-pem", tmp_path / "fw.pem", "--json")
    assert one(verified, "[.valid, .hash]") == [True, image_hash]
    assert one(out("image", "info", "--in", tmp_path / "app.img", "--json"), ".hash") == image_hash


def test_board_commands(tmp_path):
    names = jq(out("board", "profiles", "--json"), ".name")
    assert names == ["gateway-tpm", "legacy-rsa", "mcu-se"]
    state = tmp_path / "mcu"
    with BoardProcess("mcu-se", state) as board:
        board.wait_for_phase("shell")
        assert one(out("board", "power", "status", "--state", state, "--json")) == \
            {"power": "on", "phase": "shell"}
    directions = set(jq(out("board", "console-log", "--state", state, "--json"), ".dir"))
    assert directions == {"out", "event"}
    fw_key = APPC / "vendor.crt"          # a certificate carries a key MCUboot can use
    installed = out("board", "set-verify-key", "--state", state, "--key-pem", fw_key, "--json")
    assert one(installed, ".verify_key") == str(state / "slots" / "verify-key.pem")


def test_registrar_masa_and_pledge_commands(lab, tmp_path):
    owner, cloud, masa = (lab.config_path(role) for role in ("owner", "cloud", "masa"))
    assert one(out("registrar", "add-pledge", "--config", owner, "--serial", "JQ-1", "--json")) == \
        {"serial": "JQ-1", "flow": "redirect"}
    answer = out("registrar", "set-response", "--config", cloud, "--serial", "JQ-1",
                 "--response", "owner-unknown", "--retry-after", "60", "--json")
    assert one(answer, "[.response, .status, .retry_after]") == ["owner-unknown", 401, 60]
    assert one(out("registrar", "overload", "--config", cloud, "--retry-after", "5", "--json")) == \
        {"overloaded": True, "retry_after": 5}
    assert one(out("registrar", "overload", "--config", cloud, "--off", "--json"), ".overloaded") is False
    (tmp_path / "other-owner.pem").write_bytes(to_pem(lab_owner_ca(lab)))
    assert one(out("masa", "add-owner", "--config", masa, "--name", "jq-owner", "--domain-ca",
                   tmp_path / "other-owner.pem", "--json"), ".owner") == "jq-owner"
    assert one(out("masa", "add-device", "--config", masa, "--serial", "JQ-1", "--owner", "jq-owner",
                   "--json")) == {"serial": "JQ-1", "owner": "jq-owner", "est_domain": None,
                                  "additional_configuration_url": None}

    result = run_cli("pledge", "bootstrap", "--lab", lab.dir, "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert one(result.stdout, "[.state, (.transitions | last | .to)]") == ["enrolled", "enrolled"]
    assert "  enrolled" in result.stderr.decode()      # the states, for people, on stderr


def lab_owner_ca(lab):
    from pledgeforge.hsm.chain import load_certificate_file

    return load_certificate_file(str(lab.pki("owner-ca")))[0]


def test_bulk_verify(tmp_path):
    result = run_cli("verify", "--bulk", APPC / "vr_00-D0-E5-F2-00-02.der", "--anchors",
                     APPC / "vendor.crt", "--no-check-time", "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert one(result.stdout, "[.items, .summary.OK]") == [1, 1]
