"""The board's own shell commands: what a user of the real board would type.

Each command gets a `CommandContext` whose `board` is the running `Board`
(see runtime.py) and prints through it. They report problems as one error
line and a non-zero exit status; the shell never dies with them.
"""

from __future__ import annotations

import base64
import json

from pledgeforge.errors import PledgeforgeError

from .console import ResetRequested
from .file_commands import FILE_COMMANDS
from .shell import BUILTINS, CommandContext, CommandRegistry

BOARD_COMMANDS = CommandRegistry()
command = BOARD_COMMANDS.command


def board_registry(with_files: bool) -> CommandRegistry:
    """Every command of a board's shell: built-ins, the board's own, and the
    file commands on a board with a file system."""
    return BUILTINS.merged(BOARD_COMMANDS, *([FILE_COMMANDS] if with_files else []))


@command("help", "list the commands, or show how to use one", "help [COMMAND]")
def _help(ctx: CommandContext, args: list[str]) -> int:
    registry = ctx.shell.registry
    if args:
        cmd = registry.get(args[0])
        if cmd is None:
            return ctx.error(f"no command {args[0]!r}")
        ctx.print(f"usage: {cmd.usage}")
        ctx.print(f"  {cmd.summary}")
        return 0
    ctx.print("Board commands:")
    for cmd in registry:
        if BUILTINS.get(cmd.name) is None and FILE_COMMANDS.get(cmd.name) is None:
            ctx.print(f"  {cmd.name:<14} {cmd.summary}")
    if registry.get("cat") is not None:
        ctx.print("Files: " + " ".join(cmd.name for cmd in FILE_COMMANDS))
    ctx.print("Shell built-ins: " + " ".join(cmd.name for cmd in BUILTINS))
    ctx.print("Type `help COMMAND` for its usage.")
    return 0


def _uptime_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@command("status", "board state, serial number, firmware version and enrollment")
def _status(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    state = board.flash.state
    lines = {
        "state": board.enrollment_state(),
        "serial": state.serial_number or "none",
        "model": board.profile.board.model,
        "profile": board.profile.name,
        "firmware": board.firmware_version or "none",
        "keystore": f"{board.keystore.type} ({board.keystore.algorithm.value})",
        "idevid": "present" if state.identity is not None else "none",
        "voucher": "present" if state.voucher else "none",
        "ldevid": "present" if state.ldevid_pem else "none",
        "registrar": board.config_value("registrar.url") or "none",
        "boots": str(state.counters.boots),
        "uptime": _uptime_text(board.uptime()),
    }
    lines.update(board.status_fields())
    width = max(len(k) for k in lines) + 1
    for key, value in lines.items():
        ctx.print(f"{key + ':':<{width}} {value}")
    return 0


@command("idevid", "print the IDevID certificate (PEM) and where its key lives")
def _idevid(ctx: CommandContext, args: list[str]) -> int:
    identity = ctx.board.flash.state.identity
    if identity is None:
        ctx.print("none")
        return 0
    ctx.print(f"key: {identity.idevid_key_uri}")
    ctx.write(_pem_text(identity.idevid_pem))
    return 0


@command("trust-anchors", "print the built-in trust anchors (PEM): cloud registrar TLS, then vouchers")
def _anchors(ctx: CommandContext, args: list[str]) -> int:
    identity = ctx.board.flash.state.identity
    if identity is None or not (identity.builtin_anchors_pem or identity.masa_anchors_pem):
        ctx.print("none")
        return 0
    for title, anchors in (("cloud registrar TLS", identity.builtin_anchors_pem),
                           ("voucher signer (MASA)", identity.masa_anchors_pem)):
        if anchors:
            ctx.print(f"# {title}")
        for pem in anchors:
            ctx.write(_pem_text(pem))
    return 0


@command("ldevid", "print the LDevID certificate (PEM) issued at enrollment and its key's slot")
def _ldevid(ctx: CommandContext, args: list[str]) -> int:
    enrollment = ctx.board.flash.state.enrollment
    if enrollment is None:
        ctx.print("none")
        return 0
    ctx.print(f"key slot: {enrollment.slot}")
    ctx.write(_pem_text(enrollment.ldevid_pem))
    return 0


def _pem_text(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"


@command("voucher", "print the voucher the owner's registrar issued")
def _voucher(ctx: CommandContext, args: list[str]) -> int:
    voucher = ctx.board.flash.state.voucher
    if not voucher:
        ctx.print("none")
        return 0
    content = _voucher_content(voucher)
    if content is not None:
        ctx.print(json.dumps(content, indent=2))
    else:
        ctx.print(f"({len(voucher)} bytes, base64)")
        encoded = base64.b64encode(voucher).decode()
        for start in range(0, len(encoded), 64):
            ctx.print(encoded[start:start + 64])
    return 0


def _voucher_content(voucher: bytes):
    """The JSON inside a CMS-signed voucher (or a bare JSON voucher); None if neither."""
    try:
        return json.loads(voucher)
    except ValueError:
        pass
    from pledgeforge.hsm.cms import unverified_content

    try:
        return json.loads(unverified_content(voucher))
    except (PledgeforgeError, ValueError):  # anything unparseable is shown as base64 instead
        return None


@command("bootstrap", "run the BRSKI pledge: find the registrar, get a voucher, enroll")
def _bootstrap(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    if board.app is None:
        return ctx.error("no registrar configured: this board runs without pledge firmware "
                         "(start it with `pledgeforge board run --lab DIR`)")

    def emit_line(text: str) -> None:
        board.log_event(f"bootstrap: {text}")
        ctx.print(text)

    enrolled = board.app.bootstrap(board, emit_line)
    return 0 if enrolled else 1


@command("reenroll", "renew the LDevID with EST /simplereenroll, authenticated by the current one")
def _reenroll(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    if args:
        return ctx.error("usage: reenroll")
    if board.app is None:
        return ctx.error("no pledge firmware on this board (start it with `pledgeforge board run --lab DIR`)")

    def emit_line(text: str) -> None:
        board.log_event(f"reenroll: {text}")
        ctx.print(text)

    renewed = board.app.reenroll(board, emit_line)
    return 0 if renewed else 1


@command("log", "the firmware's event log since power-on")
def _log(ctx: CommandContext, args: list[str]) -> int:
    for seconds, text in list(ctx.board.events):
        ctx.print(f"[{seconds:12.6f}] {text}")
    return 0


@command("dmesg", "the firmware's event log (-n LEVEL is accepted)", "dmesg [-n LEVEL]")
def _dmesg(ctx: CommandContext, args: list[str]) -> int:
    if args[:1] == ["-n"]:
        # Console log level: this firmware never prints log lines on its own.
        return 0 if len(args) == 2 else ctx.error("usage: dmesg -n LEVEL")
    return _log(ctx, args)


@command("config", "read or change the persistent configuration",
         "config get [KEY] | config set KEY VALUE | config unset KEY")
def _config(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    usage = "usage: config get [KEY] | config set KEY VALUE | config unset KEY"
    if not args:
        return ctx.error(usage)
    action, rest = args[0], args[1:]
    if action == "get" and not rest:
        stored = board.flash.state.config
        for key, value in sorted({**board.config_defaults(), **stored}.items()):
            ctx.print(f"{key}={value}" + ("" if key in stored else "  (default)"))
        return 0
    if action == "get" and len(rest) == 1:
        value = board.config_value(rest[0])
        if value is None:
            return ctx.error(f"{rest[0]} is not set")
        ctx.print(value)
        return 0
    if action == "set" and len(rest) >= 2:
        board.flash.config_set(rest[0], " ".join(rest[1:]))
        board.log_event(f"config: {rest[0]} set")
        return 0
    if action == "unset" and len(rest) == 1:
        if not board.flash.config_unset(rest[0]):
            return ctx.error(f"{rest[0]} is not set")
        return 0
    return ctx.error(usage)


@command("reboot", "restart the board (a warm reset)")
def _reboot(ctx: CommandContext, args: list[str]) -> int:
    ctx.print("Rebooting...")
    raise ResetRequested()


@command("factory-reset", "forget the owner (configuration, voucher, LDevID and its keys) and reboot")
def _factory_reset(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    # The flash first: cut short after it, the board holds keys no record names, which the
    # firmware deletes at its next power-on, rather than a record of keys that are gone.
    board.flash.factory_reset()
    board.log_event("factory reset")
    if board.app is not None:
        for destroyed in board.app.factory_reset(board):
            ctx.print(f"destroyed {destroyed}")
    ctx.print("Factory reset done; the IDevID is kept. Rebooting...")
    raise ResetRequested()


@command("version", "firmware and bootloader versions")
def _version(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    ctx.print(f"firmware {board.firmware_version or 'none'} ({board.profile.board.model})")
    ctx.print(board.profile.boot.bootloader_banner.strip().splitlines()[0])
    return 0


@command("uptime", "time since the board booted")
def _uptime(ctx: CommandContext, args: list[str]) -> int:
    ctx.print(f"up {_uptime_text(ctx.board.uptime())}")
    return 0


@command("systemctl", "service manager state (is-system-running)", "systemctl is-system-running [--wait]")
def _systemctl(ctx: CommandContext, args: list[str]) -> int:
    # Lab tools (labgrid's ShellStrategy) wait on this after login; the
    # firmware is fully up once its shell answers.
    if args[:1] == ["is-system-running"] and set(args[1:]) <= {"--wait", "--quiet", "-q"}:
        if not set(args[1:]) & {"--quiet", "-q"}:
            ctx.print("running")
        return 0
    return ctx.error("only `systemctl is-system-running [--wait]` is available on this board")


@command("hostname", "the board's host name")
def _hostname(ctx: CommandContext, args: list[str]) -> int:
    ctx.print(ctx.board.profile.board.hostname)
    return 0


@command("uname", "system name (-a for everything)", "uname [-a]")
def _uname(ctx: CommandContext, args: list[str]) -> int:
    board = ctx.board
    if args == ["-a"]:
        ctx.print(f"PledgeForge {board.profile.board.hostname} {board.firmware_version or 'none'} "
                  f"{board.profile.name} {board.profile.board.model}")
    else:
        ctx.print("PledgeForge")
    return 0

