"""Boards with pledge firmware, driven over their pty with pexpect as a bench script would:
manufactured by the lab's station over that console, then boot, login, `status`, `bootstrap`
to enrolled against the lab, and a power cut mid-enrollment."""

from __future__ import annotations

import json
import re

import pytest

from boardrunner import BoardProcess, factory_board, manufacture, quick_profile
from clirunner import openssl, run_cli
from pledgeforge.boards.profile import load_profile
from pledgeforge.bench import login, run

GATEWAY = load_profile("gateway-tpm")
MCU = load_profile("mcu-se")


def field(status: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}: +(.*?)\r?$", status, re.M)
    assert match, status
    return match.group(1)


def check_enrolled(con, prompt: str, lab, tmp_path, serial: str) -> None:
    status = run(con, "status", prompt)
    assert field(status, "state") == "enrolled" and field(status, "ldevid") == "present"
    pem = run(con, "ldevid", prompt).replace("\r\n", "\n")
    (tmp_path / "ldevid.pem").write_text(pem)
    verified = openssl("verify", "-CAfile", lab.pki("owner-ca"), tmp_path / "ldevid.pem")
    assert verified.returncode == 0, verified.stderr.decode()
    subject = openssl("x509", "-in", tmp_path / "ldevid.pem", "-noout", "-subject").stdout.decode()
    assert serial in subject
    voucher = json.loads(run(con, "voucher", prompt))
    assert voucher["ietf-voucher:voucher"]["serial-number"] == serial


@pytest.mark.parametrize("profile, flow", [(GATEWAY, "redirect"), (MCU, "est-domain")],
                         ids=["gateway-tpm-redirect", "mcu-pkcs11-est-domain"])
def test_pexpect_boot_login_status_bootstrap(lab, tmp_path, profile, flow):
    prompt = profile.console.prompt
    with factory_board(lab, quick_profile(profile.name, tmp_path, autoboot_seconds=0.1),
                       tmp_path / "board") as board:
        made = manufacture(lab, board, flow)
        con = board.open_pty()
        con.expect_exact("Hit any key to stop autoboot")
        if profile.console.login:
            login(con, profile.console.username, profile.console.password, prompt)
        else:
            con.expect_exact(prompt)
        status = run(con, "status", prompt)
        serial = field(status, "serial")
        assert serial == made.serial and made.status == "provisioned"
        assert field(status, "state") == "provisioned"
        assert field(status, "registrar") == lab.url("cloud")   # the factory's, as a default
        assert field(status, "manufacturing") == "locked"
        assert "key: " + ("tpm:" if profile.keystore.type == "tpm" else "pkcs11:") in run(con, "idevid", prompt)

        out = run(con, "bootstrap", prompt)
        states = re.findall(r"^-> (\S+)", out, re.M)
        assert states[0] == "cloud-connect" and states[-1] == "enrolled"
        assert ("redirected" in states) == (flow == "redirect")
        assert "voucher-verified" in states and "est-enroll" in states
        assert f"enrolled: LDevID CN={serial}" in out
        assert run(con, "echo $?", prompt).strip() == "0"
        check_enrolled(con, prompt, lab, tmp_path, serial)

    # The enrollment survives the board process: a new run boots enrolled.
    with BoardProcess(quick_profile(profile.name, tmp_path), tmp_path / "board") as board:
        con = board.open_pty()
        if profile.console.login:
            login(con, profile.console.username, profile.console.password, prompt)
        else:
            con.expect_exact(prompt)
        assert field(run(con, "status", prompt), "state") == "enrolled"


def test_power_off_during_enrollment_boots_the_last_good_state(lab, tmp_path):
    prompt = MCU.console.prompt
    state = tmp_path / "board"
    with factory_board(lab, quick_profile(MCU.name, tmp_path), state) as board:
        serial = manufacture(lab, board, "redirect").serial
        con = board.open_pty()
        con.expect_exact(prompt)
        # The owner registrar keeps the pledge waiting (202) while we cut the power.
        lab.set_cloud_response(serial, "accepted", retry_after=30)
        con.send("bootstrap\r")
        con.expect_exact("-> waiting")
        off = run_cli("board", "power", "off", "--state", state)
        assert off.returncode == 0, off.stderr.decode()
        on = run_cli("board", "power", "on", "--state", state)
        assert on.returncode == 0, on.stderr.decode()
        con.expect_exact(prompt)
        status = run(con, "status", prompt)
        assert field(status, "state") == "provisioned"
        assert field(status, "voucher") == "none" and field(status, "ldevid") == "none"

        # Power back, owner known again: the same board enrolls.
        lab.register_pledge(serial, "redirect")
        out = run(con, "bootstrap", prompt)
        assert "enrolled: LDevID" in out, out
        check_enrolled(con, prompt, lab, tmp_path, serial)
