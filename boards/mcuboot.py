"""MCUboot images: parse the header and TLV area, verify hash, key and signature.

Layout (all little-endian), as imgtool writes it and MCUboot reads it:

    header (32 bytes, padded to hdr_size) | body (img_size bytes)
    | protected TLV area  (info 0x6908 + TLVs; protect_tlv_size bytes, may be absent)
    | unprotected TLV area (info 0x6907 + TLVs: hash, key hash, signature)

The image hash covers header, body and protected TLVs. The signature signs that
hash: ECDSA over the digest (prehashed), RSA-PSS with MGF1-SHA256 and a 32-byte
salt. A KEYHASH TLV names the key (hash of the SubjectPublicKeyInfo DER for EC,
of the PKCS#1 RSAPublicKey DER for RSA), so an image signed by another key is
told apart from a damaged signature, as MCUboot does when it looks a key up.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from pledgeforge.errors import FileAccessError, UsageError, VerificationFailure

IMAGE_MAGIC = 0x96F3B83D
HEADER_SIZE = 32
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_INFO_SIZE = 4
TLV_HEADER_SIZE = 4

_HEADER = struct.Struct("<IIHHIIBBHII")
_TLV_INFO = struct.Struct("<HH")
_TLV = struct.Struct("<HH")

TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
TLV_SHA384 = 0x11
TLV_SHA512 = 0x12
TLV_RSA2048_PSS = 0x20
TLV_ECDSA_SIG = 0x22
TLV_RSA3072_PSS = 0x23
TLV_ED25519 = 0x24
TLV_SIG_PURE = 0x25

TLV_NAMES = {
    TLV_KEYHASH: "KEYHASH", TLV_PUBKEY: "PUBKEY", TLV_SHA256: "SHA256", TLV_SHA384: "SHA384",
    TLV_SHA512: "SHA512", TLV_RSA2048_PSS: "RSA2048", TLV_ECDSA_SIG: "ECDSASIG",
    TLV_RSA3072_PSS: "RSA3072", TLV_ED25519: "ED25519", TLV_SIG_PURE: "SIG_PURE",
    0x30: "ENCRSA2048", 0x31: "ENCKW", 0x32: "ENCEC256", 0x33: "ENCX25519",
    0x34: "ENCX25519_SHA512", 0x40: "DEPENDENCY", 0x50: "SEC_CNT", 0x60: "BOOT_RECORD",
    0x70: "DECOMP_SIZE", 0x71: "DECOMP_SHA", 0x72: "DECOMP_SIGNATURE", 0x73: "COMP_DEC_SIZE",
    0x74: "UUID_VID", 0x75: "UUID_CID",
}

_HASH_TLVS = {TLV_SHA256: "sha256", TLV_SHA384: "sha384", TLV_SHA512: "sha512"}
_SIGNATURE_TLVS = (TLV_RSA2048_PSS, TLV_ECDSA_SIG, TLV_RSA3072_PSS, TLV_ED25519)

IMAGE_FLAGS = {
    0x01: "PIC", 0x04: "ENCRYPTED_AES128", 0x08: "ENCRYPTED_AES256", 0x10: "NON_BOOTABLE",
    0x20: "RAM_LOAD", 0x100: "ROM_FIXED", 0x200: "COMPRESSED_LZMA1", 0x400: "COMPRESSED_LZMA2",
    0x800: "COMPRESSED_ARM_THUMB",
}
FLAG_NON_BOOTABLE = 0x10


class Refusal(enum.Enum):
    """Why an image is not accepted; the value is the short spelling tests and logs use."""

    BAD_MAGIC = "bad magic"
    TRUNCATED = "truncated"
    MALFORMED = "malformed TLV area"
    NO_HASH = "no image hash"
    HASH_MISMATCH = "hash mismatch"
    UNSIGNED = "unsigned"
    WRONG_KEY = "wrong key"
    BAD_SIGNATURE = "bad signature"
    NO_KEY = "no key"            # the board has no key to check images with


class ImageError(VerificationFailure):
    """An MCUboot image is unusable; `refusal` says why in a word."""

    def __init__(self, refusal: Refusal, detail: str):
        super().__init__(f"{refusal.value}: {detail}")
        self.refusal = refusal
        self.detail = detail


class ImageKeyError(UsageError):
    """The firmware verification key cannot be used."""


class ImageVersionError(UsageError):
    """A version string is not one MCUboot headers can carry."""


@dataclass(frozen=True, order=True)
class ImageVersion:
    major: int
    minor: int
    revision: int
    build: int = 0

    def __str__(self) -> str:
        # imgtool's spelling, so `--version 1.2.3+4` reads back the same.
        base = f"{self.major}.{self.minor}.{self.revision}"
        return f"{base}+{self.build}" if self.build else base

    @property
    def smp_text(self) -> str:
        """Zephyr's img_mgmt spelling (`1.2.3`, or `1.2.3.4` with a build number)."""
        base = f"{self.major}.{self.minor}.{self.revision}"
        return f"{base}.{self.build}" if self.build else base

    @classmethod
    def parse(cls, text: str) -> "ImageVersion":
        """`1.2.3` or `1.2.3+4`, the forms imgtool accepts for --version."""
        main, _, build = text.strip().partition("+")
        parts = main.split(".")
        try:
            if not 1 <= len(parts) <= 3 or (build and not build.isdigit()):
                raise ValueError
            numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
            version = cls(numbers[0], numbers[1], numbers[2], int(build or 0))
        except ValueError:
            raise ImageVersionError(f"version {text!r} is not MAJOR.MINOR.REVISION[+BUILD]") from None
        if version.major > 255 or version.minor > 255 or version.revision > 0xFFFF \
                or version.build > 0xFFFFFFFF:
            raise ImageVersionError(f"version {text!r} is out of range "
                                "(major, minor <= 255; revision <= 65535)")
        return version


@dataclass(frozen=True)
class ImageHeader:
    load_addr: int
    header_size: int
    protect_tlv_size: int
    image_size: int
    flags: int
    version: ImageVersion

    @property
    def flag_names(self) -> list[str]:
        return [name for bit, name in IMAGE_FLAGS.items() if self.flags & bit]


@dataclass(frozen=True)
class Tlv:
    type: int
    offset: int            # of the value, from the start of the image
    value: bytes
    protected: bool

    @property
    def name(self) -> str:
        return TLV_NAMES.get(self.type, f"0x{self.type:02x}")


@dataclass(frozen=True)
class McubootImage:
    """A parsed (not yet verified) image."""

    header: ImageHeader
    tlvs: tuple[Tlv, ...]
    hashed_size: int       # header + body + protected TLVs: what the hash covers
    size: int              # up to the end of the TLV area; any bytes after are padding

    @property
    def version(self) -> ImageVersion:
        return self.header.version

    @property
    def hash_tlv(self) -> Tlv | None:
        """The image's hash TLV (SHA-256, -384 or -512), None when it has none."""
        found = [t for t in self.tlvs if t.type in _HASH_TLVS and not t.protected]
        return found[0] if len(found) == 1 else None

    @property
    def hash(self) -> bytes | None:
        tlv = self.hash_tlv
        return tlv.value if tlv else None

    @property
    def bootable(self) -> bool:
        return not self.header.flags & FLAG_NON_BOOTABLE

    def find(self, tlv_type: int) -> list[Tlv]:
        return [t for t in self.tlvs if t.type == tlv_type]


@dataclass(frozen=True)
class VerifiedImage:
    """An image whose hash and signature checked out against the firmware key."""

    image: McubootImage
    hash: bytes

    @property
    def version(self) -> ImageVersion:
        return self.image.version


def parse_image(data: bytes) -> McubootImage:
    """Parse header and TLV areas; raises ImageError (bad magic, truncated, malformed)."""
    if len(data) < HEADER_SIZE:
        if len(data) >= 4 and struct.unpack_from("<I", data)[0] != IMAGE_MAGIC:
            raise ImageError(Refusal.BAD_MAGIC, "not an MCUboot image (bad header magic)")
        raise ImageError(Refusal.TRUNCATED, f"{len(data)} bytes is shorter than an image header")
    (magic, load_addr, hdr_size, prot_size, img_size, flags,
     major, minor, revision, build, _pad) = _HEADER.unpack_from(data)
    if magic != IMAGE_MAGIC:
        raise ImageError(Refusal.BAD_MAGIC,
                         f"not an MCUboot image (header magic 0x{magic:08x}, "
                         f"expected 0x{IMAGE_MAGIC:08x})")
    if hdr_size < HEADER_SIZE:
        raise ImageError(Refusal.MALFORMED, f"header size {hdr_size} is below {HEADER_SIZE}")
    header = ImageHeader(load_addr, hdr_size, prot_size, img_size, flags,
                         ImageVersion(major, minor, revision, build))

    tlvs: list[Tlv] = []
    offset = hdr_size + img_size
    if prot_size:
        area_end = _read_tlv_area(data, offset, TLV_PROT_INFO_MAGIC, True, tlvs)
        if area_end - offset != prot_size:
            raise ImageError(Refusal.MALFORMED,
                             f"protected TLV area is {area_end - offset} bytes, header says {prot_size}")
        offset = area_end
    hashed_size = offset
    end = _read_tlv_area(data, offset, TLV_INFO_MAGIC, False, tlvs)
    return McubootImage(header, tuple(tlvs), hashed_size, end)


def _read_tlv_area(data: bytes, start: int, magic: int, protected: bool, out: list[Tlv]) -> int:
    """Append the TLVs of the area at `start` to `out`; return where the area ends."""
    if start + TLV_INFO_SIZE > len(data):
        raise ImageError(Refusal.TRUNCATED,
                         f"image ends at {len(data)} bytes, before its TLV area at {start}")
    found_magic, total = _TLV_INFO.unpack_from(data, start)
    if found_magic != magic:
        kind = "protected TLV" if protected else "TLV"
        raise ImageError(Refusal.MALFORMED,
                         f"no {kind} area at offset {start} (magic 0x{found_magic:04x}, "
                         f"expected 0x{magic:04x})")
    end = start + total
    if total < TLV_INFO_SIZE:
        raise ImageError(Refusal.MALFORMED, f"TLV area length {total} is too small")
    if end > len(data):
        raise ImageError(Refusal.TRUNCATED,
                         f"TLV area needs {end} bytes, the image has {len(data)}")
    pos = start + TLV_INFO_SIZE
    while pos < end:
        if pos + TLV_HEADER_SIZE > end:
            raise ImageError(Refusal.MALFORMED, f"TLV header at {pos} runs past the TLV area")
        tlv_type, length = _TLV.unpack_from(data, pos)
        value_at = pos + TLV_HEADER_SIZE
        if value_at + length > end:
            raise ImageError(Refusal.MALFORMED,
                             f"TLV 0x{tlv_type:02x} at {pos} runs past the TLV area")
        out.append(Tlv(tlv_type, value_at, bytes(data[value_at:value_at + length]), protected))
        pos = value_at + length
    return end


def load_public_key(pem: bytes, source: str = "firmware key"):
    """A PEM public key (or certificate) as a cryptography key; EC P-256/P-384 or RSA-2048/3072."""
    try:
        if b"BEGIN CERTIFICATE" in pem:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ImageKeyError(f"{source} is not a PEM public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size in (2048, 3072):
        return key
    raise ImageKeyError(f"{source}: MCUboot images are signed with EC P-256/P-384 or "
                        "RSA-2048/3072 keys, not this one")


def load_public_key_file(path: str | Path):
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise FileAccessError(f"cannot read firmware key {path}: {exc.strerror}") from None
    return load_public_key(pem, f"firmware key {path}")


def key_bytes(public_key) -> bytes:
    """The key encoding MCUboot embeds (and KEYHASH hashes)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_tlv_type(public_key) -> int:
    if isinstance(public_key, rsa.RSAPublicKey):
        return TLV_RSA3072_PSS if public_key.key_size == 3072 else TLV_RSA2048_PSS
    return TLV_ECDSA_SIG


def hash_name_for_key(public_key) -> str:
    """The image hash imgtool pairs with a key: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp384r1":
        return "sha384"
    return "sha256"


def verify_image(data: bytes, public_key) -> VerifiedImage:
    """Check what MCUboot checks before it boots an image; raises ImageError with the reason."""
    image = parse_image(data)
    hashes_found = [t for t in image.tlvs if t.type in _HASH_TLVS and not t.protected]
    if not hashes_found:
        raise ImageError(Refusal.NO_HASH, "the image carries no SHA-256/384/512 TLV")
    if len(hashes_found) > 1:
        raise ImageError(Refusal.MALFORMED, "the image carries more than one hash TLV")
    hash_tlv = hashes_found[0]
    hash_name = _HASH_TLVS[hash_tlv.type]
    computed = hashlib.new(hash_name, data[:image.hashed_size]).digest()
    if computed != hash_tlv.value:
        raise ImageError(Refusal.HASH_MISMATCH,
                         "the image contents do not match its hash (corrupted or tampered)")

    signatures = [t for t in image.tlvs if t.type in _SIGNATURE_TLVS and not t.protected]
    if not signatures:
        raise ImageError(Refusal.UNSIGNED, "the image carries no signature")

    expected_hash = hash_name_for_key(public_key)
    if hash_name != expected_hash:
        raise ImageError(Refusal.WRONG_KEY,
                         f"the image is hashed with {hash_name}; the firmware key expects "
                         f"{expected_hash}")
    embedded = key_bytes(public_key)
    for tlv in image.find(TLV_KEYHASH):
        if tlv.value != hashlib.new(hash_name, embedded).digest():
            raise ImageError(Refusal.WRONG_KEY, "the image is signed with a different key")
    for tlv in image.find(TLV_PUBKEY):
        if tlv.value != embedded:
            raise ImageError(Refusal.WRONG_KEY, "the image is signed with a different key")

    wanted = signature_tlv_type(public_key)
    candidates = [t for t in signatures if t.type == wanted]
    if not candidates:
        names = ", ".join(t.name for t in signatures)
        raise ImageError(Refusal.WRONG_KEY,
                         f"the image is signed with another kind of key ({names})")
    for tlv in candidates:
        if _signature_ok(public_key, tlv.value, computed, hash_name):
            return VerifiedImage(image, computed)
    raise ImageError(Refusal.BAD_SIGNATURE, "the signature does not verify with the firmware key")


def _signature_ok(public_key, signature: bytes, digest: bytes, hash_name: str) -> bool:
    algorithm = {"sha256": hashes.SHA256, "sha384": hashes.SHA384,
                 "sha512": hashes.SHA512}[hash_name]()
    prehashed = utils.Prehashed(algorithm)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            # Old MCUboot padded DER signatures with zeros to 72 bytes; cut to the DER length.
            if len(signature) >= 2:
                signature = signature[:signature[1] + 2]
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            public_key.verify(signature, digest,
                              padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                              prehashed)
    except (InvalidSignature, ValueError):
        return False
    return True


def describe(data: bytes) -> dict:
    """A JSON-friendly summary of an image, for `pledgeforge image info`."""
    image = parse_image(data)
    h = image.header
    return {
        "version": str(h.version),
        "header_size": h.header_size,
        "image_size": h.image_size,
        "load_addr": h.load_addr,
        "flags": h.flag_names,
        "protected_tlv_size": h.protect_tlv_size,
        "hash": image.hash.hex() if image.hash else None,
        "size": image.size,
        "trailing_bytes": len(data) - image.size,
        "tlvs": [{"type": t.name, "length": len(t.value), "protected": t.protected,
                  "value": t.value.hex() if len(t.value) <= 64 else None}
                 for t in image.tlvs],
    }
