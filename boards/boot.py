"""The boot sequence a console shows: bootloader, autoboot countdown, firmware, login.

It looks and behaves like U-Boot, because that is what lab tools expect:
labgrid's UBootDriver and U-Boot's test/py wait for "stop autoboot", send a
key, and expect a prompt; the countdown prints every second so that a tool
waiting for silence never mistakes it for an idle console. The bootloader
prompt is a hush shell (the board shell's executor with U-Boot's grammar and
messages: `;`, `&&`, `||`, `$var`, `$?`, which labgrid's UBootDriver relies
on) with a few U-Boot commands (help, printenv, setenv, run, boot, reset,
version, echo). After it: the firmware banner and, if the profile says so, a
`login:` / `Password: ` exchange (labgrid's ShellDriver matches that exact
`Password: `).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

from .console import ResetRequested, Terminal
from .profile import Profile
from .shell import BUILTINS, HUSH, CommandContext, Dialect, Shell

_log = logging.getLogger(__name__)

@dataclass
class BootContext:
    """What the boot sequence needs from the board."""

    term: Terminal
    profile: Profile
    fields: dict[str, str]               # template values: model, hostname, serial, version, profile
    pause: Callable[[float], None]       # let time pass, staying responsive to power and reset
    log: Callable[[str], None]           # the board's event log


def banner(template: str, fields: dict[str, str]) -> str:
    return template.format_map(fields)


def autoboot(ctx: BootContext) -> bool:
    """Print the bootloader banner and count down; True if a key stopped it."""
    term = ctx.term
    term.print()
    term.print(banner(ctx.profile.boot.bootloader_banner, ctx.fields))
    remaining = ctx.profile.boot.autoboot_seconds
    if remaining <= 0:
        return False
    # U-Boot's layout: the count is redrawn in place with backspaces, once a
    # second (a fractional delay first shows its rounded-up count).
    term.print(f"Hit any key to stop autoboot: {math.ceil(remaining):2d} ", end="")
    while remaining > 0:
        step = remaining - math.ceil(remaining) + 1      # until the shown number changes
        if term.wait_key(step):
            term.print("\b\b\b 0 ")
            return True
        remaining = round(remaining - step, 6)
        term.print(f"\b\b\b{math.ceil(remaining):2d} ", end="")
    term.print()
    return False


def _bootloader_env(ctx: BootContext) -> dict[str, str]:
    return {
        "baudrate": str(ctx.profile.console.baud),
        "board": ctx.profile.board.name,
        "board_name": ctx.profile.board.model,
        "bootcmd": "bootm",
        "bootdelay": f"{ctx.profile.boot.autoboot_seconds:g}",
        "serial#": ctx.fields.get("serial", ""),
        "ver": ctx.profile.boot.bootloader_banner.strip().splitlines()[0],
    }


class BootRequested(BaseException):
    """`boot`/`bootm`: leave the bootloader prompt and start the firmware.
    A BaseException so that it passes through the shell like `exit` does."""


# U-Boot words its errors without a shell name and answers an unknown command with status 1.
UBOOT = Dialect(name="", not_found="Unknown command '{name}' - try 'help'", not_found_status=1)
UBOOT_COMMANDS = BUILTINS.subset("echo", "true", "false")


@UBOOT_COMMANDS.command("bootm", "boot application image from memory")
def _bootm(ctx: CommandContext, args: list[str]) -> int:
    raise BootRequested()


@UBOOT_COMMANDS.command("boot", "boot default, i.e., run 'bootcmd'")
def _boot(ctx: CommandContext, args: list[str]) -> int:
    return _run(ctx, ["bootcmd"])


UBOOT_COMMANDS.add("bootd", _boot, "boot default, i.e., run 'bootcmd'")


@UBOOT_COMMANDS.command("run", "run commands in an environment variable", "run var [...]")
def _run(ctx: CommandContext, args: list[str]) -> int:
    if not args:
        ctx.print("run - run commands in an environment variable")
        ctx.print("Usage: run var [...]")
        return 1
    for name in args:
        if name not in ctx.shell.vars:
            ctx.print(f'## Error: "{name}" not defined')
            return 1
        # The variable holds a command line, run as if typed (U-Boot's `run`).
        if ctx.shell.source(ctx.shell.vars[name], ctx.io) != 0:
            return 1
    return 0


@UBOOT_COMMANDS.command("reset", "Perform RESET of the CPU")
def _reset(ctx: CommandContext, args: list[str]) -> int:
    ctx.print("resetting ...")
    raise ResetRequested()


@UBOOT_COMMANDS.command("help", "print command description/usage", "help [command ...]")
def _help(ctx: CommandContext, args: list[str]) -> int:
    registry = ctx.shell.registry
    for name in args or [cmd.name for cmd in registry]:
        cmd = registry.get(name)
        if cmd is None:
            ctx.print(f"Unknown command '{name}' - try 'help' without arguments for list of all known commands")
            return 1
        ctx.print(f"{cmd.name:<10}- {cmd.summary}")
    return 0


UBOOT_COMMANDS.add("?", _help, "alias for 'help'")


@UBOOT_COMMANDS.command("printenv", "print environment variables", "printenv [name ...]")
def _printenv(ctx: CommandContext, args: list[str]) -> int:
    env = ctx.shell.vars
    status = 0
    for name in args or sorted(env):
        if name in env:
            ctx.print(f"{name}={env[name]}")
        else:
            ctx.print(f'## Error: "{name}" not defined')
            status = 1
    if not args:
        ctx.print()
        ctx.print(f"Environment size: {sum(len(k) + len(v) + 2 for k, v in env.items())}/65532 bytes")
    return status


@UBOOT_COMMANDS.command("setenv", "set environment variables", "setenv name value ...")
def _setenv(ctx: CommandContext, args: list[str]) -> int:
    if not args:
        ctx.print("setenv - set environment variables")
        ctx.print("Usage: setenv name value ...")
        return 1
    if len(args) == 1:
        ctx.shell.vars.pop(args[0], None)
    else:
        ctx.shell.vars[args[0]] = " ".join(args[1:])
    return 0


@UBOOT_COMMANDS.command("version", "print monitor, compiler and linker version")
def _version(ctx: CommandContext, args: list[str]) -> int:
    ctx.print(ctx.shell.vars.get("ver", ""))
    return 0


def bootloader_prompt(ctx: BootContext, reason: str | None = None) -> None:
    """The interactive bootloader, a hush shell: `;`, `&&`, `||`, quotes,
    `$var` and `$?`. Returns when the user boots; `reset` restarts the board."""
    term = ctx.term
    shell = Shell(UBOOT_COMMANDS, term, variables=_bootloader_env(ctx), grammar=HUSH, dialect=UBOOT,
                  on_error=lambda name, exc: _log.error("bootloader command %s failed", name, exc_info=exc))
    prompt = ctx.profile.boot.bootloader_prompt
    if reason:
        term.print(reason)
    while True:
        term.write(prompt.encode())
        line = term.read_line()
        if line is None or not line.text.strip():
            continue
        if line.truncated:
            term.print("Command too long")
            continue
        try:
            shell.execute(line.text)
        except BootRequested:
            return


def firmware_banner(ctx: BootContext) -> None:
    """The firmware's boot messages, spread over the profile's boot time."""
    lines = banner(ctx.profile.boot.firmware_banner, ctx.fields).split("\n")
    step = ctx.profile.boot.firmware_seconds / max(len(lines), 1)
    for text in lines:
        ctx.term.print(text)
        if step:
            ctx.pause(step)


def login(ctx: BootContext) -> str:
    """A getty: ask for the user name and password until they match the profile."""
    term = ctx.term
    console = ctx.profile.console
    while True:
        term.print()
        term.write(f"{ctx.profile.board.hostname} login: ".encode())
        line = term.read_line()
        if line is None or not line.text.strip():
            continue
        user = line.text.strip()
        term.write(b"Password: ")
        password = term.read_line(echo=False)
        if password is None:
            continue
        if user == console.username and password.text == console.password:
            ctx.log(f"login: {user} on console")
            return user
        ctx.log(f"login: failed for {user!r}")
        term.print()
        term.print("Login incorrect")
