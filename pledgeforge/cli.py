"""`pledgeforge ...`: one click group; each command group lives in pledgeforge/commands/.

Every command exits with one of four statuses, decided here and nowhere else
from the kind of error (pledgeforge/errors.py):

    0  success
    1  verification or protocol failure (a bad signature, an untrusted chain, a
       refused image, a pledge that did not enroll, a board that did not)
    2  usage error (click's own, and UsageError: a malformed URI, an unknown
       profile, a bad serial number, a configuration that does not parse)
    3  environment (EnvironmentFailure: a missing token, a wrong PIN, a TPM,
       server or board that does not answer, a file that cannot be read or written)
"""

from __future__ import annotations

import enum
import os
import sys

import click

from pledgeforge.errors import EnvironmentFailure, PledgeforgeError, UsageError, VerificationFailure


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    ENVIRONMENT = 3


#: The first kind an error is an instance of decides its status: a malformed
#: key URI is both a key store error (environment) and a usage error, and reads
#: as a usage error.
EXIT_CODES = (
    (UsageError, ExitCode.USAGE),
    (EnvironmentFailure, ExitCode.ENVIRONMENT),
    (VerificationFailure, ExitCode.FAILURE),
    (OSError, ExitCode.ENVIRONMENT),   # I/O that no command turned into a message of its own
)


def exit_code_for(exc: BaseException) -> ExitCode:
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return ExitCode.FAILURE


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, PledgeforgeError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


class _Group(click.Group):
    """The top-level group: its commands imported when first used (pledgeforge/commands), and a
    user-facing error turned into one line on stderr and its exit status."""

    def list_commands(self, ctx) -> list[str]:
        from pledgeforge.commands import COMMANDS

        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        from pledgeforge.commands import load_command

        return load_command(name)

    def format_commands(self, ctx, formatter) -> None:
        """The command list of `--help`, from the table's summaries: listing the commands must
        not import them (click's own would import every module for its short help)."""
        from click.utils import make_default_short_help

        from pledgeforge.commands import COMMANDS

        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            formatter.write_dl([(name, make_default_short_help(COMMANDS[name].summary, limit))
                                for name in names])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`board console-log | head`): it asked for no more,
            # which is no failure. Point stdout at /dev/null so that the interpreter's
            # last flush does not complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(ExitCode.OK)
        except (PledgeforgeError, OSError) as exc:
            click.echo(f"pledgeforge: error: {_message(exc)}", err=True)
            sys.exit(exit_code_for(exc))


@click.group(cls=_Group)
@click.version_option(package_name="pledgeforge")
def main() -> None:
    """Hardware-backed BRSKI pledge emulator and HSM signer.

    Exit status: 0 success, 1 verification or protocol failure, 2 usage error,
    3 environment (missing token, unreachable server or board, I/O). With
    --json, stdout carries JSON only.
    """

