"""Where bulk items come from: a list of bytes, a directory, or one file of
concatenated DER objects read as a stream (memory stays flat as input grows)."""

from __future__ import annotations

import os
from typing import BinaryIO, Iterable, Iterator, NamedTuple

from asn1crypto.core import ObjectIdentifier

from pledgeforge.errors import FileAccessError
from pledgeforge.hsm.verification_profile import MAX_ITEM_BYTES, SIGNED_DATA

from .der_framing import children, der_framed

#: OBJECT IDENTIFIER signedData: how a ContentInfo of a voucher or voucher-request
#: begins, after its SEQUENCE header.
_SIGNED_DATA_OID = ObjectIdentifier(SIGNED_DATA).dump()
#: Bytes to look at after an item to tell whether the next one starts there
#: (the longest SEQUENCE header we accept, then the OID or the next header).
_START_BYTES = 6 + len(_SIGNED_DATA_OID)
_CHUNK = 64 * 1024


class BulkInputError(FileAccessError):
    """The bulk input cannot be read."""


class Item(NamedTuple):
    """One DER object and where it came from (a tuple: cheap to make per item)."""

    data: bytes
    name: str | None = None
    offset: int | None = None


def _der_length(data, pos: int, end: int) -> tuple[int, int] | None:
    """(header length, content length) of the header at pos, None when it is not one.
    Lenient (a non-minimal length is the verifiers' to refuse): only the frame matters here."""
    if end - pos < 2 or data[pos] & 0x1F == 0x1F:
        return None
    first = data[pos + 1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    if count == 0 or count > 4 or end - pos < 2 + count:
        return None
    return 2 + count, int.from_bytes(data[pos + 2:pos + 2 + count], "big")


# --------------------------------------------------------------------------- what an item looks like

def _starts_item(data, pos: int, end: int, certificates: bool) -> bool:
    """Whether an item seems to start at pos (headers only: cheap, run once per item).

    A ContentInfo: SEQUENCE, then OBJECT IDENTIFIER signedData. A certificate:
    SEQUENCE, then the SEQUENCE of its to-be-signed part."""
    if end - pos < 2 or data[pos] != 0x30:
        return False
    outer = _der_length(data, pos, end)
    if outer is None:
        return False
    inner = pos + outer[0]
    if certificates:
        return inner < end and data[inner] == 0x30 and _der_length(data, inner, end) is not None
    return data[inner:inner + len(_SIGNED_DATA_OID)] == _SIGNED_DATA_OID


def _well_formed_item(data, pos: int, end: int, certificates: bool) -> bool:
    """Whether data[pos:end] is DER-framed and shaped like an item: a ContentInfo
    { signedData, [0] content } or a certificate { tbsCertificate, algorithm, signature }."""
    if not der_framed(data, pos, end):
        return False
    parts = children(data, pos, end)
    if certificates:
        return [tag for tag, _, _ in parts] == [0x30, 0x30, 0x03]
    return len(parts) == 2 and data[parts[0][1]:parts[0][2]] == _SIGNED_DATA_OID and parts[1][0] == 0xA0


# --------------------------------------------------------------------------- the stream

class _Window:
    """A stream seen from the current position on, read ahead only as far as asked."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.buf = bytearray()
        self.start = 0          # index in buf of the current position
        self.offset = 0         # stream offset of the current position
        self.eof = False

    @property
    def size(self) -> int:
        """Bytes held from the current position on."""
        return len(self.buf) - self.start

    def fill(self, n: int) -> None:
        """Hold at least n bytes from the current position, unless the stream ends first."""
        missing = n - self.size
        while missing > 0 and not self.eof:
            chunk = self._stream.read(max(missing, _CHUNK))
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            missing -= len(chunk)

    def take(self, n: int) -> bytes:
        """The next n held bytes; the position moves past them."""
        data = bytes(self.buf[self.start:self.start + n])
        self.start += len(data)
        self.offset += len(data)
        if self.start > _CHUNK and self.start * 2 > len(self.buf):
            del self.buf[:self.start]
            self.start = 0
        return data


def read_der_stream(stream: BinaryIO, name: str | None = None, *,
                    certificates: bool = False) -> Iterator[Item]:
    """Concatenated DER objects (ContentInfos, or certificates), one at a time.

    An item is read by its length and taken as it is when what follows is the
    end of the stream or the start of the next item, or when it is itself a
    well-formed item (DER-framed ContentInfo holding SignedData; with
    `certificates`, a DER-framed certificate). Otherwise its length is broken
    (or its header unreadable, or it claims more than MAX_ITEM_BYTES): the bytes
    from there to the next well-formed item become one item, which verifies as
    MALFORMED and carries the offset where the damage starts, and reading
    resumes at that next item, so one broken length costs one item.
    """
    window = _Window(stream)
    while True:
        window.fill(6)
        if window.size == 0:
            return
        offset = window.offset
        parsed = _der_length(window.buf, window.start, len(window.buf))
        if parsed is not None and parsed[1] <= MAX_ITEM_BYTES:
            total = parsed[0] + parsed[1]
            window.fill(total + _START_BYTES)
            if window.size >= total and _ends_well(window, total, certificates):
                yield Item(window.take(total), name, offset)
                continue
        yield Item(_take_broken(window, certificates), name, offset)


def _ends_well(window: _Window, total: int, certificates: bool) -> bool:
    """Whether the element of `total` bytes at the current position is an item to take as
    it is: the stream ends after it, the next item starts after it, or it is a
    well-formed item itself (what follows it is then the next one's problem)."""
    start, end = window.start, window.start + total
    if end == len(window.buf) or _starts_item(window.buf, end, len(window.buf), certificates):
        return True
    return _well_formed_item(window.buf, start, end, certificates)


def _take_broken(window: _Window, certificates: bool) -> bytes:
    """The bytes from the current position up to the next well-formed item (or the end),
    consumed; at most MAX_ITEM_BYTES of them are kept."""
    kept = bytearray()
    probe = 1                   # relative to the current position: the damage starts at 0
    while True:
        window.fill(probe + _CHUNK)
        found = _next_item(window, probe, certificates)
        if found is not None or window.eof:
            end = window.size if found is None else found
            kept += window.take(end)[:MAX_ITEM_BYTES - len(kept)]
            return bytes(kept)
        # Nothing in what is held: let go of it but its tail, where an item may begin.
        kept += window.take(max(probe, window.size - _START_BYTES))[:MAX_ITEM_BYTES - len(kept)]
        probe = 0


def _next_item(window: _Window, probe: int, certificates: bool) -> int | None:
    """Where (relative to the current position) the first well-formed item at or after
    `probe` begins, among the bytes held; None if there is none. A candidate whose
    length reaches beyond them is read in full first."""
    buf = window.buf                    # fill() appends to it and never moves what it holds
    marker = b"\x30" if certificates else _SIGNED_DATA_OID
    pos = window.start + probe
    while True:
        hit = buf.find(marker, pos)
        if hit < 0:
            return None
        # A certificate starts at its SEQUENCE, a ContentInfo 2 to 6 bytes before its OID.
        for at in ([hit] if certificates else range(max(hit - 6, pos), hit - 1)):
            if buf[at] != 0x30:
                continue
            claimed = _der_length(buf, at, len(buf))
            if claimed is None or claimed[1] > MAX_ITEM_BYTES or \
                    (not certificates and at + claimed[0] != hit):
                continue
            window.fill(at - window.start + sum(claimed))
            end = at + sum(claimed)
            if end <= len(buf) and _well_formed_item(buf, at, end, certificates):
                return at - window.start
        pos = hit + 1


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


def items_from(source: str | os.PathLike | Iterable[bytes], *,
               certificates: bool = False) -> Iterator[Item]:
    """Items from a directory, a file of concatenated DER (ContentInfos, or certificates
    with `certificates`: what a broken item is skipped to), or an iterable of bytes."""
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
            yield from read_der_stream(fh, os.path.basename(path), certificates=certificates)
        return
    for data in source:
        yield Item(bytes(data))
