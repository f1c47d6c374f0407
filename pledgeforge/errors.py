"""The one error base every subpackage derives from.

Errors a user can meet carry a message that names what to fix; the CLI prints
that message on one line and exits non-zero. Secrets (PINs) never appear in one.
"""


class PledgeforgeError(Exception):
    """An error with a message meant for the user."""
