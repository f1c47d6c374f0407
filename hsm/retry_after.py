"""Retry-After (RFC 9110 10.2.3): how long a server asks its client to wait.

The pledge reads it from every server it waits on; a registrar reads it from
its MASA, to pass a long wait on to the pledge rather than hold its request.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

#: far beyond any cap; keeps float arithmetic finite
LONGEST_DELAY_S = 10**9

_DELTA_SECONDS = re.compile(r"[0-9]+")


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def parse_http_date(text: str) -> datetime | None:
    """An HTTP-date (also the Date header) as an aware UTC datetime, or None."""
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return None if moment is None else _as_utc(moment)


def parse_retry_after(value: str | None, reference: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value.

    delta-seconds is read directly; an HTTP-date is measured from `reference`
    (the response's own Date header is the best one: pledges often have no
    trustworthy clock). Returns None when the value is absent or unreadable,
    or is a date with no reference; the caller then uses its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        # Count digits first: int() refuses very long strings.
        if len(text) > 10:
            return float(LONGEST_DELAY_S)
        return float(min(int(text), LONGEST_DELAY_S))
    if reference is None:
        return None
    moment = parse_http_date(text)
    if moment is None:
        return None
    delta = (moment - _as_utc(reference)).total_seconds()
    return float(min(max(delta, 0.0), LONGEST_DELAY_S))
