"""What bulk verification says about each item: the one list of result codes.

The extension's codes are generated from this enum when it is built
(fastpath/profile_codegen.py), so this file is plain data: setup.py reads it
before anything is installed. The per-item record, ItemResult, is made by the
extension (pledgeforge.fastpath exports both).
"""

from __future__ import annotations

import enum


class Result(enum.IntEnum):
    """One code per item; the names are the reference's errors."""

    OK = 0
    MALFORMED = 1
    UNEXPECTED_CONTENT_TYPE = 2
    DIGEST_MISMATCH = 3
    BAD_SIGNATURE = 4
    UNTRUSTED_SIGNER = 5
    EXPIRED = 6


__all__ = ["Result"]
