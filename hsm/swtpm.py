"""A software TPM 2.0 of our own: one `swtpm` process over one state directory.

swtpm is the TPM of every emulated board and of the tests. Its state (seeds,
persistent keys, NV indices) lives in `state_dir`, so stopping and starting
again on the same directory is a board reboot: the keys are still there.

It listens on loopback TCP: the command port P and the control port P+1. The
tpm2-tss `swtpm` TCTI always uses P+1 for control, so the two ports are chosen
together. Another process can grab a port between our check and swtpm's bind;
swtpm then exits with "Address already in use" and we try other ports, a
bounded number of times.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import weakref
from pathlib import Path

from .errors import KeyStoreError
from .keyuri import TpmUri

HOST = "127.0.0.1"
PORT_ATTEMPTS = 8
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SETUP_TIMEOUT = 120.0
# How long one wait inside the readiness loop lasts. It is a wait on the
# process (it returns at once if swtpm dies), not a sleep.
_POLL_INTERVAL = 0.02

# Raw TPM 2.0 commands (TPM 2.0 Part 3): header tag, size, command code, parameters.
_TPM_ST_NO_SESSIONS = 0x8001
_GET_RANDOM_2 = struct.pack(">HIIH", _TPM_ST_NO_SESSIONS, 12, 0x17B, 2)
_SHUTDOWN_CLEAR = struct.pack(">HIIH", _TPM_ST_NO_SESSIONS, 12, 0x145, 0)


class SwtpmError(KeyStoreError):
    """swtpm could not be started, set up or stopped."""


def _port_pair_free(port: int) -> bool:
    """True when both `port` and `port + 1` can be bound on loopback right now."""
    if not 1024 <= port < 65535:
        return False
    socks = []
    try:
        for p in (port, port + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            # As swtpm binds: connections of a stopped swtpm lingering in
            # TIME_WAIT do not make the port busy; a listener does.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _free_port_pair() -> int:
    """A port P such that P and P+1 are free on loopback (bounded search)."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if _port_pair_free(port):
            return port
    raise SwtpmError("could not find two adjacent free TCP ports on 127.0.0.1")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed before the full TPM response")
        data += chunk
    return data


def tpm_command(host: str, port: int, command: bytes, timeout: float) -> int:
    """Send one raw TPM command and return its response code."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(command)
        header = _recv_exact(sock, 10)
        tag, size, rc = struct.unpack(">HII", header)
        if tag not in (0x8001, 0x8002) or size < 10:
            raise ConnectionError(f"port {port} answered with something that is not a TPM response")
        _recv_exact(sock, size - 10)
        return rc


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
    """One swtpm process (TPM 2.0) over `state_dir`.

    `port` fixes the command port (control is port + 1); without it a free pair
    is picked on the first start and reused on later starts while it is free.
    """

    def __init__(self, state_dir: str | os.PathLike, *, port: int | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT):
        self.state_dir = Path(state_dir).resolve()
        self.host = HOST
        self._fixed_port = port
        self.port: int | None = port
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._finalizer = None

    # -- identity -------------------------------------------------------------

    @property
    def ctrl_port(self) -> int | None:
        return None if self.port is None else self.port + 1

    @property
    def tcti(self) -> str:
        """The tpm2-tss TCTI string (also what TPM2TOOLS_TCTI takes)."""
        if self.port is None:
            raise SwtpmError("swtpm has not been started yet, so it has no port")
        return f"swtpm:host={self.host},port={self.port}"

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

    # -- manufacture ----------------------------------------------------------

    def manufacture(self, create_ek_cert: bool = True, *, ca_dir: str | os.PathLike | None = None,
                    overwrite: bool = False) -> None:
        """Give a fresh state dir its endorsement keys (and EK/platform certificates).

        Runs `swtpm_setup`, which creates the RSA-2048 and ECC EKs (persistent at
        0x81010001 and 0x81010016) and, with `create_ek_cert`, certificates from
        a local "TPM maker" CA in `ca_dir` (default: `state_dir/ek-ca`; pass one
        shared directory to give several boards the same maker). Certificates
        are stored in the TPM's NV indices and copied to `state_dir/ek-certs`.
        """
        if self.running:
            raise SwtpmError("stop swtpm before manufacturing its state")
        if shutil.which("swtpm_setup") is None:
            raise SwtpmError("swtpm_setup not found: install the swtpm-tools package (make install)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = ["swtpm_setup", "--tpm2", "--tpmstate", str(self.state_dir), "--createek",
                "--overwrite" if overwrite else "--not-overwrite"]
        if create_ek_cert:
            ca = Path(ca_dir).resolve() if ca_dir is not None else self.state_dir / "ek-ca"
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
            "swtpm-localca.conf": (f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
                                   f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"),
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
                tmp = target.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(target)
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
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for attempt in range(PORT_ATTEMPTS):
            port = self._choose_port(attempt)
            proc = self._spawn(port)
            outcome = self._wait_ready(proc, port)
            if outcome is None:
                self.port = port
                self._proc = proc
                self._finalizer = weakref.finalize(self, _terminate, proc)
                return self
            _terminate(proc)
            if "Address already in use" in outcome and self._fixed_port is None:
                last_error = outcome
                continue
            if "lock" in outcome:
                outcome += " (is another swtpm already running on this state directory?)"
            raise SwtpmError(f"swtpm on {self.state_dir} (port {port}) failed to start: {outcome}")
        raise SwtpmError(f"swtpm could not bind free ports after {PORT_ATTEMPTS} attempts: {last_error}")

    def _choose_port(self, attempt: int) -> int:
        if self._fixed_port is not None:
            return self._fixed_port
        # Keep the previous port across restarts so stored key URIs stay valid.
        if attempt == 0 and self.port is not None and _port_pair_free(self.port):
            return self.port
        return _free_port_pair()

    def _spawn(self, port: int) -> subprocess.Popen:
        args = ["swtpm", "socket", "--tpm2",
                "--server", f"type=tcp,port={port},bindaddr={self.host}",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr={self.host}",
                "--tpmstate", f"dir={self.state_dir}",
                "--flags", "not-need-init,startup-clear"]
        # stderr goes to a file: a pipe nobody reads could fill and stall swtpm.
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    close_fds=True)

    def _wait_ready(self, proc: subprocess.Popen, port: int) -> str | None:
        """None once swtpm answers a TPM command; otherwise why it did not."""
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while True:
            if proc.poll() is not None:
                return f"swtpm exited with status {proc.returncode}: {self._log_text() or 'no output'}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"no answer on port {port} within {self.startup_timeout:.0f} s ({last})"
            try:
                rc = tpm_command(self.host, port, _GET_RANDOM_2, timeout=min(remaining, 2.0))
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
                    tpm_command(self.host, self.port, _SHUTDOWN_CLEAR, timeout=STOP_TIMEOUT)
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

    def restart(self, *, orderly: bool = True) -> "Swtpm":
        self.stop(orderly=orderly)
        return self.start()

    def __enter__(self) -> "Swtpm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}, port {self.port}" if self.running else "stopped"
        return f"Swtpm({str(self.state_dir)!r}, {state})"
