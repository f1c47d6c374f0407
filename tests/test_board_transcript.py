"""The console transcript: rendering as pure logic, rotation and following on real
files, a stalled disk (a FIFO nobody reads) under a running board, and
`pledgeforge board console-log` as users run it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading

import pytest
from smp.os_management import EchoWriteRequest, EchoWriteResponse
from smp.shell_management import ExecuteRequest

from boardrunner import BoardProcess, quick_profile
from clirunner import PLEDGEFORGE, run_cli
from pledgeforge.bench import login, run
from pledgeforge.boards.profile import load_profile
from pledgeforge.boards.smp_framing import encode_smp_frames
from pledgeforge.boards.transcript import (EVENT, IDLE_S, IN, MAX_RECORD, OUT, Renderer, RotatingFile,
                                           TranscriptRecorder, follow_lines, parse_line, read_lines,
                                           safe_text, transcript_path)

MCU = load_profile("mcu-se")
T0 = 1_700_000_000.0


def texts(records) -> list[tuple[str, str]]:
    return [(r.direction, r.text) for r in records]


# -- rendering ----------------------------------------------------------------------

def test_lines_end_at_cr_lf_or_crlf_and_control_bytes_are_shown_safely():
    r = Renderer()
    got = r.feed(T0, OUT, b"one\r\ntwo\nthree\rfour\r")
    got += r.feed(T0, OUT, b"\nfive \x1b[1mbold\x1b[0m\ttab \\ back \x00 \xc3\xa9 \xff\xfe\r\n")
    assert texts(got) == [(OUT, "one"), (OUT, "two"), (OUT, "three"), (OUT, "four"),
                          (OUT, "five \\x1b[1mbold\\x1b[0m\\ttab \\\\ back \\x00 é \\xff\\xfe")]
    assert all("\n" not in rec.line()[:-1] for rec in got)
    assert safe_text(b"\x7f\xc2\x85") == "\\x7f\\x85"       # DEL and a C1 control


def test_open_lines_wait_then_come_out_in_arrival_order():
    r = Renderer()
    assert r.feed(T0, OUT, b"uart:~$ ") == []                 # a prompt: the line is open
    assert r.feed(T0 + 0.1, IN, b"sta") == []
    assert r.feed(T0 + 0.1, OUT, b"sta") == []
    got = r.feed(T0 + 0.2, IN, b"tus\r")
    assert got == []                                          # the prompt line started first
    got = r.feed(T0 + 0.2, OUT, b"tus\r\nstate: x\r\n")
    assert texts(got) == [(OUT, "uart:~$ status"), (IN, "status"), (OUT, "state: x")]
    assert [rec.time for rec in got] == [T0, T0 + 0.1, T0 + 0.2]

    assert r.feed(T0 + 1, OUT, b"login: ") == []
    assert r.next_due() == T0 + 1 + IDLE_S
    assert r.due(T0 + 1.1) == []
    assert texts(r.due(T0 + 1 + IDLE_S)) == [(OUT, "login: ")]
    assert r.next_due() is None


def test_a_long_line_is_cut_into_records():
    r = Renderer()
    got = r.feed(T0, OUT, b"x" * (MAX_RECORD * 2 + 10) + b"\n")
    assert [len(rec.text) for rec in got] == [MAX_RECORD, MAX_RECORD, 10]


def test_smp_frames_become_one_summary_per_packet_in_either_direction():
    request = bytes(ExecuteRequest(sequence=0, argv=["echo", "hi"]))
    big = encode_smp_frames(bytes(EchoWriteRequest(sequence=1, d="x" * 400)))
    response = bytes(EchoWriteResponse(sequence=7, r="pong"))
    r = Renderer()
    got = r.feed(T0, IN, encode_smp_frames(request))
    # A multi-frame packet, cut inside a frame and between the two start bytes.
    cut = big.index(b"\x04\x14")
    got += r.feed(T0 + 0.1, IN, big[:cut + 1])
    got += r.feed(T0 + 0.1, IN, big[cut + 1:])
    got += r.feed(T0 + 0.2, OUT, b"uart:~$ " + encode_smp_frames(response))
    got += r.feed(T0 + 0.3, OUT, b"\x06\x09@@@@\n")                    # not base64
    assert texts(got) == [
        (IN, "[SMP write shell exec seq 0, 15 bytes: echo hi]"),
        (IN, "[SMP write os echo seq 1, 406 bytes in 5 frames]"),
        (OUT, "uart:~$ "),
        (OUT, "[SMP write-rsp os echo seq 7, 8 bytes: ok]"),
        (OUT, "[SMP frame not understood, 6 bytes]"),
    ]
    assert not any("eA" in rec.text for rec in got)      # no base64 copied into the transcript
    assert r.feed(T0 + 1, IN, big[:60]) == []
    assert texts(r.drain()) == [(IN, "[SMP frame cut short]")]


def test_records_read_back_as_json():
    r = Renderer()
    line = r.feed(T0, IN, b"echo \x03hi\r")[0].line()
    assert line == "2023-11-14T22:13:20.000000Z in  echo \\x03hi\n"
    assert parse_line(line) == {"time": "2023-11-14T22:13:20.000000Z", "dir": "in",
                                "text": "echo \\x03hi"}
    assert parse_line(r.feed(T0, EVENT, b"power on")[0].line())["dir"] == "event"
    assert parse_line("garbage\n") == {"time": None, "dir": None, "text": "garbage"}


# -- files ----------------------------------------------------------------------------

def test_rotation_keeps_the_newest_files_within_bounds(tmp_path):
    path = transcript_path(tmp_path)
    out = RotatingFile(path, max_bytes=1000, files=3)
    out.write([f"line {n:05d}\n" for n in range(1000)])
    out.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["console.log", "console.log.1", "console.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    lines = list(read_lines(tmp_path))
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 1000)) and numbers[0] > 700     # the newest, in order
    assert list(read_lines(tmp_path, last=2)) == ["line 00998\n", "line 00999\n"]


def test_following_goes_across_rotations(tmp_path):
    path = transcript_path(tmp_path)
    out = RotatingFile(path, max_bytes=200, files=4)
    out.write([f"n {n:03d}\n" for n in range(30)])
    out.flush()
    stop = threading.Event()
    lines = follow_lines(tmp_path, stop, last=3)
    assert [next(lines) for _ in range(3)] == ["n 027\n", "n 028\n", "n 029\n"]
    # Enough for two rotations before the reader looks again; it reads them all, in order.
    out.write([f"n {n:03d}\n" for n in range(30, 70)])
    out.flush()
    assert [next(lines) for _ in range(40)] == [f"n {n:03d}\n" for n in range(30, 70)]
    stop.set()
    assert list(lines) == []
    out.close()


def test_a_stalled_disk_never_blocks_the_console_and_the_loss_is_noted(tmp_path):
    path = transcript_path(tmp_path)
    os.mkfifo(path)                        # opening it for writing blocks until someone reads
    recorder = TranscriptRecorder(path, file_bytes=1 << 20, files=2, queue_bytes=64 * 1024)
    writer = threading.Thread(target=lambda: [recorder.record(OUT, f"chunk {n}\r\n".encode() * 100)
                                              for n in range(2000)])
    writer.start()
    writer.join(60)
    assert not writer.is_alive()                              # 2 MB recorded, none of it waited
    assert recorder.flush(0.2) is False                       # bounded, and it says so
    received: list[bytes] = []

    def drain_fifo():                                         # the disk comes back
        with open(path, "rb") as fifo:
            received.append(fifo.read())

    reader = threading.Thread(target=drain_fifo)
    reader.start()
    assert recorder.close(30)
    reader.join(30)
    text = received[0].decode()
    assert "--- transcript lost" in text and "bytes (the disk was too slow)" in text
    assert text.rstrip().endswith("--- transcript stopped")
    assert "out chunk 1999" in text
    assert len(received[0]) < 1_000_000                       # most of the 2 MB was dropped


# -- a running board ---------------------------------------------------------------------

def test_board_transcript_flushed_at_power_off_and_shown_by_console_log(tmp_path):
    state = tmp_path / "mcu"
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), state) as board:
        assert board.info["transcript"] == str(state / "console.log")
        con = board.open_pty()
        con.expect_exact(prompt)
        run(con, "echo marker-before-power-off", prompt)
        con.close()
        assert run_cli("board", "power", "off", "--state", state).returncode == 0
        # Power-off returned: the transcript is already on disk, nothing to wait for.
        lines = [parse_line(line) for line in read_lines(state)]
        assert {"dir": "in", "text": "echo marker-before-power-off"} in \
            [{"dir": x["dir"], "text": x["text"]} for x in lines]
        assert lines[-1]["dir"] == "event" and lines[-1]["text"] == "power off"

        shown = run_cli("board", "console-log", "--state", state)
        assert shown.returncode == 0
        assert b" out *** Booting Zephyr OS" in shown.stdout
        assert b" --- power off\n" in shown.stdout
        as_json = run_cli("board", "console-log", "--state", state, "--json", "--lines", "5")
        records = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
        assert len(records) == 5
        assert (records[-1]["dir"], records[-1]["text"]) == ("event", "power off")
        assert all(set(r) == {"time", "dir", "text"} and r["dir"] in ("out", "in", "event")
                   for r in records)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_console_log_follow_shows_new_lines_and_stops_cleanly(tmp_path, signum):
    state = tmp_path / "mcu"
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), state) as board:
        # Unbuffered: select() sees the pipe, so no line may wait in a reader's buffer.
        follower = subprocess.Popen([PLEDGEFORGE, "board", "console-log", "--state", str(state),
                                     "--follow", "--json"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=0)
        try:
            con = board.open_pty()
            con.expect_exact(prompt)
            run(con, "echo followed-live", prompt)
            con.close()
            seen = []
            while not any(r["dir"] == "out" and r["text"] == "followed-live" for r in seen):
                ready, _, _ = select.select([follower.stdout], [], [], 30)
                assert ready, f"follow printed nothing new; so far {seen[-5:]}"
                seen.append(json.loads(follower.stdout.readline()))
            follower.send_signal(signum)
            assert follower.wait(30) == 0
            assert follower.stderr.read() == b""
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
            follower.stdout.close()
            follower.stderr.close()


def test_a_board_on_a_stalled_disk_still_boots_answers_and_powers_off(tmp_path):
    state = tmp_path / "mcu"
    state.mkdir()
    os.mkfifo(state / "console.log")
    prompt = MCU.console.prompt
    with BoardProcess(quick_profile("mcu-se", tmp_path), state) as board:
        con = board.open_pty()
        con.expect_exact(prompt)
        assert "PledgeForge" in run(con, "uname", prompt)
        con.close()
        assert run_cli("board", "power", "off", "--state", state).returncode == 0
        with open(state / "console.log", "rb") as fifo:      # the disk comes back
            received = b""
            while b"--- power off" not in received:
                chunk = fifo.read1(65536)
                assert chunk, received[-500:]
                received += chunk
        assert b" in  uname" in received


def test_passwords_typed_at_the_login_never_reach_the_transcript(tmp_path):
    legacy = load_profile("legacy-rsa")
    profile = tmp_path / "legacy.toml"
    profile.write_text(legacy.path.read_text().replace('password = "admin"', 'password = "s3cret-Pa55"'))
    state = tmp_path / "legacy"
    with BoardProcess(quick_profile(profile, tmp_path), state) as board:
        con = board.open_pty()
        login(con, "admin", "s3cret-Pa55", legacy.console.prompt)
        run(con, "echo logged-in", legacy.console.prompt)
        con.close()
        assert run_cli("board", "power", "off", "--state", state).returncode == 0
    text = transcript_path(state).read_text()
    assert "s3cret-Pa55" not in text
    assert " in  ***********\n" in text and " in  echo logged-in\n" in text


def test_console_log_mistakes_and_a_board_without_a_transcript(tmp_path):
    missing = run_cli("board", "console-log", "--state", tmp_path / "nowhere")
    assert missing.returncode != 0 and b"no board state directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("board", "console-log", "--state", tmp_path / "empty")
    assert empty.returncode != 0 and b"no console transcript in" in empty.stderr

    profile = tmp_path / "quiet.toml"
    profile.write_text(MCU.path.read_text().replace("[console]\n", "[console]\ntranscript_files = 0\n"))
    with BoardProcess(quick_profile(profile, tmp_path), tmp_path / "quiet") as board:
        assert board.info["transcript"] is None
        con = board.open_pty()
        con.expect_exact(MCU.console.prompt)
        con.close()
    assert not (tmp_path / "quiet" / "console.log").exists()
