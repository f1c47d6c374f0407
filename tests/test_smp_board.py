"""Flashing a running board (`pledgeforge board run`) over its console pty with smpmgr and
smpclient, with images signed by `pledgeforge image sign` using a firmware key in SoftHSM;
the shell, enumeration and datetime commands; smpmgr through `board pty-bridge` to boards
whose console is RFC 2217 or raw TCP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import serial
from smp import os_management as osm
from smpclient import SMPClient
from smpclient.generics import error, success
from smpclient.requests.image_management import ImageStatesRead
from smpclient.requests.os_management import DateTimeRead, DateTimeWrite
from smpclient.transport.serial import SMPSerialTransport

from boardrunner import BoardProcess, BridgeProcess, quick_profile
from clirunner import run_cli, smpmgr
from pledgeforge.boards.image_signing import firmware_payload
from pledgeforge.boards.image_slots import ImageSlots
from pledgeforge.boards.profile import load_profile
from pledgeforge.hsm.keystore import generate_key
from pledgeforge.bench import run

pytestmark = pytest.mark.slow

MCU = load_profile("mcu-se")
PROMPT = MCU.console.prompt



class Bench:
    """A firmware key in SoftHSM, a board profile that trusts it, and a factory-flashed board."""

    def __init__(self, token, tmp_path: Path):
        self.tmp = tmp_path
        self.uri = token.uri_text("fw")
        key_pem = tmp_path / "fw.pub.pem"
        key_pem.write_bytes(generate_key(token.uri("fw"), "ec-p256").public_key_pem())
        # A user's profile: the shipped MCU board with the manufacturer's firmware key.
        text = MCU.path.read_text()
        text = re.sub(r"(?m)^(slot_size_kib = .*)$", rf'\1\nverify_key = "{key_pem}"', text)
        self.profile = tmp_path / "mcu-fw.toml"
        self.profile.write_text(text)
        self.state = tmp_path / "board"
        # Manufacturing: the factory image goes into the primary slot before first power-on.
        slots = ImageSlots(self.state, load_profile(self.profile).image)
        slots.install_factory_image(self.sign("1.0.0").read_bytes())

    def sign(self, version: str, size: int = 16 * 1024) -> Path:
        app = self.tmp / f"app-{version}.bin"
        app.write_bytes(firmware_payload("mcu-se", version, size))
        out = self.tmp / f"app-{version}.signed.bin"
        result = run_cli("image", "sign", "--key", self.uri, "--version", version, "--in", app,
                         "--out", out, "--profile", self.profile)
        assert result.returncode == 0, result.stderr
        return out

    def board(self) -> BoardProcess:
        return BoardProcess(self.profile, self.state)


@pytest.fixture
def bench(token, tmp_path):
    return Bench(token, tmp_path)


def firmware_version(board: BoardProcess, *expect: str) -> str:
    """Wait for the shell (after the given console lines), then ask `status`."""
    con = board.open_pty()
    try:
        for text in expect:
            con.expect_exact(text)
        con.expect_exact(PROMPT)
        fields = dict(line.split(":", 1) for line in run(con, "status", PROMPT).splitlines()
                      if ":" in line)
        return fields["firmware"].strip()
    finally:
        con.close()


def test_smpmgr_flashes_tests_and_confirms_a_new_image(bench):
    image = bench.sign("1.1.0")
    with bench.board() as board:
        port = board.console_path
        assert firmware_version(board, "I: Booting image version 1.0.0") == "1.0.0"
        state = smpmgr(port, "image", "state-read").stdout
        assert "version='1.0.0'" in state and "confirmed=True" in state

        assert "Upgrade complete." in smpmgr(port, "upgrade", "--slot", "1", image).stdout
        assert firmware_version(board, "I: Swap type: test",
                                "I: Booting image version 1.1.0 (test, not confirmed)") == "1.1.0"

        smpmgr(port, "image", "state-write", "--confirm")
        state = smpmgr(port, "image", "state-read").stdout
        assert "version='1.1.0'" in state.split("slot=1")[0]

        con = board.open_pty()
        con.send("reboot\r")
        con.expect_exact("I: Booting image version 1.1.0")
        con.close()
        assert firmware_version(board) == "1.1.0"
    # Confirmed means it survives a power cycle of the whole process too.
    with bench.board() as board:
        assert firmware_version(board, "I: Booting image version 1.1.0") == "1.1.0"


def test_unconfirmed_image_reverts_at_the_next_reboot(bench):
    image = bench.sign("2.0.0")
    with bench.board() as board:
        port = board.console_path
        firmware_version(board)
        smpmgr(port, "upgrade", "--slot", "1", image)
        assert firmware_version(board, "I: Swap type: test") == "2.0.0"
        con = board.open_pty()
        con.send("reboot\r")
        con.expect_exact("I: Swap type: revert")
        con.close()
        assert firmware_version(board) == "1.0.0"


@pytest.mark.parametrize("damage", ["tampered", "wrong-key"])
def test_bad_image_is_refused_and_the_previous_version_keeps_running(bench, token, damage):
    image = bench.sign("1.1.0")
    if damage == "tampered":
        data = bytearray(image.read_bytes())
        data[0x200 + 777] ^= 0x20
        image.write_bytes(bytes(data))
        reason = "hash mismatch"
    else:
        generate_key(token.uri("rogue"), "ec-p256")
        app = bench.tmp / "rogue.bin"
        app.write_bytes(firmware_payload("mcu-se", "9.9.9"))
        image = bench.tmp / "rogue.signed.bin"
        assert run_cli("image", "sign", "--key", token.uri_text("rogue"), "--version", "9.9.9",
                       "--in", app, "--out", image).returncode == 0
        reason = "wrong key"
    with bench.board() as board:
        port = board.console_path
        firmware_version(board)
        smpmgr(port, "upgrade", "--slot", "1", image)
        con = board.open_pty()
        con.expect_exact("E: Image in the secondary slot is not valid! (" + reason)
        con.close()
        assert firmware_version(board) == "1.0.0"
        assert "slot=1" not in smpmgr(port, "image", "state-read").stdout


async def upload(port: str, image: bytes, stop_at: int | None = None) -> list[int]:
    client = SMPClient(SMPSerialTransport(), port, timeout_s=10)
    await client.connect()
    offsets = []
    try:
        async for offset in client.upload(image, slot=1):
            offsets.append(offset)
            if stop_at is not None and offset >= stop_at:
                break
    finally:
        await client.disconnect()
    return offsets


async def image_versions(port: str) -> list[tuple[int, str]]:
    client = SMPClient(SMPSerialTransport(), port, timeout_s=10)
    await client.connect()
    try:
        states = await client.request(ImageStatesRead())
    finally:
        await client.disconnect()
    assert success(states)
    return [(row.slot, row.version) for row in states.images]


def test_power_off_during_an_upload_boots_the_last_good_image(bench):
    image = bench.sign("1.2.0", size=64 * 1024).read_bytes()
    with bench.board() as board:
        port = board.console_path
        firmware_version(board)
        cut = asyncio.run(upload(port, image, stop_at=len(image) // 3))[-1]
        assert 0 < cut < len(image)
        assert (bench.state / "slots" / "upload.part").exists()
        assert run_cli("board", "power", "off", "--state", bench.state).returncode == 0
        assert run_cli("board", "power", "on", "--state", bench.state).returncode == 0
        assert firmware_version(board, "I: Booting image version 1.0.0") == "1.0.0"
        assert not (bench.state / "slots" / "upload.part").exists()
        assert asyncio.run(image_versions(port)) == [(0, "1.0.0")]

        # The session died with the power: the next upload starts from the beginning.
        again = asyncio.run(upload(port, image, stop_at=len(image) // 2))
        assert again[0] < cut
        board.kill()                                   # and now a cut of the whole process
    with bench.board() as board:
        assert firmware_version(board, "I: Booting image version 1.0.0") == "1.0.0"
        assert asyncio.run(image_versions(board.console_path)) == [(0, "1.0.0")]
        assert asyncio.run(upload(board.console_path, image))[-1] == len(image)
        assert asyncio.run(image_versions(board.console_path)) == [(0, "1.0.0"), (1, "1.2.0")]


# -- shell, enumeration and datetime ----------------------------------------------------

def test_smpmgr_shell_runs_board_commands_and_reports_their_status(tmp_path):
    with BoardProcess("mcu-se", tmp_path / "mcu") as board:
        port = board.console_path
        status = smpmgr(port, "shell", "status").stdout
        assert re.search(rf"serial: +{board.info['serial_number']}", status)
        assert "state:     unprovisioned" in status
        # The line goes through the board's shell: lists and $? work, the status comes back.
        failed = smpmgr(port, "shell", "echo one; false").stdout
        assert "Return code: 1" in failed and "one" in failed
        missing = smpmgr(port, "shell", "no-such-command").stdout
        assert "Return code: 127" in missing and "sh: no-such-command: not found" in missing
        # The console's own shell is undisturbed.
        board.wait_for_phase("shell")
        con = board.open_pty()
        con.send("\r")
        con.expect_exact(PROMPT)
        assert "PledgeForge" in run(con, "uname", PROMPT)

        # `reboot` answers first, then the board resets.
        assert "Rebooting..." in smpmgr(port, "shell", "reboot").stdout
        con.expect_exact("*** Booting Zephyr OS")
        con.close()


def test_smpmgr_enumerates_the_groups(tmp_path):
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu") as board:
        groups = smpmgr(board.console_path, "enum", "get-supported-groups").stdout
        for name in ("OS_MANAGEMENT: 0", "IMAGE_MANAGEMENT: 1", "SHELL_MANAGEMENT: 9",
                     "ENUM_MANAGEMENT: 10"):
            assert name in groups
        details = smpmgr(board.console_path, "enum", "get-group-details", "9", "10").stdout
        assert re.findall(r"name='([^']+)',\s+handlers=(\d+)", details) == [
            ("shell mgmt", "1"), ("enum mgmt", "4")]


async def rtc_session(port: str, write: str | None = None):
    """smpclient (what smpmgr is built on; smpmgr has no datetime command): read the RTC,
    after setting it when `write` is given."""
    client = SMPClient(SMPSerialTransport(), port, timeout_s=10)
    await client.connect()
    try:
        if write is not None:
            assert success(await client.request(DateTimeWrite(datetime=write)))
        return await client.request(DateTimeRead())
    finally:
        await client.disconnect()


def test_datetime_is_set_read_and_lost_at_power_off(tmp_path):
    state = tmp_path / "mcu"
    with BoardProcess(quick_profile("mcu-se", tmp_path), state) as board:
        port = board.console_path
        unset = asyncio.run(rtc_session(port))
        assert error(unset) and unset.err.rc == osm.OS_MGMT_RET_RC.RTC_NOT_SET
        read = asyncio.run(rtc_session(port, write="2030-01-02T03:04:05"))
        assert success(read)
        assert "2030-01-02T03:04:05" <= read.datetime < "2030-01-02T03:05"
        smpmgr(port, "shell", "reboot")                    # a warm reset keeps the RTC
        assert asyncio.run(rtc_session(port)).datetime.startswith("2030-01-02T03:0")
        assert run_cli("board", "power", "cycle", "--state", state).returncode == 0
        assert error(asyncio.run(rtc_session(port)))       # no battery: lost with the power


# -- a pty bridge for network consoles ---------------------------------------------------

@pytest.mark.parametrize("kind", ["rfc2217", "tcp"])
def test_smpmgr_through_a_pty_bridge(tmp_path, kind):
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial", kind) as board:
        link = tmp_path / "bridge"
        with BridgeProcess(board.info["console"], link) as bridge:
            assert bridge.info["url"] == board.info["console"] and link.resolve() == \
                Path(bridge.info["pty"])
            uname = smpmgr(str(link), "shell", "uname -a").stdout
            assert "PledgeForge sensor" in uname and "mcu-se" in uname
            assert "SHELL_MANAGEMENT: 9" in smpmgr(str(link), "enum", "get-supported-groups").stdout
            assert bridge.stop() == 0                      # SIGTERM: a clean stop
            assert not link.exists()


def test_pty_bridge_reports_bad_urls_and_a_console_that_goes_away(tmp_path):
    result = run_cli("board", "pty-bridge", "--url", "/dev/ttyS0", "--link", tmp_path / "x")
    assert result.returncode == 2 and not (tmp_path / "x").exists()
    assert b"use rfc2217://HOST:PORT or socket://HOST:PORT" in result.stderr
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial", "tcp") as board:
        url = board.info["console"]
        with BridgeProcess(url, tmp_path / "bridge") as bridge:
            board.stop()
            assert bridge.proc.wait(30) == 3                 # environment: the console is gone
            assert b"went away" in bridge.proc.stderr.read()
    refused = run_cli("board", "pty-bridge", "--url", url, "--link", tmp_path / "x")
    assert refused.returncode == 3 and b"cannot open the console at " + url.encode() in refused.stderr


def test_smpmgr_upgrade_through_a_pty_bridge_to_an_rfc2217_board(bench):
    image = bench.sign("1.1.0")
    with BoardProcess(bench.profile, bench.state, "--serial", "rfc2217") as board:
        url = board.info["console"]
        link = str(bench.tmp / "bridge")
        with BridgeProcess(url, link):
            watcher = serial.serial_for_url(url, timeout=60)
            try:
                assert "Upgrade complete." in smpmgr(link, "upgrade", "--slot", "1", image).stdout
                booted = b"I: Booting image version 1.1.0 (test, not confirmed)"
                assert watcher.read_until(booted).endswith(booted)
            finally:
                watcher.close()
            board.wait_for_phase("shell")
            assert "PledgeForge sensor 1.1.0" in smpmgr(link, "shell", "uname -a").stdout
