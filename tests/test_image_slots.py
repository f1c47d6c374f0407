"""Image slots: MCUboot test/confirm/revert, refusal of bad images, power cuts mid-upload."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_images import Images, build_images
from firmware_images import make_slots as make_factory_slots
from pledgeforge.boards.image_slots import (PRIMARY, SECONDARY, ImageSlots, NoBootableImageError,
                                            SlotError, SlotRefusal, install_verify_key)
from pledgeforge.boards.mcuboot import ImageError, ImageKeyError, Refusal
from pledgeforge.boards.profile import ImageConfig


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Images:
    return build_images(tmp_path_factory.mktemp("images"))


def make_slots(tmp_path: Path, images: Images, slots: int = 2) -> ImageSlots:
    return make_factory_slots(tmp_path / "state", images, slots)


def upload(slots: ImageSlots, data: bytes, chunk: int = 4096) -> None:
    writer = slots.start_upload(len(data))
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])
    writer.commit()


def boot(slots: ImageSlots):
    log: list[str] = []
    return slots.boot(log.append), log


def test_factory_image_boots_confirmed(tmp_path, images):
    slots = make_slots(tmp_path, images)
    booted, log = boot(slots)
    assert (booted.version, booted.confirmed, booted.swap) == ("1.0.0", True, None)
    assert slots.active_version == "1.0.0"
    rows = slots.slot_infos()
    assert [(r.slot, r.active, r.confirmed, r.pending) for r in rows] == [(0, True, True, False)]


def test_test_image_runs_once_then_reverts(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, images.v2)
    slot = slots.find_by_hash(slots.slot_infos()[1].hash)
    assert slot == SECONDARY
    slots.set_next_boot(SECONDARY, confirm=False)
    assert slots.slot_infos()[1].pending and not slots.slot_infos()[1].permanent

    booted, log = boot(slots)
    assert (booted.version, booted.confirmed, booted.swap) == ("1.1.0", False, "test")
    assert "I: Swap type: test" in log
    rows = {r.slot: r for r in slots.slot_infos()}
    assert rows[PRIMARY].active and not rows[PRIMARY].confirmed
    assert rows[SECONDARY].confirmed and str(rows[SECONDARY].version) == "1.0.0"

    booted, log = boot(slots)
    assert (booted.version, booted.confirmed, booted.swap) == ("1.0.0", True, "revert")
    # The unconfirmed image stays in the secondary slot, no longer pending.
    rows = {r.slot: r for r in slots.slot_infos()}
    assert str(rows[SECONDARY].version) == "1.1.0" and not rows[SECONDARY].pending


def test_confirmed_test_image_stays(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, images.v2)
    slots.set_next_boot(SECONDARY, confirm=False)
    boot(slots)
    slots.set_next_boot(PRIMARY, confirm=True)
    for _ in range(2):
        booted, _ = boot(slots)
        assert (booted.version, booted.confirmed, booted.swap) == ("1.1.0", True, None)


def test_permanent_upgrade_needs_no_confirm(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, images.v2)
    slots.set_next_boot(SECONDARY, confirm=True)
    row = slots.slot_infos()[1]
    assert row.pending and row.permanent
    booted, log = boot(slots)
    assert (booted.version, booted.confirmed, booted.swap) == ("1.1.0", True, "permanent")
    assert boot(slots)[0].version == "1.1.0"


@pytest.mark.parametrize("name,reason", [("tampered", Refusal.HASH_MISMATCH),
                                         ("wrong_key", Refusal.WRONG_KEY),
                                         ("unsigned", Refusal.UNSIGNED)])
def test_bad_image_is_refused_and_previous_keeps_running(tmp_path, images, name, reason):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, getattr(images, name))
    slots.set_next_boot(SECONDARY, confirm=False)
    booted, log = boot(slots)
    assert booted.version == "1.0.0" and booted.confirmed
    assert any("Image in the secondary slot is not valid!" in line and reason.value in line
               for line in log), log
    assert [r.slot for r in slots.slot_infos()] == [PRIMARY]   # the bad image was erased


def test_power_cut_during_upload_boots_last_good_image(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, images.v2)
    slots.set_next_boot(SECONDARY, confirm=False)
    boot(slots)
    slots.set_next_boot(PRIMARY, confirm=True)     # 1.1.0 running, confirmed
    writer = slots.start_upload(len(images.v3))
    writer.write(images.v3[:50_000])
    # Power cut: the process dies; a new one opens the same state directory.
    del writer
    again = ImageSlots(tmp_path / "state", slots.config)
    booted, _ = boot(again)
    assert (booted.version, booted.confirmed) == ("1.1.0", True)
    assert not (again.root / "upload.part").exists()
    assert [r.slot for r in again.slot_infos()] == [PRIMARY]


def test_slot_rules_follow_img_mgmt(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    with pytest.raises(SlotError) as caught:
        slots.set_next_boot(PRIMARY, confirm=False)
    assert caught.value.refusal is SlotRefusal.TEST_ACTIVE_DENIED
    with pytest.raises(SlotError) as caught:
        slots.erase(PRIMARY)
    assert caught.value.refusal is SlotRefusal.NO_FREE_SLOT

    upload(slots, images.v2)
    slots.set_next_boot(SECONDARY, confirm=False)
    slots.set_next_boot(SECONDARY, confirm=False)          # again: nothing to do
    for refused in (lambda: slots.start_upload(1000), lambda: slots.erase(SECONDARY),
                    lambda: slots.set_next_boot(SECONDARY, confirm=True)):
        with pytest.raises(SlotError) as caught:
            refused()
        assert caught.value.refusal in (SlotRefusal.NO_FREE_SLOT, SlotRefusal.ALREADY_PENDING)

    boot(slots)                                         # on trial: the old image is needed
    with pytest.raises(SlotError) as caught:
        slots.start_upload(1000)
    assert caught.value.refusal is SlotRefusal.NO_FREE_SLOT
    with pytest.raises(SlotError):
        slots.set_next_boot(SECONDARY, confirm=False)
    slots.set_next_boot(PRIMARY, confirm=True)
    slots.erase(SECONDARY)
    assert [r.slot for r in slots.slot_infos()] == [PRIMARY]
    with pytest.raises(SlotError) as caught:
        slots.start_upload(200 * 1024)
    assert caught.value.refusal is SlotRefusal.TOO_LARGE


def test_upload_start_erases_the_secondary(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, images.v2)
    assert len(slots.slot_infos()) == 2
    writer = slots.start_upload(len(images.v3))
    assert len(slots.slot_infos()) == 1
    writer.discard()
    assert slots.holds_image(b"\x00" * 32, 10) is False


def test_single_slot_board_replaces_only_with_a_verified_image(tmp_path, images):
    slots = make_slots(tmp_path, images, slots=1)
    boot(slots)
    with pytest.raises(SlotError) as caught:
        upload(slots, images.tampered)
    assert caught.value.refusal is SlotRefusal.REJECTED
    assert boot(slots)[0].version == "1.0.0"
    upload(slots, images.v2)
    assert boot(slots)[0].version == "1.1.0"
    with pytest.raises(SlotError) as caught:
        slots.erase(SECONDARY)
    assert caught.value.refusal is SlotRefusal.INVALID_SLOT


def test_factory_image_must_verify_and_key_must_exist(tmp_path, images):
    config = ImageConfig(slots=2, slot_size_kib=128, version="1.0.0", verify_key=None)
    slots = ImageSlots(tmp_path / "state", config)
    with pytest.raises(NoBootableImageError, match="no firmware verification key"):
        slots.install_factory_image(images.v1)
    slots.install_verify_key(images.key_pem.read_bytes())
    with pytest.raises(ImageError) as caught:
        slots.install_factory_image(images.wrong_key)
    assert caught.value.refusal is Refusal.WRONG_KEY
    with pytest.raises(NoBootableImageError, match="no image in the primary slot"):
        slots.boot(lambda line: None)
    slots.install_factory_image(images.v1)
    assert slots.boot(lambda line: None).version == "1.0.0"


def test_damaged_primary_does_not_boot(tmp_path, images):
    slots = make_slots(tmp_path, images)
    blob = next((slots.root / "blobs").glob("*.img"))
    data = bytearray(blob.read_bytes())
    data[0x300] ^= 1
    blob.write_bytes(bytes(data))
    log: list[str] = []
    with pytest.raises(NoBootableImageError, match="hash mismatch"):
        slots.boot(log.append)
    assert "E: Unable to find bootable image" in log


def test_reset_ends_the_upload_in_progress(tmp_path, images):
    slots = make_slots(tmp_path, images)
    boot(slots)
    writer = slots.start_upload(len(images.v2))
    writer.write(images.v2[:10_000])
    boot(slots)                      # a warm reset: the upload session is gone with the RAM
    assert writer.discarded and not (slots.root / "upload.part").exists()
    with pytest.raises(SlotError):
        writer.write(images.v2[10_000:20_000])
    assert [r.slot for r in slots.slot_infos()] == [PRIMARY]


def test_test_image_on_an_empty_board_reverts_to_nothing(tmp_path, images):
    config = ImageConfig(slots=2, slot_size_kib=128, version="1.0.0", verify_key=images.key_pem)
    slots = ImageSlots(tmp_path / "state", config)
    assert not slots.has_primary_image
    upload(slots, images.v2)
    slots.set_next_boot(SECONDARY, confirm=False)
    booted, _ = boot(slots)
    assert (booted.version, booted.confirmed) == ("1.1.0", False)
    with pytest.raises(NoBootableImageError, match="no image in the primary slot"):
        boot(slots)                  # not confirmed: swapped back out
    assert not slots.has_primary_image
    assert [(r.slot, str(r.version)) for r in slots.slot_infos()] == [(SECONDARY, "1.1.0")]


def test_missing_key_is_reported_on_the_console(tmp_path, images):
    config = ImageConfig(slots=2, slot_size_kib=128, version="1.0.0", verify_key=None)
    slots = ImageSlots(tmp_path / "state", config)
    log: list[str] = []
    with pytest.raises(NoBootableImageError):
        slots.boot(log.append)
    assert log == []                 # never flashed: the board's built-in firmware runs, quietly
    slots.install_verify_key(images.key_pem.read_bytes())
    slots.install_factory_image(images.v1)
    slots.verify_key_path.unlink()
    with pytest.raises(NoBootableImageError, match="no usable firmware verification key"):
        slots.boot(log.append)
    assert log and log[0].startswith("E: no firmware verification key in this board's flash")
    assert "pledgeforge board set-verify-key --state" in log[0]
    assert "E: Unable to find bootable image" in log


def test_without_a_key_a_pending_image_reads_not_bootable_and_is_erased_at_boot(tmp_path, images):
    # A board that never got a key (no lab, no set-verify-key): what the README's
    # flash flow used to run into. SMP state says the image will not boot; the
    # bootloader erases it and says why, and the built-in firmware keeps running.
    config = ImageConfig(slots=2, slot_size_kib=128, version="1.0.0", verify_key=None)
    slots = ImageSlots(tmp_path / "state", config)
    upload(slots, images.v2)
    slots.set_next_boot(SECONDARY, confirm=False)
    [row] = slots.slot_infos()
    assert (row.slot, row.pending, row.bootable) == (SECONDARY, True, False)
    log: list[str] = []
    with pytest.raises(NoBootableImageError, match="no image in the primary slot"):
        slots.boot(log.append)
    assert log[0].startswith("E: no firmware verification key")
    assert "E: Image in the secondary slot is not valid! (no key: " in log[1]
    assert slots.slot_infos() == []      # nothing pending any more, as MCUboot leaves it
    # With the key installed, the same image uploads, reads bootable and boots.
    slots.install_verify_key(images.key_pem.read_bytes())
    upload(slots, images.v2)
    assert [(r.slot, r.bootable) for r in slots.slot_infos()] == [(SECONDARY, True)]
    slots.set_next_boot(SECONDARY, confirm=True)
    assert boot(slots)[0].version == "1.1.0"


@pytest.mark.parametrize("which", ["wrong_key", "tampered", "unsigned"])
def test_an_image_the_bootloader_would_refuse_reads_not_bootable(tmp_path, images, which):
    slots = make_slots(tmp_path, images)
    boot(slots)
    upload(slots, getattr(images, which))
    slots.set_next_boot(SECONDARY, confirm=False)
    rows = {r.slot: r for r in slots.slot_infos()}
    assert rows[PRIMARY].bootable and rows[PRIMARY].active
    assert rows[SECONDARY].pending and not rows[SECONDARY].bootable
    booted, log = boot(slots)
    assert booted.version == "1.0.0"
    assert any(line.startswith("E: Image in the secondary slot is not valid!") for line in log)
    assert [r.slot for r in slots.slot_infos()] == [PRIMARY]


def test_install_verify_key_refuses_what_is_not_a_firmware_key(tmp_path, images):
    state = tmp_path / "state"
    path = install_verify_key(state, images.key_pem.read_bytes())
    assert path == state / "slots" / "verify-key.pem"
    with pytest.raises(ImageKeyError, match="not a PEM public key"):
        install_verify_key(state, b"-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n")
    assert path.read_bytes() == images.key_pem.read_bytes()    # the previous key stays
