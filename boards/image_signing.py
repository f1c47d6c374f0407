"""Sign MCUboot images with a key that never leaves its HSM, through imgtool.

imgtool's external-signature flow, in two passes over the same inputs:

1. `imgtool sign --vector-to-sign digest` builds the header and protected TLVs and
   writes only the image hash (SHA-256, or SHA-384 for P-384 keys) instead of an image;
2. the `Signer` signs that digest inside the key store (ECDSA over the prehashed
   digest; RSA-PSS, MGF1-SHA256, 32-byte salt, which is what MCUboot verifies);
3. `imgtool sign --fix-sig SIG --fix-sig-pubkey PUB` builds the same image again and
   appends the hash, the key hash and that signature.

The second pass must hash to the same digest (nothing in the hashed region is
random), which is checked, together with the signature, before the image is returned.
imgtool runs as a subprocess: it prints progress on stdout and exits on errors.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pledgeforge.errors import UsageError
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, Signer

from .mcuboot import ImageError, ImageVersion, verify_image

IMGTOOL = [sys.executable, "-m", "imgtool.main"]
IMGTOOL_TIMEOUT = 120.0
ALIGNMENTS = (1, 2, 4, 8, 16, 32)


class ImageSigningError(UsageError):
    """An image could not be built or signed."""


@dataclass(frozen=True)
class ImageLayout:
    """Where the image goes: imgtool's --header-size, --slot-size, --align, --pad-header."""

    header_size: int = 0x200
    slot_size: int = 512 * 1024
    align: int = 4
    # A plain binary has no room for the header: let imgtool prepend it. Zephyr
    # builds reserve it already (CONFIG_ROM_START_OFFSET) and need pad_header=False.
    pad_header: bool = True

    def check(self) -> None:
        if not 32 <= self.header_size <= 0xFFFF:
            raise ImageSigningError(f"header size {self.header_size} must be between 32 and 65535")
        if self.align not in ALIGNMENTS:
            raise ImageSigningError(f"alignment {self.align} must be one of "
                                    f"{', '.join(map(str, ALIGNMENTS))}")
        if self.slot_size <= self.header_size:
            raise ImageSigningError(f"slot size {self.slot_size} must exceed the header size")


def _hash_name(algorithm: KeyAlgorithm) -> str:
    return "sha384" if algorithm is KeyAlgorithm.EC_P384 else "sha256"


def sign_image(signer: Signer, payload: bytes, version: str,
               layout: ImageLayout = ImageLayout()) -> bytes:
    """An MCUboot image of `payload`, signed by `signer`; verified before it is returned."""
    layout.check()
    ImageVersion.parse(version)  # one clear error before imgtool sees it
    if not payload:
        raise ImageSigningError("the firmware binary is empty")
    algorithm = signer.algorithm
    hash_name = _hash_name(algorithm)
    common = ["--version", version, "--header-size", hex(layout.header_size),
              "--slot-size", hex(layout.slot_size), "--align", str(layout.align),
              "--sha", hash_name.removeprefix("sha")]
    if layout.pad_header:
        common.append("--pad-header")

    with tempfile.TemporaryDirectory(prefix="pledgeforge-image-") as tmp:
        work = Path(tmp)
        app = work / "app.bin"
        app.write_bytes(payload)
        digest_file = work / "digest.bin"
        _imgtool(["sign", *common, "--vector-to-sign", "digest", str(app), str(digest_file)])
        digest = digest_file.read_bytes()
        if len(digest) != hashlib.new(hash_name).digest_size:
            raise ImageSigningError(f"imgtool exported a {len(digest)}-byte digest; "
                                    f"expected a {hash_name} digest")

        pad = Padding.PSS if not algorithm.is_ec else Padding.PKCS1V15
        signature = signer.sign_digest(digest, hash_name, pad)

        sig_file = work / "signature.b64"
        sig_file.write_bytes(base64.b64encode(signature))
        pub_file = work / "public.pem"
        pub_file.write_bytes(signer.public_key_pem())
        out = work / "app.signed.bin"
        _imgtool(["sign", *common, "--fix-sig", str(sig_file), "--fix-sig-pubkey", str(pub_file),
                  str(app), str(out)])
        image = out.read_bytes()

    try:
        verified = verify_image(image, signer.public_key)
    except ImageError as exc:
        raise ImageSigningError(f"the signed image does not verify ({exc}); "
                                "is the imgtool version supported?") from None
    if verified.hash != digest:
        raise ImageSigningError("imgtool hashed the image differently in its second pass")
    return image


def _imgtool(args: list[str]) -> None:
    try:
        result = subprocess.run([*IMGTOOL, *args], capture_output=True, timeout=IMGTOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ImageSigningError(f"imgtool did not finish within {IMGTOOL_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()
        if "No module named imgtool" in output:
            raise ImageSigningError("imgtool is not installed (pip install imgtool)")
        last = output.splitlines()[-1] if output else f"exit status {result.returncode}"
        raise ImageSigningError(f"imgtool refused to build the image: {last}")


def firmware_payload(board: str, version: str, size: int = 16 * 1024) -> bytes:
    """A deterministic stand-in for a firmware binary: a banner, then filler.

    Emulated boards have no real application code; this is what a factory image
    and test images carry, so that two versions differ in content as well as header.
    """
    banner = f"pledgeforge firmware board={board} version={version}\n".encode()
    filler = hashlib.shake_256(banner).digest(max(0, size - len(banner)))
    return banner + filler
