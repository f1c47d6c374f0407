"""The key store soldered on a board: its own swtpm, or its own SoftHSM token.

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
from pathlib import Path

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import EnvironmentFailure
from pledgeforge.hsm.keyuri import SOFTHSM2_MODULE, Pkcs11Uri, TpmUri
from pledgeforge.hsm.softhsm import SoftHsm
from pledgeforge.hsm.swtpm import Swtpm

from .profile import Profile

_SWTPM_PID = "board-swtpm.pid"
_TPM_STATE_KEY = "tpm-state.key"


class KeyStoreNotRunningError(EnvironmentFailure):
    """The board is off, so its TPM cannot be reached."""


class BoardKeyStore:
    """The key store soldered on the board: a swtpm or a SoftHSM token in the state dir."""

    def __init__(self, profile: Profile, state_dir: Path):
        self.config = profile.keystore
        self.type = self.config.type
        self.algorithm = self.config.algorithm
        self._dir = state_dir / ("tpm" if self.type == "tpm" else "softhsm")
        self._tpm_key = state_dir / _TPM_STATE_KEY
        self.swtpm: Swtpm | None = None
        self.softhsm: SoftHsm | None = None

    @property
    def pin_file(self) -> Path:
        return self._dir / "user.pin"

    def power_on(self) -> None:
        if self.type == "tpm":
            self._start_tpm()
        else:
            self._ensure_token()

    def power_off(self, *, orderly: bool = True) -> None:
        if self.swtpm is not None:
            self.swtpm.stop(orderly=orderly)
            (self._dir / _SWTPM_PID).unlink(missing_ok=True)

    def _ensure_token(self) -> None:
        self.softhsm = SoftHsm(self._dir).ensure()
        if self.config.token in self.softhsm.token_labels():
            return
        # First power-on: the secure element gets its PINs, kept beside it (0600).
        user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        atomic_write(self._dir / "so.pin", so_pin.encode() + b"\n", 0o600)
        atomic_write(self.pin_file, user_pin.encode() + b"\n", 0o600)
        self.softhsm.ensure_token(self.config.token, user_pin, so_pin)

    def _start_tpm(self) -> None:
        if self.swtpm is None:
            self.swtpm = Swtpm(self._dir, key_file=self._tpm_key)
        if not (self._dir / "tpm2-00.permall").exists():
            # First power-on: the TPM maker's endorsement keys and certificates.
            self.swtpm.manufacture(create_ek_cert=True)
        _stop_orphan_swtpm(self._dir)
        self.swtpm.start()
        atomic_write(self._dir / _SWTPM_PID, f"{self.swtpm.pid}\n".encode())

    def key_uri(self, name: str | int | None = None) -> str:
        """The URI of a key in this store: an object label (pkcs11) or a
        persistent handle (tpm, e.g. 0x81020000)."""
        if self.type == "tpm":
            if self.swtpm is None or not self.swtpm.running:
                raise KeyStoreNotRunningError("the board's TPM is not running (power the board on)")
            handle = int(name, 0) if isinstance(name, str) else name
            return str(TpmUri(handle=handle, tcti=self.swtpm.tcti))
        return str(Pkcs11Uri(token=self.config.token, object=name, module_path=SOFTHSM2_MODULE,
                             pin_source=f"file:{self.pin_file}").with_module_env(self._softhsm_env))

    @property
    def _softhsm_env(self) -> dict[str, str]:
        """What the PKCS#11 module needs to find this board's token (it travels in the key URI)."""
        return {"SOFTHSM2_CONF": str(self._dir / "softhsm2.conf")}

    def env(self) -> dict[str, str]:
        """Environment for a process that uses this key store."""
        if self.type == "tpm":
            return self.swtpm.env() if self.swtpm is not None and self.swtpm.running else dict(os.environ)
        return {**os.environ, **self._softhsm_env}

    def describe(self) -> dict:
        if self.type == "tpm":
            running = self.swtpm is not None and self.swtpm.running
            return {"type": "tpm", "algorithm": self.algorithm.value, "state_dir": str(self._dir),
                    "tcti": self.swtpm.tcti if running else None}
        return {"type": "pkcs11", "algorithm": self.algorithm.value,
                "softhsm2_conf": str(self._dir / "softhsm2.conf"), "token": self.config.token,
                "pin_file": str(self.pin_file), "uri": self.key_uri()}


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
