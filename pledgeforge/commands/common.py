"""Options and I/O shared by the CLI commands."""

from __future__ import annotations

import os
import sys

import click

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri, parse_key_uri

PIN_ENV_HELP = ("environment variable holding the token PIN (default: $PLEDGEFORGE_PIN_ENV); "
                "or put pin-source=file:PATH in the URI")


class UsageError(PledgeforgeError):
    """The command line asks for something impossible."""


def key_uri(text: str, pin_env: str | None) -> KeyUri:
    """Parse a key URI from the command line, where a PIN must never appear."""
    uri = parse_key_uri(text, pin_env=pin_env or os.environ.get("PLEDGEFORGE_PIN_ENV"))
    if isinstance(uri, Pkcs11Uri) and uri.pin_value is not None:
        raise UsageError("pin-value in a command-line URI is visible to every user of this machine; "
                         "use pin-source=file:PATH or --pin-env NAME instead")
    return uri


def pin_env_option(func):
    return click.option("--pin-env", metavar="NAME", help=PIN_ENV_HELP)(func)


def read_input(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def write_output(path: str | None, data: bytes, mode: int = 0o644) -> None:
    """stdout for '-' or no path; otherwise an atomic write."""
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        atomic_write(path, data, mode)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
