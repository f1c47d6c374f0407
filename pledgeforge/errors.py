"""The one error base every subpackage derives from, and the hint for a misspelt name.

Errors a user can meet carry a message that names what to fix; the CLI prints
that message on one line and exits non-zero. Secrets (PINs) never appear in one.
"""

import difflib
from collections.abc import Iterable


class PledgeforgeError(Exception):
    """An error with a message meant for the user."""


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is most likely a misspelling of, if any (for "did you mean ...?")."""
    close = difflib.get_close_matches(name, list(known), 1)
    return close[0] if close else None
