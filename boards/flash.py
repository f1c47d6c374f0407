"""The board's persistent flash: files in the state directory.

The data partition (flash.bin) holds what a real board keeps there: the
configuration, the factory identity (serial number, and the pledge's identity:
IDevID certificate, trust anchors, where the IDevID key lives, stored in the
form firmware/identity.py defines), the voucher, the enrollment (the LDevID,
the key slot of its key, the EST CA certificates and URL: one record, written
in one write, because the firmware makes a new LDevID key current only once
the record naming it is stored) and the boot counters. Boards with a file system (`[flash] files_kib` in the profile) have
a second partition (flash-files.bin) for the shell's files (filesystem.py).

Every change to either is a whole new image written with `atomic_write` (temp file,
fsync, rename, fsync of the directory), so a power cut at any moment leaves
either the previous image or the new one, never a mix. The image carries a
SHA-256 of its body as well, so a file damaged by something else (a disk
error, a hand edit) is reported instead of being half-believed.

After a power-off the handle is closed: a write still running on behalf of a
board that lost power is refused rather than landing after the fact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import EnvironmentFailure
from pledgeforge.firmware.identity import PledgeIdentity

from .filesystem import FileData, Partition

FLASH_FILE = "flash.bin"
FILES_FILE = "flash-files.bin"
_MAGIC = b"PLEDGEFORGE-FLASH 1"
_FILES_MAGIC = b"PLEDGEFORGE-FILES 1"
_CONFIG_KEY_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_CONFIG_VALUE_MAX = 1024


class FlashError(EnvironmentFailure):
    """The flash cannot be read or the change cannot be stored."""


class FlashCorruptError(FlashError):
    """The flash file exists but is not an image this board wrote."""


class FlashFullError(FlashError):
    """The change does not fit in the flash size the profile gives."""


class FlashClosedError(FlashError):
    """The board lost power; nothing more is written on its behalf."""


@dataclass(frozen=True)
class Counters:
    boots: int = 0
    power_ons: int = 0


@dataclass(frozen=True)
class Enrollment:
    """What the firmware keeps of its enrollment, as text: the LDevID (PEM), the key slot its
    key is in ("a" or "b", firmware/ldevid_keys.py), the EST server's CA certificates (PEM, what
    /cacerts answered) and the EST URL it enrolled with (both needed to renew)."""

    ldevid_pem: str
    slot: str
    ca_certs_pem: str = ""
    est_url: str = ""

    SLOTS = ("a", "b")

    def __post_init__(self):
        if self.slot not in self.SLOTS:
            raise ValueError(f"LDevID key slot {self.slot!r} is neither of {', '.join(self.SLOTS)}")

    def to_json(self) -> dict:
        return {"ldevid_pem": self.ldevid_pem, "slot": self.slot, "ca_certs_pem": self.ca_certs_pem,
                "est_url": self.est_url}

    @classmethod
    def from_json(cls, doc: dict) -> "Enrollment":
        return cls(ldevid_pem=str(doc["ldevid_pem"]), slot=str(doc["slot"]),
                   ca_certs_pem=str(doc.get("ca_certs_pem", "")), est_url=str(doc.get("est_url", "")))


@dataclass(frozen=True)
class FlashState:
    serial_number: str = ""
    config: dict[str, str] = field(default_factory=dict)
    identity: PledgeIdentity | None = None
    voucher: bytes | None = None
    enrollment: Enrollment | None = None
    counters: Counters = Counters()

    @property
    def ldevid_pem(self) -> str | None:
        return self.enrollment.ldevid_pem if self.enrollment is not None else None

    def to_json(self) -> bytes:
        doc = {
            "serial_number": self.serial_number,
            "config": dict(sorted(self.config.items())),
            "identity": None if self.identity is None else self.identity.to_json(),
            "voucher": None if self.voucher is None else base64.b64encode(self.voucher).decode(),
            "enrollment": None if self.enrollment is None else self.enrollment.to_json(),
            "counters": {"boots": self.counters.boots, "power_ons": self.counters.power_ons},
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "FlashState":
        doc = json.loads(body)
        ident = doc.get("identity")
        voucher = doc.get("voucher")
        enrollment = doc.get("enrollment")
        if enrollment is None and doc.get("ldevid_pem"):
            # An image of firmware that kept the LDevID alone: its key was in slot a, and it
            # cannot be renewed (no EST server on record) until the board bootstraps again.
            enrollment = {"ldevid_pem": doc["ldevid_pem"], "slot": "a"}
        counters = doc.get("counters") or {}
        return cls(
            serial_number=str(doc.get("serial_number", "")),
            config={str(k): str(v) for k, v in (doc.get("config") or {}).items()},
            identity=None if ident is None else PledgeIdentity.from_json(ident),
            voucher=None if voucher is None else base64.b64decode(voucher),
            enrollment=None if enrollment is None else Enrollment.from_json(enrollment),
            counters=Counters(boots=int(counters.get("boots", 0)),
                              power_ons=int(counters.get("power_ons", 0))),
        )


def _seal(magic: bytes, body: bytes) -> bytes:
    return magic + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def _unseal(magic: bytes, data: bytes, path: Path) -> bytes:
    header, sep, body = data.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 3 or b" ".join(parts[:2]) != magic:
        raise FlashCorruptError(f"{path} is not a pledgeforge flash image "
                                "(move it away to start from an erased flash)")
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        raise FlashCorruptError(f"{path} fails its checksum (damaged outside the board); "
                                "move it away to start from an erased flash")
    return body


def encode_image(state: FlashState) -> bytes:
    return _seal(_MAGIC, state.to_json())


def decode_image(data: bytes, path: Path) -> FlashState:
    body = _unseal(_MAGIC, data, path)
    try:
        return FlashState.from_json(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise FlashCorruptError(f"{path} has a malformed body ({exc})") from None


def _read_area(path: Path) -> bytes | None:
    """The bytes of one flash area's file; None if erased. Temp files of a
    write cut short by a power loss are leftovers, never the truth."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FlashError(f"cannot read flash {path}: {exc.strerror}") from None


class FlashPartition(Partition):
    """The flash's file-system partition: the shell's files outside /tmp, in
    their own file beside the data image, written whole and atomically on
    every change, and bounded by the profile's `[flash] files_kib`."""

    def __init__(self, path: Path, capacity: int):
        self.path = path
        self.closed = False
        data = _read_area(path)
        super().__init__("flash", capacity, {} if data is None else self._decode(data))

    def _decode(self, data: bytes) -> dict[str, FileData]:
        body = _unseal(_FILES_MAGIC, data, self.path)
        try:
            doc = json.loads(body)
            return {str(path): FileData(base64.b64decode(entry["data"], validate=True), int(entry["mode"]))
                    for path, entry in doc["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FlashCorruptError(f"{self.path} has a malformed body ({exc})") from None

    def _persist(self, files: dict[str, FileData]) -> None:
        if self.closed:
            raise FlashClosedError("the board is powered off; the flash cannot be written")
        doc = {"files": {path: {"mode": entry.mode, "data": base64.b64encode(entry.data).decode()}
                         for path, entry in sorted(files.items())}}
        atomic_write(self.path, _seal(_FILES_MAGIC, json.dumps(doc, indent=0).encode()), 0o600)

    def close(self) -> None:
        with self._lock:
            self.closed = True


def check_config_entry(key: str, value: str | None = None) -> None:
    if not _CONFIG_KEY_RE.match(key):
        raise FlashError(f"bad config key {key!r}: use lower-case letters, digits, '.', '_' "
                         "and '-', starting with a letter, at most 64 characters")
    if value is not None:
        if len(value) > _CONFIG_VALUE_MAX:
            raise FlashError(f"config value for {key} is longer than {_CONFIG_VALUE_MAX} characters")
        if any(not ch.isprintable() for ch in value):
            raise FlashError(f"config value for {key} contains control characters")


class Flash:
    """The flash file of one board. Thread-safe; each change is one atomic write."""

    def __init__(self, path: str | Path, capacity: int, files_capacity: int = 0):
        self.path = Path(path)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._closed = False
        data = _read_area(self.path)
        self._state = FlashState() if data is None else decode_image(data, self.path)
        #: the file-system partition (None on boards without one)
        self.files = FlashPartition(self.path.parent / FILES_FILE, files_capacity) if files_capacity else None

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, capacity: int, files_capacity: int = 0) -> "Flash":
        return cls(Path(state_dir) / FLASH_FILE, capacity, files_capacity)

    @property
    def state(self) -> FlashState:
        return self._state

    def close(self) -> None:
        """Refuse every later write (power is gone). Waits for a write in progress."""
        with self._lock:
            self._closed = True
        if self.files is not None:
            self.files.close()

    def _commit(self, change) -> FlashState:
        with self._lock:
            if self._closed:
                raise FlashClosedError("the board is powered off; the flash cannot be written")
            new = change(self._state)
            image = encode_image(new)
            if len(image) > self.capacity:
                raise FlashFullError(f"flash full: {len(image)} bytes needed, the profile gives "
                                     f"{self.capacity} ([flash] size_kib)")
            atomic_write(self.path, image, 0o600)
            self._state = new
            return new

    # -- configuration --------------------------------------------------------

    def config_get(self, key: str) -> str | None:
        return self._state.config.get(key)

    def config_set(self, key: str, value: str) -> None:
        check_config_entry(key, value)
        self._commit(lambda s: replace(s, config={**s.config, key: value}))

    def config_unset(self, key: str) -> bool:
        check_config_entry(key)
        if key not in self._state.config:
            return False
        self._commit(lambda s: replace(s, config={k: v for k, v in s.config.items() if k != key}))
        return True

    # -- factory data and enrollment ------------------------------------------

    def set_serial_number(self, serial: str) -> None:
        self._commit(lambda s: replace(s, serial_number=serial))

    def set_identity(self, identity: PledgeIdentity | None) -> None:
        self._commit(lambda s: replace(s, identity=identity))

    def set_voucher(self, voucher: bytes | None) -> None:
        self._commit(lambda s: replace(s, voucher=voucher))

    def record_enrollment(self, enrollment: Enrollment, voucher: bytes | None = None) -> None:
        """Store an enrollment (and the voucher it came with, when given) in one write."""
        self._commit(lambda s: replace(s, enrollment=enrollment,
                                       voucher=voucher if voucher is not None else s.voucher))

    def record_power_on(self) -> Counters:
        return self._commit(lambda s: replace(
            s, counters=replace(s.counters, power_ons=s.counters.power_ons + 1))).counters

    def record_boot(self) -> Counters:
        return self._commit(lambda s: replace(
            s, counters=replace(s.counters, boots=s.counters.boots + 1))).counters

    def factory_reset(self) -> None:
        """Forget the owner: configuration, voucher, enrollment and the files. The
        factory identity (serial number, IDevID, trust anchors) and counters stay."""
        if self.files is not None:
            self.files.erase()
        self._commit(lambda s: FlashState(serial_number=s.serial_number, identity=s.identity,
                                          counters=s.counters))
