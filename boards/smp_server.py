"""An MCUmgr SMP server for an emulated board: OS, image, shell and enumeration groups.

It answers what Zephyr's SMP server answers, with its error conventions:
- an SMP packet is an 8-byte header (op, version, flags, length, group, sequence,
  command) and a CBOR map; the response mirrors the header with op + 1;
- protocol version 1 (SMP v2) and 0 (the original protocol) are served; a newer
  version gets MGMT_ERR_UNSUPPORTED_TOO_NEW;
- a malformed request gets `{"rc": MGMT_ERR}`; a group-level failure gets
  `{"err": {"group": G, "rc": R}}` for version 1 and, for version 0 clients, the
  group code translated to an MGMT_ERR as Zephyr's group translators do.

Image upload follows Zephyr's img_mgmt: the first chunk (off 0) carries `len`,
optionally `sha` (the SHA-256 of the whole file) and `image`; later chunks must
come at the offset the server expects, anything else is answered with that offset
and dropped; an off-0 request whose `sha` matches the upload in progress resumes
it (answered with the current offset); any other off-0 request starts over.
The last response carries `match` when a full SHA-256 was given. Uploads land in
the secondary slot (see image_slots.py) and, as with MCUboot, are verified at
boot, where an image that fails is erased; the image state read reports such an
image as `bootable: false` as soon as it is uploaded (Zephyr takes `bootable`
from the header's NON_BOOTABLE flag alone).

The OS group's datetime command reads and sets the board's RTC (rtc.py) in
Zephyr's text form `yyyy-mm-ddThh:mm:ss`; reading an RTC nobody set is the
group error RTC_NOT_SET. Shell exec joins `argv` with spaces, runs the line
through the board's shell and answers `{"o": output, "ret": status}`; the
output is cut to fit one SMP buffer, as Zephyr's dummy shell backend cuts it.
The enumeration group lists the groups this server answers, with Zephyr's
names and handler counts. A group whose part the board lacks (no RTC, no shell)
is not registered, so it answers ENOTSUP and is not enumerated.

Framing (base64 lines on the console) lives in smp_framing.py; this module sees
whole packets only.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import cbor2

from .console import MAX_LINE
from .image_slots import ImageSlots, SlotError, SlotRefusal, UploadWriter
from .mcuboot import HEADER_SIZE, IMAGE_MAGIC
from .rtc import Rtc

HEADER = struct.Struct(">BBHHBB")

OP_READ, OP_READ_RSP, OP_WRITE, OP_WRITE_RSP = 0, 1, 2, 3
SMP_V1, SMP_V2 = 0, 1

GROUP_OS = 0
GROUP_IMAGE = 1
GROUP_SHELL = 9
GROUP_ENUM = 10
# The names Zephyr gives its groups (CONFIG_MCUMGR_GRP_ENUM_DETAILS_NAME).
GROUP_NAMES = {GROUP_OS: "os mgmt", GROUP_IMAGE: "img mgmt", GROUP_SHELL: "shell mgmt",
               GROUP_ENUM: "enum mgmt"}

# OS group commands.
OS_ECHO, OS_DATETIME, OS_RESET, OS_MCUMGR_PARAMS, OS_INFO, OS_BOOTLOADER_INFO = 0, 4, 5, 6, 7, 8
# Enumeration group commands.
ENUM_COUNT, ENUM_LIST, ENUM_SINGLE, ENUM_DETAILS = 0, 1, 2, 3
SHELL_EXEC = 0
# What a transcript calls each command.
COMMAND_NAMES = {
    (GROUP_OS, OS_ECHO): "os echo", (GROUP_OS, OS_DATETIME): "os datetime",
    (GROUP_OS, OS_RESET): "os reset", (GROUP_OS, OS_MCUMGR_PARAMS): "os mcumgr-params",
    (GROUP_OS, OS_INFO): "os info", (GROUP_OS, OS_BOOTLOADER_INFO): "os bootloader-info",
    (GROUP_IMAGE, 0): "image state", (GROUP_IMAGE, 1): "image upload", (GROUP_IMAGE, 5): "image erase",
    (GROUP_SHELL, SHELL_EXEC): "shell exec",
    (GROUP_ENUM, ENUM_COUNT): "enum count", (GROUP_ENUM, ENUM_LIST): "enum list",
    (GROUP_ENUM, ENUM_SINGLE): "enum single", (GROUP_ENUM, ENUM_DETAILS): "enum details",
}

# MGMT_ERR: the general return codes.
EOK, EUNKNOWN, ENOMEM, EINVAL, ETIMEOUT, ENOENT, EBADSTATE, EMSGSIZE, ENOTSUP, ECORRUPT = range(10)
UNSUPPORTED_TOO_NEW = 13

# OS management group codes.
OS_ERR_UNKNOWN = 1
OS_ERR_INVALID_FORMAT = 2
OS_ERR_QUERY_YIELDS_NO_ANSWER = 3
OS_ERR_RTC_NOT_SET = 4
OS_ERR_RTC_COMMAND_FAILED = 5

# Shell management group codes.
SHELL_ERR_UNKNOWN = 1
SHELL_ERR_COMMAND_TOO_LONG = 2
SHELL_ERR_EMPTY_COMMAND = 3

# Enumeration management group codes.
ENUM_ERR_UNKNOWN = 1
ENUM_ERR_TOO_MANY_GROUP_ENTRIES = 2
ENUM_ERR_INDEX_TOO_LARGE = 4

# Image management group codes (Zephyr's img_mgmt_err_code_t).
IMG_ERR_UNKNOWN = 1
IMG_ERR_NO_IMAGE = 3
IMG_ERR_HASH_NOT_FOUND = 8
IMG_ERR_NO_FREE_SLOT = 9
IMG_ERR_FLASH_WRITE_FAILED = 12
IMG_ERR_INVALID_SLOT = 14
IMG_ERR_INVALID_OFFSET = 20
IMG_ERR_INVALID_LENGTH = 21
IMG_ERR_INVALID_IMAGE_HEADER = 22
IMG_ERR_INVALID_IMAGE_HEADER_MAGIC = 23
IMG_ERR_INVALID_HASH = 24
IMG_ERR_VERSION_GET_FAILED = 26
IMG_ERR_CURRENT_VERSION_IS_NEWER = 27
IMG_ERR_IMAGE_ALREADY_PENDING = 28
IMG_ERR_INVALID_IMAGE_TOO_LARGE = 30
IMG_ERR_INVALID_IMAGE_DATA_OVERRUN = 31
IMG_ERR_SETTING_TEST_TO_ACTIVE_DENIED = 33

_SLOT_CODES = {
    SlotRefusal.NO_FREE_SLOT: IMG_ERR_NO_FREE_SLOT,
    SlotRefusal.INVALID_SLOT: IMG_ERR_INVALID_SLOT,
    SlotRefusal.ALREADY_PENDING: IMG_ERR_IMAGE_ALREADY_PENDING,
    SlotRefusal.TEST_ACTIVE_DENIED: IMG_ERR_SETTING_TEST_TO_ACTIVE_DENIED,
    SlotRefusal.TOO_LARGE: IMG_ERR_INVALID_IMAGE_TOO_LARGE,
    SlotRefusal.REJECTED: IMG_ERR_UNKNOWN,
    SlotRefusal.UPLOAD_ENDED: IMG_ERR_UNKNOWN,
}

# What a version-0 client sees instead of a group code (Zephyr's translate functions).
_IMG_TO_MGMT = {IMG_ERR_NO_IMAGE: ENOENT, 4: ENOENT,
                IMG_ERR_NO_FREE_SLOT: EBADSTATE, IMG_ERR_CURRENT_VERSION_IS_NEWER: EBADSTATE,
                IMG_ERR_IMAGE_ALREADY_PENDING: EBADSTATE, 15: ENOMEM,
                IMG_ERR_INVALID_SLOT: EINVAL, 19: EINVAL, IMG_ERR_INVALID_OFFSET: EINVAL,
                IMG_ERR_INVALID_LENGTH: EINVAL, IMG_ERR_INVALID_IMAGE_HEADER: EINVAL,
                IMG_ERR_INVALID_HASH: EINVAL, 25: EINVAL}
_OS_TO_MGMT = {OS_ERR_INVALID_FORMAT: EINVAL, OS_ERR_QUERY_YIELDS_NO_ANSWER: ENOENT,
               OS_ERR_RTC_NOT_SET: ENOENT}
_SHELL_TO_MGMT = {SHELL_ERR_COMMAND_TOO_LONG: EINVAL, SHELL_ERR_EMPTY_COMMAND: EINVAL}
_ENUM_TO_MGMT = {ENUM_ERR_TOO_MANY_GROUP_ENTRIES: EINVAL}
_TRANSLATE = {GROUP_IMAGE: _IMG_TO_MGMT, GROUP_OS: _OS_TO_MGMT, GROUP_SHELL: _SHELL_TO_MGMT,
              GROUP_ENUM: _ENUM_TO_MGMT}

# Zephyr's datetime text: 19 to 25 characters (a longer one is refused), six
# numbers each followed by one delimiter of any kind, read as strtol reads them.
_DATETIME_MIN_LEN, _DATETIME_MAX_LEN = 19, 25
_DATETIME_FIELD = re.compile(r"\s*[+-]?\d+")
_DATETIME_RANGES = ((1900, 11899), (1, 12), (1, 31), (0, 23), (0, 59), (0, 59))
# The largest group number enum's "single" accepts as an index.
_MAX_GROUPS = 65535
# Room for the response header and the CBOR around shell output.
_SHELL_RESPONSE_OVERHEAD = 32

# MCUboot modes as the bootloader-info "mode" query reports them.
MCUBOOT_MODE_SINGLE_SLOT = 0
MCUBOOT_MODE_SWAP_USING_SCRATCH = 1


@dataclass(frozen=True)
class SmpParams:
    """What the server advertises and accepts.

    `buf_size` is the reassembly buffer (CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE): a
    packet may be up to `buf_size - 4` bytes; smpclient sizes its chunks from it.
    """

    buf_size: int = 2048
    buf_count: int = 4
    node_name: str = "pledgeforge"
    machine: str = "emulated-board"

    @property
    def max_packet(self) -> int:
        return self.buf_size - 4


@dataclass(frozen=True)
class _Request:
    op: int
    version: int
    group: int
    sequence: int
    command: int


class _BadRequest(Exception):
    """Answered with {"rc": code}."""

    def __init__(self, rc: int = EINVAL):
        self.rc = rc


class _GroupError(Exception):
    """Answered with the group's own error code."""

    def __init__(self, rc: int):
        self.rc = rc


@dataclass
class _Upload:
    sha: bytes
    size: int
    off: int
    writer: UploadWriter


_MISSING = object()


def _field(payload: dict, key: str, kind: type, default=None):
    """A request field of the given CBOR type; a wrong type is a malformed request."""
    value = payload.get(key, _MISSING)
    if value is _MISSING:
        return default
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _BadRequest()
    elif not isinstance(value, kind):
        raise _BadRequest()
    return value


RunCommand = Callable[[list[str]], tuple[str, int]]


class SmpServer:
    """Answers SMP packets for one board; `handle` returns the response packet.

    `request_reset` is called while a reset request is being answered: it must only
    schedule the reset, which the caller carries out after writing the response
    (as Zephyr replies first and resets a moment later).
    `rtc` is the board's real-time clock (the datetime command); `run_command`
    runs one shell command line given as argv and returns its output and exit
    status (shell exec). Without them those commands answer ENOTSUP.
    """

    def __init__(self, slots: ImageSlots, request_reset: Callable[[], None],
                 params: SmpParams = SmpParams(), *, rtc: Rtc | None = None,
                 run_command: RunCommand | None = None):
        self.slots = slots
        self.request_reset = request_reset
        self.params = params
        self.rtc = rtc
        self.run_command = run_command
        self._upload: _Upload | None = None
        self._handlers = {
            (GROUP_OS, OS_ECHO, OP_READ): self._echo,
            (GROUP_OS, OS_ECHO, OP_WRITE): self._echo,
            (GROUP_OS, OS_RESET, OP_WRITE): self._reset,
            (GROUP_OS, OS_MCUMGR_PARAMS, OP_READ): self._mcumgr_params,
            (GROUP_OS, OS_INFO, OP_READ): self._app_info,
            (GROUP_OS, OS_BOOTLOADER_INFO, OP_READ): self._bootloader_info,
            (GROUP_IMAGE, 0, OP_READ): self._state_read,
            (GROUP_IMAGE, 0, OP_WRITE): self._state_write,
            (GROUP_IMAGE, 1, OP_WRITE): self._image_upload,
            (GROUP_IMAGE, 5, OP_WRITE): self._image_erase,
            (GROUP_ENUM, ENUM_COUNT, OP_READ): self._enum_count,
            (GROUP_ENUM, ENUM_LIST, OP_READ): self._enum_list,
            (GROUP_ENUM, ENUM_SINGLE, OP_READ): self._enum_single,
            (GROUP_ENUM, ENUM_DETAILS, OP_READ): self._enum_details,
        }
        if rtc is not None:
            self._handlers[(GROUP_OS, OS_DATETIME, OP_READ)] = self._datetime_read
            self._handlers[(GROUP_OS, OS_DATETIME, OP_WRITE)] = self._datetime_write
        if run_command is not None:
            self._handlers[(GROUP_SHELL, SHELL_EXEC, OP_WRITE)] = self._shell_exec
        # Registered groups in order, with their handler table sizes as Zephyr
        # counts them (the highest command id + 1).
        self._groups: dict[int, int] = {}
        for group, command, _op in sorted(self._handlers):
            self._groups[group] = max(self._groups.get(group, 0), command + 1)

    # -- packets -------------------------------------------------------------

    def handle(self, packet: bytes) -> bytes | None:
        """The response to one request packet; None for what deserves no answer."""
        if len(packet) < HEADER.size:
            return None
        op_byte, _flags, length, group, sequence, command = HEADER.unpack_from(packet)
        op = op_byte & 0x07
        version = (op_byte >> 3) & 0x03
        if op not in (OP_READ, OP_WRITE):
            return None   # a response (or junk): answering could start a loop
        request = _Request(op, min(version, SMP_V2), group, sequence, command)
        if version > SMP_V2:
            return self._respond(request, {"rc": UNSUPPORTED_TOO_NEW})
        body = packet[HEADER.size:]
        if len(body) < length:
            return self._respond(request, {"rc": ECORRUPT})
        try:
            payload = cbor2.loads(body[:length]) if length else {}
        except Exception:   # cbor2 raises several types for malformed input
            return self._respond(request, {"rc": EINVAL})
        if not isinstance(payload, dict):
            return self._respond(request, {"rc": EINVAL})
        handler = self._handlers.get((group, command, op))
        if handler is None:
            return self._respond(request, {"rc": ENOTSUP})
        try:
            result = handler(request, payload)
        except _BadRequest as exc:
            result = {"rc": exc.rc}
        except _GroupError as exc:
            result = self._group_error(request, exc.rc)
        return self._respond(request, result)

    @staticmethod
    def _respond(request: _Request, payload: dict) -> bytes:
        body = cbor2.dumps(payload)
        op_byte = (request.op + 1) | (request.version << 3)
        return HEADER.pack(op_byte, 0, len(body), request.group, request.sequence,
                           request.command) + body

    @staticmethod
    def _group_error(request: _Request, rc: int) -> dict:
        if request.version == SMP_V2:
            return {"err": {"group": request.group, "rc": rc}}
        return {"rc": _TRANSLATE.get(request.group, {}).get(rc, EUNKNOWN)}

    # -- OS group ------------------------------------------------------------

    def _echo(self, request: _Request, payload: dict) -> dict:
        text = _field(payload, "d", str)
        if text is None:
            raise _BadRequest()
        return {"r": text}

    def _reset(self, request: _Request, payload: dict) -> dict:
        _field(payload, "force", int)
        _field(payload, "boot_mode", int)
        self._drop_upload()
        self.request_reset()
        return {}

    def _mcumgr_params(self, request: _Request, payload: dict) -> dict:
        return {"buf_size": self.params.buf_size, "buf_count": self.params.buf_count}

    def _app_info(self, request: _Request, payload: dict) -> dict:
        spec = _field(payload, "format", str, "s")
        version = self.slots.active_version or "none"
        fields = {"s": "pledgeforge", "n": self.params.node_name, "r": version,
                  "v": version, "b": "", "m": self.params.machine, "p": "emulated",
                  "i": self.params.machine, "o": "pledgeforge"}
        if any(ch not in fields and ch != "a" for ch in spec):
            raise _GroupError(OS_ERR_INVALID_FORMAT)
        chosen = fields if "a" in spec else {k: v for k, v in fields.items() if k in spec}
        return {"output": " ".join(v for v in chosen.values() if v)}

    def _bootloader_info(self, request: _Request, payload: dict) -> dict:
        query = _field(payload, "query", str)
        if query is None:
            return {"bootloader": "MCUboot"}
        if query == "mode":
            mode = MCUBOOT_MODE_SWAP_USING_SCRATCH if self.slots.dual_slot \
                else MCUBOOT_MODE_SINGLE_SLOT
            return {"mode": mode}
        raise _GroupError(OS_ERR_QUERY_YIELDS_NO_ANSWER)

    def _datetime_read(self, request: _Request, payload: dict) -> dict:
        now = self.rtc.now()
        if now is None:
            raise _GroupError(OS_ERR_RTC_NOT_SET)
        return {"datetime": now.strftime("%Y-%m-%dT%H:%M:%S")}

    def _datetime_write(self, request: _Request, payload: dict) -> dict:
        text = _field(payload, "datetime", str, "")
        if not _DATETIME_MIN_LEN <= len(text.encode()) <= _DATETIME_MAX_LEN:
            raise _BadRequest()
        fields = []
        pos = 0
        for low, high in _DATETIME_RANGES:
            if pos >= len(text):
                raise _BadRequest()            # the text ended early
            match = _DATETIME_FIELD.match(text, pos)
            if match is None or not low <= int(match.group()) <= high:
                raise _BadRequest()
            fields.append(int(match.group()))
            pos = match.end() + 1              # one delimiter, whatever it is
        try:
            when = datetime(*fields)
        except ValueError:
            # In range field by field but not a date (31 February): the RTC refuses it.
            raise _GroupError(OS_ERR_RTC_COMMAND_FAILED) from None
        self.rtc.set(when)
        return {}

    # -- shell group ---------------------------------------------------------

    def _shell_exec(self, request: _Request, payload: dict) -> dict:
        argv = payload.get("argv")
        if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
            raise _BadRequest()
        if not argv:
            raise _GroupError(SHELL_ERR_EMPTY_COMMAND)
        if len(" ".join(argv)) > MAX_LINE:      # longer than the shell's line buffer
            raise _GroupError(SHELL_ERR_COMMAND_TOO_LONG)
        try:
            output, status = self.run_command(argv)
        except Exception:   # a broken command must not take the SMP server down
            raise _GroupError(SHELL_ERR_UNKNOWN) from None
        room = self.params.buf_size - HEADER.size - _SHELL_RESPONSE_OVERHEAD
        output = output.encode()[:room].decode(errors="ignore")
        return {"o": output, "ret": status}

    # -- enumeration group -----------------------------------------------------

    def _enum_count(self, request: _Request, payload: dict) -> dict:
        return {"count": len(self._groups)}

    def _enum_list(self, request: _Request, payload: dict) -> dict:
        return {"groups": list(self._groups)}

    def _enum_single(self, request: _Request, payload: dict) -> dict:
        index = _field(payload, "index", int, 0)
        if index > _MAX_GROUPS:
            raise _BadRequest()
        groups = list(self._groups)
        if index >= len(groups):
            raise _GroupError(ENUM_ERR_INDEX_TOO_LARGE)
        response = {"group": groups[index]}
        if index == len(groups) - 1:
            response["end"] = True
        return response

    def _enum_details(self, request: _Request, payload: dict) -> dict:
        wanted = _field(payload, "groups", list, [])
        if any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in wanted):
            raise _BadRequest()
        return {"groups": [{"group": group, "name": GROUP_NAMES[group], "handlers": handlers}
                           for group, handlers in self._groups.items()
                           if not wanted or group in wanted]}

    # -- image group ---------------------------------------------------------

    def _state_read(self, request: _Request, payload: dict) -> dict:
        images = [{"slot": row.slot, "version": row.version.smp_text, "hash": row.hash,
                   "bootable": row.bootable, "pending": row.pending, "confirmed": row.confirmed,
                   "active": row.active, "permanent": row.permanent}
                  for row in self.slots.slot_infos()]
        return {"images": images, "splitStatus": 0}

    def _state_write(self, request: _Request, payload: dict) -> dict:
        image_hash = _field(payload, "hash", bytes, b"")
        confirm = _field(payload, "confirm", bool, False)
        if not image_hash:
            if not confirm:
                raise _GroupError(IMG_ERR_INVALID_HASH)   # a test needs a hash
            slot = 0
        elif len(image_hash) not in (32, 48, 64):
            raise _GroupError(IMG_ERR_INVALID_HASH)
        else:
            slot = self.slots.find_by_hash(image_hash)
            if slot is None:
                raise _GroupError(IMG_ERR_HASH_NOT_FOUND)
        self._slot_call(self.slots.set_next_boot, slot, confirm)
        return self._state_read(request, {})

    def _image_erase(self, request: _Request, payload: dict) -> dict:
        slot = _field(payload, "slot", int, 1)
        self._drop_upload()
        self._slot_call(self.slots.erase, slot)
        return {}

    @staticmethod
    def _slot_call(method, *args):
        try:
            return method(*args)
        except SlotError as exc:
            raise _GroupError(_SLOT_CODES[exc.refusal]) from None
        except OSError:
            raise _GroupError(IMG_ERR_FLASH_WRITE_FAILED) from None

    def _drop_upload(self) -> None:
        if self._upload is not None:
            self._upload.writer.discard()
            self._upload = None

    def _image_upload(self, request: _Request, payload: dict) -> dict:
        off = _field(payload, "off", int)
        data = _field(payload, "data", bytes, b"")
        size = _field(payload, "len", int)
        sha = _field(payload, "sha", bytes, b"")
        image = _field(payload, "image", int, 0)
        upgrade = _field(payload, "upgrade", bool, False)
        try:
            return self._upload_chunk(off, data, size, sha, image, upgrade)
        except _GroupError:
            self._drop_upload()   # as Zephyr: a failed request ends the upload
            raise

    def _upload_chunk(self, off, data: bytes, size, sha: bytes, image: int,
                      upgrade: bool) -> dict:
        if self._upload is not None and self._upload.writer.discarded:
            self._upload = None    # the board was reset since: the session is gone
        if off is None:
            raise _GroupError(IMG_ERR_INVALID_OFFSET)
        if off == 0:
            if self._upload is not None and sha and sha == self._upload.sha:
                return {"off": self._upload.off}    # resume the interrupted upload
            self._check_first_chunk(data, size, sha, image, upgrade)
            if len(sha) == 32 and self.slots.holds_image(sha, size):
                # The slot already holds exactly this file (Zephyr's image check).
                self._drop_upload()
                return {"off": size, "match": True}
            self._drop_upload()
            writer = self._slot_call(self.slots.start_upload, size)
            self._upload = _Upload(sha, size, 0, writer)
        elif self._upload is None:
            return {"off": 0}
        elif off != self._upload.off:
            return {"off": self._upload.off}    # unexpected offset: say where we are
        upload = self._upload
        if upload.off + len(data) > upload.size:
            raise _GroupError(IMG_ERR_INVALID_IMAGE_DATA_OVERRUN)
        try:
            upload.writer.write(data)
        except OSError:
            raise _GroupError(IMG_ERR_FLASH_WRITE_FAILED) from None
        upload.off += len(data)
        if upload.off < upload.size:
            return {"off": upload.off}
        self._upload = None
        digest = self._slot_call(upload.writer.commit)
        response = {"off": upload.size}
        if len(upload.sha) == 32:
            response["match"] = digest == upload.sha
        return response

    def _check_first_chunk(self, data: bytes, size, sha: bytes, image: int, upgrade: bool) -> None:
        if len(data) < HEADER_SIZE:
            raise _GroupError(IMG_ERR_INVALID_IMAGE_HEADER)
        if size is None:
            raise _GroupError(IMG_ERR_INVALID_LENGTH)
        if struct.unpack_from("<I", data)[0] != IMAGE_MAGIC:
            raise _GroupError(IMG_ERR_INVALID_IMAGE_HEADER_MAGIC)
        if len(sha) > 32:
            raise _GroupError(IMG_ERR_INVALID_HASH)
        # image 0 picks the free slot; 1 names the secondary slot directly.
        if image not in (0, self.slots.upload_slot) or not self.slots.upload_slot_free:
            raise _GroupError(IMG_ERR_NO_FREE_SLOT)
        if size > self.slots.slot_size:
            raise _GroupError(IMG_ERR_INVALID_IMAGE_TOO_LARGE)
        if upgrade:
            running = self.slots.active_image
            if running is None:
                raise _GroupError(IMG_ERR_VERSION_GET_FAILED)
            offered = struct.unpack_from("<BBH", data, 20)
            if (running.image_version.major, running.image_version.minor,
                    running.image_version.revision) >= offered:
                raise _GroupError(IMG_ERR_CURRENT_VERSION_IS_NEWER)

