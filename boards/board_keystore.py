"""The key store soldered on a board: its own swtpm, or its own SoftHSM token.

Drivers are registered by the profile `[keystore] type` they bind to
(`KEYSTORE_DRIVERS`: "tpm", "pkcs11"); each names its keys by URI through the
key-store registry (hsm/keystore.py) and maps the firmware's key slots
("idevid", "ldevid") to its own names for them (a persistent handle, a label).
The factory fills every slot but the firmware's own (FIRMWARE_SLOTS: "ldevid");
every other key in the board's part of the store is the firmware's
(`firmware_keys()`: the LDevID slots, and whatever else it made), which a
factory reset destroys.

Each board keeps its keys in its state directory (`DIR/tpm/` or
`DIR/softhsm/`), so boards never share a key store and a board's keys survive
its restarts. The TPM runs only while the board is powered: swtpm starts at
power-on and stops at power-off, as a TPM chip loses power with its board.
The first power-on is the factory: swtpm gets its endorsement keys and EK
certificate, the SoftHSM token its PINs (kept in 0600 files beside it). The
TPM's state is encrypted with a key kept in the board's state directory
(`DIR/tpm-state.key`, 0600), outside the TPM's own directory; only the board's
owner can reach the TPM (swtpm's Unix sockets, see hsm/swtpm.py).
"""

from __future__ import annotations

import os
import secrets
import select
import signal
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import EnvironmentFailure
from pledgeforge.hsm import keystore as keystores
from pledgeforge.hsm.keyuri import SOFTHSM2_MODULE
from pledgeforge.hsm.softhsm import SoftHsm
from pledgeforge.hsm.swtpm import Swtpm

from .registry import Registry

_SWTPM_PID = "board-swtpm.pid"
_TPM_STATE_KEY = "tpm-state.key"


class KeyStoreNotRunningError(EnvironmentFailure):
    """The board is off, so its TPM cannot be reached."""


class BoardKeyStore(ABC):
    """The key store soldered on the board, in its state directory. A driver declares the
    profile `[keystore] type` it binds to and registers itself in KEYSTORE_DRIVERS."""

    binds_to: ClassVar[str]
    #: the URI scheme of its keys (hsm/keystore.py builds them)
    scheme: ClassVar[str]
    #: where the firmware keeps its keys: slot -> the store's name for it (label or handle)
    SLOTS: ClassVar[dict[str, str | int]]
    #: the slots whose keys the firmware makes for an owner; every other slot is the factory's
    #: (the IDevID's, and any a station adds), and its key outlives a factory reset
    FIRMWARE_SLOTS: ClassVar[frozenset[str]] = frozenset({"ldevid"})

    def __init__(self, config, state_dir: Path):
        #: the profile's [keystore] table (boards/profile.py KeyStoreConfig)
        self.config = config
        self.algorithm = config.algorithm
        self.state_dir = state_dir

    @property
    def type(self) -> str:
        return self.binds_to

    @abstractmethod
    def power_on(self) -> None:
        """The board got power (the first time: the factory's set-up of the store)."""

    def power_off(self, *, orderly: bool = True) -> None:
        """The board lost power."""

    @abstractmethod
    def key_uri(self, name: str | int | None = None) -> str:
        """The URI of a key in this store, by the store's own name for it."""

    def slot_uri(self, slot: str) -> str:
        """The URI of a firmware key slot: "idevid" or "ldevid"."""
        return self.key_uri(self.SLOTS[slot])

    def current_uri(self, stored: str) -> str:
        """A key URI stored earlier, as it reaches the key now."""
        return stored

    def firmware_keys(self) -> list[str]:
        """URIs of the keys the board's firmware made: every key in the board's part of the
        store but those of the factory's slots."""
        factory = {name for slot, name in self.SLOTS.items() if slot not in self.FIRMWARE_SLOTS}
        return [self.key_uri(name) for name in self._key_names() if name not in factory]

    def _key_names(self) -> list[str | int]:
        """The store's names (labels, handles) of the keys in the board's part of it (a
        driver whose store cannot list its keys names none)."""
        return []

    def env(self) -> dict[str, str]:
        """Environment for a process that uses this key store."""
        return dict(os.environ)

    def describe(self) -> dict:
        return {"type": self.type, "algorithm": self.algorithm.value}


KEYSTORE_DRIVERS: Registry[type[BoardKeyStore]] = Registry("key-store driver")


def keystore_for(config, state_dir: Path) -> BoardKeyStore:
    """The driver a profile's [keystore] table binds to, for the board in `state_dir`."""
    return KEYSTORE_DRIVERS.get(config.type)(config, state_dir)


@KEYSTORE_DRIVERS.register
class TpmKeyStore(BoardKeyStore):
    """A TPM 2.0: the board's own swtpm, running while the board has power."""

    binds_to = "tpm"
    scheme = "tpm"
    SLOTS = {"idevid": 0x81020000, "ldevid": 0x81020001}
    #: the persistent handles of the board's factory and firmware; the TPM maker's keys (EK,
    #: SRK) are below them
    HANDLES = range(0x81020000, 0x81030000)

    def __init__(self, config, state_dir: Path):
        super().__init__(config, state_dir)
        self._dir = state_dir / "tpm"
        self._tpm_key = state_dir / _TPM_STATE_KEY
        self.swtpm: Swtpm | None = None

    def power_on(self) -> None:
        if self.swtpm is None:
            self.swtpm = Swtpm(self._dir, key_file=self._tpm_key)
        if not (self._dir / "tpm2-00.permall").exists():
            # First power-on: the TPM maker's endorsement keys and certificates.
            self.swtpm.manufacture(create_ek_cert=True)
        _stop_orphan_swtpm(self._dir)
        self.swtpm.start()
        atomic_write(self._dir / _SWTPM_PID, f"{self.swtpm.pid}\n".encode())

    def power_off(self, *, orderly: bool = True) -> None:
        if self.swtpm is not None:
            self.swtpm.stop(orderly=orderly)
            (self._dir / _SWTPM_PID).unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.swtpm is not None and self.swtpm.running

    def key_uri(self, name: str | int | None = None) -> str:
        """A persistent handle (e.g. 0x81020000) of the running TPM."""
        if not self.running:
            raise KeyStoreNotRunningError("the board's TPM is not running (power the board on)")
        handle = int(name, 0) if isinstance(name, str) else name
        return str(keystores.make_key_uri(self.scheme, handle=handle, tcti=self.swtpm.tcti))

    def current_uri(self, stored: str) -> str:
        """The TCTI in a stored URI names the swtpm's socket, which moves with the state
        directory: the same handle, reached through the TPM running now."""
        return self.key_uri(keystores.parse_key_uri(stored).handle)

    def _key_names(self) -> list[int]:
        return [info.handle for info in keystores.list_keys(self.key_uri(None))
                if info.handle in self.HANDLES]

    def env(self) -> dict[str, str]:
        return self.swtpm.env() if self.running else dict(os.environ)

    def describe(self) -> dict:
        return {**super().describe(), "state_dir": str(self._dir),
                "tcti": self.swtpm.tcti if self.running else None}


@KEYSTORE_DRIVERS.register
class SoftHsmKeyStore(BoardKeyStore):
    """A PKCS#11 secure element: a SoftHSM token of the board's own."""

    binds_to = "pkcs11"
    scheme = "pkcs11"
    SLOTS = {"idevid": "idevid", "ldevid": "ldevid"}

    def __init__(self, config, state_dir: Path):
        super().__init__(config, state_dir)
        self._dir = state_dir / "softhsm"
        self.softhsm: SoftHsm | None = None

    @property
    def pin_file(self) -> Path:
        return self._dir / "user.pin"

    def power_on(self) -> None:
        self.softhsm = SoftHsm(self._dir).ensure()
        if self.config.token in self.softhsm.token_labels():
            return
        # First power-on: the secure element gets its PINs, kept beside it (0600).
        user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        atomic_write(self._dir / "so.pin", so_pin.encode() + b"\n", 0o600)
        atomic_write(self.pin_file, user_pin.encode() + b"\n", 0o600)
        self.softhsm.ensure_token(self.config.token, user_pin, so_pin)

    def key_uri(self, name: str | int | None = None) -> str:
        """An object label in the board's token (None: the token itself)."""
        return str(keystores.make_key_uri(
            self.scheme, token=self.config.token, object=name, module_path=SOFTHSM2_MODULE,
            pin_source=f"file:{self.pin_file}", module_env=tuple(self._softhsm_env.items())))

    def _key_names(self) -> list[str]:
        # The token is the board's own. The firmware labels every key it makes; an unlabelled
        # key is none of its making.
        return [info.label for info in keystores.list_keys(self.key_uri(None)) if info.label]

    @property
    def _softhsm_env(self) -> dict[str, str]:
        """What the PKCS#11 module needs to find this board's token (it travels in the key URI)."""
        return {"SOFTHSM2_CONF": str(self._dir / "softhsm2.conf")}

    def env(self) -> dict[str, str]:
        return {**os.environ, **self._softhsm_env}

    def describe(self) -> dict:
        return {**super().describe(), "softhsm2_conf": str(self._dir / "softhsm2.conf"),
                "token": self.config.token, "pin_file": str(self.pin_file), "uri": self.key_uri()}


def _stop_orphan_swtpm(tpm_dir: Path) -> None:
    """Stop a swtpm left running by a board process that was killed (a power
    cut of the process): it still holds the TPM state's lock. Only the process
    recorded in our pid file, and only if it is swtpm on this very directory."""
    pid_file = tpm_dir / _SWTPM_PID
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if not cmdline or not cmdline[0].endswith(b"swtpm") or f"dir={tpm_dir}".encode() not in cmdline:
        pid_file.unlink(missing_ok=True)
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        # A pidfd becomes readable when the process exits: a bounded wait, no polling.
        if not select.select([fd], [], [], 5.0)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([fd], [], [], 5.0)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
    pid_file.unlink(missing_ok=True)
