"""Firmware image slots of an emulated board, with MCUboot's swap semantics.

Two slots, as MCUboot's swap modes have them: the board runs the image in the
primary slot (0); uploads land in the secondary slot (1). Marking the secondary
for test makes the next boot swap it in once; unless the running image is then
confirmed, the boot after that swaps back. Marking it permanent (confirm with
its hash) swaps it in for good. Before a swap the bootloader verifies the
candidate against the firmware key; an unsigned, tampered or wrongly signed image
is erased with a console message and the current image keeps running. A profile
with `slots = 1` has only the primary slot: an upload replaces it once complete,
and only if it verifies, since there is nothing to fall back to.

Storage (under `<state dir>/slots/`), safe against a power cut at any moment:
- `blobs/<sha256>.img`: image bytes, named by their SHA-256, written once
  (temp file, fsync, rename) and never modified;
- `state.json`: which blob sits in which slot and the MCUboot flags (confirmed,
  pending, permanent), replaced atomically; a swap is one rename of this file;
- `upload.part`: an upload in progress, kept apart from both slots. Like the
  SMP server's RAM on a real board it does not survive a reset: `boot()` drops it;
- `verify-key.pem`: the firmware public key the bootloader checks images
  against, unless the profile names one (`[image] verify_key`). It is written
  by `install_verify_key`, the one way a key gets into a board's flash: at the
  factory, when a manufacturing station locks the board (it installed the key),
  or by `pledgeforge board set-verify-key` on a stopped board.

A board without a key trusts no image: the bootloader erases a pending image
as it erases one signed by another key, says why on the console, and the
image state read reports such an image as not bootable before that happens.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import PledgeforgeError, VerificationFailure

from .mcuboot import (ImageError, ImageKeyError, ImageVersion, McubootImage, Refusal, load_public_key,
                      parse_image, verify_image)
from .profile import ImageConfig

PRIMARY = 0
SECONDARY = 1
STATE_FORMAT = 1
SLOTS_DIR = "slots"
VERIFY_KEY_FILE = "verify-key.pem"

Log = Callable[[str], None]


class SlotRefusal(enum.Enum):
    """Why a slot operation is refused; SMP maps each to an img_mgmt error code."""

    NO_FREE_SLOT = "the slot holds an image that is running, pending or needed for revert"
    INVALID_SLOT = "no such slot"
    ALREADY_PENDING = "another image is already pending"
    TEST_ACTIVE_DENIED = "the running image cannot be marked for test"
    TOO_LARGE = "the image does not fit in the slot"
    REJECTED = "the image does not verify against the firmware key"
    UPLOAD_ENDED = "the upload was ended by a reset or a newer upload"


class SlotError(PledgeforgeError):
    def __init__(self, refusal: SlotRefusal, detail: str = ""):
        super().__init__(detail or refusal.value)
        self.refusal = refusal


class NoBootableImageError(VerificationFailure):
    """Nothing in the slots can be booted; the message says what is missing."""


def verify_key_file(state_dir: str | os.PathLike) -> Path:
    """Where a board's flash keeps the firmware public key (profiles that name none)."""
    return Path(state_dir) / SLOTS_DIR / VERIFY_KEY_FILE


def install_verify_key(state_dir: str | os.PathLike, pem: bytes) -> Path:
    """Write the firmware public key (PEM) into a board's flash; returns the file.

    The bootloader reads it at every boot and checks every image against it.
    A manufacturing station has the board do it when it locks (`provision
    --image-key`); `pledgeforge board set-verify-key` does it to a stopped board. A PEM that is not a key MCUboot
    can check images with is refused, and the flash keeps its previous key.
    """
    load_public_key(pem, "firmware key")
    path = verify_key_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, pem)
    return path


def _no_key_message(path: Path) -> str:
    return (f"no firmware verification key in this board's flash ({path}): install one with "
            f"`pledgeforge board set-verify-key --state {path.parent.parent} --key-pem PEM` "
            "while the board is stopped (a manufacturing station installs one: pledgeforge "
            "provision --image-key), or set [image] verify_key in the profile")


class NextBoot(enum.Enum):
    NORMAL = "normal"     # boots the next-boot slot for good
    TEST = "test"         # boots the secondary once
    REVERT = "revert"     # the running image is on trial; the next boot swaps back


@dataclass(frozen=True)
class SlotInfo:
    """One row of an image state read."""

    slot: int
    version: ImageVersion
    hash: bytes
    bootable: bool
    pending: bool
    confirmed: bool
    active: bool
    permanent: bool


@dataclass(frozen=True)
class BootImage:
    """The image a boot started."""

    version: str              # "1.2.3" (or "1.2.3+4")
    hash: bytes               # the image hash TLV (what SMP state read reports)
    confirmed: bool           # False while a test image is on trial
    swap: str | None          # "test", "permanent", "revert" or None
    image_version: ImageVersion


class UploadWriter:
    """An upload in progress, written beside the slots until it is complete."""

    def __init__(self, slots: "ImageSlots", size: int):
        self._slots = slots
        self.size = size
        self.written = 0
        # Set when a reset or a newer upload ended this one (the SMP server's RAM is gone).
        self.discarded = False
        self._sha = hashlib.sha256()
        self._file = open(slots._part_path, "wb")

    def write(self, data: bytes) -> None:
        if self.discarded:
            raise SlotError(SlotRefusal.UPLOAD_ENDED)
        if self.written + len(data) > self.size:
            raise SlotError(SlotRefusal.TOO_LARGE, "upload data runs past the announced length")
        self._file.write(data)
        self._sha.update(data)
        self.written += len(data)

    def commit(self) -> bytes:
        """Install the complete upload in its slot; returns the SHA-256 of its bytes."""
        if self.discarded:
            raise SlotError(SlotRefusal.UPLOAD_ENDED)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._sha.digest()
        self._slots._install_upload(self, digest)
        return digest

    def discard(self) -> None:
        if self.discarded:
            return
        self.discarded = True
        if not self._file.closed:
            self._file.close()
        self._slots._part_path.unlink(missing_ok=True)


class ImageSlots:
    """The primary/secondary slots of one board and their MCUboot state."""

    def __init__(self, state_dir: str | os.PathLike, image_config: ImageConfig):
        self.config = image_config
        self.root = Path(state_dir) / SLOTS_DIR
        self._blobs = self.root / "blobs"
        self._state_path = self.root / "state.json"
        self._part_path = self.root / "upload.part"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._parsed: dict[str, McubootImage | None] = {}
        # (blob, key PEM) -> whether that image verifies with that key (hashing is not free)
        self._verdicts: dict[tuple[str, bytes], bool] = {}
        self._active: BootImage | None = None
        self._writer: UploadWriter | None = None

    # -- configuration -------------------------------------------------------

    @property
    def dual_slot(self) -> bool:
        return self.config.slots == 2

    @property
    def slot_size(self) -> int:
        return self.config.slot_size_kib * 1024

    @property
    def upload_slot(self) -> int:
        return SECONDARY if self.dual_slot else PRIMARY

    @property
    def verify_key_path(self) -> Path:
        """The profile's key if it names one, else the key installed in the board's flash."""
        return self.config.verify_key or verify_key_file(self.root.parent)

    def install_verify_key(self, pem: bytes) -> Path:
        """Install the firmware public key in this board's flash (profiles that name none)."""
        if self.config.verify_key is not None:
            raise ImageKeyError(f"the profile names its firmware key ({self.config.verify_key}); "
                                "change it there")
        return install_verify_key(self.root.parent, pem)

    def _verify_key_pem(self) -> bytes:
        path = self.verify_key_path
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if self.config.verify_key is not None:
                raise NoBootableImageError(f"the firmware key the profile names ({path}) does not "
                                           "exist") from None
            raise NoBootableImageError(_no_key_message(path)) from None
        except OSError as exc:
            raise NoBootableImageError(f"cannot read the firmware key {path}: {exc.strerror}") from None

    def _verify_key(self):
        return load_public_key(self._verify_key_pem(), f"firmware key {self.verify_key_path}")

    def _would_boot(self, name: str) -> bool:
        """Whether the bootloader would boot the stored image `name` with the current key."""
        try:
            pem = self._verify_key_pem()
        except NoBootableImageError:
            return False
        if (name, pem) not in self._verdicts:
            try:
                verify_image(self._read_blob(name), load_public_key(pem))
                self._verdicts[(name, pem)] = True
            except (ImageError, ImageKeyError, OSError):
                self._verdicts[(name, pem)] = False
        return self._verdicts[(name, pem)]

    # -- state ---------------------------------------------------------------

    def _load(self) -> dict:
        try:
            state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {"format": STATE_FORMAT, "primary": None, "secondary": None}
        except (OSError, ValueError) as exc:
            raise PledgeforgeError(f"image state {self._state_path} is unreadable ({exc}); "
                                   "reinstall the factory image") from None
        # A slot whose blob is gone reads as erased flash.
        for name in ("primary", "secondary"):
            entry = state.get(name)
            if entry is not None and not self._blob_path(entry["blob"]).exists():
                state[name] = None
        return state

    def _save(self, state: dict) -> None:
        atomic_write(self._state_path, json.dumps(state, indent=1).encode())
        self._collect_garbage(state)

    def _collect_garbage(self, state: dict) -> None:
        keep = {entry["blob"] for entry in (state["primary"], state["secondary"]) if entry}
        for path in self._blobs.glob("*.img"):
            if path.stem not in keep:
                path.unlink(missing_ok=True)
                self._parsed.pop(path.stem, None)
        self._verdicts = {k: v for k, v in self._verdicts.items() if k[0] in keep}

    def _blob_path(self, name: str) -> Path:
        return self._blobs / f"{name}.img"

    def _read_blob(self, name: str) -> bytes:
        return self._blob_path(name).read_bytes()

    def _info(self, name: str) -> McubootImage | None:
        """Header and TLVs of a stored image, or None when they cannot be read."""
        if name not in self._parsed:
            try:
                image = parse_image(self._read_blob(name))
                self._parsed[name] = image if image.hash is not None else None
            except (ImageError, OSError):
                self._parsed[name] = None
        return self._parsed[name]

    def _write_blob(self, data: bytes) -> str:
        name = hashlib.sha256(data).hexdigest()
        path = self._blob_path(name)
        if not path.exists():
            atomic_write(path, data)
        return name

    @staticmethod
    def _next_boot(state: dict) -> tuple[int, NextBoot]:
        primary, secondary = state["primary"], state["secondary"]
        if secondary and secondary.get("pending"):
            if secondary.get("permanent"):
                return SECONDARY, NextBoot.NORMAL
            return SECONDARY, NextBoot.TEST
        if primary and not primary.get("confirmed"):
            # On trial; the image it replaced (if any) waits in the secondary slot.
            return SECONDARY, NextBoot.REVERT
        return PRIMARY, NextBoot.NORMAL

    # -- what SMP image management needs -------------------------------------

    @property
    def active_version(self) -> str | None:
        """The version the last boot started, None before the first boot."""
        return self._active.version if self._active else None

    @property
    def active_image(self) -> BootImage | None:
        return self._active

    def slot_infos(self) -> list[SlotInfo]:
        """The slots holding a readable image, flagged as Zephyr's img_mgmt reports them."""
        with self._lock:
            state = self._load()
            next_slot, kind = self._next_boot(state)
            flags = {PRIMARY: {"active": True, "confirmed": kind is not NextBoot.REVERT},
                     SECONDARY: {}}
            if next_slot != PRIMARY:
                flags[SECONDARY] = {
                    NextBoot.NORMAL: {"pending": True, "permanent": True},
                    NextBoot.REVERT: {"confirmed": True},
                    NextBoot.TEST: {"pending": True},
                }[kind]
            rows = []
            for slot, name in ((PRIMARY, "primary"), (SECONDARY, "secondary")):
                entry = state[name]
                image = self._info(entry["blob"]) if entry else None
                if image is None:
                    continue
                f = flags[slot]
                # Zephyr reads `bootable` from the header flag alone, since MCUboot checks
                # the signature only at the next boot; here that verdict is known already.
                bootable = image.bootable and self._would_boot(entry["blob"])
                rows.append(SlotInfo(slot, image.version, image.hash, bootable,
                                     f.get("pending", False), f.get("confirmed", False),
                                     f.get("active", False), f.get("permanent", False)))
            return rows

    def find_by_hash(self, image_hash: bytes) -> int | None:
        for row in self.slot_infos():
            if row.hash == image_hash:
                return row.slot
        return None

    def slot_in_use(self, slot: int) -> bool:
        """True when erasing or overwriting `slot` would lose something needed."""
        with self._lock:
            next_slot, kind = self._next_boot(self._load())
            if slot == next_slot and kind in (NextBoot.REVERT, NextBoot.TEST):
                return True
            if next_slot != PRIMARY and kind is NextBoot.NORMAL:
                return True
            return slot == PRIMARY

    def set_next_boot(self, slot: int, confirm: bool) -> None:
        """Mark `slot` for test (confirm=False) or for good (confirm=True)."""
        with self._lock:
            state = self._load()
            next_slot, kind = self._next_boot(state)
            if not confirm and slot == PRIMARY:
                raise SlotError(SlotRefusal.TEST_ACTIVE_DENIED)
            if kind is NextBoot.TEST:
                if not confirm and slot == next_slot:
                    return
                raise SlotError(SlotRefusal.ALREADY_PENDING)
            if kind is NextBoot.NORMAL:
                if confirm and slot == next_slot:
                    return
                if (slot == PRIMARY and next_slot != PRIMARY) or \
                        (not confirm and slot != PRIMARY and slot == next_slot):
                    raise SlotError(SlotRefusal.ALREADY_PENDING)
            if kind is NextBoot.REVERT:
                if confirm and slot == next_slot:
                    return
                if not confirm:
                    raise SlotError(SlotRefusal.ALREADY_PENDING)
            if slot == PRIMARY:
                state["primary"]["confirmed"] = True
            else:
                if slot != SECONDARY or state["secondary"] is None:
                    raise SlotError(SlotRefusal.INVALID_SLOT)
                state["secondary"]["pending"] = True
                state["secondary"]["permanent"] = confirm
            self._save(state)

    def erase(self, slot: int) -> None:
        with self._lock:
            if slot not in (PRIMARY, SECONDARY) or (slot == SECONDARY and not self.dual_slot):
                raise SlotError(SlotRefusal.INVALID_SLOT)
            state = self._load()
            name = "primary" if slot == PRIMARY else "secondary"
            if state[name] and self._info(state[name]["blob"]) and self.slot_in_use(slot):
                raise SlotError(SlotRefusal.NO_FREE_SLOT)
            if state[name] is not None:
                state[name] = None
                self._save(state)

    @property
    def upload_slot_free(self) -> bool:
        """False while the secondary slot holds a pending image or the one to revert to."""
        return not self.dual_slot or not self.slot_in_use(SECONDARY)

    def holds_image(self, sha256: bytes, size: int) -> bool:
        """True when the upload slot already holds exactly these bytes."""
        with self._lock:
            entry = self._load()["primary" if self.upload_slot == PRIMARY else "secondary"]
            return bool(entry) and entry["blob"] == sha256.hex() and \
                self._blob_path(entry["blob"]).stat().st_size == size

    def start_upload(self, size: int) -> UploadWriter:
        """Begin an upload into the upload slot; the secondary slot is erased first."""
        with self._lock:
            if size > self.slot_size:
                raise SlotError(SlotRefusal.TOO_LARGE,
                                f"{size} bytes do not fit in a {self.slot_size}-byte slot")
            if not self.upload_slot_free:
                raise SlotError(SlotRefusal.NO_FREE_SLOT)
            if self.dual_slot:
                state = self._load()
                if state["secondary"] is not None:
                    # MCUboot's SMP server erases the slot before writing the first chunk.
                    state["secondary"] = None
                    self._save(state)
            self._end_upload()
            self._writer = UploadWriter(self, size)
            return self._writer

    def _end_upload(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None
        self._part_path.unlink(missing_ok=True)

    def _install_upload(self, writer: UploadWriter, digest: bytes) -> None:
        name = digest.hex()
        with self._lock:
            if writer is not self._writer or writer.discarded:
                raise SlotError(SlotRefusal.UPLOAD_ENDED)
            self._writer = None
            if self.dual_slot:
                os.replace(self._part_path, self._blob_path(name))
                _fsync_dir(self._blobs)
                state = self._load()
                state["secondary"] = {"blob": name, "pending": False, "permanent": False}
                self._save(state)
                return
            # Single slot: nothing to fall back to, so only a verified image may replace it.
            data = self._part_path.read_bytes()
            try:
                verify_image(data, self._verify_key())
            except (ImageError, NoBootableImageError, ImageKeyError) as exc:
                self._part_path.unlink(missing_ok=True)
                raise SlotError(SlotRefusal.REJECTED, f"upload refused: {exc}") from None
            os.replace(self._part_path, self._blob_path(name))
            _fsync_dir(self._blobs)
            state = self._load()
            state["primary"] = {"blob": name, "confirmed": True}
            self._save(state)

    # -- manufacturing and boot ----------------------------------------------

    def install_factory_image(self, signed: bytes) -> None:
        """Flash a signed image into the primary slot, confirmed, as the factory does.

        Both slots are replaced. The image must verify against the firmware key.
        """
        with self._lock:
            if len(signed) > self.slot_size:
                raise SlotError(SlotRefusal.TOO_LARGE,
                                f"the factory image ({len(signed)} bytes) does not fit in a "
                                f"{self.slot_size}-byte slot")
            verify_image(signed, self._verify_key())
            name = self._write_blob(signed)
            self._save({"format": STATE_FORMAT,
                        "primary": {"blob": name, "confirmed": True}, "secondary": None})

    @property
    def has_primary_image(self) -> bool:
        with self._lock:
            return self._load()["primary"] is not None

    def boot(self, log: Log) -> BootImage:
        """What MCUboot does at reset: swap or revert as the flags say, verify, boot.

        Returns the image now running; raises NoBootableImageError (after logging
        why) when the primary slot has nothing that verifies.
        """
        with self._lock:
            self._end_upload()
            state = self._load()
            if state["primary"] is None and state["secondary"] is None:
                # Never flashed: nothing to check or report.
                raise NoBootableImageError("no image in the primary slot")
            try:
                key = self._verify_key()
            except (NoBootableImageError, ImageKeyError) as exc:
                # A bootloader without a key trusts no image: it boots nothing it
                # finds in the slots (and erases what is pending, below).
                log(f"E: {exc}")
                key = ImageError(Refusal.NO_KEY, "the board has no usable firmware verification key")
            next_slot, kind = self._next_boot(state)
            swap = None
            if next_slot == SECONDARY:
                swap = self._swap(state, kind, key, log)
            entry = state["primary"]
            if entry is None:
                log("E: No image in the primary slot; unable to find bootable image")
                raise NoBootableImageError("no image in the primary slot")
            try:
                verified = _verify(self._read_blob(entry["blob"]), key)
            except ImageError as exc:
                log(f"E: Image in the primary slot is not valid! ({exc})")
                log("E: Unable to find bootable image")
                raise NoBootableImageError(f"the image in the primary slot is not valid: {exc}") \
                    from None
            booted = BootImage(str(verified.version), verified.hash,
                               bool(entry.get("confirmed")), swap, verified.version)
            log(f"I: Booting image version {booted.version}"
                + ("" if booted.confirmed else " (test, not confirmed)"))
            self._active = booted
            return booted

    def _swap(self, state: dict, kind: NextBoot, key, log: Log) -> str | None:
        primary, secondary = state["primary"], state["secondary"]
        if kind is NextBoot.REVERT:
            log("I: Swap type: revert (the running image was not confirmed)")
            state["primary"] = {"blob": secondary["blob"], "confirmed": True} if secondary else None
            state["secondary"] = {"blob": primary["blob"], "pending": False, "permanent": False}
            self._save(state)
            return "revert"
        permanent = kind is NextBoot.NORMAL
        try:
            _verify(self._read_blob(secondary["blob"]), key)
        except ImageError as exc:
            log(f"E: Image in the secondary slot is not valid! ({exc})")
            log("I: Erasing the secondary slot; keeping the current image")
            state["secondary"] = None
            self._save(state)
            return None
        log(f"I: Swap type: {'perm' if permanent else 'test'}")
        state["primary"] = {"blob": secondary["blob"], "confirmed": permanent}
        state["secondary"] = ({"blob": primary["blob"], "pending": False, "permanent": False}
                              if primary else None)
        self._save(state)
        return "permanent" if permanent else "test"


def _verify(data: bytes, key):
    """verify_image, where `key` may be the ImageError of a board that has no usable key."""
    if isinstance(key, ImageError):
        raise key
    return verify_image(data, key)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
