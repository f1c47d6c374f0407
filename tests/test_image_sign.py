"""`pledgeforge image sign|verify|info` with the firmware key inside SoftHSM, checked by imgtool."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clirunner import run_cli
from pledgeforge.boards import mcuboot
from pledgeforge.boards.image_signing import ImageLayout, ImageSigningError, sign_image
from pledgeforge.hsm.keystore import generate_key, open_signer

IMGTOOL = [sys.executable, "-m", "imgtool.main"]


def imgtool_verify(pub, image) -> subprocess.CompletedProcess:
    return subprocess.run([*IMGTOOL, "verify", "-k", str(pub), str(image)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def fw_key(token, tmp_path):
    """A P-256 firmware key generated inside SoftHSM; returns (uri text, public PEM path)."""
    signer = generate_key(token.uri("fw"), "ec-p256")
    pub = tmp_path / "fw.pub.pem"
    pub.write_bytes(signer.public_key_pem())
    return token.uri_text("fw"), pub


def test_cli_signs_with_hsm_key_and_imgtool_verifies(fw_key, tmp_path):
    uri, pub = fw_key
    app = tmp_path / "app.bin"
    app.write_bytes(b"\x7fELF-ish application " * 2000)
    out = tmp_path / "app.signed.bin"
    result = run_cli("image", "sign", "--key", uri, "--version", "1.4.2+9", "--in", app, "--out", out)
    assert result.returncode == 0, result.stderr
    assert b"version 1.4.2+9" in result.stdout

    checked = imgtool_verify(pub, out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Image was correctly validated" in checked.stdout
    assert "Image version: 1.4.2+9" in checked.stdout

    verify = run_cli("image", "verify", "--key-pem", pub, "--in", out)
    assert verify.returncode == 0, verify.stderr
    assert b"valid, version 1.4.2+9" in verify.stdout

    info = run_cli("image", "info", "--in", out, "--json")
    summary = json.loads(info.stdout)
    assert summary["version"] == "1.4.2+9"
    assert [t["type"] for t in summary["tlvs"]] == ["SHA256", "KEYHASH", "ECDSASIG"]
    digest = checked.stdout.split("Image digest: ")[1].split()[0]
    assert summary["hash"] == digest


def test_cli_verify_names_the_reason(fw_key, token, tmp_path):
    uri, pub = fw_key
    other = generate_key(token.uri("other"), "ec-p256")
    other_pub = tmp_path / "other.pub.pem"
    other_pub.write_bytes(other.public_key_pem())
    app = tmp_path / "app.bin"
    app.write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "app.signed.bin"
    assert run_cli("image", "sign", "--key", uri, "--version", "2.0.0", "--in", app,
                   "--out", out).returncode == 0

    wrong = run_cli("image", "verify", "--key-pem", other_pub, "--in", out)
    assert wrong.returncode == 1
    assert b"wrong key" in wrong.stderr
    assert imgtool_verify(other_pub, out).returncode != 0

    tampered = bytearray(out.read_bytes())
    tampered[0x200 + 5] ^= 0xFF
    bad = tmp_path / "tampered.bin"
    bad.write_bytes(bytes(tampered))
    result = run_cli("image", "verify", "--key-pem", pub, "--in", bad)
    assert result.returncode == 1
    assert b"hash mismatch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert imgtool_verify(pub, bad).returncode != 0


def test_rsa_2048_hsm_key(token, tmp_path):
    signer = generate_key(token.uri("fw-rsa"), "rsa-2048")
    pub = tmp_path / "rsa.pub.pem"
    pub.write_bytes(signer.public_key_pem())
    image = sign_image(signer, b"legacy board firmware" * 100, "3.1.0",
                       ImageLayout(slot_size=0x20000))
    (tmp_path / "rsa.img").write_bytes(image)
    checked = imgtool_verify(pub, tmp_path / "rsa.img")
    assert checked.returncode == 0, checked.stdout
    assert [t.name for t in mcuboot.parse_image(image).tlvs] == ["SHA256", "KEYHASH", "RSA2048"]


def test_hsm_signature_verifies_with_our_parser_too(fw_key):
    uri, pub = fw_key
    with open_signer(uri) as signer:
        image = sign_image(signer, b"x" * 5000, "0.9.1")
    verified = mcuboot.verify_image(image, mcuboot.load_public_key(pub.read_bytes()))
    assert str(verified.version) == "0.9.1"


def test_bad_inputs_give_one_line_errors(fw_key, tmp_path):
    uri, _ = fw_key
    app = tmp_path / "app.bin"
    app.write_bytes(b"a" * 100)
    cases = [
        (["--version", "one.two"], b"is not MAJOR.MINOR.REVISION"),
        (["--version", "1.0.0", "--slot-size", "0x100"], b"slot size"),
        (["--version", "1.0.0", "--header-size", "0x10"], b"header size"),
        (["--version", "1.0.0", "--slot-size", "0x400"], b"imgtool refused"),
    ]
    for extra, message in cases:
        result = run_cli("image", "sign", "--key", uri, "--in", app, "--out", tmp_path / "o.bin", *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
        assert b"Traceback" not in result.stderr
        assert not (tmp_path / "o.bin").exists()
    missing = run_cli("image", "sign", "--key", uri, "--version", "1.0.0", "--in", tmp_path / "nope",
                      "--out", tmp_path / "o.bin")
    assert missing.returncode == 3 and b"cannot read firmware binary" in missing.stderr
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"garbage")
    info = run_cli("image", "info", "--in", garbage)
    assert info.returncode == 1 and b"not a readable MCUboot image" in info.stderr


def test_empty_payload_is_refused(fw_key):
    uri, _ = fw_key
    with open_signer(uri) as signer, pytest.raises(ImageSigningError, match="empty"):
        sign_image(signer, b"", "1.0.0")
