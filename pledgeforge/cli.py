"""`pledgeforge ...`: one click group; each command group lives in pledgeforge/commands/."""

from __future__ import annotations

import sys

import click

from pledgeforge.errors import PledgeforgeError


class _Group(click.Group):
    """Turns a user-facing error into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PledgeforgeError as exc:
            click.echo(f"pledgeforge: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="pledgeforge")
def main() -> None:
    """Hardware-backed BRSKI pledge emulator and HSM signer."""


def _register() -> None:
    # Imported here so `pledgeforge --help` works even while a command group
    # is being developed; each module adds its commands to `main`.
    from pledgeforge.commands import COMMAND_GROUPS

    for command in COMMAND_GROUPS():
        main.add_command(command)


_register()
