"""asn1crypto's parse errors as one line a user can read.

asn1crypto explains a failure in several lines: the problem, then one
"while parsing asn1crypto.cms.SignerInfo" line per enclosing structure, with
Python module paths in the names. Users see one line (the CLI prints one, an
HTTP refusal carries one), naming the structure and the problem:

    "Extra data - 3 bytes of trailing data were provided"
        -> "3 bytes of trailing data after the object"
    "Error parsing asn1crypto.cms.ContentType - tag should have been 6, but 2 was found
         while parsing asn1crypto.cms.ContentInfo"
        -> "ContentType: tag should have been 6, but 2 was found (inside ContentInfo)"
"""

from __future__ import annotations

import re

from asn1crypto import core

_MODULE_PATH = re.compile(r"\basn1crypto\.(?:\w+\.)*(?=\w)")
_CONTEXT = re.compile(r"^\s*while (?:parsing|constructing) (.+?)\s*$")
_REWRITES = (
    (re.compile(r"^Extra data - (\d+) bytes of trailing data were provided$"),
     lambda m: f"{m.group(1)} byte(s) of trailing data after the object"),
    (re.compile(r"^Insufficient data - (\d+) bytes requested but only (\d+) available$"),
     lambda m: f"truncated: an element needs {m.group(1)} bytes but only {m.group(2)} remain"),
    (re.compile(r"^Error parsing (\w+) - (.+)$"), lambda m: f"{m.group(1)}: {m.group(2)}"),
)


def asn1_problem(exc: BaseException) -> str:
    """One line for a parse error raised by asn1crypto (or any other exception)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    head = _MODULE_PATH.sub("", lines[0].strip())
    for pattern, rewrite in _REWRITES:
        match = pattern.match(head)
        if match:
            head = rewrite(match)
            break
    inside = [m.group(1) for m in map(_CONTEXT.match, lines[1:]) if m]
    if inside:
        head += f" (inside {_MODULE_PATH.sub('', inside[0])})"
    return " ".join(head.split())


def received_encoding(value: core.Asn1Value) -> bytes:
    """The bytes a parsed value was read from, for a DER value.

    asn1crypto's dump() takes any header whose last byte is 0x80 for an indefinite
    length and then re-encodes the whole value, parsing every nested field on the way.
    A definite length of 128 + 256k bytes (header 30 81 80, 30 82 01 80, ...) ends the
    same way, so a certificate of such a length would be re-encoded, and refused if one
    of its fields is not of the type asn1crypto expects there (a domainComponent that is
    not an IA5String), although the certificate reads as received. A value that really
    has an indefinite length (BER) still goes through dump(), which gives its DER."""
    header = value._header  # asn1crypto keeps the received header and has no public name for it
    if header is None or _length_octets(header) == b"\x80":
        return value.dump()
    return header + value.contents + (value._trailer or b"")


def _length_octets(header: bytes) -> bytes:
    """The length part of an element's header (X.690 8.1.2: a tag number of 31 or more
    continues in the following bytes while their top bit is set)."""
    end = 1
    if header[0] & 0x1F == 0x1F:
        while header[end] & 0x80:
            end += 1
        end += 1
    return header[end:]
