"""The one error base every subpackage derives from, the three kinds of failure, and the
hint for a misspelt name.

Errors a user can meet carry a message that names what to fix; the CLI prints
that message on one line and exits non-zero. Secrets (PINs) never appear in one.

Every error class derives from one of three kinds, and the kind alone decides
the CLI's exit status (pledgeforge/cli.py maps them, in one place):

- `VerificationFailure` (exit 1): what was checked or exchanged is not right:
  a signature, a certificate path, an image, a voucher, a protocol answer;
- `UsageError` (exit 2): the command line, or a file it names, asks for
  something impossible or malformed (a bad URI, an unknown profile, a bad
  serial number, a configuration that does not parse);
- `EnvironmentFailure` (exit 3): the world around the command is not as it
  needs to be: a token or TPM that is missing or refuses the PIN, a server or
  board that does not answer, a file that cannot be read or written.

An error class that names none of them counts as a verification or protocol
failure (exit 1).
"""

import difflib
from collections.abc import Iterable


class PledgeforgeError(Exception):
    """An error with a message meant for the user."""


class VerificationFailure(PledgeforgeError):
    """Something checked or exchanged is not right (exit status 1)."""


class UsageError(PledgeforgeError):
    """The command line asks for something impossible or malformed (exit status 2)."""


class EnvironmentFailure(PledgeforgeError):
    """A key store, server, board or file the command needs is not usable (exit status 3)."""


class FileAccessError(EnvironmentFailure):
    """A file or directory cannot be read or written; the message names it and the cause."""


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is most likely a misspelling of, if any (for "did you mean ...?")."""
    close = difflib.get_close_matches(name, list(known), 1)
    return close[0] if close else None
