"""CLI command groups. Each module defines one click command or group.

`COMMANDS` names, for each top-level command, the module here that defines it
and the attribute it is. The CLI imports a module only when its command runs
(or a listing such as --help needs it), so `pledgeforge pledge bootstrap` does
not pay for the board emulator's imports, nor `pledgeforge --help` for any.
"""

import importlib

import click

#: top-level command -> (module in this package, attribute)
COMMANDS = {
    "board": ("board", "board"),
    "image": ("image", "image"),
    "keys": ("keys", "keys"),
    "ca": ("ca", "ca"),
    "csr": ("ca", "csr"),
    "cms": ("cms", "cms"),
    "cert": ("cert", "cert"),
    "verify": ("verify", "verify"),
    "lab": ("lab", "lab"),
    "masa": ("masa", "masa"),
    "registrar": ("registrar", "registrar"),
    "pledge": ("pledge", "pledge"),
    "fleet": ("fleet", "fleet"),
    "demo": ("demo", "demo"),
}


def load_command(name: str) -> click.Command | None:
    """The click command `name`, its module imported now; None for an unknown name."""
    if name not in COMMANDS:
        return None
    module, attribute = COMMANDS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
