"""Flashing over a real pty with the real clients: smpmgr as a subprocess, smpclient in-process.

Images are signed by `pledgeforge image sign` with the firmware key inside SoftHSM.
The console writes a text line before every SMP answer, as a chatty board does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from smpclient import SMPClient
from smpclient.generics import success
from smpclient.requests.image_management import ImageStatesRead
from smpclient.requests.os_management import EchoWrite
from smpclient.transport.serial import SMPSerialTransport

from clirunner import run_cli, smpmgr
from pledgeforge.boards.image_signing import firmware_payload
from pledgeforge.boards.image_slots import ImageSlots
from pledgeforge.boards.profile import ImageConfig
from pledgeforge.hsm.keystore import generate_key
from smp_pty import PtySmpConsole

pytestmark = pytest.mark.slow




class Lab:
    """A firmware key in SoftHSM, images signed with it, and a board's slots."""

    def __init__(self, token, tmp_path: Path):
        self.tmp = tmp_path
        self.uri = token.uri_text("fw")
        self.key_pem = tmp_path / "fw.pub.pem"
        self.key_pem.write_bytes(generate_key(token.uri("fw"), "ec-p256").public_key_pem())
        config = ImageConfig(slots=2, slot_size_kib=256, version="1.0.0", verify_key=self.key_pem)
        self.slots = ImageSlots(tmp_path / "board", config)
        self.slots.install_factory_image(self.sign("1.0.0").read_bytes())

    def sign(self, version: str, size: int = 40 * 1024) -> Path:
        app = self.tmp / f"app-{version}.bin"
        app.write_bytes(firmware_payload("pty-board", version, size))
        out = self.tmp / f"app-{version}.signed.bin"
        result = run_cli("image", "sign", "--key", self.uri, "--version", version, "--in", app,
                         "--out", out, "--slot-size", hex(256 * 1024))
        assert result.returncode == 0, result.stderr
        return out


@pytest.fixture
def lab(token, tmp_path):
    return Lab(token, tmp_path)


def test_smpmgr_upgrade_test_reset_confirm(lab):
    image = lab.sign("1.1.0")
    with PtySmpConsole(lab.slots) as console:
        state = smpmgr(console.path, "image", "state-read").stdout
        assert "version='1.0.0'" in state and "active=True" in state

        upgrade = smpmgr(console.path, "upgrade", "--slot", "1", image)
        assert "Upgrade complete." in upgrade.stdout
        console.wait_for_boots(2)
        booted = console.boots[-1]
        assert (booted.version, booted.confirmed, booted.swap) == ("1.1.0", False, "test")

        state = smpmgr(console.path, "image", "state-read").stdout
        running = state.split("slot=1")[0]
        assert "version='1.1.0'" in running and "confirmed=False" in running

        smpmgr(console.path, "image", "state-write", "--confirm")
        smpmgr(console.path, "os", "reset")
        console.wait_for_boots(3)
        booted = console.boots[-1]
        assert (booted.version, booted.confirmed, booted.swap) == ("1.1.0", True, None)
        assert lab.slots.active_version == "1.1.0"


def test_smpmgr_unconfirmed_image_reverts(lab):
    image = lab.sign("2.0.0")
    with PtySmpConsole(lab.slots) as console:
        smpmgr(console.path, "image", "upload", "--slot", "1", image)
        info = json.loads(run_cli("image", "info", "--in", image, "--json").stdout)
        smpmgr(console.path, "image", "state-write", info["hash"])
        smpmgr(console.path, "os", "reset")
        console.wait_for_boots(2)
        assert console.boots[-1].version == "2.0.0"
        smpmgr(console.path, "os", "reset")           # not confirmed: MCUboot swaps back
        console.wait_for_boots(3)
        assert (console.boots[-1].version, console.boots[-1].swap) == ("1.0.0", "revert")
        assert "I: Swap type: revert (the running image was not confirmed)" in console.log


def test_smpmgr_tampered_image_is_refused(lab):
    image = lab.sign("1.1.0")
    tampered = bytearray(image.read_bytes())
    tampered[0x200 + 4096] ^= 0x01
    bad = lab.tmp / "tampered.bin"
    bad.write_bytes(bytes(tampered))
    with PtySmpConsole(lab.slots) as console:
        smpmgr(console.path, "upgrade", "--slot", "1", bad)   # the transfer itself succeeds
        console.wait_for_boots(2)
        assert console.boots[-1].version == "1.0.0"
        assert any("Image in the secondary slot is not valid!" in line and "hash mismatch" in line
                   for line in console.log), console.log
        state = smpmgr(console.path, "image", "state-read").stdout
        assert "slot=1" not in state and "version='1.0.0'" in state


async def upload_until(port: str, image: bytes, stop_at: int | None) -> list[int]:
    """Offsets the server reports; stops (as if the cable were pulled) past `stop_at`."""
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


def test_smpclient_resumes_an_interrupted_upload(lab):
    image = lab.sign("3.0.0", size=150 * 1024).read_bytes()
    with PtySmpConsole(lab.slots) as console:
        first = asyncio.run(upload_until(console.path, image, stop_at=len(image) // 2))
        interrupted_at = first[-1]
        assert 0 < interrupted_at < len(image)
        second = asyncio.run(upload_until(console.path, image, stop_at=None))
        # The first answer to the new session is the offset reached before the break.
        assert second[0] == interrupted_at
        assert second[-1] == len(image)
        assert [row.version.smp_text for row in lab.slots.slot_infos()] == ["1.0.0", "3.0.0"]


def test_smpclient_sees_frames_amid_console_text(lab):
    async def talk(port):
        client = SMPClient(SMPSerialTransport(), port, timeout_s=10)
        await client.connect()
        try:
            echoes = [await client.request(EchoWrite(d=f"ping {i}")) for i in range(20)]
            states = await client.request(ImageStatesRead())
        finally:
            await client.disconnect()
        return echoes, states

    with PtySmpConsole(lab.slots, noise=True) as console:
        echoes, states = asyncio.run(talk(console.path))
        # mcumgr params on connect, 20 echoes, one state read: each answer came after a text line.
        assert console.packets == 22
    assert [e.r for e in echoes] == [f"ping {i}" for i in range(20)]
    assert success(states) and states.images[0].version == "1.0.0"
