"""The DER framing rule bulk items must follow, in Python (the extension's der_framed
applies the same rule in C).

Used by the reference verifier (an item that is not DER-framed is MALFORMED
before either verifier looks at it) and by the stream reader (to tell an item
with a broken length from a good one, and to find the next good one).
"""

from __future__ import annotations

from pledgeforge.hsm.verification_profile import MAX_NESTING

__all__ = ["MAX_NESTING", "children", "der_framed", "element_header"]


def element_header(data, pos: int, limit: int) -> tuple[int, int, int] | None:
    """(identifier, header length, content length) of a DER element at pos that ends
    within limit; None when it is not one (high tag number, indefinite, non-minimal or
    over-long length)."""
    if limit - pos < 2 or data[pos] & 0x1F == 0x1F:
        return None
    first = data[pos + 1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or limit - pos < 2 + count or data[pos + 2] == 0:
            return None                         # indefinite, too long, or padded
        length = int.from_bytes(data[pos + 2:pos + 2 + count], "big")
        if length < 0x80:
            return None                         # long form where the short one fits
        header = 2 + count
    if length > limit - pos - header:
        return None
    return data[pos], header, length


def der_framed(data, start: int = 0, end: int | None = None) -> bool:
    """Whether data[start:end] is exactly one element; every element, through every
    constructed one, with a low tag number and a definite, minimal length; universal
    constructed elements only SEQUENCE and SET; at most MAX_NESTING constructed
    elements deep."""
    end = len(data) if end is None else end
    ends: list[int] = []
    pos = start
    if end <= start:
        return False
    while True:
        while ends and pos == ends[-1]:
            ends.pop()
        if not ends and pos > start:
            return pos == end
        parsed = element_header(data, pos, ends[-1] if ends else end)
        if parsed is None:
            return False
        tag, header, length = parsed
        if tag & 0x20:
            if tag & 0xC0 == 0 and tag not in (0x30, 0x31):
                return False                    # a BER constructed string
            if len(ends) == MAX_NESTING:
                return False
            ends.append(pos + header + length)
            pos += header
        else:
            pos += header + length


def children(data, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(identifier, start, end) of each element inside the constructed element at
    data[start:end], None when they do not read as DER elements filling it exactly."""
    outer = element_header(data, start, end)
    if outer is None or start + outer[1] + outer[2] != end:
        return None
    found = []
    pos = start + outer[1]
    while pos < end:
        parsed = element_header(data, pos, end)
        if parsed is None:
            return None
        tag, header, length = parsed
        found.append((tag, pos, pos + header + length))
        pos += header + length
    return found
