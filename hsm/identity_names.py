"""The names that identify devices and parties, checked once for every place they end up.

A device serial number is written into the IDevID's subject serialNumber
(X.520: a PrintableString of at most 64 characters), becomes dNSName values of
the LDevID ("{serial}.pledges.example"), names files and directories (a lab
pledge's `pledges/<serial>/`, `owner-config/<serial>.json`) and keys database
rows. One rule fits all of these: a serial number is a host name (RFC 1123
letters, digits and '-', in dot-separated labels that start and end with a
letter or digit) of at most 64 characters. Such a string is a PrintableString,
can be neither `.`, `..` nor contain `/`, and makes a valid DNS name wherever
a template puts it between labels.

The same module checks the DNS names built from serials, file names taken
from requests, and the short names of owners and endpoints kept as database
keys. It is used where names are issued (CA, lab, board manufacture, stores)
and again where servers read them from certificates and requests, because a
certificate from another manufacturer's CA never passed our issuance checks.

Every check raises IdentityNameError with one line naming the value (escaped
and shortened, so a hostile value cannot break the line) and what is wrong.
"""

from __future__ import annotations

import functools
import re

from pledgeforge.errors import UsageError

SERIAL_NUMBER_MAX = 64   # X.520 ub-serial-number
DNS_LABEL_MAX = 63       # RFC 1035 2.3.4
DNS_NAME_MAX = 253       # RFC 1035 2.3.4, without the trailing dot
FILE_NAME_MAX = 255      # NAME_MAX of common file systems
NAME_MAX = 60            # owners, endpoints: the width of their database columns

_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
#: a whole host name that passes every check but its length, in one match: what nearly
#: every name is, so the checks below run only to say what is wrong with the others
_GOOD_HOST_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,%d}[A-Za-z0-9])?"
                                r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,%d}[A-Za-z0-9])?)*"
                                % (DNS_LABEL_MAX - 2, DNS_LABEL_MAX - 2))
_LABEL_CHARACTER = re.compile(r"[A-Za-z0-9-]")
_HOST_NAME_CHARACTER = re.compile(r"[A-Za-z0-9.-]")
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]*")
_SHOWN = 40


class IdentityNameError(UsageError):
    """A serial number, DNS name, file name or record name is not acceptable."""


def shown(value: object) -> str:
    """`value` for an error message or a log line: escaped, on one line, shortened."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value)} characters)"
    return repr(value)


def _fail(what: str, value: str, problem: str) -> IdentityNameError:
    return IdentityNameError(f"{what} {shown(value)} {problem}")


def _bad_character(value: str, allowed: re.Pattern, hint: str) -> str | None:
    if _all_allowed(allowed).fullmatch(value):   # the usual case, in one match
        return None
    for ch in value:
        if not allowed.fullmatch(ch):
            return f"contains {ch!r}; use {hint}"
    return None


@functools.lru_cache(maxsize=None)
def _all_allowed(allowed: re.Pattern) -> re.Pattern:
    """A pattern matching a string of characters that each match `allowed` (one character)."""
    return re.compile(f"(?:{allowed.pattern})*", allowed.flags)


def _label_problem(label: str) -> str | None:
    """What is wrong with one label made of letters, digits and '-' (None: nothing)."""
    if not label:
        return "has an empty label (two dots in a row, or a dot at either end)"
    if len(label) > DNS_LABEL_MAX:
        return f"has a label of {len(label)} characters; a DNS label has at most {DNS_LABEL_MAX}"
    if not _LABEL_RE.fullmatch(label):
        return f"has the label {shown(label)}, which must start and end with a letter or digit"
    return None


def _host_name_problem(value: str, max_length: int) -> str | None:
    if len(value) <= max_length and _GOOD_HOST_NAME_RE.fullmatch(value):
        return None
    if not value:
        return "is empty"
    if len(value) > max_length:
        return f"is {len(value)} characters long; at most {max_length} are allowed"
    bad = _bad_character(value, _HOST_NAME_CHARACTER, "ASCII letters, digits, '-' and '.'")
    if bad:
        return bad
    for label in value.split("."):
        problem = _label_problem(label)
        if problem:
            return problem
    return None


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise IdentityNameError(f"{what} must be text, not {shown(value)}")
    return value


def check_serial_number(value: object, what: str = "serial number") -> str:
    """A device serial number (see the module docstring); returns it unchanged."""
    value = _require_str(value, what)
    problem = _host_name_problem(value, SERIAL_NUMBER_MAX)
    if problem:
        raise _fail(what, value, problem)
    return value


def check_dns_label(value: object, what: str = "DNS label") -> str:
    """One DNS label, such as a host name without its domain."""
    value = _require_str(value, what)
    problem = _bad_character(value, _LABEL_CHARACTER, "ASCII letters, digits and '-'") or _label_problem(value)
    if problem:
        raise _fail(what, value, problem)
    return value


def check_dns_name(value: object, what: str = "DNS name", *, wildcard: bool = False) -> str:
    """A dNSName in RFC 5280 4.2.1.6's preferred name syntax; with `wildcard`, a leading
    "*." label is allowed (TLS server names, RFC 6125 6.4.3)."""
    value = _require_str(value, what)
    body = value[2:] if wildcard and value.startswith("*.") else value
    problem = _host_name_problem(body, DNS_NAME_MAX - (len(value) - len(body)))
    if problem:
        raise _fail(what, value, problem)
    return value


def check_file_name(value: object, what: str = "file name") -> str:
    """One path component safe to join to a directory: no separator, not hidden, not `..`."""
    value = _require_str(value, what)
    if len(value) > FILE_NAME_MAX:
        raise _fail(what, value, f"is {len(value)} characters long; at most {FILE_NAME_MAX} are allowed")
    if not _FILE_NAME_RE.fullmatch(value):
        raise _fail(what, value, "must start with a letter or digit and hold only letters, digits, "
                                 "'.', '_' and '-'")
    return value


def check_name(value: object, what: str = "name") -> str:
    """A short record name (owner, registrar endpoint): letters, digits, ' ', '.', '_', '-'."""
    value = _require_str(value, what)
    if not value:
        raise _fail(what, value, "is empty")
    if len(value) > NAME_MAX:
        raise _fail(what, value, f"is {len(value)} characters long; at most {NAME_MAX} are allowed")
    if not _NAME_RE.fullmatch(value) or value.endswith(" "):
        raise _fail(what, value, "must start with a letter or digit and hold only letters, digits, "
                                 "spaces, '.', '_' and '-'")
    return value


__all__ = ["IdentityNameError", "check_serial_number", "check_dns_label",
           "check_dns_name", "check_file_name", "check_name", "shown", "SERIAL_NUMBER_MAX"]
