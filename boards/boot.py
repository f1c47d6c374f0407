"""The boot sequence a console shows: bootloader, autoboot countdown, firmware, login.

It looks and behaves like U-Boot, because that is what lab tools expect:
labgrid's UBootDriver and U-Boot's test/py wait for "stop autoboot", send a
key, and expect a prompt; the countdown prints every second so that a tool
waiting for silence never mistakes it for an idle console. The bootloader
prompt has a few U-Boot commands (help, printenv, setenv, boot, reset,
version). After it: the firmware banner and, if the profile says so, a
`login:` / `Password: ` exchange (labgrid's ShellDriver matches that exact
`Password: `).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Callable

from .console import ResetRequested, Terminal
from .profile import Profile

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


def bootloader_prompt(ctx: BootContext, reason: str | None = None) -> None:
    """The interactive bootloader. Returns when the user boots; `reset` restarts the board."""
    term = ctx.term
    env = _bootloader_env(ctx)
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
            argv = shlex.split(line.text)
        except ValueError:
            term.print("Syntax error")
            continue
        cmd, args = argv[0], argv[1:]
        if cmd in ("boot", "bootm", "bootd") or (cmd == "run" and args == ["bootcmd"]):
            return
        if cmd == "reset":
            term.print("resetting ...")
            raise ResetRequested()
        if cmd == "help" or cmd == "?":
            for name, text in (("boot", "boot default, i.e., run 'bootcmd'"),
                               ("bootm", "boot application image from memory"),
                               ("echo", "echo args to console"),
                               ("help", "print command description/usage"),
                               ("printenv", "print environment variables"),
                               ("reset", "Perform RESET of the CPU"),
                               ("setenv", "set environment variables"),
                               ("version", "print monitor, compiler and linker version")):
                term.print(f"{name:<10}- {text}")
        elif cmd == "printenv":
            names = args or sorted(env)
            for name in names:
                if name in env:
                    term.print(f"{name}={env[name]}")
                else:
                    term.print(f"## Error: \"{name}\" not defined")
            if not args:
                term.print()
                term.print(f"Environment size: {sum(len(k) + len(v) + 2 for k, v in env.items())}/65532 bytes")
        elif cmd == "setenv":
            if not args:
                term.print("setenv - set environment variables")
                term.print("Usage: setenv name value ...")
            elif len(args) == 1:
                env.pop(args[0], None)
            else:
                env[args[0]] = " ".join(args[1:])
        elif cmd == "echo":
            term.print(" ".join(args))
        elif cmd == "version":
            term.print(env["ver"])
        else:
            term.print(f"Unknown command '{cmd}' - try 'help'")


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
