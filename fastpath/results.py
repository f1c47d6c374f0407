"""What bulk verification says about each item."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Result(enum.IntEnum):
    """One code per item; the values are the extension's, the names the reference's errors."""

    OK = 0
    MALFORMED = 1
    UNEXPECTED_CONTENT_TYPE = 2
    DIGEST_MISMATCH = 3
    BAD_SIGNATURE = 4
    UNTRUSTED_SIGNER = 5
    EXPIRED = 6


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The verdict on one item.

    `serial` is the subject serialNumber (2.5.4.5) of the signer certificate (of
    the certificate itself in certificate mode), None when there is none or the
    signer was not found. `content_offset`/`content_length` locate the signed
    content inside the item (for a certificate: the whole item), so a caller
    reads the voucher without copying; `item_offset` is where the item starts in
    a concatenated-DER file, `name` the file an item came from in a directory.
    """

    index: int
    code: Result
    serial: str | None
    content_offset: int
    content_length: int
    name: str | None = None
    item_offset: int | None = None

    @property
    def ok(self) -> bool:
        return self.code is Result.OK


def decode_serial(tag: int, raw: bytes | None) -> str | None:
    """The text of a serialNumber attribute from its DER string type and value."""
    if raw is None:
        return None
    if tag == 0x1E:
        return raw.decode("utf-16-be", errors="replace")
    if tag == 0x1C:
        return raw.decode("utf-32-be", errors="replace")
    return raw.decode("utf-8", errors="replace")
