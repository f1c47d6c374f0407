"""SMP console framing against the smp package's own encoder and decoder (what smpclient uses)."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smp import packet as smppacket

from pledgeforge.boards.smp_framing import (CONTINUE, START, SmpLineDecoder, crc16_xmodem,
                                            encode_smp_frames)


def client_lines(packet: bytes, line_length: int = 128) -> list[bytes]:
    """The lines smpclient's serial transport writes for `packet`."""
    return list(smppacket.encode(packet, line_length=line_length))


def client_decode(data: bytes) -> bytes:
    """What smpclient makes of the lines we write."""
    decoder = smppacket.decode()
    next(decoder)
    for line in data.splitlines(keepends=True):
        try:
            decoder.send(line)
        except StopIteration as done:
            return done.value
    raise AssertionError("the client decoder wanted more lines")


def feed_all(decoder: SmpLineDecoder, lines) -> list[bytes]:
    return [p for p in (decoder.feed_line(line) for line in lines) if p is not None]


def test_crc_is_xmodem():
    # The check value of CRC-16/XMODEM.
    assert crc16_xmodem(b"123456789") == 0x31C3


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2044), st.sampled_from([8, 16, 64, 127, 128, 256]))
def test_decodes_what_smpclient_sends(packet, line_length):
    decoder = SmpLineDecoder(max_packet=2044)
    assert feed_all(decoder, client_lines(packet, line_length)) == [packet]
    assert not decoder.in_frame


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=4000))
def test_smpclient_decodes_what_we_send(packet):
    framed = encode_smp_frames(packet)
    lines = framed.splitlines(keepends=True)
    assert all(len(line) <= 128 for line in lines)
    assert lines[0].startswith(START) and all(line.startswith(CONTINUE) for line in lines[1:])
    assert client_decode(framed) == packet


def test_known_frame_matches_smp_reference():
    # Same bytes as smp.packet.encode: our encoder is byte-compatible at 128-byte lines.
    packet = bytes(range(256)) * 3
    assert encode_smp_frames(packet) == b"".join(client_lines(packet, 128))


def test_bad_crc_is_dropped_and_decoder_recovers():
    packet = b"\x00\x00\x00\x02\x00\x00\x01\x00\xa0"
    body = struct.pack(">H", len(packet) + 2) + packet + struct.pack(">H", crc16_xmodem(packet) ^ 1)
    decoder = SmpLineDecoder()
    assert decoder.feed_line(START + base64.b64encode(body) + b"\n") is None
    assert not decoder.in_frame
    assert feed_all(decoder, client_lines(packet)) == [packet]


def test_garbage_lines_never_raise_and_reset():
    decoder = SmpLineDecoder()
    lines = [b"", b"\n", START + b"\n", START + b"!!!!\n", START + b"QQ\n", CONTINUE + b"AAAA\n",
             START + b"AA==\n", START + base64.b64encode(b"\xff\xff" + b"x" * 10) + b"\n",
             START + base64.b64encode(b"\x00\x01") + b"\n", b"hello world\r\n", b"\x06\x09\xff\n"]
    for line in lines:
        assert decoder.feed_line(line) is None
    assert feed_all(decoder, client_lines(b"12345678")) == [b"12345678"]


def test_oversize_length_is_refused():
    decoder = SmpLineDecoder(max_packet=100)
    assert feed_all(decoder, client_lines(b"x" * 101)) == []
    assert feed_all(decoder, client_lines(b"x" * 100)) == [b"x" * 100]


def test_frame_longer_than_announced_is_dropped():
    packet = b"abcdefgh"
    lines = client_lines(packet, 16)
    decoder = SmpLineDecoder()
    # An extra continuation line after the frame completed is a stray and ignored;
    # one spliced in before the last line overruns the length and drops the frame.
    spliced = lines[:-1] + [CONTINUE + b"AAAA\n"] + lines[-1:]
    assert feed_all(decoder, spliced) == []
    assert feed_all(decoder, lines + [CONTINUE + b"AAAA\n"]) == [packet]


def test_new_start_abandons_unfinished_frame():
    first = client_lines(b"a" * 300)
    second = client_lines(b"b" * 20)
    decoder = SmpLineDecoder()
    assert feed_all(decoder, first[:2] + second) == [b"b" * 20]


def test_frame_lines_as_the_console_hands_them_over():
    # The console strips the line end; a CR left by a CRLF client is tolerated too.
    lines = client_lines(b"console frame " * 30)
    decoder = SmpLineDecoder()
    assert feed_all(decoder, [line.rstrip(b"\n") for line in lines]) == [b"console frame " * 30]
    assert feed_all(decoder, [line.rstrip(b"\n") + b"\r" for line in lines]) == [b"console frame " * 30]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200).map(lambda b: START + b), max_size=10),
       st.lists(st.binary(max_size=200).map(lambda b: CONTINUE + b), max_size=10))
def test_random_frame_lines_never_raise(starts, continuations):
    decoder = SmpLineDecoder()
    for line in starts + continuations + starts:
        decoder.feed_line(line)
    assert feed_all(decoder, client_lines(b"still alive")) == [b"still alive"]


def test_line_length_without_room_for_base64_is_refused():
    assert encode_smp_frames(b"ab", line_length=8).count(b"\n") == 2
    with pytest.raises(ValueError, match="at least 8"):
        encode_smp_frames(b"ab", line_length=7)
