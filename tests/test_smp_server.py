"""The SMP server, driven with requests built and responses parsed by the smp package."""

from __future__ import annotations

import hashlib
import struct

import cbor2
import pytest
from smp import enumeration_management as enum
from smp import error as smperr
from smp import header as smphdr
from smp import image_management as img
from smp import os_management as osm
from smp import shell_management as shell

from firmware_images import build_images, make_slots
from pledgeforge.boards.rtc import Rtc
from pledgeforge.boards.smp_server import SmpParams, SmpServer

V1 = smphdr.Version.V1
CHUNK = 1500


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return build_images(tmp_path_factory.mktemp("images"))


class Board:
    """Slots booted once and an SMP server in front of them."""

    def __init__(self, tmp_path, images, slots=2, **parts):
        self.slots = make_slots(tmp_path / "state", images, slots)
        self.slots.boot(lambda line: None)
        self.resets = 0
        self.server = SmpServer(self.slots, self._reset, SmpParams(buf_size=4096), **parts)

    def _reset(self):
        self.resets += 1

    def ask(self, request, *response_types):
        raw = self.server.handle(request.BYTES)
        assert raw is not None
        header = smphdr.Header.loads(raw[:8])
        assert header.sequence == request.header.sequence
        assert header.op == request.header.op + 1
        assert header.length == len(raw) - 8
        for kind in response_types:
            try:
                return kind.loads(raw)
            except Exception:
                continue
        raise AssertionError(f"unexpected response {cbor2.loads(raw[8:])!r}")

    def upload(self, off, data, **extra):
        request = img.ImageUploadWriteRequest(off=off, data=data, **extra)
        return self.ask(request, img.ImageUploadWriteResponse, img.ImageManagementErrorV2)

    def upload_all(self, image_bytes, start=0, sha=True):
        off = start
        first = {"len": len(image_bytes)}
        if sha:
            first["sha"] = hashlib.sha256(image_bytes).digest()
        response = None
        while off < len(image_bytes) or response is None:
            response = self.upload(off, image_bytes[off:off + CHUNK], **(first if off == 0 else {}))
            assert isinstance(response, img.ImageUploadWriteResponse), response
            off = response.off
        return response


@pytest.fixture
def board(tmp_path, images):
    return Board(tmp_path, images)


def image_error(response) -> int:
    assert isinstance(response, img.ImageManagementErrorV2), response
    assert response.err.group == smphdr.GroupId.IMAGE_MANAGEMENT
    return response.err.rc


def test_os_group(board):
    echo = board.ask(osm.EchoWriteRequest(d="hello board"), osm.EchoWriteResponse)
    assert echo.r == "hello board"
    params = board.ask(osm.MCUMgrParametersReadRequest(), osm.MCUMgrParametersReadResponse)
    assert (params.buf_size, params.buf_count) == (4096, 4)
    reset = board.ask(osm.ResetWriteRequest(), osm.ResetWriteResponse)
    assert isinstance(reset, osm.ResetWriteResponse) and board.resets == 1
    info = board.ask(osm.OSApplicationInfoReadRequest(format="sr"), osm.OSApplicationInfoReadResponse)
    assert info.output == "pledgeforge 1.0.0"
    bad = board.ask(osm.OSApplicationInfoReadRequest(format="z"), osm.OSManagementErrorV2)
    assert bad.err.rc == osm.OS_MGMT_RET_RC.INVALID_FORMAT
    boot = board.ask(osm.BootloaderInformationReadRequest(), osm.BootloaderInformationReadResponse)
    assert boot.bootloader == "MCUboot"


def test_state_read_reports_the_factory_image(board, images):
    states = board.ask(img.ImageStatesReadRequest(), img.ImageStatesReadResponse)
    assert len(states.images) == 1
    row = states.images[0]
    assert (row.slot, row.version, row.active, row.confirmed, row.pending) == \
        (0, "1.0.0", True, True, False)
    assert row.hash == board.slots.active_image.hash


def test_upload_test_confirm(board, images):
    final = board.upload_all(images.v2)
    assert final.off == len(images.v2) and final.match is True
    states = board.ask(img.ImageStatesReadRequest(), img.ImageStatesReadResponse)
    new = [r for r in states.images if r.slot == 1][0]
    assert new.version == "1.1.0" and not new.pending

    marked = board.ask(img.ImageStatesWriteRequest(hash=new.hash), img.ImageStatesWriteResponse)
    assert [r.pending for r in marked.images if r.slot == 1] == [True]
    board.ask(osm.ResetWriteRequest(), osm.ResetWriteResponse)
    assert board.resets == 1
    assert board.slots.boot(lambda line: None).version == "1.1.0"
    board.ask(img.ImageStatesWriteRequest(confirm=True), img.ImageStatesWriteResponse)
    assert board.slots.boot(lambda line: None).version == "1.1.0"


def test_resent_chunk_is_answered_with_the_expected_offset(board, images):
    data = images.v2
    first = board.upload(0, data[:CHUNK], len=len(data), sha=hashlib.sha256(data).digest())
    assert first.off == CHUNK
    again = board.upload(CHUNK, data[CHUNK:2 * CHUNK])
    assert again.off == 2 * CHUNK
    # The answer to that chunk was lost; the client sends it again.
    repeat = board.upload(CHUNK, data[CHUNK:2 * CHUNK])
    assert repeat.off == 2 * CHUNK
    # A chunk from the future is dropped too.
    ahead = board.upload(5 * CHUNK, data[5 * CHUNK:6 * CHUNK])
    assert ahead.off == 2 * CHUNK
    final = board.upload_all(data, start=2 * CHUNK)
    assert final.match is True
    assert board.slots.holds_image(hashlib.sha256(data).digest(), len(data))


def test_off_zero_with_same_sha_resumes(board, images):
    data = images.v2
    sha = hashlib.sha256(data).digest()
    board.upload(0, data[:CHUNK], len=len(data), sha=sha)
    board.upload(CHUNK, data[CHUNK:2 * CHUNK])
    resumed = board.upload(0, data[:CHUNK], len=len(data), sha=sha)
    assert resumed.off == 2 * CHUNK
    assert board.upload_all(data, start=resumed.off).match is True


def test_off_zero_without_sha_starts_over(board, images):
    data = images.v2
    board.upload(0, data[:CHUNK], len=len(data), sha=hashlib.sha256(data).digest())
    board.upload(CHUNK, data[CHUNK:2 * CHUNK])
    restarted = board.upload(0, data[:CHUNK], len=len(data))
    assert restarted.off == CHUNK
    final = board.upload_all(data, start=CHUNK, sha=False)
    assert final.match is None   # no sha given, nothing to match
    assert board.slots.holds_image(hashlib.sha256(data).digest(), len(data))


def test_continuation_without_upload_is_told_offset_zero(board, images):
    assert board.upload(4096, b"x" * 10).off == 0


def test_already_uploaded_image_is_not_sent_again(board, images):
    board.upload_all(images.v2)
    data = images.v2
    again = board.upload(0, data[:CHUNK], len=len(data), sha=hashlib.sha256(data).digest())
    assert (again.off, again.match) == (len(data), True)


def test_upload_errors(board, images):
    data = images.v2
    sha = hashlib.sha256(data).digest()
    assert image_error(board.upload(0, data[:16], len=len(data))) == \
        img.IMG_MGMT_ERR.INVALID_IMAGE_HEADER
    assert image_error(board.upload(0, data[:CHUNK])) == img.IMG_MGMT_ERR.INVALID_LENGTH
    assert image_error(board.upload(0, b"\x00" * 64, len=64)) == \
        img.IMG_MGMT_ERR.INVALID_IMAGE_HEADER_MAGIC
    assert image_error(board.upload(0, data[:CHUNK], len=10**7)) == \
        img.IMG_MGMT_ERR.INVALID_IMAGE_TOO_LARGE
    assert image_error(board.upload(0, data[:CHUNK], len=len(data), image=2)) == \
        img.IMG_MGMT_ERR.NO_FREE_SLOT
    assert image_error(board.upload(0, data[:CHUNK], len=len(data), sha=b"s" * 33)) == \
        img.IMG_MGMT_ERR.INVALID_HASH
    # Downgrade refused when the client asks for upgrade-only.
    assert image_error(board.upload(0, images.v1[:CHUNK], len=len(images.v1),
                                    upgrade=True)) == img.IMG_MGMT_ERR.CURRENT_VERSION_IS_NEWER
    # Overrun ends the upload: a continuation is then told offset 0.
    board.upload(0, data[:CHUNK], len=CHUNK + 10, sha=sha)
    assert image_error(board.upload(CHUNK, data[CHUNK:2 * CHUNK])) == \
        img.IMG_MGMT_ERR.INVALID_IMAGE_DATA_OVERRUN
    assert board.upload(CHUNK, data[CHUNK:2 * CHUNK]).off == 0


def test_upload_refused_while_an_image_is_pending(board, images):
    board.upload_all(images.v2)
    states = board.ask(img.ImageStatesReadRequest(), img.ImageStatesReadResponse)
    board.ask(img.ImageStatesWriteRequest(hash=states.images[1].hash), img.ImageStatesWriteResponse)
    data = images.v3
    assert image_error(board.upload(0, data[:CHUNK], len=len(data))) == img.IMG_MGMT_ERR.NO_FREE_SLOT
    assert image_error(board.ask(img.ImageEraseRequest(slot=1), img.ImageEraseResponse,
                                 img.ImageManagementErrorV2)) == img.IMG_MGMT_ERR.NO_FREE_SLOT


def test_state_write_errors(board, images):
    def write(**fields):
        return board.ask(img.ImageStatesWriteRequest(**fields), img.ImageStatesWriteResponse,
                         img.ImageManagementErrorV2)
    assert image_error(write()) == img.IMG_MGMT_ERR.INVALID_HASH
    assert image_error(write(hash=b"\x01" * 5)) == img.IMG_MGMT_ERR.INVALID_HASH
    assert image_error(write(hash=b"\x01" * 32)) == img.IMG_MGMT_ERR.HASH_NOT_FOUND
    active = board.slots.active_image.hash
    assert image_error(write(hash=active)) == img.IMG_MGMT_ERR.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED
    assert isinstance(write(confirm=True), img.ImageStatesWriteResponse)


def test_erase(board, images):
    board.upload_all(images.v2)
    erased = board.ask(img.ImageEraseRequest(slot=1), img.ImageEraseResponse)
    assert isinstance(erased, img.ImageEraseResponse)
    assert [r.slot for r in board.slots.slot_infos()] == [0]
    for slot, code in ((0, img.IMG_MGMT_ERR.NO_FREE_SLOT), (7, img.IMG_MGMT_ERR.INVALID_SLOT)):
        refused = board.ask(img.ImageEraseRequest(slot=slot), img.ImageEraseResponse,
                            img.ImageManagementErrorV2)
        assert image_error(refused) == code


def test_version_1_clients_get_translated_codes(board, images):
    data = images.v2
    response = board.ask(img.ImageUploadWriteRequest(off=0, data=data[:CHUNK], version=V1),
                         img.ImageManagementErrorV1)
    assert response.header.version == V1
    assert response.rc == smperr.MGMT_ERR.EINVAL        # INVALID_LENGTH, translated
    states = board.ask(img.ImageStatesReadRequest(version=V1), img.ImageStatesReadResponse)
    assert states.header.version == V1 and states.images[0].version == "1.0.0"


def raw(op: int, group: int, command: int, body: bytes, version: int = 1, length: int | None = None):
    length = len(body) if length is None else length
    return struct.pack(">BBHHBB", op | (version << 3), 0, length, group, 42, command) + body


def decode(response: bytes) -> tuple[int, dict]:
    return response[0] >> 3 & 3, cbor2.loads(response[8:])


@pytest.mark.parametrize("packet,expected", [
    (raw(0, 2, 0, cbor2.dumps({})), {"rc": 8}),                      # unsupported group
    (raw(0, 0, 99, cbor2.dumps({})), {"rc": 8}),                     # unsupported command
    (raw(2, 0, 6, cbor2.dumps({})), {"rc": 8}),                      # params is read-only
    (raw(2, 0, 0, b"\xff\x00"), {"rc": 3}),                          # not CBOR
    (raw(2, 0, 0, cbor2.dumps([1, 2])), {"rc": 3}),                  # not a map
    (raw(2, 0, 0, cbor2.dumps({"d": 5})), {"rc": 3}),                # wrong type
    (raw(2, 1, 1, cbor2.dumps({"off": -1, "data": b""})), {"rc": 3}),
    (raw(2, 1, 1, cbor2.dumps({"off": True, "data": b""})), {"rc": 3}),
    (raw(2, 0, 0, cbor2.dumps({"d": "x"}), length=50), {"rc": 9}),  # length beyond packet
    (raw(2, 1, 1, cbor2.dumps({"data": b""})), {"err": {"group": 1, "rc": 20}}),  # no offset
])
def test_malformed_requests(board, packet, expected):
    version, body = decode(board.server.handle(packet))
    assert body == expected and version == 1


def test_too_new_version_and_ignored_packets(board):
    response = board.server.handle(raw(0, 0, 6, cbor2.dumps({}), version=2))
    assert decode(response) == (1, {"rc": 13})
    assert board.server.handle(b"\x00\x01") is None
    assert board.server.handle(raw(1, 0, 0, cbor2.dumps({"r": "x"}))) is None   # a response
    assert board.server.handle(raw(3, 0, 0, cbor2.dumps({}))) is None


def test_single_slot_board_refuses_a_bad_upload(tmp_path, images):
    board = Board(tmp_path, images, slots=1)
    data = images.tampered
    off = 0
    response = None
    while True:
        first = {"len": len(data)} if off == 0 else {}
        response = board.upload(off, data[off:off + CHUNK], **first)
        if not isinstance(response, img.ImageUploadWriteResponse):
            break
        off = response.off
    assert image_error(response) == img.IMG_MGMT_ERR.UNKNOWN
    assert board.slots.boot(lambda line: None).version == "1.0.0"
    assert board.upload_all(images.v2).off == len(images.v2)
    assert board.slots.boot(lambda line: None).version == "1.1.0"


# -- datetime, shell exec, enumeration ------------------------------------------------

class Clock:
    """A clock the test moves by hand, so the RTC's running can be checked exactly."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_datetime_is_unset_until_written_then_runs(tmp_path, images):
    clock = Clock()
    rtc = Rtc(clock)
    board = Board(tmp_path, images, rtc=rtc)
    unset = board.ask(osm.DateTimeReadRequest(), osm.OSManagementErrorV2)
    assert (unset.err.group, unset.err.rc) == (smphdr.GroupId.OS_MANAGEMENT, 4)   # RTC_NOT_SET
    legacy = board.ask(osm.DateTimeReadRequest(version=V1), osm.OSManagementErrorV1)
    assert legacy.rc == smperr.MGMT_ERR.ENOENT

    board.ask(osm.DateTimeWriteRequest(datetime="2024-02-29T23:59:58"), osm.DateTimeWriteResponse)
    clock.now += 3.5
    read = board.ask(osm.DateTimeReadRequest(), osm.DateTimeReadResponse)
    assert read.datetime == "2024-03-01T00:00:01"
    # Zephyr reads six numbers with one delimiter after each and ignores the rest.
    board.ask(osm.DateTimeWriteRequest(datetime="2031 7 4 5 6 7.250+02:00"), osm.DateTimeWriteResponse)
    assert board.ask(osm.DateTimeReadRequest(), osm.DateTimeReadResponse).datetime == "2031-07-04T05:06:07"
    rtc.lose_power()
    assert isinstance(board.ask(osm.DateTimeReadRequest(), osm.OSManagementErrorV2), osm.OSManagementErrorV2)


@pytest.mark.parametrize("text,expected", [
    ("2024-01-02T03:04", {"rc": 3}),                         # too short
    ("2024-01-02T03:04:05.123456", {"rc": 3}),                # 26 characters: too long
    ("2024-13-02T03:04:05", {"rc": 3}),                       # month out of range
    ("1899-01-02T03:04:05", {"rc": 3}),                       # year out of range
    ("2024-01-02T03:04:60", {"rc": 3}),                       # second out of range
    ("2024-01-02Txx:04:05", {"rc": 3}),                       # not a number
    ("2023-02-29T03:04:05", {"err": {"group": 0, "rc": 5}}),  # no such day: the RTC refuses it
])
def test_datetime_write_errors(tmp_path, images, text, expected):
    board = Board(tmp_path, images, rtc=Rtc())
    _, body = decode(board.server.handle(raw(2, 0, 4, cbor2.dumps({"datetime": text}))))
    assert body == expected
    _, body = decode(board.server.handle(raw(2, 0, 4, cbor2.dumps({"datetime": 2024}))))
    assert body == {"rc": 3}


def test_shell_exec_runs_the_joined_line_and_reports_output_and_status(tmp_path, images):
    lines: list[str] = []

    def run_command(argv):
        lines.append(" ".join(argv))
        return ("hello\n" if argv[0] == "echo" else "sh: nope: not found\n"), \
            (0 if argv[0] == "echo" else 127)

    board = Board(tmp_path, images, run_command=run_command)
    ok = board.ask(shell.ExecuteRequest(argv=["echo", "hello"]), shell.ExecuteResponse)
    assert (ok.o, ok.ret) == ("hello\n", 0)
    missing = board.ask(shell.ExecuteRequest(argv=["nope"]), shell.ExecuteResponse)
    assert (missing.o, missing.ret) == ("sh: nope: not found\n", 127)
    assert lines == ["echo hello", "nope"]

    # Zephyr's EMPTY_COMMAND (3) is newer than the smp package's list of shell codes: raw CBOR.
    empty = board.server.handle(shell.ExecuteRequest(argv=[]).BYTES)
    assert decode(empty)[1] == {"err": {"group": 9, "rc": 3}}
    long_line = board.ask(shell.ExecuteRequest(argv=["echo", "x" * 1100]), shell.ShellManagementErrorV2)
    assert long_line.err.rc == 2
    legacy = board.ask(shell.ExecuteRequest(argv=[], version=V1), shell.ShellManagementErrorV1)
    assert legacy.rc == smperr.MGMT_ERR.EINVAL
    assert lines == ["echo hello", "nope"]               # refused lines never ran
    for body in ({}, {"argv": "echo hi"}, {"argv": ["echo", 5]}):
        assert decode(board.server.handle(raw(2, 9, 0, cbor2.dumps(body))))[1] == {"rc": 3}


def test_shell_output_is_cut_to_one_smp_buffer(tmp_path, images):
    board = Board(tmp_path, images, run_command=lambda argv: ("é" * 5000, 0))
    response = board.server.handle(shell.ExecuteRequest(argv=["big"]).BYTES)
    assert len(response) <= 4096
    body = cbor2.loads(response[8:])
    assert body["ret"] == 0 and 1000 < len(body["o"]) < 2048 and set(body["o"]) == {"é"}


def test_enumeration_lists_the_groups_the_board_has(tmp_path, images):
    full = Board(tmp_path / "full", images, rtc=Rtc(), run_command=lambda argv: ("", 0))
    assert full.ask(enum.GroupCountRequest(), enum.GroupCountResponse).count == 4
    groups = full.ask(enum.ListOfGroupsRequest(), enum.ListOfGroupsResponse).groups
    assert list(groups) == [0, 1, 9, 10]
    first = full.ask(enum.GroupIdRequest(), enum.GroupIdResponse)
    assert (first.group, first.end) == (0, None)
    last = full.ask(enum.GroupIdRequest(index=3), enum.GroupIdResponse)
    assert (last.group, last.end) == (10, True)
    beyond = full.ask(enum.GroupIdRequest(index=4), enum.EnumManagementErrorV2)
    assert (beyond.err.group, beyond.err.rc) == (smphdr.GroupId.ENUM_MANAGEMENT, 4)
    details = full.ask(enum.GroupDetailsRequest(), enum.GroupDetailsResponse).groups
    assert [(d.group, d.name, d.handlers) for d in details] == [
        (0, "os mgmt", 9), (1, "img mgmt", 6), (9, "shell mgmt", 1), (10, "enum mgmt", 4)]
    some = full.ask(enum.GroupDetailsRequest(groups=(9, 63)), enum.GroupDetailsResponse).groups
    assert [d.group for d in some] == [9]

    # A board without an RTC or a shell has neither group.
    bare = Board(tmp_path / "bare", images)
    assert list(bare.ask(enum.ListOfGroupsRequest(), enum.ListOfGroupsResponse).groups) == [0, 1, 10]
    assert decode(bare.server.handle(raw(0, 0, 4, cbor2.dumps({}))))[1] == {"rc": 8}
    assert decode(bare.server.handle(raw(2, 9, 0, cbor2.dumps({"argv": ["x"]}))))[1] == {"rc": 8}
