"""What bulk verification says about each item."""

from __future__ import annotations

import enum

from ._verify import ItemResult


class Result(enum.IntEnum):
    """One code per item; the values are the extension's, the names the reference's errors."""

    OK = 0
    MALFORMED = 1
    UNEXPECTED_CONTENT_TYPE = 2
    DIGEST_MISMATCH = 3
    BAD_SIGNATURE = 4
    UNTRUSTED_SIGNER = 5
    EXPIRED = 6


__all__ = ["ItemResult", "Result"]
