"""The MCUboot image parser and verifier against images built by imgtool itself."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pledgeforge.boards import mcuboot
from pledgeforge.boards.mcuboot import ImageError, ImageVersion, Refusal
from pledgeforge.errors import FileAccessError

IMGTOOL = [sys.executable, "-m", "imgtool.main"]
PAYLOAD = b"firmware body " * 700


def imgtool(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([*IMGTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """imgtool keys and images: {name: bytes}, plus the public key PEM paths."""
    d = tmp_path_factory.mktemp("imgtool")
    (d / "app.bin").write_bytes(PAYLOAD)
    out = {}
    for kind in ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"):
        key = d / f"{kind}.pem"
        imgtool("keygen", "-k", key, "-t", kind)
        imgtool("getpub", "-k", key, "-e", "pem", "-o", d / f"{kind}.pub.pem")
        imgtool("sign", "-k", key, "--version", "2.3.4+5", "--header-size", "0x200", "--pad-header",
                "--slot-size", "0x40000", "--align", "4", d / "app.bin", d / f"{kind}.img")
        out[kind] = ((d / f"{kind}.img").read_bytes(), (d / f"{kind}.pub.pem").read_bytes())
    imgtool("sign", "--version", "2.3.4", "--header-size", "0x200", "--pad-header",
            "--slot-size", "0x40000", d / "app.bin", d / "unsigned.img")
    out["unsigned"] = ((d / "unsigned.img").read_bytes(), None)
    # A full public key instead of its hash, and a protected TLV (security counter).
    imgtool("sign", "-k", d / "ecdsa-p256.pem", "--public-key-format", "full", "-s", "7",
            "--version", "1.0.0", "--header-size", "0x200", "--pad-header",
            "--slot-size", "0x40000", d / "app.bin", d / "full.img")
    out["full"] = ((d / "full.img").read_bytes(), out["ecdsa-p256"][1])
    return out


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"])
def test_imgtool_signed_images_verify(built, kind):
    data, pem = built[kind]
    verified = mcuboot.verify_image(data, mcuboot.load_public_key(pem))
    assert verified.version == ImageVersion(2, 3, 4, 5)
    assert str(verified.version) == "2.3.4+5"
    assert verified.version.smp_text == "2.3.4.5"
    image = verified.image
    assert image.header.header_size == 0x200
    assert data[0x200:0x200 + len(PAYLOAD)] == PAYLOAD
    assert verified.hash == image.hash
    assert len(verified.hash) == (48 if kind == "ecdsa-p384" else 32)


def test_full_public_key_and_protected_tlvs(built):
    data, pem = built["full"]
    image = mcuboot.verify_image(data, mcuboot.load_public_key(pem)).image
    assert image.header.protect_tlv_size > 0
    assert [t.name for t in image.tlvs if t.protected] == ["SEC_CNT"]
    assert image.find(mcuboot.TLV_PUBKEY)[0].value == mcuboot.key_bytes(mcuboot.load_public_key(pem))


def refusal(data: bytes, pem: bytes) -> Refusal:
    with pytest.raises(ImageError) as caught:
        mcuboot.verify_image(data, mcuboot.load_public_key(pem))
    return caught.value.refusal


def test_tampered_body_is_a_hash_mismatch(built):
    data, pem = built["ecdsa-p256"]
    tampered = bytearray(data)
    tampered[0x200 + 100] ^= 0x01
    assert refusal(bytes(tampered), pem) is Refusal.HASH_MISMATCH


def test_tampered_header_is_a_hash_mismatch(built):
    data, pem = built["ecdsa-p256"]
    tampered = bytearray(data)
    tampered[20] += 1   # the major version: a downgrade attack
    assert refusal(bytes(tampered), pem) is Refusal.HASH_MISMATCH


def test_damaged_signature_is_a_bad_signature(built):
    data, pem = built["ecdsa-p256"]
    image = mcuboot.parse_image(data)
    sig = image.find(mcuboot.TLV_ECDSA_SIG)[0]
    tampered = bytearray(data)
    tampered[sig.offset + len(sig.value) - 3] ^= 0x40
    assert refusal(bytes(tampered), pem) is Refusal.BAD_SIGNATURE


def test_unsigned_image_is_refused(built):
    data, _ = built["unsigned"]
    assert refusal(data, built["ecdsa-p256"][1]) is Refusal.UNSIGNED
    # ...though it parses and carries a hash, which is what SMP state read reports.
    assert mcuboot.parse_image(data).hash is not None


@pytest.mark.parametrize("signed_with,checked_with", [
    ("ecdsa-p256", "rsa-2048"), ("rsa-2048", "ecdsa-p256"), ("ecdsa-p384", "ecdsa-p256"),
    ("rsa-3072", "rsa-2048"),
])
def test_image_from_another_key_is_wrong_key(built, signed_with, checked_with):
    assert refusal(built[signed_with][0], built[checked_with][1]) is Refusal.WRONG_KEY


def test_same_kind_other_key_is_wrong_key(built, tmp_path):
    imgtool("keygen", "-k", tmp_path / "other.pem", "-t", "ecdsa-p256")
    imgtool("getpub", "-k", tmp_path / "other.pem", "-e", "pem", "-o", tmp_path / "other.pub")
    assert refusal(built["ecdsa-p256"][0], (tmp_path / "other.pub").read_bytes()) is Refusal.WRONG_KEY


def test_truncated_and_bad_magic(built):
    data, pem = built["ecdsa-p256"]
    for cut in (10, 31, 0x200, len(data) - 1):
        assert refusal(data[:cut], pem) is Refusal.TRUNCATED
    assert refusal(b"\x00" * 64 + data[64:], pem) is Refusal.BAD_MAGIC
    assert refusal(b"not an image at all", pem) is Refusal.BAD_MAGIC


def test_header_length_pointing_elsewhere_is_malformed(built):
    data, pem = built["ecdsa-p256"]
    image_size = struct.unpack_from("<I", data, 12)[0]
    moved = bytearray(data)
    struct.pack_into("<I", moved, 12, image_size - 8)
    assert refusal(bytes(moved), pem) is Refusal.MALFORMED


def test_describe_lists_the_tlvs(built):
    summary = mcuboot.describe(built["ecdsa-p256"][0])
    assert summary["version"] == "2.3.4+5"
    assert [t["type"] for t in summary["tlvs"]] == ["SHA256", "KEYHASH", "ECDSASIG"]
    assert summary["trailing_bytes"] == 0


def test_version_parsing():
    assert ImageVersion.parse("1.2.3+4") == ImageVersion(1, 2, 3, 4)
    assert ImageVersion.parse("1.2") == ImageVersion(1, 2, 0, 0)
    for bad in ("", "a.b.c", "1.2.3.4", "256.0.0", "1.2.3+x"):
        with pytest.raises(mcuboot.ImageVersionError):
            ImageVersion.parse(bad)


def test_non_image_key_files_are_refused(tmp_path):
    with pytest.raises(mcuboot.ImageKeyError, match="not a PEM public key"):
        mcuboot.load_public_key(b"-----BEGIN NOTHING-----\n")
    with pytest.raises(FileAccessError, match="cannot read"):   # an I/O failure, not a bad key
        mcuboot.load_public_key_file(tmp_path / "missing.pem")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=600))
def test_parser_never_fails_with_anything_but_image_error(noise, at):
    header = struct.pack("<IIHHIIBBHII", mcuboot.IMAGE_MAGIC, 0, 32, 0, 16, 0, 1, 0, 0, 0, 0)
    for data in (noise, header + noise, header + noise[:at] + struct.pack("<HH", 0x6907, 300) + noise):
        try:
            mcuboot.parse_image(data)
        except ImageError:
            pass
