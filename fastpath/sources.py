"""Where bulk items come from: a list of bytes, a directory, or one file of
concatenated DER objects read as a stream (memory stays flat as input grows)."""

from __future__ import annotations

import os
from typing import BinaryIO, Iterable, Iterator, NamedTuple

from pledgeforge.errors import PledgeforgeError

#: Larger objects are not vouchers, requests or certificates; refusing them bounds memory.
MAX_ITEM_BYTES = 16 * 1024 * 1024


class BulkInputError(PledgeforgeError):
    """The bulk input cannot be read."""


class Item(NamedTuple):
    """One DER object and where it came from (a tuple: cheap to make per item)."""

    data: bytes
    name: str | None = None
    offset: int | None = None


def _der_length(header: bytes) -> tuple[int, int] | None:
    """(header length, content length) of a DER header, None when it is not one."""
    if len(header) < 2 or header[0] & 0x1F == 0x1F:
        return None
    first = header[1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    if count == 0 or count > 4 or len(header) < 2 + count:
        return None
    return 2 + count, int.from_bytes(header[2:2 + count], "big")


def read_der_stream(stream: BinaryIO, name: str | None = None) -> Iterator[Item]:
    """Concatenated DER objects, one at a time.

    A header that cannot be read (not DER, or an object over MAX_ITEM_BYTES)
    ends the stream with one last item holding the bad bytes seen so far (at
    most a header's worth), which verifies as MALFORMED: there is no way to
    find the next object after it.
    """
    offset = 0
    while True:
        header = stream.read(2)
        if not header:
            return
        if len(header) == 2 and header[1] & 0x80:
            header += stream.read(header[1] & 0x7F)
        parsed = _der_length(header)
        if parsed is None or parsed[1] > MAX_ITEM_BYTES:
            yield Item(header, name, offset)
            return
        header_len, content_len = parsed
        body = stream.read(content_len)
        yield Item(header + body, name, offset)
        if len(body) < content_len:
            return      # truncated: the item above is short and verifies as MALFORMED
        offset += header_len + content_len


def read_directory(path: str) -> Iterator[Item]:
    """Every regular file of a directory, by name, one item per file."""
    try:
        names = sorted(e.name for e in os.scandir(path) if e.is_file())
    except OSError as exc:
        raise BulkInputError(f"cannot list {path}: {exc.strerror}") from None
    for entry in names:
        full = os.path.join(path, entry)
        try:
            if os.path.getsize(full) > MAX_ITEM_BYTES:
                yield Item(b"", entry)
                continue
            with open(full, "rb") as fh:
                yield Item(fh.read(), entry)
        except OSError as exc:
            raise BulkInputError(f"cannot read {full}: {exc.strerror}") from None


def items_from(source: str | os.PathLike | Iterable[bytes]) -> Iterator[Item]:
    """Items from a directory, a file of concatenated DER, or an iterable of bytes."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            yield from read_directory(path)
            return
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise BulkInputError(f"cannot open {path}: {exc.strerror}") from None
        with fh:
            yield from read_der_stream(fh, os.path.basename(path))
        return
    for data in source:
        yield Item(bytes(data))
