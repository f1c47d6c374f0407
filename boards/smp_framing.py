"""SMP over a text console: the line framing Zephyr's console/shell transports use.

A packet travels as `[u16 big-endian length][packet][u16 CRC16/XMODEM of packet]`,
base64-encoded and cut into lines. The first line starts with the bytes 06 09,
each continuation with 04 14; every line ends with a newline and its base64 text
decodes on its own (lines carry a multiple of 4 characters, padding only at the
end). The length counts the packet and its CRC. Text and frames share the wire;
the console (console.py) picks the frame lines out of the text and hands them here.

Encoding is the smp package's (what smpclient and smpmgr send with). Decoding is
ours: smp.packet.decode expects a clean run of frame lines and raises on the first
bad one, has no bound on the announced length and reads base64 leniently, while a
console carries text and line noise between frames and must drop a bad frame,
bound its buffer and pick up at the next start line.

Clients (smpclient's serial transport, mcumgr) cut lines at 128 bytes: 2
delimiter bytes, 124 base64 characters, the newline. The server's reassembly
buffer bounds a packet to `buf_size - 4` bytes (the length and CRC share it).
"""

from __future__ import annotations

import base64
import binascii
import struct

from smp import packet as smp_packet

START = smp_packet.START_DELIMITER
CONTINUE = smp_packet.CONTINUE_DELIMITER
DELIMITER_SIZE = smp_packet.DELIMITER_SIZE
DEFAULT_LINE_LENGTH = 128
DEFAULT_MAX_PACKET = 2048 - 4

_U16 = struct.Struct(">H")
#: The delimiter, one base64 quantum, the newline, and smp.packet.encode's spare byte.
_MIN_LINE_LENGTH = DELIMITER_SIZE + 4 + 1 + 1

#: CRC-16/XMODEM (poly 0x1021, init 0), the checksum SMP serial frames carry.
crc16_xmodem = smp_packet.crc16_func


def encode_smp_frames(packet: bytes, line_length: int = DEFAULT_LINE_LENGTH) -> bytes:
    """The framed lines that carry `packet` over the console, ready to write
    (smp.packet.encode: each line shorter than `line_length`)."""
    if line_length < _MIN_LINE_LENGTH:
        # Below this a line has no room for base64 and smp.packet.encode never ends.
        raise ValueError(f"SMP line length must be at least {_MIN_LINE_LENGTH}, not {line_length}")
    return b"".join(smp_packet.encode(packet, line_length=line_length))


class SmpLineDecoder:
    """Reassembles packets from framed lines; anything wrong drops the frame.

    `feed_line` takes one line (delimiter, base64, newline; a CR before the
    newline is tolerated) and returns the packet once its last line arrived.
    Bad base64, a bad CRC, an oversize length or a continuation without a start
    all give None and reset the decoder, as Zephyr's transport drops a bad frame.
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self._buffer = bytearray()
        self._expected: int | None = None   # packet + CRC bytes the frame announced

    @property
    def in_frame(self) -> bool:
        return self._expected is not None

    def reset(self) -> None:
        self._buffer.clear()
        self._expected = None

    def feed_line(self, line: bytes) -> bytes | None:
        delimiter = bytes(line[:DELIMITER_SIZE])
        if delimiter == START:
            self.reset()   # a new start abandons any frame in progress
        elif delimiter != CONTINUE or self._expected is None:
            self.reset()
            return None
        chunk = self._decode(line[DELIMITER_SIZE:])
        if chunk is None:
            self.reset()
            return None
        if delimiter == START:
            if len(chunk) < 2:
                return self._drop()
            (length,) = _U16.unpack_from(chunk)
            # The length counts packet + CRC; more than the buffer holds is garbage.
            if length < 2 or length - 2 > self.max_packet:
                return self._drop()
            self._expected = length
            chunk = chunk[2:]
        self._buffer += chunk
        if len(self._buffer) < self._expected:
            return None
        if len(self._buffer) > self._expected:
            return self._drop()
        packet = bytes(self._buffer[:-2])
        (crc,) = _U16.unpack_from(self._buffer, len(self._buffer) - 2)
        self.reset()
        return packet if crc16_xmodem(packet) == crc else None

    def _drop(self) -> None:
        self.reset()
        return None

    @staticmethod
    def _decode(text: bytes) -> bytes | None:
        text = text.rstrip(b"\r\n")
        if not text or len(text) % 4:
            return None
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
