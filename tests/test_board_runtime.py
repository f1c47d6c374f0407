"""Emulated boards driven over their consoles as a bench user would: a real
`pledgeforge board run` process, its pty / raw TCP / RFC 2217 console, pexpect,
pyserial and picocom, and the power switch CLI."""

from __future__ import annotations

import io
import json
import random
import re
import socket

import pexpect
import pytest
import serial
from smp.os_management import EchoWriteRequest, EchoWriteResponse
from smp.packet import decode as smp_decode
from smp.packet import encode as smp_encode

from boardrunner import BoardProcess, quick_profile
from clirunner import run_cli
from pledgeforge.boards.profile import load_profile
from pledgeforge.hsm.swtpm import _GET_RANDOM_2, tpm_command
from pledgeforge.bench import login, run

LEGACY = load_profile("legacy-rsa")          # PKCS#11, login
MCU = load_profile("mcu-se")                 # PKCS#11, no login
GATEWAY = load_profile("gateway-tpm")        # swtpm, login


def status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"[a-z]+", key.strip()):
            fields[key.strip()] = value.strip()
    return fields


def user_profile(tmp_path, base: str, **boot) -> str:
    """A profile of the user's own, derived from a shipped one."""
    text = load_profile(base).path.read_text()
    for key, value in boot.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    path = tmp_path / f"{base}-custom.toml"
    path.write_text(text)
    return str(path)


def test_boot_login_status_and_config_survive_reboot_and_power_cycle(tmp_path):
    state = tmp_path / "legacy"
    prompt = LEGACY.console.prompt
    with BoardProcess(quick_profile("legacy-rsa", tmp_path, autoboot_seconds=0.1), state) as board:
        assert board.info["console"] == str(state / "console")
        assert board.info["power"] == f"unix:{state / 'power.sock'}"
        assert board.info["keystore"]["type"] == "pkcs11"
        assert board.info["keystore"]["token"] == "legacy-se"
        serial_number = board.info["serial_number"]
        assert serial_number.startswith("LX-")

        con = board.open_pty()
        con.expect_exact("U-Boot 2016.03-pledgeforge")
        con.expect_exact("Hit any key to stop autoboot")
        con.expect_exact("legacy login: ")
        con.send("admin\r")
        con.expect_exact("Password: ")
        con.send("not-the-password\r")
        con.expect_exact("Login incorrect")
        assert b"not-the-password" not in con.before        # passwords are not echoed
        login(con, "admin", "admin", prompt)

        fields = status_fields(run(con, "status", prompt))
        assert fields["state"] == "unprovisioned"
        assert fields["serial"] == serial_number
        assert fields["firmware"] == "1.0.0"
        assert fields["keystore"] == "pkcs11 (rsa-2048)"
        assert fields["boots"] == "1"

        assert run(con, "config set site lab-7 bench-3", prompt).strip() == ""
        con.send("reboot\r")
        con.expect_exact("Rebooting...")
        con.expect_exact("stop autoboot")
        login(con, "admin", "admin", prompt)
        assert run(con, "config get site", prompt).strip() == "lab-7 bench-3"
        assert status_fields(run(con, "status", prompt))["boots"] == "2"

        result = run_cli("board", "power", "cycle", "--state", state)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().startswith("power on")
        login(con, "admin", "admin", prompt)
        assert run(con, "config get site", prompt).strip() == "lab-7 bench-3"
        fields = status_fields(run(con, "status", prompt))
        assert fields["boots"] == "3"
        assert fields["uptime"] in ("0:00", "0:01", "0:02")  # counted from this boot
    assert board.proc.returncode == 0

    # A new process on the same state directory is the same board.
    with BoardProcess(quick_profile("legacy-rsa", tmp_path, autoboot_seconds=0.1), state) as board:
        assert board.info["serial_number"] == serial_number
        con = board.open_pty()
        login(con, "admin", "admin", prompt)
        assert run(con, "config get site", prompt).strip() == "lab-7 bench-3"
        assert status_fields(run(con, "status", prompt))["boots"] == "4"


def test_keypress_stops_autoboot_into_the_bootloader_and_boot_continues(tmp_path):
    prompt, loader = MCU.console.prompt, MCU.boot.bootloader_prompt
    with BoardProcess("mcu-se", tmp_path / "mcu") as board:
        con = board.open_pty()
        con.expect_exact("stop autoboot")
        con.send(" ")
        con.expect_exact(loader)
        assert run(con, "printenv bootdelay", loader).strip() == "bootdelay=1"
        assert "Unknown command 'frobnicate' - try 'help'" in run(con, "frobnicate", loader)
        con.send("reset\r")
        con.expect_exact("resetting ...")
        con.expect_exact("*** Booting MCUboot")        # the bootloader starts over
        con.expect_exact("stop autoboot")
        con.send("\r")
        con.expect_exact(loader)
        con.send("boot\r")
        con.expect_exact("*** Booting Zephyr OS")
        con.expect_exact(prompt)
        assert status_fields(run(con, "status", prompt))["firmware"] == "1.0.0"
        assert "autoboot interrupted" in run(con, "log", prompt)


def test_countdown_is_redrawn_every_second(tmp_path):
    profile = user_profile(tmp_path, "mcu-se", autoboot_seconds=2.5)
    with BoardProcess(profile, tmp_path / "mcu") as board:
        con = board.open_pty()
        con.expect_exact("Hit any key to stop autoboot:  3 ")
        # One redraw per second, in U-Boot's backspace style, down to 0.
        con.expect_exact("\b\b\b 2 ")
        con.expect_exact("\b\b\b 1 ")
        con.expect_exact("\b\b\b 0 ")
        assert b"\b" not in con.before
        con.expect_exact(MCU.console.prompt)


def test_garbage_on_the_console_does_not_stop_the_shell(tmp_path):
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu") as board:
        con = board.open_pty()
        seen = io.BytesIO()
        con.logfile_read = seen
        con.expect_exact(prompt)
        junk = random.Random(8995).randbytes(10_000)
        con.send(junk)
        # Whatever state the junk left (half a line, half an SMP frame, an
        # escape sequence), Ctrl-C and a line end get back to a clean prompt.
        con.send("\x03\r")
        fields = status_fields(run(con, "status", prompt))
        assert fields["serial"] == board.info["serial_number"]
        assert run(con, "echo $?", prompt).strip() == "0"
        assert board.proc.poll() is None
        assert b"internal error" not in seen.getvalue()
        assert b"not found" in seen.getvalue()             # junk lines were answered


def test_smp_frames_share_the_console_and_are_not_echoed(tmp_path):
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu") as board:
        con = board.open_pty()
        con.expect_exact(prompt)
        request = bytes(EchoWriteRequest(d="hello over the shell uart"))
        frames = list(smp_encode(request, line_length=40))   # several lines: start + continuations
        assert len(frames) > 1
        con.send(b"".join(frames))
        con.expect(re.compile(rb"\x06\x09[A-Za-z0-9+/=]+\n(?:\x04\x14[A-Za-z0-9+/=]+\n)*"))
        assert frames[0][2:20] not in con.before               # the request was not echoed
        assert b"not found" not in con.before
        decoder = smp_decode()
        next(decoder)
        packet = None
        for line in con.after.splitlines(keepends=True):
            try:
                decoder.send(line)
            except StopIteration as done:
                packet = done.value
        assert EchoWriteResponse.loads(packet).r == "hello over the shell uart"
        # And the shell is undisturbed.
        assert status_fields(run(con, "status", prompt))["state"] == "unprovisioned"


def test_raw_tcp_console_with_two_clients_and_a_late_one(tmp_path):
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial", "tcp") as board:
        assert board.info["console"].startswith("socket://127.0.0.1:")
        board.wait_for_phase("shell")
        first = board.open_tcp()
        first.send("echo early-line\r")
        first.expect_exact("\r\nearly-line\r\n")
        first.expect_exact(prompt)

        late = board.open_tcp()
        late.send("echo from-the-late-client\r")
        for client in (first, late):
            client.expect_exact("\r\nfrom-the-late-client\r\n")
            if client is late:
                # Nothing from before it connected: no boot, no earlier command, no
                # stale prompt; the first bytes it gets are the echo of its own typing.
                assert late.before == b"echo from-the-late-client"
            client.expect_exact(prompt)


def test_raw_tcp_replay_is_opt_in(tmp_path):
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial", "tcp", "--replay") as board:
        board.wait_for_phase("shell")
        late = board.open_tcp()
        late.expect_exact("*** Booting Zephyr OS")
        late.expect_exact(MCU.console.prompt)
    result = run_cli("board", "run", "--profile", "mcu-se", "--state", tmp_path / "other", "--replay")
    assert result.returncode == 2
    assert b"--replay applies to --serial rfc2217|tcp" in result.stderr


def test_rfc2217_console_serves_pyserial_clients_at_once(tmp_path):
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial", "rfc2217") as board:
        url = board.info["console"]
        assert url.startswith("rfc2217://127.0.0.1:")
        board.wait_for_phase("shell")
        one = serial.serial_for_url(url, baudrate=115200, timeout=30)
        two = serial.serial_for_url(url, baudrate=115200, timeout=30)
        try:
            assert one.baudrate == 115200
            one.write(b"uname -a\r")
            expected = b"\r\nPledgeForge sensor 1.0.0 mcu-se PledgeForge MC-20 Sensor Node\r\n"
            assert one.read_until(expected).endswith(expected)
            assert two.read_until(expected).endswith(expected)
        finally:
            one.close()
            two.close()


def test_a_client_that_never_reads_does_not_block_the_board(tmp_path):
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial", "tcp") as board:
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent.connect(board.tcp_address())
        active = board.open_tcp()
        # A network console shows nothing from before the connection: ask for a fresh prompt
        # (the board may have printed its first one before this client connected).
        active.send("echo ready-marker\r")
        active.expect_exact("\r\nready-marker\r\n")
        active.expect_exact(prompt)
        produced = 0
        for _ in range(8):                      # about 600 kB of output in all
            active.send(";".join(["help"] * 60) + "\r")
            active.expect_exact(prompt)
            produced += len(active.before)
        active.send("echo last-marker\r")
        active.expect_exact("\r\nlast-marker\r\n")
        active.expect_exact(prompt)

        # The silent client lost its oldest bytes, not the newest.
        silent.settimeout(10)
        received = b""
        while not received.endswith(prompt.encode()) or b"\r\nlast-marker\r\n" not in received:
            chunk = silent.recv(65536)
            assert chunk, "connection closed"
            received += chunk
        assert len(received) < produced / 2
        silent.close()


def test_late_pty_client_reads_the_recent_output(tmp_path):
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu") as board:
        # Wait for the shell without reading the pty: the power switch says when.
        # (This relies on the pty keeping unread output in the kernel, not on a replay.)
        board.wait_for_phase("shell")
        con = board.open_pty()
        con.expect_exact("*** Booting Zephyr OS")
        con.expect_exact(MCU.console.prompt)


def test_bootstrap_without_pledge_firmware_is_an_error_not_a_success(tmp_path):
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu") as board:
        con = board.open_pty()
        con.expect_exact(prompt)
        out = run(con, "bootstrap", prompt)
        assert out.startswith("bootstrap: no registrar configured")
        assert run(con, "echo $?", prompt).strip() == "1"
        assert run(con, "voucher; ldevid; idevid", prompt).split() == ["none", "none", "none"]


def test_power_off_during_flash_writes_keeps_the_last_good_state(tmp_path):
    prompt = MCU.console.prompt
    state = tmp_path / "mcu"
    rng = random.Random(2024)
    last_acknowledged = None
    for round_ in range(4):
        with BoardProcess(quick_profile("mcu-se", tmp_path), state) as board:
            con = board.open_pty()
            con.expect_exact(prompt)
            value = run(con, "config get counter", prompt).strip()
            if last_acknowledged is None:
                assert value == "config: counter is not set"
            else:
                # The write cut short either happened entirely or not at all.
                assert value in (str(last_acknowledged), str(last_acknowledged + 1))
                last_acknowledged = int(value)
            start = (last_acknowledged or 0) + 1
            cut_at = start + rng.randrange(3, 12)
            for n in range(start, cut_at):
                run(con, f"config set counter {n}", prompt)
                last_acknowledged = n
            # Pull the plug while the next write is being made.
            con.send(f"config set counter {cut_at}\r")
            con.expect_exact(f"config set counter {cut_at}\r\n")
            board.kill()
    assert last_acknowledged >= 4


def test_board_run_and_power_report_mistakes_in_one_line(tmp_path):
    result = run_cli("board", "power", "on", "--state", tmp_path / "nothing-here")
    assert result.returncode == 3                      # environment: no board answers
    err = result.stderr.decode().strip()
    assert err.startswith("pledgeforge: error: no board is running in") and "\n" not in err

    bad = tmp_path / "bad.toml"
    bad.write_text(load_profile("mcu-se").path.read_text().replace("baud = 115200", "baud = \"fast\""))
    result = run_cli("board", "run", "--profile", bad, "--state", tmp_path / "b")
    assert result.returncode == 2                      # usage: the profile given is malformed
    err = result.stderr.decode().strip()
    assert "[console] baud must be an integer" in err and "\n" not in err

    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "busy"):
        result = run_cli("board", "run", "--profile", "mcu-se", "--state", tmp_path / "busy")
        assert result.returncode == 3
        assert "is in use by another running board" in result.stderr.decode()


def test_picocom_attaches_to_the_pty(tmp_path):
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), tmp_path / "mcu") as board:
        first = board.open_pty()
        first.expect_exact(prompt)                  # booted
        first.close()
        picocom = pexpect.spawn("picocom", ["-q", "-b", "115200", board.console_path], timeout=30)
        try:
            picocom.send("status\r")
            picocom.expect(r"serial: +(MC-[0-9A-F]{8})")
            assert picocom.match.group(1).decode() == board.info["serial_number"]
            picocom.expect_exact(prompt)
        finally:
            picocom.sendcontrol("a")
            picocom.sendcontrol("x")                 # picocom's exit keys
            picocom.expect(pexpect.EOF)


def test_tpm_board_starts_its_swtpm_at_power_on_and_stops_it_at_power_off(tmp_path):
    state = tmp_path / "gw"
    prompt = GATEWAY.console.prompt
    with BoardProcess(quick_profile("gateway-tpm", tmp_path), state) as board:
        keystore = board.info["keystore"]
        assert keystore["type"] == "tpm" and keystore["algorithm"] == "ec-p256"
        socket_path = re.fullmatch(r"swtpm:path=(.+)", keystore["tcti"]).group(1)
        assert tpm_command(socket_path, _GET_RANDOM_2, timeout=10) == 0

        con = board.open_pty()
        login(con, "root", "pledgeforge", prompt)
        assert status_fields(run(con, "status", prompt))["keystore"] == "tpm (ec-p256)"

        assert run_cli("board", "power", "off", "--state", state).returncode == 0
        with pytest.raises(OSError):
            tpm_command(socket_path, _GET_RANDOM_2, timeout=10)
        info = json.loads((state / "board.json").read_text())
        assert info["powered"] is False and info["keystore"]["tcti"] is None

        assert run_cli("board", "power", "on", "--state", state).returncode == 0
        info = json.loads((state / "board.json").read_text())
        socket_path = re.fullmatch(r"swtpm:path=(.+)", info["keystore"]["tcti"]).group(1)
        assert tpm_command(socket_path, _GET_RANDOM_2, timeout=10) == 0
        login(con, "root", "pledgeforge", prompt)

        # A power cut of the board process leaves its swtpm behind; the next
        # start stops that orphan and boots.
        board.kill()
    with BoardProcess(quick_profile("gateway-tpm", tmp_path), state) as board:
        con = board.open_pty()
        login(con, "root", "pledgeforge", prompt)
        assert status_fields(run(con, "status", prompt))["serial"] == board.info["serial_number"]
