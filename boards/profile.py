"""Board profiles: what a piece of hardware is, as a TOML file.

A profile names the key store and key algorithm, the console settings, the
boot banner and timings, the flash and image layout, and the default cloud
registrar. The shipped profiles live in `boards/profiles/`; users add their
own by passing a path. Every field is checked when the file is loaded, and a
mistake is reported as one error naming the file, the table and the field.
`write_profile` writes one from the same dataclasses (a derived profile, such
as a shipped one `with_timings` of zero for tests that need no boot delays).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import FileAccessError, PledgeforgeError, UsageError, closest_name
from pledgeforge.hsm.identity_names import IdentityNameError, check_dns_label
from pledgeforge.hsm.signer import KeyAlgorithm

from .board_keystore import KEYSTORE_DRIVERS

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

LINE_ENDINGS = {"crlf": "\r\n", "lf": "\n"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ProfileError(UsageError):
    """A board profile cannot be found or has a bad field."""


@dataclass(frozen=True)
class BoardInfo:
    name: str
    description: str
    model: str
    hostname: str
    serial_prefix: str


@dataclass(frozen=True)
class KeyStoreConfig:
    type: str                   # the key-store driver it binds to: "tpm" or "pkcs11"
    algorithm: KeyAlgorithm
    token: str                  # PKCS#11 token label (ignored for tpm)


@dataclass(frozen=True)
class ConsoleConfig:
    baud: int
    prompt: str
    line_ending: str            # the bytes the board ends its output lines with
    login: bool
    username: str
    password: str
    log_kib: int                # output kept for clients that attach later
    transcript_kib: int         # size of one console transcript file before it is rotated
    transcript_files: int       # transcript files kept (the newest included); 0: no transcript


@dataclass(frozen=True)
class BootConfig:
    bootloader_banner: str
    bootloader_prompt: str
    autoboot_seconds: float
    firmware_banner: str
    firmware_seconds: float
    motd: str


@dataclass(frozen=True)
class FlashConfig:
    size_kib: int               # capacity of the persistent flash store
    files_kib: int              # its file-system partition for the shell's files; 0: none


@dataclass(frozen=True)
class ImageConfig:
    """The firmware image part of a profile, handed to `ImageSlots` as is."""

    slots: int                  # 1 (single slot) or 2 (primary + secondary, swap)
    slot_size_kib: int
    version: str                # the version of the factory image
    verify_key: Path | None     # PEM public key images must be signed with


@dataclass(frozen=True)
class RegistrarConfig:
    cloud_url: str


@dataclass(frozen=True)
class Profile:
    path: Path
    board: BoardInfo
    keystore: KeyStoreConfig
    console: ConsoleConfig
    boot: BootConfig
    flash: FlashConfig
    image: ImageConfig
    registrar: RegistrarConfig

    @property
    def name(self) -> str:
        return self.board.name

    def with_timings(self, *, autoboot_seconds: float | None = None,
                     firmware_seconds: float | None = None) -> "Profile":
        """This profile with other boot delays (0: boot at once, as tests and bench scripts
        that do not watch the countdown want)."""
        boot = self.boot
        if autoboot_seconds is not None:
            boot = replace(boot, autoboot_seconds=float(autoboot_seconds))
        if firmware_seconds is not None:
            boot = replace(boot, firmware_seconds=float(firmware_seconds))
        return replace(self, boot=boot)


class _Table:
    """Reads one TOML table, remembering which fields were used so that
    unknown (misspelt) fields can be reported instead of silently ignored."""

    def __init__(self, source: Path, name: str, data: Any):
        self.source = source
        self.name = name
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self._fail(None, f"must be a table, got {_kind(data)}")
        self.data = data
        self.used: set[str] = set()

    def _fail(self, field: str | None, problem: str):
        where = f"[{self.name}]" + (f" {field}" if field else "")
        raise ProfileError(f"profile {self.source}: {where} {problem}")

    def _get(self, field: str, default: Any) -> Any:
        self.used.add(field)
        if field not in self.data:
            if default is _REQUIRED:
                typo = closest_name(field, [k for k in self.data if k not in self.used])
                if typo:
                    self._fail(typo, f"is not a known field; did you mean {field}?")
                self._fail(field, "is missing")
            return default
        return self.data[field]

    def text(self, field: str, default: Any = None, *, pattern: re.Pattern | None = None,
            hint: str = "", nonempty: bool = True) -> str:
        value = self._get(field, _REQUIRED if default is None else default)
        if not isinstance(value, str):
            self._fail(field, f"must be a string, got {_kind(value)}")
        if nonempty and not value:
            self._fail(field, "must not be empty")
        if pattern is not None and not pattern.match(value):
            self._fail(field, f"{value!r} is not valid{': ' + hint if hint else ''}")
        return value

    def integer(self, field: str, default: Any = None, *, low: int, high: int) -> int:
        value = self._get(field, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail(field, f"must be an integer, got {_kind(value)}")
        if not low <= value <= high:
            self._fail(field, f"must be between {low} and {high}, got {value}")
        return value

    def seconds(self, field: str, default: Any = None, *, low: float, high: float) -> float:
        value = self._get(field, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._fail(field, f"must be a number of seconds, got {_kind(value)}")
        if not low <= value <= high:
            self._fail(field, f"must be between {low} and {high} seconds, got {value}")
        return float(value)

    def flag(self, field: str, default: Any = None) -> bool:
        value = self._get(field, _REQUIRED if default is None else default)
        if not isinstance(value, bool):
            self._fail(field, f"must be true or false, got {_kind(value)}")
        return value

    def choice(self, field: str, choices, default: Any = None) -> str:
        value = self.text(field, default)
        if value not in choices:
            self._fail(field, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            close = closest_name(unknown[0], self.used)
            hint = f"did you mean {close}?" if close else f"known fields: {', '.join(sorted(self.used))}"
            self._fail(unknown[0], f"is not a known field ({hint})")


_REQUIRED = object()


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


# Placeholders the banners may use, filled in when the board boots.
TEMPLATE_FIELDS = ("model", "hostname", "serial", "version", "profile")


def _check_template(table: _Table, field: str, template: str) -> None:
    try:
        template.format_map({name: "x" for name in TEMPLATE_FIELDS})
    except (KeyError, ValueError, IndexError) as exc:
        table._fail(field, f"has a bad placeholder ({exc}); use {{"
                    + "}, {".join(TEMPLATE_FIELDS) + "}, and {{ }} for literal braces")


def _hostname(table: _Table) -> str:
    value = table.text("hostname")
    try:
        return check_dns_label(value, "value")  # the board's name on the network: one DNS label
    except IdentityNameError as exc:
        table._fail("hostname", f"is not valid: {exc}")


def _parse(source: Path, data: dict) -> Profile:
    known_tables = ("board", "keystore", "console", "boot", "flash", "image", "registrar")
    for key in data:
        if key not in known_tables:
            raise ProfileError(f"profile {source}: unknown table [{key}] "
                               f"(known tables: {', '.join(known_tables)})")
    tables = {name: _Table(source, name, data.get(name)) for name in known_tables}

    t = tables["board"]
    board = BoardInfo(
        name=t.text("name", pattern=_NAME_RE, hint="use lower-case letters, digits, '-' and '_'"),
        description=t.text("description", "", nonempty=False),
        model=t.text("model"),
        hostname=_hostname(t),
        serial_prefix=t.text("serial_prefix", pattern=re.compile(r"^[A-Z0-9]{1,12}$"),
                            hint="1 to 12 upper-case letters or digits"),
    )

    t = tables["keystore"]
    ks_type = t.choice("type", KEYSTORE_DRIVERS.names())   # a registered key-store driver
    algorithm_text = t.text("algorithm")
    try:
        algorithm = KeyAlgorithm.parse(algorithm_text)
    except PledgeforgeError as exc:
        t._fail("algorithm", str(exc))
    keystore = KeyStoreConfig(type=ks_type, algorithm=algorithm,
                              token=t.text("token", "board", pattern=re.compile(r"^[ -~]{1,32}$"),
                                          hint="1 to 32 printable ASCII characters"))

    t = tables["console"]
    login = t.flag("login", False)
    console = ConsoleConfig(
        baud=t.integer("baud", 115200, low=300, high=4_000_000),
        prompt=t.text("prompt"),
        line_ending=LINE_ENDINGS[t.choice("line_ending", tuple(LINE_ENDINGS), "crlf")],
        login=login,
        username=t.text("username", "root" if not login else None, pattern=re.compile(r"^\S+$"),
                       hint="no spaces"),
        password=t.text("password", "" if not login else None, nonempty=login),
        log_kib=t.integer("log_kib", 64, low=1, high=16 * 1024),
        # 4 files of 1 MiB: tens of thousands of console lines. A record can take
        # 16 KiB once escaped, so a file holds at least one.
        transcript_kib=t.integer("transcript_kib", 1024, low=16, high=1024 * 1024),
        transcript_files=t.integer("transcript_files", 4, low=0, high=100),
    )
    if "\n" in console.prompt or "\r" in console.prompt:
        tables["console"]._fail("prompt", "must be a single line")

    t = tables["boot"]
    boot = BootConfig(
        bootloader_banner=t.text("bootloader_banner"),
        bootloader_prompt=t.text("bootloader_prompt", "=> "),
        # The countdown is interruptible; 0 boots at once (as U-Boot's bootdelay=0 does).
        autoboot_seconds=t.seconds("autoboot_seconds", 2.0, low=0.0, high=60.0),
        firmware_banner=t.text("firmware_banner"),
        firmware_seconds=t.seconds("firmware_seconds", 0.5, low=0.0, high=60.0),
        motd=t.text("motd", "", nonempty=False),
    )

    for field in ("bootloader_banner", "firmware_banner", "motd"):
        _check_template(tables["boot"], field, getattr(boot, field))

    t = tables["flash"]
    flash = FlashConfig(size_kib=t.integer("size_kib", 256, low=4, high=64 * 1024),
                        files_kib=t.integer("files_kib", 0, low=0, high=64 * 1024))

    t = tables["image"]
    verify_key_text = t.text("verify_key", "", nonempty=False)
    verify_key = None
    if verify_key_text:
        verify_key = Path(verify_key_text).expanduser()
        if not verify_key.is_absolute():
            verify_key = (source.parent / verify_key).resolve()
    image = ImageConfig(
        slots=t.integer("slots", 2, low=1, high=2),
        slot_size_kib=t.integer("slot_size_kib", 512, low=4, high=256 * 1024),
        version=t.text("version", "1.0.0", pattern=re.compile(r"^\d+\.\d+\.\d+(\+\d+)?$"),
                      hint="MCUboot versions look like 1.2.3 or 1.2.3+4"),
        verify_key=verify_key,
    )

    t = tables["registrar"]
    registrar = RegistrarConfig(cloud_url=t.text("cloud_url", pattern=re.compile(r"^https://\S+$"),
                                                hint="an https:// URL"))

    for table in tables.values():
        table.check_unknown()
    return Profile(source, board, keystore, console, boot, flash, image, registrar)


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (`gateway-tpm`) or a user's profile by path."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml")
    path = Path(text).expanduser() if looks_like_path else PROFILE_DIR / f"{text}.toml"
    if not path.is_file():
        if looks_like_path:
            raise FileAccessError(f"profile file {path} does not exist")
        raise ProfileError(f"no profile named {text!r}; shipped profiles: "
                           f"{', '.join(profile_names())} (or give the path of a .toml file)")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise FileAccessError(f"cannot read profile {path}: {exc.strerror}") from None
    return _parse(path.resolve(), data)


def profile_document(profile: Profile) -> dict:
    """The TOML document that `load_profile` reads back as `profile` (paths absolute)."""
    doc = {name: asdict(getattr(profile, name))
           for name in ("board", "keystore", "console", "boot", "flash", "image", "registrar")}
    doc["keystore"]["algorithm"] = profile.keystore.algorithm.value
    doc["console"]["line_ending"] = next(k for k, v in LINE_ENDINGS.items() if v == profile.console.line_ending)
    if profile.image.verify_key is None:
        doc["image"]["verify_key"] = ""
    else:
        doc["image"]["verify_key"] = str(profile.image.verify_key)
    return doc


def write_profile(profile: Profile, path: str | Path) -> Profile:
    """Write `profile` as a TOML file (atomically); returns it as read from there."""
    path = Path(path).expanduser().resolve()
    atomic_write(path, tomli_w.dumps(profile_document(profile)).encode())
    return replace(profile, path=path)


def profile_names() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
