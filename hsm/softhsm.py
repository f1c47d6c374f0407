"""A SoftHSM2 instance of our own: its config and token directory under one state dir.

SoftHSM2 is the HSM in tests and in the lab. It reads SOFTHSM2_CONF when the
PKCS#11 module is initialised, so the URIs of its keys carry that setting
(`x-module-env=SOFTHSM2_CONF=...`, see keyuri.py); the PKCS#11 backend loads
the module with it. Tokens are created with `softhsm2-util`, a tool nobody
here wrote, so what we create is what any PKCS#11 user would see.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import nullcontext
from pathlib import Path

from .errors import KeyStoreError
from .keyuri import SOFTHSM2_MODULE, Pkcs11Uri
from .store_lock import LOCK_FILE, StoreLock

#: where SoftHSM2 reads its configuration when SOFTHSM2_CONF is not set (Debian's build)
DEFAULT_CONF = "/etc/softhsm/softhsm2.conf"


class SoftHsm:
    """SoftHSM2 state under `state_dir`: `softhsm2.conf` and `tokens/`."""

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = Path(state_dir).resolve()
        self.conf = self.state_dir / "softhsm2.conf"
        self.token_dir = self.state_dir / "tokens"
        self.module_path = SOFTHSM2_MODULE

    def ensure(self) -> "SoftHsm":
        """Create the config and token directory if missing; idempotent."""
        if shutil.which("softhsm2-util") is None:
            raise KeyStoreError("softhsm2-util not found: install the softhsm2 package (make install)")
        self.token_dir.mkdir(parents=True, exist_ok=True)
        if not self.conf.exists():
            tmp = self.conf.with_suffix(".tmp")
            tmp.write_text(
                f"directories.tokendir = {self.token_dir}\n"
                "objectstore.backend = file\n"
                "log.level = ERROR\n"
                "slots.removable = false\n"
            )
            tmp.replace(self.conf)
        return self

    @property
    def module_env(self) -> dict[str, str]:
        """What the PKCS#11 module needs to find this instance's tokens."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def env(self) -> dict[str, str]:
        """Environment for child processes (pkcs11-tool, softhsm2-util, other pledgeforge runs)."""
        return {**os.environ, **self.module_env}

    def token_labels(self) -> list[str]:
        out = self._util("--show-slots").stdout
        return [line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.strip().startswith("Label:") and line.split(":", 1)[1].strip()]

    def ensure_token(self, label: str, user_pin: str, so_pin: str) -> None:
        """Initialise a token called `label` unless it exists already."""
        if label in self.token_labels():
            return
        self._util("--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin)

    def token_uri(self, label: str, *, pin_file: str | os.PathLike | None = None,
                  pin_value: str | None = None) -> Pkcs11Uri:
        return Pkcs11Uri(token=label, module_path=self.module_path,
                         pin_source=f"file:{pin_file}" if pin_file else None,
                         pin_value=pin_value).with_module_env(self.module_env)

    def _util(self, *args: str) -> subprocess.CompletedProcess:
        # PINs go on this child's argv; softhsm2-util has no other way to take
        # them. They are never logged, and the child lives for milliseconds.
        # It reads and writes the token files too, so it runs under the store lock.
        lock = StoreLock(self.token_dir / LOCK_FILE).held() if self.token_dir.is_dir() else nullcontext()
        with lock:
            proc = subprocess.run(["softhsm2-util", *args], env=self.env(), capture_output=True,
                                  text=True, timeout=60)
        if proc.returncode != 0:
            raise KeyStoreError(f"softhsm2-util {args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc


def read_conf(path: str | os.PathLike) -> dict[str, str]:
    """The `name = value` settings of a softhsm2.conf ('#' starts a comment)."""
    settings = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            name, eq, value = line.partition("=")
            if eq:
                settings[name.strip()] = value.strip()
    return settings


def is_softhsm_module(module_path: str) -> bool:
    return os.path.basename(os.path.realpath(module_path)) == "libsofthsm2.so"


def file_store_lock(module_path: str, environ: dict[str, str] | os._Environ) -> StoreLock | None:
    """The cross-process lock of the token store a SoftHSM2 module loaded with `environ` uses;
    None for any other module, and for a store that is not SoftHSM2's file store (see
    store_lock.py for why the file store needs one)."""
    if not is_softhsm_module(module_path):
        return None
    try:
        settings = read_conf(environ.get("SOFTHSM2_CONF") or DEFAULT_CONF)
    except OSError:
        return None  # the module will say what is wrong with its configuration
    token_dir = settings.get("directories.tokendir")
    if not token_dir or settings.get("objectstore.backend", "file") != "file" or not os.path.isdir(token_dir):
        return None
    return StoreLock(Path(token_dir) / LOCK_FILE)
