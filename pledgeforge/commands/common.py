"""Options and I/O shared by the CLI commands.

With `--json`, stdout carries JSON only: a command prints one JSON object (a
listing or a stream prints one object per line), and everything meant for a
person (progress, states, "wrote FILE") goes to stderr. Errors always go to
stderr as one line; the exit status says what kind of error it was
(pledgeforge/cli.py).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Callable

import click

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import FileAccessError, UsageError
from pledgeforge.hsm.errors import ModuleNotConfiguredError
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri, parse_key_uri

PIN_ENV_HELP = ("environment variable holding the token PIN (default: $PLEDGEFORGE_PIN_ENV); "
                "or put pin-source=file:PATH in the URI")
LAB_HELP = ("a lab directory: pkcs11: URIs naming its tokens (pkcs11:token=owner;object=owner-ca) "
            "get the lab's SoftHSM configuration and that token's PIN file")
JSON_HELP = "print JSON on stdout (and messages for people on stderr)"

__all__ = ["UsageError", "key_uri", "pin_env_option", "lab_option", "json_option", "read_input",
           "write_output", "messages", "print_json", "check_json_output"]


def key_uri(text: str, pin_env: str | None, lab=None) -> KeyUri:
    """Parse a key URI from the command line, where a PIN must never appear; with `lab` (the
    value of --lab), as the lab reaches it."""
    uri = parse_key_uri(text, pin_env=pin_env or os.environ.get("PLEDGEFORGE_PIN_ENV"))
    if isinstance(uri, Pkcs11Uri) and uri.pin_value is not None:
        raise UsageError("pin-value in a command-line URI is visible to every user of this machine; "
                         "use pin-source=file:PATH or --pin-env NAME instead")
    return lab.reach(uri) if lab is not None else uri


def pin_env_option(func):
    return click.option("--pin-env", metavar="NAME", help=PIN_ENV_HELP)(func)


def _load_lab(ctx, param, directory):
    if directory is None:
        return None
    from pledgeforge.lab import Lab   # the lab (and its database code) only when asked for

    return Lab.load(directory)


def lab_option(func):
    """`--lab DIR`, passed as `lab` (a Lab or None) for `key_uri`. A token that SoftHSM could
    not find for want of a configuration is then said to be reachable through --lab too."""
    @functools.wraps(func)
    def command(*args, lab, **kwargs):
        try:
            return func(*args, lab=lab, **kwargs)
        except ModuleNotConfiguredError as exc:
            if lab is not None:
                raise
            raise ModuleNotConfiguredError(f"{exc}, or give --lab DIR for a lab's tokens") from None

    return click.option("--lab", metavar="DIR", type=click.Path(file_okay=False), callback=_load_lab,
                        help=LAB_HELP)(command)


def json_option(func=None, *, help: str = JSON_HELP):
    """`--json` (as `as_json`); use bare (`@json_option`) or with a help text of the command's own."""
    option = click.option("--json", "as_json", is_flag=True, help=help)
    return option(func) if func is not None else option


def messages(as_json: bool) -> Callable[[str], None]:
    """Where lines for people go: stdout, or stderr when stdout carries JSON."""
    return lambda text: click.echo(text, err=as_json)


def print_json(data) -> None:
    """One JSON document on one line of stdout."""
    click.echo(json.dumps(data))


def check_json_output(as_json: bool, *outputs: str | None) -> None:
    """--json and data written to stdout ('-') cannot share stdout."""
    if as_json and any(out == "-" for out in outputs):
        raise UsageError("--json prints JSON on stdout, so the output cannot go there too: "
                         "give --out a file name")


def read_input(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise FileAccessError(f"cannot read {what} {path}: {exc.strerror}") from None


def write_output(path: str | None, data: bytes, mode: int = 0o644) -> None:
    """stdout for '-' or no path; otherwise an atomic write."""
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        atomic_write(path, data, mode)
    except OSError as exc:
        raise FileAccessError(f"cannot write {path}: {exc.strerror}") from None
