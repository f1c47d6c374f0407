"""The manufacturing line protocol between a station and a board's serial console, sans I/O.

A manufacturing station drives a factory-new board over its console: the
same UART that prints boot messages, echoes what it receives, shows prompts
and, on a real line, picks up noise. Neither side may ever take a damaged
line for a good one. The objects here turn commands into bytes and bytes into
commands and answers; they never touch a port, a clock or a key (the driver
reads and writes the console, owns the timeouts and calls the key store), as
`pledge_machine` does for BRSKI.

Wire format
-----------
Every line, in both directions, is ASCII and checksummed::

    mfg  <seq> <rid> <command> <i>/<n> <data> <crc>     station -> board
    @mfg <seq> <rid> <status>  <i>/<n> <data> <crc>     board -> station

- `seq`: this transmission's number (decimal). The station draws the first
  one at random and counts up; every attempt of a request gets a new one, so a
  late line from an earlier attempt is recognised and ignored.
- `rid`: the request id ([A-Za-z0-9_-], 1-32), the same over all attempts of
  one request. The board remembers the answers it gave per rid and sends a
  repeated request the remembered answer: a retried `generate` answers with
  the key the first attempt made instead of making a second one.
- `command` (requests): one of COMMANDS. `status` (replies): `ok`, `err`,
  `next` (the board holds chunks 1..i-1 of a request and asks for chunk i) or
  `again` (chunk i arrived damaged: send it again).
- `i/n`: chunk i of n (1 <= i <= n <= MAX_CHUNKS). A payload longer than one
  line is cut into chunks; the station sends a request's chunks one at a time,
  each after the board's `next`, so a board with a small line buffer is never
  overrun; the board sends a reply's chunks back to back. A request chunk that
  arrives damaged is asked for `again`, and a damaged `next` makes the station
  send its chunk again (the board answers a repeat of its last chunk with the
  same `next`), a bounded number of times: noise on a long upload costs one
  line, not the upload.
- `data`: the chunk of the payload, base64url without padding. The payload is
  one CBOR map (RFC 8949) with text keys: a command's arguments, a reply's
  fields, or an error's `code` and `message` (codes in ERRORS).
- `crc`: CRC-32 (IEEE 802.3, zlib's) of the line from the tag up to the space
  before the crc, as 8 lowercase hex digits.

Lines end with CR, LF or CRLF. Text before the tag on the same line (a prompt,
noise) is ignored; anything else about a line (a field out of its grammar, a
wrong CRC, a chunk that contradicts the chunks before it) makes it corrupt. The
station retries a request whose reply it saw corrupted, or that got no reply
before the driver's timeout, at most `max_attempts` times in all; the board
answers a corrupted request with `err corrupt` when it can still read the seq
and rid, and stays silent otherwise. Requests the board is still executing are
not started twice: a repeat is ignored and the answer goes to the latest seq.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import secrets
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping

import cbor2

REQUEST_TAG = "mfg"
REPLY_TAG = "@mfg"
PROTOCOL_VERSION = 1
#: the longest line a decoder keeps; longer ones are noise and are dropped whole
MAX_LINE = 4096
#: line length the encoders stay within (a common console line buffer)
DEFAULT_LINE_LENGTH = 256
MAX_CHUNKS = 255
DEFAULT_MAX_ATTEMPTS = 4
#: how often one request chunk is sent again (asked for again) before the attempt is given up
MAX_CHUNK_REPEATS = 8
_MAX_SEQ = 999_999_999
_RID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Room a line needs besides its data: tag, the widest seq, rid and command, i/n, crc, spaces.
_LINE_OVERHEAD = 4 + 1 + 9 + 1 + 32 + 1 + 32 + 1 + 7 + 1 + 1 + 8


# --------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class CommandSpec:
    """A command: its arguments, its reply fields (name -> type; a name ending in `?`
    is optional), and whether it may take seconds (key generation) rather than milliseconds."""

    name: str
    args: Mapping[str, type] = field(default_factory=dict)
    reply: Mapping[str, type] = field(default_factory=dict)
    slow: bool = False
    doc: str = ""


#: What `install` stores on the board.
INSTALL_ITEMS = {
    "idevid-certificate": "the IDevID certificate (DER), of the key the board generated",
    "iak-certificate": "the IAK certificate (DER), TPM boards",
    "trust-anchors": "the MASA / manufacturer trust anchors (PEM)",
    "cloud-registrar": "the cloud registrar: `url`, and its TLS trust anchor (PEM) as data",
    "firmware-key": "the public key MCUboot verifies images with (PEM SubjectPublicKeyInfo)",
}

_COMMAND_LIST = [
    CommandSpec("identify", {}, {"model": str, "profile": str, "serial": str, "keystore": str,
                                 "state": str, "protocol": int, "algorithm?": str},
                doc="who the board is; keystore is tpm or pkcs11; state is factory-new, "
                    "keyed or locked; algorithm, the key algorithm its key store is made for"),
    CommandSpec("generate", {"algorithm": str}, {"public-key": bytes, "tpm-public?": bytes},
                slow=True, doc="generate the IDevID key in the key store; its SubjectPublicKeyInfo "
                               "(and TPM2B_PUBLIC on a TPM)"),
    CommandSpec("read-ek", {"kind?": str}, {"kind": str, "certificate": bytes, "public": bytes},
                slow=True, doc="the EK certificate (DER) from the TPM's NV and the EK TPM2B_PUBLIC"),
    CommandSpec("create-iak", {"algorithm": str}, {"public": bytes}, slow=True,
                doc="create the IAK; its TPM2B_PUBLIC"),
    CommandSpec("activate", {"credential": bytes, "kind?": str}, {"secret": bytes}, slow=True,
                doc="TPM2_ActivateCredential of a tpm2-tools credential blob with the EK and IAK"),
    CommandSpec("certify", {"nonce": bytes}, {"attest": bytes, "signature": bytes, "public": bytes},
                doc="TPM2_Certify of the IDevID by the IAK over the nonce: TPMS_ATTEST, "
                    "TPMT_SIGNATURE and the IDevID TPM2B_PUBLIC"),
    CommandSpec("key-report", {}, {"public-key": bytes, "local": bool, "never-extractable": bool,
                                   "sensitive": bool, "always-sensitive": bool,
                                   "extractable": bool},
                doc="the secure element's attributes of the IDevID key (PKCS#11 boards)"),
    CommandSpec("csr", {"subject?": str}, {"csr": bytes},
                doc="a PKCS#10 request (DER) signed by the IDevID key"),
    CommandSpec("install", {"item": str, "data": bytes, "url?": str}, {"item": str, "sha256": bytes},
                doc="store an item of INSTALL_ITEMS; sha256 is of what the board read back "
                    "(install_digest)"),
    CommandSpec("lock", {}, {"locked": bool},
                doc="leave manufacturing mode for good; manufacturing commands are refused after"),
]
COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in _COMMAND_LIST}

#: Error codes a board answers with, and what they mean.
ERRORS = {
    "corrupt": "the request arrived damaged; the station sends it again",
    "unknown-command": "the board does not know this command",
    "bad-request": "arguments are missing or of the wrong type",
    "rid-reused": "this request id was used for a different request",
    "too-large": "the request is larger than the board accepts",
    "locked": "the board is locked: it refuses manufacturing commands for good",
    "not-supported": "the command does not apply to this board's key store",
    "no-key": "the key the command needs does not exist yet",
    "key-store": "the TPM or secure element failed",
    "invalid": "the board refused the data (e.g. a certificate of another key)",
    "internal": "the board failed unexpectedly",
}
#: Errors that mean "say it again", not "no".
RETRYABLE_ERRORS = frozenset({"corrupt"})


class ProtocolError(Exception):
    """A caller broke the contract of these objects (a bug in the driver, not line noise)."""


class PayloadError(ValueError):
    """A payload does not decode to what its command or reply requires."""


# --------------------------------------------------------------------------- payloads and lines

_ALLOWED_VALUES = (bytes, str, int, bool)


def encode_payload(fields: Mapping[str, object]) -> bytes:
    """Canonical CBOR of a map of text keys to bytes, text, integers and booleans."""
    for key, value in fields.items():
        if not isinstance(key, str) or not isinstance(value, _ALLOWED_VALUES):
            raise ProtocolError(f"payload field {key!r} must map text to bytes, text, int or bool, "
                                f"not {type(value).__name__}")
    return cbor2.dumps(dict(fields), canonical=True)


def decode_payload(data: bytes) -> dict[str, object]:
    """The map encode_payload made; anything else (trailing bytes included) is a PayloadError."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORError, ValueError, TypeError, EOFError, OverflowError, RecursionError) as exc:
        raise PayloadError(f"not CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise PayloadError(f"{len(data) - stream.tell()} bytes after the CBOR map")
    if not isinstance(value, dict):
        raise PayloadError("the payload is not a CBOR map")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, _ALLOWED_VALUES):
            raise PayloadError(f"field {key!r} is not text -> bytes/text/int/bool")
    return value


def check_fields(fields: Mapping[str, object], spec: Mapping[str, type], what: str) -> dict:
    """`fields` as `spec` requires (required present, types exact); unknown fields are
    left out, so a newer peer may add fields."""
    out = {}
    for name, kind in spec.items():
        optional = name.endswith("?")
        key = name.rstrip("?")
        if key not in fields:
            if optional:
                continue
            raise PayloadError(f"{what} lacks {key!r}")
        value = fields[key]
        # bool is an int in Python; the wire tells them apart, and so do we.
        if type(value) is not kind:
            raise PayloadError(f"{what}: {key!r} must be {kind.__name__}, not {type(value).__name__}")
        out[key] = value
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if len(text) % 4 == 1:
        raise binascii.Error("impossible base64 length")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode('ascii')):08x}"


def _line(tag: str, seq: int, rid: str, word: str, index: int, count: int, data: str) -> bytes:
    body = f"{tag} {seq} {rid} {word} {index}/{count} {data}"
    return f"{body} {_crc(body)}\r\n".encode("ascii")


def _chunk_texts(payload: bytes, line_length: int) -> list[str]:
    per_line = (line_length - _LINE_OVERHEAD) // 4 * 4
    if per_line < 8:
        raise ProtocolError(f"a line of {line_length} bytes leaves no room for data")
    text = _b64(payload)
    chunks = [text[i:i + per_line] for i in range(0, len(text), per_line)] or [""]
    if len(chunks) > MAX_CHUNKS:
        raise ProtocolError(f"a payload of {len(payload)} bytes needs {len(chunks)} lines; at most "
                            f"{MAX_CHUNKS} fit one message")
    return chunks


def install_digest(item: str, data: bytes, url: str | None = None) -> bytes:
    """What `install` answers: SHA-256 of the item as the board read it back from its store
    (for the cloud registrar, its URL and a newline before its anchors), so the station
    knows the board keeps what it sent."""
    if item == "cloud-registrar":
        data = (url or "").encode() + b"\n" + data
    return hashlib.sha256(data).digest()


def max_payload(line_length: int = DEFAULT_LINE_LENGTH) -> int:
    """The largest payload (bytes) one message carries at this line length."""
    return (line_length - _LINE_OVERHEAD) // 4 * 3 * MAX_CHUNKS


@dataclass(frozen=True)
class Line:
    """One well-formed, checksum-verified line."""

    tag: str
    seq: int
    rid: str
    word: str  # command (requests) or status (replies)
    index: int
    count: int
    data: bytes  # this chunk, base64 decoded


@dataclass(frozen=True)
class Damaged:
    """A line that carries the tag but fails the grammar or its checksum.
    `seq` and `rid` are what it seems to say (untrusted: only to address an `err corrupt`)."""

    seq: int | None
    rid: str | None
    reason: str


_FIELDS = (r" (?P<seq>[0-9]{1,9}) (?P<rid>[A-Za-z0-9_-]{1,32}) (?P<word>[a-z][a-z0-9-]{0,31})"
           r" (?P<index>[0-9]{1,3})/(?P<count>[0-9]{1,3}) (?P<data>[A-Za-z0-9_-]*)"
           r" (?P<crc>[0-9a-f]{8})[ \t]*\Z")
# The request tag must not be the tail of a word or of the reply tag.
_REQUEST_LINE = re.compile(r"(?<![@A-Za-z0-9_-])mfg" + _FIELDS)
_REPLY_LINE = re.compile(r"@mfg" + _FIELDS)
_REQUEST_START = re.compile(r"(?<![@A-Za-z0-9_-])mfg (?P<seq>[0-9]{1,9}) (?P<rid>[A-Za-z0-9_-]{1,32}) ")
_REPLY_START = re.compile(r"@mfg (?P<seq>[0-9]{1,9}) (?P<rid>[A-Za-z0-9_-]{1,32}) ")


def is_request_line(raw: bytes) -> bool:
    """Whether a console line carries the start of a station request (tag, seq and rid):
    what a board's console hands to its manufacturing mode instead of its shell."""
    return _REQUEST_START.search(raw.decode("latin-1")) is not None


def parse_line(raw: bytes, tag: str) -> Line | Damaged | None:
    """The line of `tag` in `raw` (one console line, no terminator): a Line, a Damaged
    line, or None when `raw` does not carry the tag at all."""
    text = raw.decode("latin-1")
    if tag not in text:
        return None
    pattern, start = (_REPLY_LINE, _REPLY_START) if tag == REPLY_TAG else (_REQUEST_LINE, _REQUEST_START)
    match = pattern.search(text)
    if match is None:
        head = None
        for head in start.finditer(text):
            pass  # the last plausible start
        seq = int(head["seq"]) if head else None
        return Damaged(seq, head["rid"] if head else None, "a field is out of its grammar")
    seq, rid = int(match["seq"]), match["rid"]
    body = text[match.start():match.start("crc") - 1]
    if _crc(body) != match["crc"]:
        return Damaged(seq, rid, "checksum mismatch")
    index, count = int(match["index"]), int(match["count"])
    if not 1 <= index <= count <= MAX_CHUNKS:
        return Damaged(seq, rid, f"chunk {index}/{count} is impossible")
    try:
        data = _unb64(match["data"])
    except (binascii.Error, ValueError):
        return Damaged(seq, rid, "data is not base64url")
    return Line(tag, seq, rid, match["word"], index, count, data)


def encode_message(tag: str, seq: int, rid: str, word: str, payload: bytes,
                   line_length: int = DEFAULT_LINE_LENGTH) -> list[bytes]:
    """The lines (CRLF-terminated) of one message, one per chunk."""
    chunks = _chunk_texts(payload, line_length)
    return [_line(tag, seq, rid, word, i, len(chunks), text) for i, text in enumerate(chunks, 1)]


class LineSplitter:
    """Cuts a console byte stream into lines at CR or LF; a line longer than MAX_LINE is
    dropped whole (up to its end), so noise without line ends cannot fill memory."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._buffer = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        for piece in re.split(rb"(\r|\n)", bytes(data)):
            if piece in (b"\r", b"\n"):
                if not self._overlong and self._buffer:
                    lines.append(bytes(self._buffer))
                self._buffer.clear()
                self._overlong = False
            elif piece and not self._overlong:
                self._buffer += piece
                if len(self._buffer) > self.max_line:
                    self._buffer.clear()
                    self._overlong = True
        return lines


class _Assembly:
    """Chunks of one message, which arrive in order; refuses chunks that contradict each other."""

    def __init__(self, first: Line):
        self.key = (first.seq, first.rid, first.word)
        self.count = first.count
        self.chunks: dict[int, bytes] = {}
        self.reasks = 0  # board: times the chunk in flight was asked for again

    def add(self, line: Line) -> str | None:
        """None if taken, or if it repeats a chunk already held; else why the message is damaged."""
        if line.count != self.count:
            return f"chunk {line.index} says {line.count} chunks, an earlier one {self.count}"
        held = self.chunks.get(line.index)
        if held is not None:
            return None if held == line.data else f"chunk {line.index} arrived twice, different"
        if line.index != len(self.chunks) + 1:
            return f"chunk {len(self.chunks) + 1} of {self.count} is missing"
        self.chunks[line.index] = line.data
        self.reasks = 0
        return None

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.count

    def payload(self) -> bytes:
        return b"".join(self.chunks[i] for i in range(1, self.count + 1))


# --------------------------------------------------------------------------- what the objects return

@dataclass(frozen=True)
class Send:
    """Write these bytes to the console."""

    data: bytes


@dataclass(frozen=True)
class Request:
    """A complete, well-formed request as the board received it."""

    seq: int
    rid: str
    command: str
    args: dict


@dataclass(frozen=True)
class Execute:
    """Board: run this request, then call `answer` or `refuse` with it."""

    request: Request


@dataclass(frozen=True)
class Answered:
    """Station: the board carried out the request; `reply` holds its fields."""

    command: str
    rid: str
    reply: dict
    attempts: int


@dataclass(frozen=True)
class Refused:
    """Station: the board said no (`code` from ERRORS); retrying will not help."""

    command: str
    rid: str
    code: str
    message: str
    attempts: int


@dataclass(frozen=True)
class Failed:
    """Station: no valid answer within the attempts allowed, or a malformed one."""

    command: str
    rid: str
    reason: str
    attempts: int


# --------------------------------------------------------------------------- the station

@dataclass
class _Exchange:
    command: str
    rid: str
    payload: bytes
    seq: int = 0
    attempts: int = 0
    lines: list[bytes] = field(default_factory=list)
    sent: int = 0  # chunks of `lines` written so far
    resent: int = 0  # times the chunk in flight was written again
    #: whether a damaged line may start the next attempt (see StationChannel.receive)
    armed: bool = True
    reply: _Assembly | None = None


class StationChannel:
    """The station's end: one request at a time, retried on damage or silence.

    Driver contract: `send = channel.request(command, args)`; write `send.data`;
    then feed everything the console prints to `receive(data)` and write every
    Send it returns, until it returns an Answered, Refused or Failed. If nothing
    conclusive arrives within the driver's timeout (longer for COMMANDS[c].slow),
    call `timed_out()` and write what it returns (or stop at Failed).
    """

    def __init__(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 line_length: int = DEFAULT_LINE_LENGTH,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes):
        if max_attempts < 1:
            raise ProtocolError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.line_length = line_length
        self._random = random_bytes
        self._seq = int.from_bytes(random_bytes(3), "big") + 1
        self._splitter = LineSplitter()
        self._current: _Exchange | None = None
        #: damaged reply lines seen, attempts beyond the first, request chunks sent again:
        #: for reports and benchmarks
        self.damaged_lines = 0
        self.retries = 0
        self.resent_chunks = 0

    @property
    def busy(self) -> bool:
        return self._current is not None

    def new_rid(self) -> str:
        return _b64(self._random(9))

    def request(self, command: str, args: Mapping[str, object] | None = None, *,
                rid: str | None = None) -> Send:
        """Start a request; `rid` names it across attempts (and across station runs, when
        the caller wants a board to recognise a request it already carried out)."""
        if self._current is not None:
            raise ProtocolError(f"request {self._current.command!r} is still outstanding")
        spec = COMMANDS.get(command)
        if spec is None:
            raise ProtocolError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
        args = dict(args or {})
        try:
            check_fields(args, spec.args, f"{command} arguments")
        except PayloadError as exc:
            raise ProtocolError(str(exc)) from None
        rid = rid or self.new_rid()
        if not _RID.fullmatch(rid):
            raise ProtocolError(f"request id {rid!r} must be 1-32 of A-Z a-z 0-9 _ -")
        payload = encode_payload(args)
        _chunk_texts(payload, self.line_length)  # too large: refused before anything is sent
        self._current = _Exchange(command, rid, payload)
        return self._attempt()

    def _attempt(self, *, after_damage: bool = False) -> Send:
        ex = self._current
        ex.attempts += 1
        ex.armed = not after_damage
        if ex.attempts > 1:
            self.retries += 1
        self._seq = self._seq + 1 if self._seq < _MAX_SEQ else 1
        ex.seq = self._seq
        ex.lines = encode_message(REQUEST_TAG, ex.seq, ex.rid, ex.command, ex.payload,
                                  self.line_length)
        ex.reply = None
        ex.sent, ex.resent = 1, 0
        return Send(ex.lines[0])

    def _retry_or_fail(self, reason: str, *, after_damage: bool = False) -> Send | Failed:
        ex = self._current
        if ex.attempts >= self.max_attempts:
            self._current = None
            return Failed(ex.command, ex.rid, f"{reason}; gave up after {ex.attempts} attempts",
                          ex.attempts)
        return self._attempt(after_damage=after_damage)

    def _send_again(self, index: int) -> Send | Failed:
        """Request chunk `index` once more, a bounded number of times per chunk."""
        ex = self._current
        ex.resent += 1
        if ex.resent > MAX_CHUNK_REPEATS:
            return self._retry_or_fail("request chunks were damaged too often")
        self.resent_chunks += 1
        ex.armed = False  # as after a retry: one burst of noise costs one repeat
        return Send(ex.lines[index - 1])

    def timed_out(self) -> Send | Failed:
        """The driver's timeout passed without a conclusive answer."""
        ex = self._current
        if ex is None:
            raise ProtocolError("no request is outstanding")
        if ex.reply is None and ex.sent < len(ex.lines):
            # Mid-upload no reply can be under way: the chunk in flight (or the board's `next`)
            # was lost, and the board still holds the chunks before it.
            return self._send_again(ex.sent)
        return self._retry_or_fail("no valid reply in time")

    def receive(self, data: bytes) -> list[Send | Answered | Refused | Failed]:
        """Everything the console printed; what to write and how the request ended."""
        out: list[Send | Answered | Refused | Failed] = []
        for raw in self._splitter.feed(data):
            if self._current is None:
                continue  # late lines after the end of a request: nothing waits for them
            parsed = parse_line(raw, REPLY_TAG)
            if parsed is None:
                continue  # echo, prompts, boot messages
            if isinstance(parsed, Damaged):
                self.damaged_lines += 1
                ex = self._current
                if parsed.seq not in (None, ex.seq) and parsed.rid != ex.rid:
                    continue  # most likely a late line of another request: not worth an attempt
                if not ex.armed:
                    # One burst of noise damages several lines of one reply: the attempt it
                    # caused is under way. Whose a damaged line is cannot be told, so damage
                    # counts again only once a good line of the new attempt arrived (or the
                    # driver's timeout brings the next attempt).
                    continue
                if ex.reply is None and ex.sent < len(ex.lines):
                    # Mid-upload, the damaged line was the board's word on the chunk in flight.
                    out.append(self._send_again(ex.sent))
                else:
                    out.append(self._retry_or_fail(f"reply damaged on the line ({parsed.reason})",
                                                   after_damage=True))
            else:
                out += self._reply_line(parsed)
            if out and not isinstance(out[-1], Send):
                break
        return out

    def _reply_line(self, line: Line) -> list[Send | Answered | Refused | Failed]:
        ex = self._current
        if line.seq != ex.seq or line.rid != ex.rid:
            return []  # an earlier attempt's reply, or another request's
        ex.armed = True
        if line.word in ("next", "again"):
            if (ex.reply is not None or line.count != len(ex.lines)
                    or line.index not in (ex.sent, ex.sent + 1)):
                return [self._retry_or_fail(f"the board asked for chunk {line.index}/{line.count} "
                                            f"after chunk {ex.sent}/{len(ex.lines)}")]
            if line.index == ex.sent + 1:
                ex.sent, ex.resent = ex.sent + 1, 0
                return [Send(ex.lines[ex.sent - 1])]
            if line.word == "next":
                return []  # the same `next` twice (a repeated line): that chunk is sent
            return [self._send_again(line.index)]  # the board got it damaged
        if line.word not in ("ok", "err"):
            self.damaged_lines += 1
            return [self._retry_or_fail(f"unknown reply status {line.word!r}")]
        if ex.reply is None or ex.reply.key != (line.seq, line.rid, line.word):
            if line.index != 1:
                return [self._retry_or_fail(f"reply chunk {line.index} came before chunk 1",
                                            after_damage=True)]
            ex.reply = _Assembly(line)
        problem = ex.reply.add(line)
        if problem is not None:
            self.damaged_lines += 1
            return [self._retry_or_fail(f"reply damaged: {problem}", after_damage=True)]
        if not ex.reply.complete:
            return []
        return [self._conclude(line.word, ex.reply.payload())]

    def _conclude(self, status: str, payload: bytes) -> Send | Answered | Refused | Failed:
        ex = self._current
        try:
            fields = decode_payload(payload)
            if status == "err":
                error = check_fields(fields, {"code": str, "message?": str}, "error reply")
            else:
                reply = check_fields(fields, COMMANDS[ex.command].reply, f"{ex.command} reply")
        except PayloadError as exc:
            # The checksums held, so this is what the board sent: asking again gets the same.
            self._current = None
            return Failed(ex.command, ex.rid, f"the board's reply is malformed ({exc})", ex.attempts)
        if status == "err" and error["code"] in RETRYABLE_ERRORS:
            return self._retry_or_fail(f"the board received the request damaged "
                                       f"({error.get('message', error['code'])})")
        self._current = None
        if status == "err":
            return Refused(ex.command, ex.rid, error["code"],
                           error.get("message", ERRORS.get(error["code"], "")), ex.attempts)
        return Answered(ex.command, ex.rid, reply, ex.attempts)


# --------------------------------------------------------------------------- the board

@dataclass
class _Done:
    command: str
    payload: bytes  # the request's arguments, canonical CBOR
    status: str
    reply: bytes


class BoardChannel:
    """The board's end: reassembles requests, answers repeats from memory.

    Driver contract: feed every byte the console receives to `receive(data)`;
    write every Send it returns; for every Execute, carry out its request and
    write `answer(request, fields)` or `refuse(request, code, message)`.
    The answers to the last `remembered` request ids are kept, so a retried
    request is answered without being carried out again. (A board that must
    stay idempotent across reboots, e.g. for `generate`, also records the rid
    with what it made.)
    """

    def __init__(self, *, line_length: int = DEFAULT_LINE_LENGTH, remembered: int = 16):
        self.line_length = line_length
        self.remembered = remembered
        self._splitter = LineSplitter()
        self._assembly: _Assembly | None = None
        self._done: OrderedDict[str, _Done] = OrderedDict()
        #: rid -> (command, canonical args, latest seq) of requests being carried out
        self._running: dict[str, tuple[str, bytes, int]] = {}
        #: (seq, rid, command) of the last request received whole: its lines sent again are ignored
        self._last_complete: tuple[int, str, str] | None = None

    @property
    def receiving(self) -> bool:
        """True between the first and the last chunk of a request: every console line is
        then the station's, even one whose tag noise destroyed."""
        return self._assembly is not None

    def receive(self, data: bytes) -> list[Send | Execute]:
        out: list[Send | Execute] = []
        for raw in self._splitter.feed(data):
            parsed = parse_line(raw, REQUEST_TAG)
            if parsed is None:
                if self._assembly is not None:
                    # Mid-request, the station sends nothing but request lines: this one lost
                    # its tag to noise.
                    out += self._damaged(Damaged(None, None, "a line without the request tag"))
                continue
            if isinstance(parsed, Damaged):
                out += self._damaged(parsed)
            else:
                out += self._request_line(parsed)
        return out

    def _damaged(self, line: Damaged) -> list[Send]:
        assembly = self._assembly
        ours = assembly is not None and (line.seq is None or (line.seq, line.rid) == assembly.key[:2])
        if ours and assembly.reasks < MAX_CHUNK_REPEATS:
            # The chunk in flight of the request being received: ask for it again, keep the others.
            assembly.reasks += 1
            seq, rid, _ = assembly.key
            return [Send(_line(REPLY_TAG, seq, rid, "again", len(assembly.chunks) + 1,
                               assembly.count, ""))]
        self._assembly = None
        if line.seq is None:
            return []  # nobody to answer: the station's timeout brings the request again
        return [self._error(line.seq, line.rid, "corrupt", f"request line damaged ({line.reason})")]

    def _request_line(self, line: Line) -> list[Send | Execute]:
        key = (line.seq, line.rid, line.word)
        if key == self._last_complete:
            return []  # a line of the request just completed, sent again
        if line.index == 1 and (self._assembly is None or self._assembly.key != key):
            self._assembly = _Assembly(line)
        elif self._assembly is None or self._assembly.key != key:
            return [self._error(line.seq, line.rid, "corrupt",
                                f"chunk {line.index} of a request whose chunk 1 did not arrive")]
        held = len(self._assembly.chunks)
        problem = self._assembly.add(line)
        if problem is not None:
            self._assembly = None
            return [self._error(line.seq, line.rid, "corrupt", problem)]
        if len(self._assembly.chunks) == held and line.index != held:
            return []  # an older chunk, sent again
        if not self._assembly.complete:
            # Ask for the next chunk: the station sends one line per request at a time. (The
            # last chunk held, sent again, means our `next` was lost: ask once more.)
            return [Send(_line(REPLY_TAG, line.seq, line.rid, "next",
                               len(self._assembly.chunks) + 1, line.count, ""))]
        payload, self._assembly = self._assembly.payload(), None
        self._last_complete = key
        return self._complete(line.seq, line.rid, line.word, payload)

    def _complete(self, seq: int, rid: str, command: str, payload: bytes) -> list[Send | Execute]:
        done = self._done.get(rid)
        if done is not None:
            if (done.command, done.payload) != (command, payload):
                return [self._error(seq, rid, "rid-reused", f"request id {rid} was used for "
                                    f"another {done.command} request")]
            self._done.move_to_end(rid)
            return [Send(b"".join(encode_message(REPLY_TAG, seq, rid, done.status, done.reply,
                                                 self.line_length)))]
        running = self._running.get(rid)
        if running is not None:
            if running[:2] != (command, payload):
                return [self._error(seq, rid, "rid-reused", f"request id {rid} is in use by a "
                                    f"{running[0]} request")]
            self._running[rid] = (command, payload, seq)  # answer the latest attempt
            return []
        spec = COMMANDS.get(command)
        if spec is None:
            return [self._error(seq, rid, "unknown-command",
                                f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")]
        try:
            args = check_fields(decode_payload(payload), spec.args, f"{command} arguments")
        except PayloadError as exc:
            return [self._error(seq, rid, "bad-request", str(exc))]
        self._running[rid] = (command, payload, seq)
        return [Execute(Request(seq, rid, command, args))]

    def answer(self, request: Request, fields: Mapping[str, object]) -> Send:
        """The reply to a request carried out; remembered under its rid."""
        try:
            check_fields(fields, COMMANDS[request.command].reply, f"{request.command} reply")
        except PayloadError as exc:
            raise ProtocolError(str(exc)) from None
        return self._finish(request, "ok", encode_payload(fields))

    def refuse(self, request: Request, code: str, message: str) -> Send:
        """The board's "no" to a request (`code` from ERRORS); remembered under its rid."""
        if code not in ERRORS or code in RETRYABLE_ERRORS:
            raise ProtocolError(f"{code!r} is not an error code a request is refused with")
        return self._finish(request, "err", encode_payload({"code": code, "message": message}))

    def _finish(self, request: Request, status: str, reply: bytes) -> Send:
        running = self._running.pop(request.rid, None)
        if running is None:
            raise ProtocolError(f"request {request.rid} is not being carried out")
        command, payload, seq = running
        self._done[request.rid] = _Done(command, payload, status, reply)
        while len(self._done) > self.remembered:
            self._done.popitem(last=False)
        return Send(b"".join(encode_message(REPLY_TAG, seq, request.rid, status, reply,
                                            self.line_length)))

    def _error(self, seq: int, rid: str | None, code: str, message: str) -> Send:
        """An error reply for something not carried out (nothing to remember)."""
        if rid is None:
            rid = "-"
        return Send(b"".join(encode_message(REPLY_TAG, seq, rid, "err",
                                            encode_payload({"code": code, "message": message}),
                                            self.line_length)))


__all__ = ["COMMANDS", "CommandSpec", "ERRORS", "RETRYABLE_ERRORS", "INSTALL_ITEMS",
           "PROTOCOL_VERSION", "StationChannel", "BoardChannel", "Send", "Execute", "Request",
           "Answered", "Refused", "Failed", "ProtocolError", "PayloadError", "LineSplitter",
           "Line", "Damaged", "parse_line", "is_request_line", "encode_message", "encode_payload",
           "decode_payload", "check_fields", "max_payload", "install_digest"]
