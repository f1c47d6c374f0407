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
