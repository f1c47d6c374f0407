"""A software TPM 2.0 of our own: one `swtpm` process over one state directory.

swtpm is the TPM of every emulated board and of the tests. Its state (seeds,
persistent keys, NV indices) lives in `state_dir`, so stopping and starting
again on the same directory is a board reboot: the keys are still there.

Who can use the TPM. swtpm authenticates nobody: whoever can connect to it
can use every key in it whose authorization is empty (as pledgeforge's keys
are, see tpm_backend). On loopback TCP that is every user of the host, so
swtpm listens on two Unix sockets instead, the command socket P and the
control socket P.ctrl (the convention of the tpm2-tss `swtpm` TCTI, whose
`swtpm:path=P` reaches both; tpm2-tss 3.2.1 and tpm2-tools 5.4 take it). The
sockets are created with mode 0600 in a directory of mode 0700, so the file
system lets only their owner (and root) connect; the directory also covers the
moment between swtpm's bind() and its chmod().

The sockets sit in the state directory itself. A Unix socket path holds at most
107 bytes (P.ctrl included), and the TCTI string and key URIs cannot carry
',', '=', '&', '%' and the like; a state directory whose path does not fit
gets its sockets in a private directory of this user instead
($XDG_RUNTIME_DIR or the temp directory, `pledgeforge-<uid>/<hash of state_dir>`),
the same one at every start, so a TCTI string stays valid across restarts.

State encryption. swtpm encrypts its state files with AES-256-CBC and an
encrypt-then-MAC integrity check, keyed from `key_file` (32 random bytes as 64
hex digits: the only format in which `swtpm_setup --keyfile` hands a key to
swtpm). The key file is written once, with mode 0600 and atomically, before
the TPM's first manufacture or start. A TPM whose state exists without its key
file is refused, never replaced: the key was lost, or the state was written
unencrypted by an older pledgeforge; either way the keys in it are the
board's identity. Boards and lab pledges keep the key in their own state
directory, beside the TPM's directory rather than in it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from pledgeforge.atomicfile import atomic_write

from .errors import KeyStoreError
from .keyuri import TpmUri
from .tpm_maker_ca import CERT_SERIAL, ISSUER_CERT, SIGNING_KEY, create_tpm_maker_ca

SOCKET_NAME = "swtpm.sock"
CTRL_SUFFIX = ".ctrl"           # what the tpm2-tss swtpm TCTI appends for the control socket
STATE_KEY_NAME = "state.key"
STATE_CIPHER = "aes-256-cbc"
STATE_FILE = "tpm2-00.permall"  # swtpm's file of the TPM's permanent state
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SETUP_TIMEOUT = 120.0
# How long one wait inside the readiness loop lasts. It is a wait on the
# process (it returns at once if swtpm dies), not a sleep.
_POLL_INTERVAL = 0.02

# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
_SUN_PATH_MAX = 107
# What a path may contain to travel inside a TCTI string (',' and '=' separate
# its options), a swtpm option (',' again) and a `tpm:` URI query ('&', '%', '?', '#').
_TCTI_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@~-]+")
# What swtpm says when the key does not open the state (wrong key, or a state
# written without encryption, or an encrypted state started without a key).
_UNDECRYPTABLE = ("Verification of HMAC failed", "Could not find plain data",
                  "Wrong decryption key")

# Raw TPM 2.0 commands (TPM 2.0 Part 3): header tag, size, command code, parameters.
_TPM_ST_NO_SESSIONS = 0x8001
_GET_RANDOM_2 = struct.pack(">HIIH", _TPM_ST_NO_SESSIONS, 12, 0x17B, 2)
_SHUTDOWN_CLEAR = struct.pack(">HIIH", _TPM_ST_NO_SESSIONS, 12, 0x145, 0)


class SwtpmError(KeyStoreError):
    """swtpm could not be started, set up or stopped."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed before the full TPM response")
        data += chunk
    return data


def tpm_command(socket_path: str | os.PathLike, command: bytes, timeout: float) -> int:
    """Send one raw TPM command to swtpm's command socket and return its response code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(socket_path))
        sock.sendall(command)
        header = _recv_exact(sock, 10)
        tag, size, rc = struct.unpack(">HII", header)
        if tag not in (0x8001, 0x8002) or size < 10:
            raise ConnectionError(f"{socket_path} answered with something that is not a TPM response")
        _recv_exact(sock, size - 10)
        return rc


def _private_runtime_dir(parent: Path) -> Path:
    """This user's own directory under `parent` for sockets that do not fit in their state directory.

    Its name is predictable, so another user may have created it first: use it
    only if it is a real directory, ours, and closed to everyone else.
    """
    uid = os.getuid()
    base = parent / f"pledgeforge-{uid}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = base.lstat()
    except OSError as exc:
        raise SwtpmError(f"cannot create the socket directory {base}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise SwtpmError(f"{base} is not a private directory of uid {uid} (a directory of its own "
                         "with mode 0700); remove it, or point XDG_RUNTIME_DIR elsewhere")
    return base


def _socket_dir_for(state_dir: Path) -> Path:
    """Where the sockets of the swtpm over `state_dir` live (see the module docstring)."""
    ctrl = str(state_dir / SOCKET_NAME) + CTRL_SUFFIX
    if len(os.fsencode(ctrl)) <= _SUN_PATH_MAX and _TCTI_SAFE_PATH.fullmatch(ctrl):
        return state_dir
    name = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:16]
    parent = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    directory = _private_runtime_dir(parent) / name
    ctrl = str(directory / SOCKET_NAME) + CTRL_SUFFIX
    if len(os.fsencode(ctrl)) > _SUN_PATH_MAX or not _TCTI_SAFE_PATH.fullmatch(ctrl):
        raise SwtpmError(f"no usable path for the swtpm sockets of {state_dir}: {directory} is too "
                         "long or has characters a TCTI string cannot carry; set XDG_RUNTIME_DIR "
                         "to a short plain directory")
    return directory


def _private_dir(path: Path) -> None:
    """Create `path` if needed and close it to everyone but its owner (0700)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise SwtpmError(f"cannot create {path} with mode 0700: {exc.strerror}") from None


def _terminate(proc: subprocess.Popen) -> None:
    """Last-resort cleanup when a Swtpm object is collected or the interpreter exits."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


class Swtpm:
    """One swtpm process (TPM 2.0) over `state_dir`, its state encrypted with `key_file`.

    `key_file` defaults to `state_dir/state.key`; it is created (32 random
    bytes) before the first manufacture or start of a TPM that has no state yet.
    """

    def __init__(self, state_dir: str | os.PathLike, *, key_file: str | os.PathLike | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT):
        self.state_dir = Path(state_dir).resolve()
        self.key_file = Path(key_file).resolve() if key_file is not None \
            else self.state_dir / STATE_KEY_NAME
        for path in (self.state_dir, self.key_file):
            if "," in str(path):
                # swtpm splits its options at every ',' and has no escape for one.
                raise SwtpmError(f"swtpm cannot use {path}: its options cannot carry a ',' in a "
                                 "path; choose a directory without one")
        self.socket_dir = _socket_dir_for(self.state_dir)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._finalizer = None

    # -- identity -------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The command socket; the control socket is this path plus `.ctrl`."""
        return self.socket_dir / SOCKET_NAME

    @property
    def ctrl_socket_path(self) -> Path:
        return Path(str(self.socket_path) + CTRL_SUFFIX)

    @property
    def tcti(self) -> str:
        """The tpm2-tss TCTI string (also what TPM2TOOLS_TCTI takes)."""
        return f"swtpm:path={self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "swtpm.log"

    def key_uri(self, handle: int | None, hierarchy: str = "endorsement") -> TpmUri:
        """The `tpm:` URI of a persistent handle on this TPM."""
        return TpmUri(handle=handle, tcti=self.tcti, hierarchy=hierarchy)

    def env(self) -> dict[str, str]:
        """Environment for tpm2-tools children talking to this TPM."""
        return {**os.environ, "TPM2TOOLS_TCTI": self.tcti}

    # -- the state key --------------------------------------------------------

    def _ensure_state_key(self, *, replacing_state: bool = False) -> None:
        """Make the key of a TPM that has no state yet; check the key of one that has."""
        if not self.key_file.exists():
            if (self.state_dir / STATE_FILE).exists() and not replacing_state:
                raise SwtpmError(
                    f"the TPM state in {self.state_dir} has no key file {self.key_file}: the key "
                    "is lost or the state predates state encryption; restore the key, or remove "
                    f"{self.state_dir} for a factory-new TPM (its keys are then gone)")
            atomic_write(self.key_file, secrets.token_hex(32).encode(), 0o600)
            return
        try:
            info = self.key_file.stat()
            text = self.key_file.read_text(encoding="ascii", errors="replace").strip()
        except OSError as exc:
            raise SwtpmError(f"cannot read the TPM state key {self.key_file}: {exc.strerror}") from None
        if info.st_mode & 0o077:
            raise SwtpmError(f"the TPM state key {self.key_file} is open to other users (mode "
                             f"{stat.S_IMODE(info.st_mode):04o}); run chmod 600 {self.key_file}")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise SwtpmError(f"the TPM state key {self.key_file} is not 64 hex digits (a 256-bit "
                             "AES key)")

    # -- manufacture ----------------------------------------------------------

    def manufacture(self, create_ek_cert: bool = True, *, ca_dir: str | os.PathLike | None = None,
                    overwrite: bool = False) -> None:
        """Give a fresh state dir its endorsement keys (and EK/platform certificates).

        Runs `swtpm_setup`, which creates the RSA-2048 and ECC EKs (persistent at
        0x81010001 and 0x81010016) and, with `create_ek_cert`, certificates from
        a local "TPM maker" CA in `ca_dir` (default: `state_dir/ek-ca`; pass one
        shared directory to give several boards the same maker; the CA is made
        there on first use, see tpm_maker_ca). Certificates are stored in the
        TPM's NV indices (RSA 0x01c00002, ECC P-384 0x01c00016) and copied to
        `state_dir/ek-certs`.
        The state is encrypted with the key in `key_file` from the start.
        """
        if self.running:
            raise SwtpmError("stop swtpm before manufacturing its state")
        if shutil.which("swtpm_setup") is None:
            raise SwtpmError("swtpm_setup not found: install the swtpm-tools package (make install)")
        _private_dir(self.state_dir)
        self._ensure_state_key(replacing_state=overwrite)
        args = ["swtpm_setup", "--tpm2", "--tpmstate", str(self.state_dir), "--createek",
                "--keyfile", str(self.key_file), "--cipher", STATE_CIPHER,
                "--overwrite" if overwrite else "--not-overwrite"]
        if create_ek_cert:
            ca = Path(ca_dir).resolve() if ca_dir is not None else self.state_dir / "ek-ca"
            create_tpm_maker_ca(ca)
            cert_dir = self.state_dir / "ek-certs"
            cert_dir.mkdir(exist_ok=True)
            args += ["--create-ek-cert", "--create-platform-cert",
                     "--config", str(self._write_ca_config(ca)),
                     "--write-ek-cert-files", str(cert_dir)]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=SETUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SwtpmError(f"swtpm_setup did not finish within {SETUP_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            raise SwtpmError(f"swtpm_setup failed for {self.state_dir}: "
                             f"{(proc.stderr or proc.stdout).strip()}")

    @staticmethod
    def _write_ca_config(ca: Path) -> Path:
        """swtpm_setup and swtpm_localca configs pointing at our own CA directory."""
        ca.mkdir(parents=True, exist_ok=True)
        files = {
            "swtpm-localca.conf": (f"statedir = {ca}\nsigningkey = {ca}/{SIGNING_KEY}\n"
                                   f"issuercert = {ca}/{ISSUER_CERT}\n"
                                   f"certserial = {ca}/{CERT_SERIAL}\n"),
            "swtpm-localca.options": ("--platform-manufacturer pledgeforge\n"
                                      "--platform-version 2.1\n--platform-model swtpm\n"),
            "swtpm_setup.conf": ("create_certs_tool = swtpm_localca\n"
                                 f"create_certs_tool_config = {ca}/swtpm-localca.conf\n"
                                 f"create_certs_tool_options = {ca}/swtpm-localca.options\n"
                                 "active_pcr_banks = sha256\n"),
        }
        for name, text in files.items():
            target = ca / name
            if not target.exists() or target.read_text() != text:
                # A temp name of its own: boards sharing one maker are manufactured in parallel.
                atomic_write(target, text.encode())
        return ca / "swtpm_setup.conf"

    def ek_cert_paths(self) -> list[Path]:
        """EK certificate files written by `manufacture` (DER)."""
        return sorted((self.state_dir / "ek-certs").glob("ek-*.crt"))

    # -- process lifecycle ----------------------------------------------------

    def start(self) -> "Swtpm":
        if self.running:
            return self
        if shutil.which("swtpm") is None:
            raise SwtpmError("swtpm not found: install the swtpm package (make install)")
        _private_dir(self.state_dir)
        _private_dir(self.socket_dir)
        self._ensure_state_key()
        self._refuse_if_locked()
        proc = self._spawn()
        outcome = self._wait_ready(proc)
        if outcome is not None:
            _terminate(proc)
            self._remove_runtime_socket_dir()
            raise SwtpmError(f"swtpm on {self.state_dir} failed to start: {outcome}")
        self._proc = proc
        self._finalizer = weakref.finalize(self, _terminate, proc)
        return self

    def _refuse_if_locked(self) -> None:
        """Refuse to start while another swtpm runs on this state directory.

        swtpm itself would find the state locked and exit, but only after it
        has bound the socket paths, replacing the running swtpm's sockets with
        its own and then removing them: the running TPM would be cut off. So
        try the lock swtpm takes (fcntl on `.lock`) before spawning it.
        """
        lock = self.state_dir / ".lock"
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise SwtpmError(f"cannot open the swtpm lock file {lock}: {exc.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise SwtpmError(f"swtpm on {self.state_dir} failed to start: its state is locked by "
                             "another swtpm running on it (stop that one first)") from None
        finally:
            os.close(fd)  # closing releases our lock at once

    def _spawn(self) -> subprocess.Popen:
        args = ["swtpm", "socket", "--tpm2",
                "--server", f"type=unixio,path={self.socket_path},mode=0600",
                "--ctrl", f"type=unixio,path={self.ctrl_socket_path},mode=0600",
                "--tpmstate", f"dir={self.state_dir}",
                "--key", f"file={self.key_file},format=hex,mode={STATE_CIPHER}",
                "--flags", "not-need-init,startup-clear"]
        # stderr goes to a file: a pipe nobody reads could fill and stall swtpm.
        with open(self.log_path, "wb") as log:
            os.fchmod(log.fileno(), 0o600)
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    close_fds=True)

    def _wait_ready(self, proc: subprocess.Popen) -> str | None:
        """None once swtpm answers a TPM command; otherwise why it did not."""
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while True:
            if proc.poll() is not None:
                return self._exit_reason(proc.returncode)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"no answer on {self.socket_path} within {self.startup_timeout:.0f} s ({last})"
            try:
                rc = tpm_command(self.socket_path, _GET_RANDOM_2, timeout=min(remaining, 2.0))
            except OSError as exc:
                last = str(exc)
            else:
                if rc == 0 and proc.poll() is None:
                    return None
                last = f"TPM response code 0x{rc:x}"
            try:
                proc.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                pass

    def _exit_reason(self, status: int) -> str:
        log = self._log_text()
        first = next((line for line in log.splitlines() if any(s in line for s in _UNDECRYPTABLE)),
                     None)
        if first is not None:
            return (f"the key in {self.key_file} does not decrypt the TPM state ({first.strip()}); "
                    "restore the key this TPM was made with, or remove the state directory for a "
                    "factory-new TPM")
        return f"swtpm exited with status {status}: {log or 'no output'}"

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def stop(self, *, orderly: bool = True) -> None:
        """Stop swtpm. `orderly` sends TPM2_Shutdown first, as a clean power-off does;
        `orderly=False` is a power cut (the TPM notices at the next startup)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if orderly:
                try:
                    tpm_command(self.socket_path, _SHUTDOWN_CLEAR, timeout=STOP_TIMEOUT)
                except OSError:
                    pass  # It is going away anyway; the TPM records the unorderly stop.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._remove_runtime_socket_dir()

    def _remove_runtime_socket_dir(self) -> None:
        """Leave nothing behind in the runtime directory once swtpm is gone."""
        if self.socket_dir != self.state_dir:
            try:
                self.socket_dir.rmdir()  # swtpm removes its sockets when it exits cleanly
            except OSError:
                pass  # Not empty or already gone: the next start uses it as it is.

    def restart(self, *, orderly: bool = True) -> "Swtpm":
        self.stop(orderly=orderly)
        return self.start()

    def __enter__(self) -> "Swtpm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}, {self.socket_path}" if self.running else "stopped"
        return f"Swtpm({str(self.state_dir)!r}, {state})"
