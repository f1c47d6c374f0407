"""The board's persistent flash: typed contents, bounds, damage detection, and
power cuts (SIGKILL of a real writer process at arbitrary points of its writes)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys

import pytest

from pledgeforge.boards.flash import (Enrollment, Flash, FlashClosedError, FlashCorruptError,
                                      FlashError, FlashFullError)
from pledgeforge.firmware.identity import PledgeIdentity

CAPACITY = 256 * 1024
IDENTITY = PledgeIdentity(idevid_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                          idevid_key_uri="pkcs11:token=se;object=idevid",
                          builtin_anchors_pem=("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",))
ENROLLMENT = Enrollment(ldevid_pem="-----BEGIN CERTIFICATE-----\nLDEV\n-----END CERTIFICATE-----\n", slot="b",
                        ca_certs_pem="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
                        est_url="https://127.0.0.1:8443/.well-known/est")


def test_contents_survive_reopening(tmp_path):
    flash = Flash.in_state_dir(tmp_path, CAPACITY)
    assert flash.state.serial_number == "" and flash.state.identity is None
    flash.set_serial_number("GW-0001")
    flash.set_identity(IDENTITY)
    flash.record_enrollment(ENROLLMENT, voucher=b"\x30\x82voucher-bytes")
    flash.config_set("registrar.url", "https://reg.example:8443")
    flash.record_power_on()
    flash.record_boot()
    again = Flash.in_state_dir(tmp_path, CAPACITY).state
    assert again == flash.state
    assert again.identity == IDENTITY and again.voucher == b"\x30\x82voucher-bytes"
    assert again.enrollment == ENROLLMENT and again.ldevid_pem == ENROLLMENT.ldevid_pem
    assert (again.counters.boots, again.counters.power_ons) == (1, 1)
    assert oct(os.stat(tmp_path / "flash.bin").st_mode & 0o777) == "0o600"


def test_factory_reset_forgets_the_owner_not_the_factory(tmp_path):
    flash = Flash.in_state_dir(tmp_path, CAPACITY)
    flash.set_serial_number("GW-0001")
    flash.set_identity(IDENTITY)
    flash.record_enrollment(ENROLLMENT, voucher=b"v")
    flash.config_set("site", "a")
    flash.record_boot()
    flash.factory_reset()
    state = Flash.in_state_dir(tmp_path, CAPACITY).state
    assert state.serial_number == "GW-0001" and state.identity == IDENTITY
    assert state.voucher is None and state.enrollment is None and state.config == {}
    assert state.counters.boots == 1


def test_bad_config_and_a_full_flash_change_nothing(tmp_path):
    flash = Flash.in_state_dir(tmp_path, 4096)
    flash.config_set("site", "lab")
    with pytest.raises(FlashError, match="bad config key"):
        flash.config_set("Bad Key", "x")
    with pytest.raises(FlashError, match="control characters"):
        flash.config_set("site", "a\x07b")
    with pytest.raises(FlashFullError, match=r"\[flash\] size_kib"):
        flash.set_voucher(b"x" * 8000)
    assert Flash.in_state_dir(tmp_path, 4096).state.config == {"site": "lab"}
    assert flash.state.voucher is None


def test_damage_is_reported_with_the_file_name(tmp_path):
    flash = Flash.in_state_dir(tmp_path, CAPACITY)
    flash.config_set("site", "lab")
    path = tmp_path / "flash.bin"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(FlashCorruptError, match="fails its checksum") as info:
        Flash.in_state_dir(tmp_path, CAPACITY)
    assert str(path) in str(info.value)
    path.write_bytes(b"not a flash image")
    with pytest.raises(FlashCorruptError, match="not a pledgeforge flash image"):
        Flash.in_state_dir(tmp_path, CAPACITY)


def write_image(path, doc: dict) -> None:
    """A flash image with `doc` as its body, sealed as the board seals one."""
    body = json.dumps(doc).encode()
    path.write_bytes(b"PLEDGEFORGE-FLASH 1 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def test_an_enrollment_names_one_of_the_two_key_slots(tmp_path):
    with pytest.raises(ValueError, match="neither of a, b"):
        Enrollment(ldevid_pem="pem", slot="c")
    write_image(tmp_path / "flash.bin", {"enrollment": {**ENROLLMENT.to_json(), "slot": "../x"}})
    with pytest.raises(FlashCorruptError, match="malformed body"):
        Flash.in_state_dir(tmp_path, CAPACITY)


def test_an_image_that_kept_the_ldevid_alone_reads_as_enrolled_in_slot_a(tmp_path):
    # Firmware before the key slots kept the LDevID without its slot; its key was in slot a.
    write_image(tmp_path / "flash.bin", {"serial_number": "GW-0001", "ldevid_pem": ENROLLMENT.ldevid_pem})
    state = Flash.in_state_dir(tmp_path, CAPACITY).state
    assert state.enrollment == Enrollment(ldevid_pem=ENROLLMENT.ldevid_pem, slot="a")
    assert state.enrollment.est_url == ""   # renewal asks for a bootstrap first


def test_a_closed_flash_refuses_writes(tmp_path):
    flash = Flash.in_state_dir(tmp_path, CAPACITY)
    flash.config_set("a", "1")
    flash.close()
    with pytest.raises(FlashClosedError):
        flash.config_set("a", "2")
    assert Flash.in_state_dir(tmp_path, CAPACITY).state.config == {"a": "1"}


# A writer that commits numbered states as fast as it can and acknowledges
# each one on stdout once `Flash` returned. The voucher is large so that a
# write takes a while and the kill lands inside it often.
WRITER = """
import sys
from pledgeforge.boards.flash import Flash
flash = Flash.in_state_dir(sys.argv[1], 1 << 20)
n = int(flash.state.config.get("n", "0"))
while True:
    n += 1
    flash.config_set("n", str(n))
    flash.set_voucher(str(n).encode() * 40000)
    print(n, flush=True)
"""


@pytest.mark.slow
def test_power_cut_at_arbitrary_points_of_writes_keeps_the_last_good_state(tmp_path):
    rng = random.Random(8366)
    acknowledged = 0
    for _ in range(25):
        # Unbuffered: select() sees the pipe, so no line may wait in a reader's buffer.
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        stop_after = rng.randrange(1, 30)
        seen = 0
        while seen < stop_after:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, proc.stderr.read()
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            acknowledged = int(line)
            seen += 1
        # Spin a random amount of our own work so the cut is not aligned
        # with the acknowledgement, then pull the plug.
        sum(range(rng.randrange(0, 200_000)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # Acknowledgements written before the cut but not read yet still count.
        for line in proc.stdout.read().split():
            acknowledged = int(line)
        proc.stdout.close()
        proc.stderr.close()

        state = Flash.in_state_dir(tmp_path, 1 << 20).state
        n = int(state.config["n"])
        # The write in flight either happened entirely or not at all, and the
        # last acknowledged one is never lost.
        assert n >= acknowledged
        assert n <= acknowledged + 1
        # The voucher of the same number is written after the config: the file
        # holds one of the two consistent images around the cut.
        assert state.voucher in (str(n).encode() * 40000, str(n - 1).encode() * 40000)
        assert not list(tmp_path.glob(".flash.bin.*.tmp"))  # leftovers were cleaned up
        acknowledged = n
