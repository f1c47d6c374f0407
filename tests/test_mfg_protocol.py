"""The manufacturing line protocol, sans I/O: a station and a board joined by a simulated console.

The console between them behaves as a board's UART does: it echoes what it
receives, ends lines with CRLF, prints prompts and boot messages, and (where a
test says so) drops, duplicates or garbles bytes. No I/O: the channels are
pure logic, so the console is a function over bytes.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pledgeforge.firmware.mfg_protocol import (COMMANDS, ERRORS, INSTALL_ITEMS, MAX_LINE, REPLY_TAG,
                                               REQUEST_TAG, Answered, BoardChannel, Damaged,
                                               Execute, Failed, Line, LineSplitter, ProtocolError,
                                               Refused, Send, StationChannel, decode_payload,
                                               encode_message, encode_payload, max_payload,
                                               parse_line)

IDENTITY = {"model": "gw-1", "profile": "gateway-tpm", "serial": "PF-0001", "keystore": "tpm",
            "state": "factory-new", "protocol": 1}

#: a reply for every command, as a board would give it
REPLIES = {
    "identify": IDENTITY,
    "generate": {"public-key": b"\x30\x59" + bytes(89), "tpm-public": bytes(90)},
    "read-ek": {"kind": "rsa-2048", "certificate": bytes(range(256)) * 4, "public": bytes(316)},
    "create-iak": {"public": bytes(90)},
    "activate": {"secret": bytes(32)},
    "certify": {"attest": bytes(173), "signature": bytes(72), "public": bytes(90)},
    "key-report": {"public-key": bytes(91), "local": True, "never-extractable": True,
                   "sensitive": True, "always-sensitive": True, "extractable": False},
    "csr": {"csr": bytes(400)},
    "install": {"item": "trust-anchors", "sha256": bytes(32)},
    "lock": {"locked": True},
}
ARGS = {
    "identify": {}, "generate": {"algorithm": "ec-p256"}, "read-ek": {"kind": "rsa-2048"},
    "create-iak": {"algorithm": "ec-p256"}, "activate": {"credential": bytes(range(256)) * 2},
    "certify": {"nonce": bytes(32)}, "key-report": {}, "csr": {"subject": "CN=x"},
    "install": {"item": "trust-anchors", "data": b"-----BEGIN CERTIFICATE-----\n" * 120},
    "lock": {},
}


@dataclass
class Board:
    """A board's manufacturing shell: its channel, a handler per request, and a console."""

    handler: Callable = lambda request: REPLIES[request.command]
    channel: BoardChannel = field(default_factory=BoardChannel)
    executed: list = field(default_factory=list)
    #: what the console does to the bytes the board prints (noise, drops)
    garble_out: Callable[[bytes], bytes] = lambda data: data
    #: what the line does to the bytes the station sends
    garble_in: Callable[[bytes], bytes] = lambda data: data
    #: hold requests instead of answering them (a slow key generation)
    hold: bool = False
    held: list = field(default_factory=list)

    def console(self, data: bytes) -> bytes:
        """Everything the console prints after receiving `data`: echo, CRLF, prompt, replies."""
        data = self.garble_in(data)
        printed = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # echo, as a tty does
        for event in self.channel.receive(data):
            if isinstance(event, Execute):
                self.executed.append(event.request)
                if self.hold:
                    self.held.append(event.request)
                    continue
                printed += self.answer(event.request)
            else:
                printed += event.data
        printed += b"[00:00:01.250] <inf> mfg: ready\r\nmfg> "
        return self.garble_out(printed)

    def answer(self, request) -> bytes:
        reply = self.handler(request)
        if isinstance(reply, tuple):  # (code, message): a refusal
            return self.channel.refuse(request, *reply).data
        return self.channel.answer(request, reply).data


def drive(station: StationChannel, board: Board, command: str, args=None, *, rid=None,
          lose: Callable[[int], bool] = lambda n: False, limit: int = 200):
    """Run one request to its end. `lose(n)` drops the n-th console output (a timeout follows)."""
    pending = [station.request(command, args if args is not None else ARGS[command], rid=rid)]
    outputs = 0
    for _ in range(limit):
        if not pending:
            pending.append(station.timed_out())
        item = pending.pop(0)
        if not isinstance(item, Send):
            return item
        printed = board.console(item.data)
        outputs += 1
        if lose(outputs):
            continue
        for outcome in station.receive(printed):
            if isinstance(outcome, Send):
                pending.append(outcome)
            else:
                return outcome
    raise AssertionError("the exchange did not end")


# --------------------------------------------------------------------------- the vocabulary

def test_every_command_round_trips_through_an_echoing_console():
    station, board = StationChannel(), Board()
    for command in COMMANDS:
        outcome = drive(station, board, command)
        assert outcome == Answered(command, outcome.rid, REPLIES[command], 1), command
        assert board.executed[-1].args == ARGS[command]
    assert [r.command for r in board.executed] == list(COMMANDS)
    assert station.retries == 0 and station.damaged_lines == 0


def test_the_vocabulary_covers_manufacturing():
    assert set(COMMANDS) == {"identify", "generate", "read-ek", "create-iak", "activate", "certify",
                             "key-report", "csr", "install", "lock"}
    assert set(INSTALL_ITEMS) == {"idevid-certificate", "iak-certificate", "trust-anchors",
                                  "cloud-registrar", "firmware-key"}
    assert {"corrupt", "locked", "bad-request", "unknown-command", "rid-reused"} <= set(ERRORS)
    assert COMMANDS["generate"].slow and not COMMANDS["identify"].slow


def test_lines_are_ascii_checksummed_and_fit_a_console_buffer():
    lines = encode_message(REQUEST_TAG, 7, "r1", "install", encode_payload(ARGS["install"]))
    assert len(lines) > 10
    for index, line in enumerate(lines, 1):
        assert line.endswith(b"\r\n") and len(line) <= 256 and line.isascii()
        body, crc = line[:-2].rsplit(b" ", 1)
        assert crc == f"{zlib.crc32(body):08x}".encode()
        assert body.startswith(f"mfg 7 r1 install {index}/{len(lines)} ".encode())
    parsed = parse_line(lines[0][:-2], REQUEST_TAG)
    assert isinstance(parsed, Line) and (parsed.seq, parsed.rid, parsed.word) == (7, "r1", "install")


def test_a_payload_too_large_for_one_message_is_refused_before_sending():
    station = StationChannel()
    with pytest.raises(ProtocolError, match="at most 255"):
        station.request("install", {"item": "trust-anchors", "data": bytes(max_payload() + 1)})
    assert not station.busy
    assert max_payload() > 20_000
    outcome = drive(station, Board(), "install", {"item": "trust-anchors",
                                                  "data": bytes(max_payload() - 100)}, limit=1000)
    assert isinstance(outcome, Answered)


def test_station_refuses_to_send_what_the_vocabulary_does_not_allow():
    station = StationChannel()
    with pytest.raises(ProtocolError, match="unknown command 'format-flash'"):
        station.request("format-flash")
    with pytest.raises(ProtocolError, match="lacks 'nonce'"):
        station.request("certify", {})
    with pytest.raises(ProtocolError, match="'nonce' must be bytes, not str"):
        station.request("certify", {"nonce": "00"})
    station.request("identify", {})
    with pytest.raises(ProtocolError, match="still outstanding"):
        station.request("identify", {})


def test_board_answers_bad_requests_with_their_error_codes():
    board = BoardChannel()
    bad_args = encode_message(REQUEST_TAG, 3, "rA", "certify", encode_payload({"nonce": 5}))
    unknown = encode_message(REQUEST_TAG, 4, "rB", "format-flash", encode_payload({}))
    not_cbor = encode_message(REQUEST_TAG, 5, "rC", "identify", b"\xa0\xff")
    codes = []
    for lines in (bad_args, unknown, not_cbor):
        (event,) = board.receive(b"".join(lines))
        reply = [parse_line(raw, REPLY_TAG) for raw in LineSplitter().feed(event.data)]
        assert {line.word for line in reply} == {"err"}
        codes.append(decode_payload(b"".join(line.data for line in reply))["code"])
    assert codes == ["bad-request", "unknown-command", "bad-request"]


def test_a_refusal_reaches_the_station_once_and_is_not_retried():
    board = Board(handler=lambda request: ("locked", "this board is locked; it was provisioned "
                                                     "on 2026-11-30"))
    outcome = drive(StationChannel(), board, "generate")
    assert isinstance(outcome, Refused) and outcome.code == "locked"
    assert "locked" in outcome.message and outcome.attempts == 1
    assert len(board.executed) == 1


# --------------------------------------------------------------------------- retries and idempotence

def test_a_lost_reply_is_retried_and_the_key_is_generated_once():
    station, board = StationChannel(), Board()
    outcome = drive(station, board, "generate", lose=lambda n: n == 1)
    assert isinstance(outcome, Answered) and outcome.attempts == 2
    assert outcome.reply == REPLIES["generate"]
    # The second attempt carried the same request id; the board answered from memory.
    assert len(board.executed) == 1 and station.retries == 1


def test_a_retry_while_the_board_is_still_generating_does_not_start_a_second_key():
    station, board = StationChannel(), Board(hold=True)
    first = station.request("generate", ARGS["generate"])
    assert station.receive(board.console(first.data)) == []  # generating: no answer yet
    retry = station.timed_out()
    assert station.receive(board.console(retry.data)) == []  # still generating: ignored
    assert len(board.executed) == 1
    (request,) = board.held
    # The answer goes to the latest attempt, the one the station listens for.
    (outcome,) = station.receive(board.answer(request))
    assert isinstance(outcome, Answered) and outcome.attempts == 2


def test_the_same_request_id_for_another_request_is_refused():
    station, board = StationChannel(), Board()
    drive(station, board, "generate", rid="gen-1")
    outcome = drive(station, board, "generate", {"algorithm": "rsa-2048"}, rid="gen-1")
    assert isinstance(outcome, Refused) and outcome.code == "rid-reused"
    assert len(board.executed) == 1


def test_a_request_id_repeated_by_a_restarted_station_gets_the_first_answer():
    board = Board()
    first = drive(StationChannel(), board, "generate", rid="run7-generate")
    again = drive(StationChannel(), board, "generate", rid="run7-generate")
    assert first.reply == again.reply and len(board.executed) == 1


def test_retries_are_bounded():
    station = StationChannel(max_attempts=3)
    silent = Board(garble_out=lambda data: b"")
    outcome = drive(station, silent, "identify")
    assert isinstance(outcome, Failed) and outcome.attempts == 3
    assert "gave up after 3 attempts" in outcome.reason
    assert not station.busy


def test_a_damaged_reply_is_retried_at_once():
    flipped = []

    def flip_once(data: bytes) -> bytes:
        at = data.find(b"@mfg")
        if at < 0 or flipped:
            return data
        flipped.append(at)
        return data[:at + 20] + bytes([data[at + 20] ^ 0x01]) + data[at + 21:]

    station, board = StationChannel(), Board(garble_out=flip_once)
    outcome = drive(station, board, "read-ek")
    assert outcome == Answered("read-ek", outcome.rid, REPLIES["read-ek"], 2)
    assert station.damaged_lines == 1 and len(board.executed) == 1


def test_a_damaged_request_chunk_is_asked_for_again():
    hits = []

    def garble_second_line(data: bytes) -> bytes:
        if b" install 2/" in data and not hits:
            at = data.index(b" install 2/") + 20
            hits.append(at)
            return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:]  # a letter's case
        return data

    station, board = StationChannel(), Board(garble_in=garble_second_line)
    outcome = drive(station, board, "install")
    # The board asked for chunk 2 again; the upload went on from there, in one attempt.
    assert isinstance(outcome, Answered) and outcome.attempts == 1 and hits
    assert station.resent_chunks == 1
    assert board.executed[0].args == ARGS["install"] and len(board.executed) == 1


def test_a_request_whose_first_line_is_damaged_is_answered_corrupt_and_sent_again():
    hits = []

    def garble_first(data: bytes) -> bytes:
        if not hits:
            hits.append(True)
            return data.replace(b"identify 1/1 ", b"identify 1/1 A", 1)
        return data

    station, board = StationChannel(), Board(garble_in=garble_first)
    outcome = drive(station, board, "identify")
    assert isinstance(outcome, Answered) and outcome.attempts == 2


def test_a_truncated_reply_is_detected():
    station, board = StationChannel(), Board()
    send = station.request("identify", {})
    printed = board.console(send.data)
    cut = printed[:printed.index(b"@mfg") + 30] + b"\r\n"  # the line ends early
    (outcome,) = station.receive(cut)
    assert isinstance(outcome, Send)  # the next attempt
    assert station.damaged_lines == 1


def test_a_late_reply_of_an_earlier_attempt_is_ignored():
    station, board = StationChannel(), Board()
    first = station.request("identify", {})
    late = board.console(first.data)
    retry = station.timed_out()
    assert station.receive(late) == []  # seq of attempt 1: not what the station waits for
    (outcome,) = station.receive(board.console(retry.data))
    assert isinstance(outcome, Answered) and outcome.attempts == 2


def test_a_well_checksummed_but_malformed_reply_fails_without_retrying():
    station = StationChannel()
    send = station.request("identify", {})
    (line,) = [parse_line(raw, REQUEST_TAG) for raw in LineSplitter().feed(send.data)]
    bogus = encode_message(REPLY_TAG, line.seq, line.rid, "ok", encode_payload({"model": 7}))
    (outcome,) = station.receive(b"".join(bogus))
    assert isinstance(outcome, Failed) and "malformed" in outcome.reason and outcome.attempts == 1


def test_noise_without_line_ends_cannot_fill_memory():
    splitter = LineSplitter()
    assert splitter.feed(b"x" * (MAX_LINE * 3)) == []
    assert splitter.feed(b"tail\r\nnext line\n") == [b"next line"]
    assert len(splitter._buffer) == 0


# --------------------------------------------------------------------------- never misread (properties)

def _reply_bytes(command: str, reply: dict, *, refuse: tuple | None = None):
    """A station with `command` outstanding, and the exact bytes a board prints in answer."""
    station, board = StationChannel(random_bytes=lambda n: bytes(n)), BoardChannel()
    send = station.request(command, ARGS[command])
    printed = b""
    pending = [send]
    while pending:
        for event in board.receive(pending.pop().data):
            if isinstance(event, Execute):
                done = (board.refuse(event.request, *refuse) if refuse
                        else board.answer(event.request, reply))
                return station, printed + b"mfg> " + done.data
            (follow,) = station.receive(event.data)  # a `next`: the station's next chunk
            pending.append(follow)
    raise AssertionError("no Execute")


@st.composite
def garbled(draw, data: bytes):
    """`data` after a few random insertions, deletions and duplications of bytes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "drop", "duplicate", "flip"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif out and kind == "drop":
            del out[at:at + draw(st.integers(1, 4))]
        elif out and kind == "duplicate":
            out[at:at] = out[at:at + draw(st.integers(1, 8))]
        elif out:
            out[at] ^= draw(st.integers(1, 255))
    return bytes(out)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(data=st.data(), command=st.sampled_from(["identify", "certify", "read-ek", "csr"]))
def test_a_garbled_reply_decodes_to_the_original_or_not_at_all(data, command):
    station, clean = _reply_bytes(command, REPLIES[command])
    noisy = data.draw(garbled(clean))
    for outcome in station.receive(noisy + b"\r\n"):
        assert not isinstance(outcome, (Refused, Failed)), outcome
        if isinstance(outcome, Answered):
            assert outcome.reply == REPLIES[command]


@PROPERTY
@given(data=st.data())
def test_a_garbled_refusal_never_turns_into_another_answer(data):
    station, clean = _reply_bytes("generate", {}, refuse=("locked", "board is locked"))
    noisy = data.draw(garbled(clean))
    for outcome in station.receive(noisy + b"\r\n"):
        assert not isinstance(outcome, (Answered, Failed)), outcome
        if isinstance(outcome, Refused):
            assert (outcome.code, outcome.message) == ("locked", "board is locked")


@PROPERTY
@given(noise=st.binary(max_size=2000))
def test_pure_noise_never_decodes_as_a_reply(noise):
    station = StationChannel()
    station.request("identify", {})
    for outcome in station.receive(noise):
        assert isinstance(outcome, (Send, Failed))


@PROPERTY
@given(noise=st.lists(st.sampled_from([b"@mfg ", b"@mfg 1 a ok 1/1 ", b" ", b"oA", b"0", b"\r\n",
                                       b"/", b"ok", b"err", b"00000000", b"1"]), max_size=60))
def test_tag_shaped_noise_never_decodes_as_a_reply(noise):
    station = StationChannel(random_bytes=lambda n: bytes(n))
    station.request("identify", {})
    for outcome in station.receive(b"".join(noise)):
        assert isinstance(outcome, (Send, Failed))


@PROPERTY
@given(data=st.data(), command=st.sampled_from(["install", "activate", "certify"]))
def test_a_garbled_request_is_carried_out_as_sent_or_not_at_all(data, command):
    lines = encode_message(REQUEST_TAG, 11, "rid-1", command, encode_payload(ARGS[command]))
    board = BoardChannel()
    executed = []
    for index, line in enumerate(lines):
        # Garble one chunk at random; the others arrive clean.
        chunk = data.draw(garbled(line)) + b"\r\n" if data.draw(st.booleans()) else line
        executed += [e.request for e in board.receive(chunk) if isinstance(e, Execute)]
    for request in executed:
        assert (request.command, request.args) == (command, ARGS[command])


def test_damaged_lines_name_what_they_seem_to_be():
    line = encode_message(REPLY_TAG, 42, "abc", "ok", encode_payload({"x": 1}))[0][:-2]
    damaged = parse_line(line[:-1] + (b"0" if line[-1:] != b"0" else b"1"), REPLY_TAG)
    assert damaged == Damaged(42, "abc", "checksum mismatch")
    assert parse_line(b"boot: mfg mode", REPLY_TAG) is None
    assert parse_line(b"mfg> @mfg 42 abc ok 1/1 oA", REPLY_TAG).reason == "a field is out of its grammar"


def test_a_noisy_line_still_recovers_after_many_exchanges():
    """A console that garbles one output in five: every request still ends Answered, exactly."""
    rng = random.Random(1234)

    def sometimes(data: bytes) -> bytes:
        if rng.random() < 0.2 and data:
            at = rng.randrange(len(data))
            return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        return data

    station = StationChannel(max_attempts=8)
    board = Board(garble_out=sometimes, garble_in=sometimes)
    for command in list(COMMANDS) * 3:
        outcome = drive(station, board, command)
        assert isinstance(outcome, Answered) and outcome.reply == REPLIES[command], outcome
    assert len(board.executed) == len(COMMANDS) * 3
    assert station.retries > 0
