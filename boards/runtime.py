"""A running board: a profile and a state directory brought to life.

`Board` holds the console, the persistent flash, the firmware image slots and
the power switch, and is given its other parts: the key store (the driver its
profile's `[keystore] type` binds to, see board_keystore.py), the firmware app
behind `bootstrap` (firmware_apps.py) and the manufacturing mode that lets a
station give a new board its identity over the console
(manufacturing_app.py). boards/assembly.py puts a board together from those
parts by name. Powering on starts the key store and a firmware thread that
lets the firmware apps clean up after a power cut (`FirmwareApp.power_on`),
boots (bootloader, autoboot, image verification, firmware banner, login) and
then runs the shell, serving a station's requests on the console while the
board is not manufactured; a factory console (`factory_console`) serves only
those until a station locks the board. Powering off stops that thread at its
next console or flash access, closes the flash and stops the key store. A
power cut (the process killed) loses nothing that was written: every flash
write is atomic.

Tests use `Board` in-process; `pledgeforge board run` wraps it in a process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import EnvironmentFailure
from pledgeforge.hsm.identity_names import IdentityNameError, check_serial_number

from . import boot
from .board_keystore import BoardKeyStore, keystore_for
from .console import Console, PowerLost, ResetRequested, Terminal
from .filesystem import BoardFiles
from .firmware_apps import FirmwareApp
from .flash import Flash
from .image_slots import ImageSlots, NoBootableImageError
from .power import PowerServer
from .profile import Profile
from .rtc import Rtc
from .shell import CapturedConsole, Shell, ShellExit
from .shell_commands import board_registry
from .smp_framing import SmpLineDecoder, encode_smp_frames
from .smp_server import SmpParams, SmpServer
from .transcript import TranscriptRecorder, transcript_path
from .transports import SERIAL_KINDS, PtyTransport, Rfc2217Transport, TcpTransport

LOCK_FILE = "board.lock"
INFO_FILE = "board.json"
CONSOLE_LINK = "console"
# How long power-off waits for the firmware thread to notice; it notices at
# its next console read, print or flash write. A thread still busy after that
# (a firmware app in a network call) can no longer print or write the flash.
POWER_OFF_TIMEOUT = 2.0
EVENT_LOG_LINES = 500
# How long power-off and shutdown wait for the console transcript to reach the disk.
TRANSCRIPT_FLUSH_TIMEOUT = 2.0
_log = logging.getLogger(__name__)


class BoardError(EnvironmentFailure):
    """The board cannot be started or cannot do what was asked."""


def lock_state_dir(state_dir: Path) -> int:
    """Claim a board's state directory for this process (the board runs, or its flash is
    being written while it is stopped); the lock lasts until the returned fd is closed."""
    fd = os.open(Path(state_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BoardError(f"state directory {state_dir} is in use by another running "
                         f"board (pid {other}); stop it or choose another --state") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# -- power sessions ---------------------------------------------------------------

class _PowerSession:
    """One stretch of time between power-on and power-off."""

    def __init__(self, flash: Flash):
        self.flash = flash
        self.attention = threading.Event()     # power-off or reset: stop waiting
        self.lost = threading.Event()          # power-off: firmware work of this session stops
        self.powered = True
        self.reset_pending = False
        self.started = time.monotonic()
        self.booted = time.monotonic()
        self.thread: threading.Thread | None = None
        self.files: BoardFiles | None = None    # the booted firmware's file system

    def check(self) -> None:
        if not self.powered:
            raise PowerLost()
        if self.reset_pending:
            self.reset_pending = False
            self.attention.clear()
            raise ResetRequested()

    def wait(self, timeout: float) -> bool:
        return self.attention.wait(timeout)


class Board:
    """One emulated board. Use as a context manager, or call `close()`."""

    def __init__(self, profile: Profile, state_dir: str | os.PathLike, *,
                 keystore: BoardKeyStore | None = None, app: FirmwareApp | None = None,
                 manufacturing=None, factory_console: bool = False,
                 serial_number: str | None = None):
        """`keystore`: default, the driver the profile's [keystore] type binds to; `app`:
        the firmware behind `bootstrap` (none: the board has no pledge firmware);
        `manufacturing`: the manufacturing mode (a ManufacturingApp) that serves a station
        on the console until the board is locked; `factory_console`: boot a board that is
        not locked into a console serving nothing but the station."""
        self.profile = profile
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.app = app
        self.manufacturing = manufacturing
        self.factory_console = factory_console
        self._firmware_local = threading.local()
        self._lock_fd = lock_state_dir(self.state_dir)
        self.transcript: TranscriptRecorder | None = None
        try:
            if profile.console.transcript_files:
                self.transcript = TranscriptRecorder(transcript_path(self.state_dir),
                                                     file_bytes=profile.console.transcript_kib * 1024,
                                                     files=profile.console.transcript_files)
            self.console = Console(line_ending=profile.console.line_ending,
                                   log_bytes=profile.console.log_kib * 1024,
                                   tap=self.transcript.record if self.transcript else None)
            self.keystore = keystore or keystore_for(profile.keystore, self.state_dir)
            self.slots = ImageSlots(self.state_dir, profile.image)
            self.rtc = Rtc()
            self._smp_server = SmpServer(self.slots, self.request_reset,
                                         SmpParams(node_name=profile.board.hostname,
                                                   machine=profile.board.name),
                                         rtc=self.rtc, run_command=self._smp_shell_command)
            self._smp_decoder = SmpLineDecoder(self._smp_server.params.max_packet)
            self._flash_capacity = profile.flash.size_kib * 1024
            self._files_capacity = profile.flash.files_kib * 1024
            # Opened now so that a damaged flash file is reported before anything runs.
            self._flash = Flash.in_state_dir(self.state_dir, self._flash_capacity, self._files_capacity)
            self._check_serial(serial_number)
        except BaseException:
            if self.transcript is not None:
                self.transcript.close(TRANSCRIPT_FLUSH_TIMEOUT)
            os.close(self._lock_fd)
            raise
        self._serial_request = serial_number
        self._power_lock = threading.RLock()
        self._session: _PowerSession | None = None
        self._phase = "off"
        self._phase_cond = threading.Condition()
        self.firmware_version: str | None = None
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENT_LOG_LINES)
        self.transports: list = []
        self.power_server: PowerServer | None = None
        self._closed = False

    # -- lifetime ---------------------------------------------------------------

    def _check_serial(self, requested: str | None) -> None:
        if requested is not None:
            try:
                check_serial_number(requested)
            except IdentityNameError as exc:
                raise BoardError(f"{exc} (it becomes the IDevID's X520SerialNumber)") from None
        current = self.flash.state.serial_number
        if requested and current and requested != current:
            raise BoardError(f"this board's flash already holds serial number {current}; "
                             f"--serial-number {requested} only applies to a new board")

    def open_console(self, kind: str = "pty", port: int = 0, *, replay: bool = False,
                     pace: bool = False):
        """Expose the console as a pty (DIR/console), RFC 2217 or raw TCP on loopback.
        `replay`: network clients get the recent output when they connect; `pace`: bytes
        move at the profile's baud rate, as over a real UART."""
        baud = self.profile.console.baud
        rate = baud if pace else None
        if kind == "pty":
            transport = PtyTransport(self.console, self.state_dir / CONSOLE_LINK, baudrate=baud,
                                     pace=rate)
        elif kind == "rfc2217":
            transport = Rfc2217Transport(self.console, port, baudrate=baud, replay=replay, pace=rate)
        elif kind == "tcp":
            transport = TcpTransport(self.console, port, replay=replay, pace=rate)
        else:
            raise BoardError(f"unknown console transport {kind!r}; use one of {', '.join(SERIAL_KINDS)}")
        self.transports.append(transport)
        return transport

    def serve_power(self) -> PowerServer:
        """Listen for `pledgeforge board power ... --state DIR` on DIR/power.sock."""
        if self.power_server is None:
            self.power_server = PowerServer(self.state_dir, self.power_command)
        return self.power_server

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.power_server is not None:
            self.power_server.close()
        self.power_off()
        for transport in self.transports:
            transport.close()
        if self.transcript is not None:
            self.transcript.close(TRANSCRIPT_FLUSH_TIMEOUT)
        (self.state_dir / INFO_FILE).unlink(missing_ok=True)
        os.close(self._lock_fd)

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- power ------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        return self._session is not None

    def power_on(self) -> None:
        with self._power_lock:
            if self._session is not None:
                return
            if self._closed:
                raise BoardError("the board has been shut down")
            self._flash = Flash.in_state_dir(self.state_dir, self._flash_capacity, self._files_capacity)
            self._manufacture(self._flash)
            self._flash.record_power_on()
            self.keystore.power_on()
            session = _PowerSession(self._flash)
            self._transcript_event("power on")
            self.events.clear()
            self.console.flush_input()
            self._smp_decoder.reset()
            self._session = session
            session.thread = threading.Thread(target=self._firmware, args=(session,),
                                              name=f"firmware-{self.profile.name}", daemon=True)
            session.thread.start()
            self._write_info()

    def power_off(self) -> None:
        with self._power_lock:
            session = self._session
            if session is None:
                return
            session.powered = False
            session.lost.set()
            session.attention.set()
            self.console.wake()
            # Waits for a flash write in progress, then refuses any later one.
            session.flash.close()
            if session.thread is not threading.current_thread():
                session.thread.join(POWER_OFF_TIMEOUT)
                if session.thread.is_alive():
                    _log.info("firmware thread still busy after power-off; it can no longer "
                              "print or write the flash")
            self.keystore.power_off()
            self.rtc.lose_power()
            self.console.clear_history()
            self._session = None
            self.firmware_version = None
            self._set_phase("off")
            self._write_info()
            self._transcript_event("power off")
            if self.transcript is not None:
                # Bounded: a stalled disk must not stop the power switch.
                self.transcript.flush(TRANSCRIPT_FLUSH_TIMEOUT)

    def _transcript_event(self, text: str) -> None:
        if self.transcript is not None:
            self.transcript.event(text)

    def power_cycle(self) -> None:
        with self._power_lock:
            self.power_off()
            self.power_on()

    def power_command(self, command: str) -> dict:
        """What the power socket answers: "on", "off", "cycle" or "status"."""
        if command == "on":
            self.power_on()
        elif command == "off":
            self.power_off()
        elif command == "cycle":
            self.power_cycle()
        return {"power": "on" if self.powered else "off", "phase": self.phase}

    def request_reset(self) -> None:
        """A warm reset (SMP reset, `reboot`): the firmware restarts at its next step."""
        session = self._session
        if session is not None:
            session.reset_pending = True
            session.attention.set()
            self.console.wake()

    # -- state seen from outside ----------------------------------------------------

    @property
    def phase(self) -> str:
        """off, manufacturing (the factory console), manufactured (locked there, waiting for
        a power cycle), bootloader, booting, login, shell or halted."""
        return self._phase

    def _set_phase(self, phase: str) -> None:
        with self._phase_cond:
            self._phase = phase
            self._phase_cond.notify_all()

    def wait_for_phase(self, phase: str, timeout: float) -> bool:
        with self._phase_cond:
            return self._phase_cond.wait_for(lambda: self._phase == phase, timeout)

    @property
    def flash(self) -> Flash:
        """The flash as the caller's power session sees it. Firmware code still
        running after its power-off gets that session's closed flash, so it can
        never write into the next session's."""
        session = getattr(self._firmware_local, "session", None)
        return session.flash if session is not None else self._flash

    @property
    def power_lost(self) -> threading.Event:
        """Set when the power of the caller's session goes (firmware code waits on it, so a
        power-off stops its waits and retries). Outside a session: an Event that is set."""
        session = getattr(self._firmware_local, "session", None) or self._session
        if session is None:
            gone = threading.Event()
            gone.set()
            return gone
        return session.lost

    @property
    def serial_number(self) -> str:
        return self.flash.state.serial_number

    def uptime(self) -> float:
        session = self._session
        return 0.0 if session is None else time.monotonic() - session.booted

    def log_event(self, text: str) -> None:
        session = self._session
        start = session.started if session is not None else time.monotonic()
        self.events.append((time.monotonic() - start, text))

    def enrollment_state(self) -> str:
        state = self.flash.state
        if state.ldevid_pem:
            return "enrolled"
        if state.voucher:
            return "voucher-accepted"
        if state.identity is not None:
            return "provisioned"
        return "unprovisioned"

    def config_defaults(self) -> dict[str, str]:
        """The factory's cloud registrar (installed by the manufacturing station), else the
        profile's."""
        identity = self.flash.state.identity
        url = identity.cloud_registrar_url if identity is not None else None
        return {"registrar.url": url or self.profile.registrar.cloud_url}

    def config_value(self, key: str) -> str | None:
        value = self.flash.config_get(key)
        return value if value is not None else self.config_defaults().get(key)

    def describe(self) -> dict:
        """What `board run` prints and writes to DIR/board.json."""
        return {
            "board": self.profile.name,
            "profile": str(self.profile.path),
            "serial_number": self.serial_number or None,
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
            "console": self.transports[0].address if self.transports else None,
            "consoles": [{"type": t.scheme, "address": t.address} for t in self.transports],
            "transcript": str(self.transcript.path) if self.transcript else None,
            "baud": self.profile.console.baud,
            "paced": any(getattr(t, "pace", None) for t in self.transports),
            "power": self.power_server.address if self.power_server else None,
            "powered": self.powered,
            "keystore": self.keystore.describe(),
        }

    def _write_info(self) -> None:
        atomic_write(self.state_dir / INFO_FILE, json.dumps(self.describe(), indent=1).encode() + b"\n")

    # -- the firmware thread ----------------------------------------------------------

    def _firmware(self, session: _PowerSession) -> None:
        self._firmware_local.session = session
        term = Terminal(self.console, check=session.check, smp=self._smp_line)
        if self.manufacturing is not None:
            term.station = lambda text: self.manufacturing.serve_line(self, text, term.write)
        try:
            self._start_apps()
            if self.factory_console and self.manufacturing is not None and \
                    self.manufacturing.state(self) != "locked":
                self._factory_console(session, term)
            while True:
                try:
                    self._boot_and_run(session, term)
                except ResetRequested:
                    self.log_event("reset")
                    continue
                except Exception as exc:   # a firmware fault halts the board, not the process
                    fault = exc
                try:
                    self._halt(session, term, fault)
                except ResetRequested:
                    self.log_event("reset")
        except PowerLost:
            pass
        except Exception:
            _log.error("firmware thread ended: %s", traceback.format_exc())

    def _halt(self, session: _PowerSession, term: Terminal, exc: Exception) -> None:
        """A firmware fault: say so on the console and hang until reset or power-off."""
        self._set_phase("halted")
        self.log_event(f"panic: {type(exc).__name__}: {exc}")
        # Called after the except block has ended, so the traceback comes from
        # the exception itself (format_exc() would find none: "NoneType: None").
        _log.error("firmware fault: %s: %s", type(exc).__name__, exc, exc_info=exc)
        term.print()
        term.print(f"Kernel panic - not syncing: {type(exc).__name__}: {exc}")
        term.print("---[ end Kernel panic: power-cycle or reset the board ]---")
        while True:
            session.wait(60.0)
            session.check()

    def _manufacture(self, flash: Flash) -> None:
        """First power-on at the factory: the board gets its serial number."""
        if not flash.state.serial_number:
            serial = self._serial_request or \
                f"{self.profile.board.serial_prefix}-{secrets.token_hex(4).upper()}"
            flash.set_serial_number(serial)

    def status_fields(self) -> dict[str, str]:
        """What the firmware app and the manufacturing mode add to `status`."""
        fields: dict[str, str] = {}
        for part in (self.app, self.manufacturing):
            if part is not None:
                fields.update(part.status_fields(self))
        return fields


    def _start_apps(self) -> None:
        """The firmware apps' power-on work (the pledge's clean-up after a power cut, the
        manufacturing mode's fresh reply memory); a failure is logged and the board boots
        anyway."""
        for part in (self.app, self.manufacturing):
            if part is None:
                continue
            try:
                part.power_on(self)
            except Exception as exc:   # PowerLost is no Exception: a power-off still unwinds
                self.log_event(f"firmware start failed: {exc}")
                _log.error("firmware app power-on failed: %s", traceback.format_exc())

    def _factory_console(self, session: _PowerSession, term: Terminal) -> None:
        """The factory image: a console that serves a station's requests and nothing else.
        Once a station locked the board it says so and waits for the power cycle that boots
        the firmware (the line moves the board on); a station asking again meanwhile hears
        that it is locked."""
        station, term.station = term.station, None  # served here, line by line
        self._set_phase("manufacturing")
        self.log_event("manufacturing mode")
        keystore = f"{self.keystore.type} ({self.keystore.algorithm.value})"
        term.print(f"{self.profile.board.model}: manufacturing mode, serial {self.serial_number}, "
                   f"key store {keystore}; waiting for a station")
        while True:
            line = term.read_line()
            if line is not None and station(line.text):
                if self.manufacturing.just_locked and self.phase != "manufactured":
                    self._set_phase("manufactured")
                    term.print(f"manufactured: serial {self.serial_number} is locked; power-cycle "
                               "the board to boot its firmware")
            elif line is not None and line.text.strip():
                term.print("manufacturing mode: only a station's requests are served here "
                           "(pledgeforge provision --port ...); power-cycle a locked board to "
                           "boot its firmware")

    def _template_fields(self) -> dict[str, str]:
        p = self.profile
        return {"model": p.board.model, "hostname": p.board.hostname, "serial": self.serial_number,
                "version": self.firmware_version or p.image.version, "profile": p.name}

    def _boot_and_run(self, session: _PowerSession, term: Terminal) -> None:
        session.booted = time.monotonic()
        self.firmware_version = None
        self._smp_decoder.reset()
        ctx = boot.BootContext(term=term, profile=self.profile, fields=self._template_fields(),
                               pause=lambda s: term.pause(s, session.wait), log=self.log_event)
        self._set_phase("bootloader")
        self.log_event("bootloader started")
        if boot.autoboot(ctx):
            self.log_event("autoboot interrupted")
            boot.bootloader_prompt(ctx)
        while True:
            try:
                version = self._load_image(term)
                break
            except NoBootableImageError as exc:
                self.log_event(f"boot failed: {exc}")
                boot.bootloader_prompt(ctx, f"## Boot failed: {exc}")
        self.firmware_version = version
        session.flash.record_boot()
        self.log_event(f"firmware {version} started")
        self._set_phase("booting")
        ctx.fields = self._template_fields()
        boot.firmware_banner(ctx)
        self._write_info()
        files = None if session.flash.files is None else BoardFiles(session.flash.files)  # a fresh /tmp
        session.files = files
        while True:
            if self.profile.console.login:
                self._set_phase("login")
                boot.login(ctx)
            self._shell_session(session, term, files)

    def _load_image(self, term: Terminal) -> str:
        """Boot the image in the slots as MCUboot would, or the factory firmware
        built into the board when no image was ever flashed."""
        try:
            return self.slots.boot(term.print).version
        except NoBootableImageError:
            if self.slots.has_primary_image:
                raise
            return self.profile.image.version

    def _new_shell(self, console, files: BoardFiles | None) -> Shell:
        """A shell over `console` (the serial terminal, or a capture for SMP shell exec)."""
        profile_console = self.profile.console
        return Shell(board_registry(files is not None), console, board=self, files=files,
                     variables={"HOSTNAME": self.profile.board.hostname, "HOME": "/root",
                                "USER": profile_console.username, "PS1": profile_console.prompt},
                     on_error=lambda name, exc: _log.error("command %s failed: %s", name,
                                                           traceback.format_exc()))

    def _shell_session(self, session: _PowerSession, term: Terminal, files: BoardFiles | None) -> None:
        console = self.profile.console
        shell = self._new_shell(term, files)
        self._set_phase("shell")
        if self.profile.boot.motd:
            term.print(boot.banner(self.profile.boot.motd, self._template_fields()))
        while True:
            term.write(console.prompt.encode())
            line = term.read_line()
            if line is None:
                continue
            if line.truncated:
                term.print(f"sh: input line longer than {term.editor.max_line} characters, ignored")
                shell.status = 2
                continue
            if not line.text.strip():
                continue
            try:
                shell.execute(line.text)
            except ShellExit:
                self.log_event("logout")
                return

    def _smp_shell_command(self, argv: list[str]) -> tuple[str, int]:
        """SMP shell exec: the command line through a shell of its own with its
        output captured, as Zephyr runs it on a dummy shell backend beside the
        UART's shell. Runs in the firmware thread, which serves SMP."""
        output = CapturedConsole()
        session = self._session
        shell = self._new_shell(output, session.files if session is not None else None)
        try:
            status = shell.execute(" ".join(argv))
        except ShellExit as exc:
            status = exc.status
        except ResetRequested:
            # `reboot` and the like: answer first, then reset, as the SMP reset command does.
            self.request_reset()
            status = 0
        return output.text, status

    def _smp_line(self, raw: bytes) -> None:
        """One SMP console line: reassemble, answer, and reset afterwards if asked."""
        packet = self._smp_decoder.feed_line(raw)
        if packet is None:
            return
        response = self._smp_server.handle(packet)
        if response is not None:
            self.console.write(encode_smp_frames(response))
