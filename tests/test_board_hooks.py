"""`Board` in-process: the pledge firmware hook, power loss in the middle of an
enrollment, an SMP reset over the console, and the power socket of a board
whose state directory has a long path."""

from __future__ import annotations

import json
import os
import re
import threading

import pexpect.fdpexpect
from smp.os_management import ResetWriteRequest
from smp.packet import encode as smp_encode

from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.boards.power import power_request
from pledgeforge.boards.profile import load_profile
from pledgeforge.boards.firmware_apps import FirmwareApp
from pledgeforge.boards.flash import Enrollment
from pledgeforge.boards.provisioning import ProvisioningStep
from pledgeforge.boards.runtime import Board

# No boot delays: these tests wait for the prompt, not for a countdown.
MCU = load_profile("mcu-se").with_timings(autoboot_seconds=0, firmware_seconds=0)
PROMPT = MCU.console.prompt
VOUCHER = json.dumps({"ietf-voucher:voucher": {"serial-number": "x", "nonce": "n"}}).encode()


class StagedFactory(ProvisioningStep):
    def provision(self, board):
        board.flash.set_identity(PledgeIdentity(
            idevid_pem="-----BEGIN CERTIFICATE-----\nIDEVID\n-----END CERTIFICATE-----\n",
            idevid_key_uri=board.keystore.key_uri("idevid")))


class StagedPledge(FirmwareApp):
    """A pledge whose enrollment stops between voucher and LDevID until the
    test lets it go on: what it stores goes through the board's real flash."""

    binds_to = "staged-pledge"

    def __init__(self):
        self.go_on = threading.Event()
        self.factory_resets = 0

    def bootstrap(self, board, emit_line):
        emit_line("discovering registrar")
        board.flash.set_voucher(VOUCHER)
        emit_line("voucher accepted")
        self.go_on.wait(60)
        board.flash.record_enrollment(Enrollment("-----BEGIN CERTIFICATE-----\nLDEVID\n-----END CERTIFICATE-----\n",
                                                 slot="a"))
        emit_line("enrolled")
        return True

    def status_fields(self, board):
        return {"pledge": "idle"}

    def factory_reset(self, board):
        self.factory_resets += 1
        return []


def open_console(board: Board) -> pexpect.fdpexpect.fdspawn:
    fd = os.open(board.state_dir / "console", os.O_RDWR | os.O_NOCTTY)
    return pexpect.fdpexpect.fdspawn(fd, timeout=30)


def command(con, line: str) -> str:
    con.send(line + "\r")
    con.expect_exact(line + "\r\n")
    con.expect_exact(PROMPT)
    return con.before.decode()


def test_pledge_hook_and_power_loss_between_voucher_and_ldevid(tmp_path):
    app = StagedPledge()
    with Board(MCU, tmp_path / "mcu", app=app, provisioning=StagedFactory()) as board:
        board.open_console("pty")
        board.power_on()
        con = open_console(board)
        con.expect_exact(PROMPT)
        # provision() ran at the first power-on, with a key URI in the board's own token.
        out = command(con, "idevid")
        assert "key: pkcs11:token=secure-element;object=idevid" in out and "IDEVID" in out
        assert re.search(r"pledge: +idle", command(con, "status"))

        con.send("bootstrap\r")
        con.expect_exact("voucher accepted\r\n")
        board.power_off()                      # the plug is pulled mid-enrollment
        app.go_on.set()
        board.power_on()
        con.expect_exact(PROMPT)
        out = command(con, "status")
        assert re.search(r"state: +voucher-accepted", out)   # the last good state
        assert re.search(r"ldevid: +none", out)
        assert json.loads(command(con, "voucher")) == json.loads(VOUCHER)

        out = command(con, "bootstrap; echo status=$?")
        assert out.splitlines()[-3:] == ["voucher accepted", "enrolled", "status=0"]
        assert re.search(r"state: +enrolled", command(con, "status"))
        assert "LDEVID" in command(con, "ldevid")
        assert "bootstrap: voucher accepted" in command(con, "log")

        con.send("factory-reset\r")
        con.expect_exact("Rebooting...")
        con.expect_exact(PROMPT)
        out = command(con, "status")
        assert re.search(r"state: +provisioned", out)         # IDevID kept, owner forgotten
        assert app.factory_resets == 1


def test_smp_reset_request_reboots_the_board(tmp_path):
    with Board(MCU, tmp_path / "mcu") as board:
        board.open_console("pty")
        board.power_on()
        con = open_console(board)
        con.expect_exact(PROMPT)
        con.send(b"".join(smp_encode(bytes(ResetWriteRequest()))))
        con.expect(re.compile(rb"\x06\x09[A-Za-z0-9+/=]+\n"))        # answered first
        con.expect_exact("*** Booting MCUboot")                         # then reset
        con.expect_exact(PROMPT)
        assert board.flash.state.counters.boots == 2
        assert board.flash.state.counters.power_ons == 1              # a warm reset


def test_power_socket_works_from_a_deep_state_directory(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with Board(MCU, deep) as board:
        server = board.serve_power()
        assert len(str(server.path)) > 108
        assert power_request(deep, "status")["power"] == "off"
        assert power_request(deep, "on")["power"] == "on"
        assert board.wait_for_phase("shell", 30)
        assert power_request(deep, "cycle")["power"] == "on"
        assert board.flash.state.counters.power_ons == 2
        assert power_request(deep, "off") == {"ok": True, "power": "off", "phase": "off"}
