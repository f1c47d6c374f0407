"""The README's flash flow on the shipped profiles, with smpmgr: a board started with `--lab`
trusts the lab's firmware-signing key from its first power-on, so an image signed with
`pledgeforge image sign` boots; a board without a lab gets a key with `board set-verify-key`;
an image that will not boot is reported in the SMP image state and on the console."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from boardrunner import BoardProcess
from clirunner import run_cli, smpmgr
from pledgeforge.boards.image_signing import firmware_payload
from pledgeforge.boards.profile import load_profile

pytestmark = pytest.mark.slow

# profile, the slot smpmgr uploads to (a single-slot board takes its image in slot 0)
SHIPPED = [("mcu-se", 1), ("gateway-tpm", 1), ("legacy-rsa", 0)]


def generate(token, name: str, public_pem: Path | None = None) -> Path | None:
    """A key in the test token, made by the CLI (this process's PKCS#11 module may be
    pointed at the lab's SoftHSM; a child process gets the token's own configuration)."""
    args = ["--out", public_pem] if public_pem else []
    made = run_cli("keys", "generate", "--key", token.uri_text(name), *args, env=token.hsm.env())
    assert made.returncode == 0, made.stderr.decode()
    return public_pem


def sign(tmp_path: Path, key_uri: str, env: dict, profile: str, version: str) -> Path:
    """`pledgeforge image sign` as the README has it, with the key in a SoftHSM token."""
    app = tmp_path / f"{profile}-{version}.bin"
    app.write_bytes(firmware_payload(profile, version, 16 * 1024))
    out = tmp_path / f"{profile}-{version}.signed.bin"
    signed = run_cli("image", "sign", "--key", key_uri, "--version", version, "--in", app,
                     "--out", out, "--profile", profile, env=env)
    assert signed.returncode == 0, signed.stderr.decode()
    return out


def lab_sign(lab, tmp_path: Path, profile: str, version: str) -> Path:
    """Signed with the lab's firmware key, named in lab.json as a user finds it."""
    key_uri = json.loads((lab.dir / "lab.json").read_text())["firmware_signing"]["key"]
    return sign(tmp_path, key_uri, lab.softhsm.env(), profile, version)


def slot_rows(port: str) -> dict[int, str]:
    """`smpmgr image state-read`: what it prints of each slot, from `slot=` to `permanent=`."""
    out = smpmgr(port, "image", "state-read").stdout
    return {int(m.group(1)): " ".join(m.group(0).split())
            for m in re.finditer(r"\bslot=(\d),.*?permanent=(?:True|False)", out, re.S)}


def console_lines(board: BoardProcess, *expected: str) -> None:
    con = board.open_pty()
    try:
        for text in expected:
            con.expect_exact(text)
    finally:
        con.close()


def ready(board: BoardProcess, profile: str) -> None:
    board.wait_for_phase("login" if load_profile(profile).console.login else "shell")


@pytest.mark.parametrize("profile,slot", SHIPPED)
def test_a_lab_board_boots_an_image_signed_with_the_lab_key(lab, tmp_path, profile, slot):
    state = tmp_path / profile
    with BoardProcess(profile, state, "--lab", lab.dir) as board:
        ready(board, profile)
        # Manufactured at its first power-on: the lab's public key is in the board's flash.
        installed = state / "slots" / "verify-key.pem"
        assert installed.read_bytes() == (lab.dir / "pki" / "firmware-signing.pem").read_bytes()

        image = lab_sign(lab, tmp_path, profile, "1.1.0")
        port = board.console_path
        assert "Upgrade complete." in smpmgr(port, "upgrade", "--slot", str(slot), image).stdout
        if slot == 1:
            console_lines(board, "I: Swap type: test", "I: Booting image version 1.1.0 (test, not confirmed)")
        else:
            console_lines(board, "I: Booting image version 1.1.0")
        ready(board, profile)
        active = slot_rows(port)[0]
        assert "version='1.1.0'" in active and "active=True" in active and "bootable=True" in active
        assert "1.1.0" in smpmgr(port, "shell", "status").stdout


def test_an_image_signed_by_another_key_is_reported_and_not_taken(lab, token, tmp_path):
    state = tmp_path / "mcu"
    generate(token, "rogue")
    rogue = sign(tmp_path, token.uri_text("rogue"), token.hsm.env(), "mcu-se", "6.6.6")
    with BoardProcess("mcu-se", state, "--lab", lab.dir) as board:
        port = board.console_path
        ready(board, "mcu-se")
        smpmgr(port, "upgrade", "--slot", "1", lab_sign(lab, tmp_path, "mcu-se", "1.1.0"))
        ready(board, "mcu-se")
        smpmgr(port, "image", "state-write", "--confirm")

        smpmgr(port, "image", "upload", "--slot", "1", rogue)
        # Before any reset, the state already says the uploaded image will not boot ...
        uploaded = slot_rows(port)[1]
        assert "version='6.6.6'" in uploaded and "bootable=False" in uploaded
        image_hash = json.loads(run_cli("image", "info", "--in", rogue, "--json").stdout)["hash"]
        smpmgr(port, "image", "state-write", image_hash)
        pending = slot_rows(port)[1]
        assert "pending=True" in pending and "bootable=False" in pending
        # ... and at the reset the bootloader says why on the console and erases it, as
        # MCUboot does: the pending image is not taken, 1.1.0 keeps running.
        smpmgr(port, "os", "reset")
        console_lines(board, "E: Image in the secondary slot is not valid! (wrong key: ",
                      "I: Erasing the secondary slot; keeping the current image",
                      "I: Booting image version 1.1.0")
        ready(board, "mcu-se")
        rows = slot_rows(port)
        assert list(rows) == [0] and "version='1.1.0'" in rows[0]


def test_a_board_without_a_key_says_so_and_set_verify_key_fixes_it(token, tmp_path):
    state = tmp_path / "mcu"
    key_pem = generate(token, "fw", tmp_path / "fw.pem")
    image = sign(tmp_path, token.uri_text("fw"), token.hsm.env(), "mcu-se", "2.0.0")
    with BoardProcess("mcu-se", state) as board:
        port = board.console_path
        ready(board, "mcu-se")
        smpmgr(port, "image", "upload", "--slot", "1", image)
        assert "bootable=False" in slot_rows(port)[1]        # no key: nothing will boot
        smpmgr(port, "upgrade", "--slot", "1", image)
        console_lines(board, "E: no firmware verification key in this board's flash",
                      f"pledgeforge board set-verify-key --state {state}",
                      "E: Image in the secondary slot is not valid! (no key: ")
        ready(board, "mcu-se")
        assert slot_rows(port) == {}                          # the pending image is gone
        # The key is written while the board is stopped, as a programmer writes flash.
        busy = run_cli("board", "set-verify-key", "--state", state, "--key-pem", key_pem)
        assert busy.returncode == 3 and b"while the board is stopped" in busy.stderr
    done = run_cli("board", "set-verify-key", "--state", state, "--key-pem", key_pem, "--json")
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["verify_key"] == str(state / "slots" / "verify-key.pem")
    with BoardProcess("mcu-se", state) as board:
        ready(board, "mcu-se")
        smpmgr(board.console_path, "upgrade", "--slot", "1", image)
        console_lines(board, "I: Swap type: test", "I: Booting image version 2.0.0 (test, not confirmed)")


def test_set_verify_key_refuses_what_is_not_a_firmware_key(tmp_path):
    not_a_key = tmp_path / "x.pem"
    not_a_key.write_text("hello\n")
    result = run_cli("board", "set-verify-key", "--state", tmp_path / "b", "--key-pem", not_a_key)
    assert result.returncode == 2 and b"is not a PEM public key" in result.stderr
    assert not (tmp_path / "b" / "slots" / "verify-key.pem").exists()
    missing = run_cli("board", "set-verify-key", "--state", tmp_path / "b", "--key-pem", tmp_path / "no")
    assert missing.returncode == 3 and b"cannot read firmware key" in missing.stderr
