"""Signed test images shared by the image slot and SMP tests (software key: these test the
board side; the HSM signing path has its own tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pledgeforge.boards import mcuboot
from pledgeforge.boards.image_signing import ImageLayout, firmware_payload, sign_image
from pledgeforge.boards.image_slots import ImageSlots
from pledgeforge.boards.profile import ImageConfig
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner

LAYOUT = ImageLayout(slot_size=128 * 1024)


@dataclass
class Images:
    key_pem: Path
    v1: bytes
    v2: bytes
    v3: bytes
    tampered: bytes
    wrong_key: bytes
    unsigned: bytes


def build_images(directory: Path) -> Images:
    fw = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    other = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    key_pem = directory / "fw.pem"
    key_pem.write_bytes(fw.public_key_pem())
    v1, v2, v3 = (sign_image(fw, firmware_payload("t", v), v, LAYOUT)
                  for v in ("1.0.0", "1.1.0", "1.2.0"))
    tampered = bytearray(v2)
    tampered[0x200 + 1000] ^= 0x55
    wrong_key = sign_image(other, firmware_payload("t", "6.6.6"), "6.6.6", LAYOUT)
    # Keep only the hash TLV: what `imgtool sign` without a key makes.
    parsed = mcuboot.parse_image(v3)
    tlv_area = (bytes([0x07, 0x69]) + (4 + 4 + 32).to_bytes(2, "little")
                + bytes([0x10, 0x00]) + (32).to_bytes(2, "little") + parsed.hash_tlv.value)
    unsigned = v3[:parsed.hashed_size] + tlv_area
    return Images(key_pem, v1, v2, v3, bytes(tampered), wrong_key, unsigned)


def make_slots(state_dir: Path, images: Images, slots: int = 2) -> ImageSlots:
    """A board's slots with the factory image (v1) installed."""
    config = ImageConfig(slots=slots, slot_size_kib=128, version="1.0.0", verify_key=images.key_pem)
    s = ImageSlots(state_dir, config)
    s.install_factory_image(images.v1)
    return s
