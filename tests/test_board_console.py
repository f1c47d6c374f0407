"""The console's line discipline, output log and fan-out, as pure logic and
with real sockets; the end-to-end behaviour over a running board is in
test_board_runtime.py."""

from __future__ import annotations

import random
import socket
import threading

import pytest
from smp.os_management import EchoWriteRequest
from smp.packet import encode as smp_encode

from pledgeforge.boards.console import (Cancel, Console, Line, LineEditor, OutputLog, PowerLost,
                                        SmpFrame, Terminal)
from pledgeforge.boards.transports import Rfc2217Transport, TcpTransport


def lines(items) -> list[str]:
    return [item.text for item in items if isinstance(item, Line)]


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
def test_cr_lf_and_crlf_each_end_one_line(ending):
    editor = LineEditor()
    echo, items = editor.feed(b"status" + ending + b"help" + ending)
    assert lines(items) == ["status", "help"]
    assert echo == b"status\r\nhelp\r\n"


def test_crlf_split_across_reads_is_one_line_end():
    editor = LineEditor()
    _, first = editor.feed(b"a\r")
    _, second = editor.feed(b"\nb\n")
    assert lines(first) == ["a"] and lines(second) == ["b"]
    # LF then CR, by contrast, is two line ends.
    assert lines(editor.feed(b"c\n\r")[1]) == ["c", ""]


def test_editing_keys():
    editor = LineEditor()
    echo, items = editor.feed(b"statux\x7fs\r")
    assert lines(items) == ["status"]
    assert echo == b"statux\b \bs\r\n"
    echo, items = editor.feed(b"reboot\x03")
    assert isinstance(items[0], Cancel) and echo.endswith(b"^C\r\n")
    assert lines(editor.feed(b"abc\x15xyz\r")[1]) == ["xyz"]      # Ctrl-U clears the line
    assert lines(editor.feed(b"ab\x1b[Acd\x1bOB\r")[1]) == ["abcd"]  # arrow keys are dropped


def test_no_echo_for_passwords_but_the_line_end_is_echoed():
    editor = LineEditor()
    editor.echo = False
    echo, items = editor.feed(b"secret\r")
    assert lines(items) == ["secret"] and echo == b"\r\n"


def test_garbage_bytes_are_dropped_and_long_lines_flagged():
    editor = LineEditor(max_line=8)
    echo, items = editor.feed(b"\x00ok\xff\xfe\x01\r")
    assert lines(items) == ["ok"] and echo == b"ok\r\n"
    _, items = editor.feed(b"0123456789abc\r")
    assert items == [Line("01234567", truncated=True)]


def test_random_bytes_never_raise_and_always_come_back_to_a_clean_line():
    rng = random.Random(7030)
    editor = LineEditor()
    for _ in range(50):
        editor.feed(rng.randbytes(rng.randrange(1, 2000)))
        editor.feed(b"\x03\r")
        assert lines(editor.feed(b"status\r")[1]) == ["status"]


def test_smp_frames_are_split_out_unechoed():
    request = bytes(EchoWriteRequest(d="x" * 120))
    frames = list(smp_encode(request, line_length=64))
    assert len(frames) > 2
    editor = LineEditor()
    echo, items = editor.feed(b"".join(frames) + b"status\r")
    assert [i.raw for i in items if isinstance(i, SmpFrame)] == [f[:-1] for f in frames]
    assert lines(items) == ["status"]
    assert echo == b"status\r\n"


def test_smp_start_bytes_only_count_at_the_start_of_a_line():
    editor = LineEditor()
    _, items = editor.feed(b"ab\x06\x09cd\r")
    assert items == [Line("ab cd")]                   # 06 dropped, 09 (tab) typed as a space
    _, items = editor.feed(b"\x06xy\r")
    assert items == [Line("xy")]                      # 06 without 09 is line noise


def test_feed_one_stops_at_the_first_item():
    editor = LineEditor()
    data = b"one\rtwo\r"
    echo, item, used = editor.feed_one(data)
    assert (echo, item, used) == (b"one\r\n", Line("one"), 4)


def test_output_log_is_bounded_and_replays_whole_lines():
    log = OutputLog(100)
    for n in range(100):
        log.append(f"line {n:03d}\r\n".encode())
    snap = log.snapshot()
    assert len(snap) <= 100
    assert snap.startswith(b"line ") and snap.endswith(b"line 099\r\n")


def test_console_fans_out_and_replays_to_late_clients():
    console = Console(log_bytes=1024)
    early: list[bytes] = []
    console.attach(early.append)
    console.print("booted")
    late: list[bytes] = []
    attachment = console.attach(late.append, replay=True)
    live_only: list[bytes] = []
    console.attach(live_only.append)
    console.print("after")
    assert b"".join(early) == b"booted\r\nafter\r\n"
    assert b"".join(late) == b"booted\r\nafter\r\n"      # replay, then live
    assert b"".join(live_only) == b"after\r\n"              # no replay unless asked for
    attachment.detach()
    console.print("gone")
    assert b"gone" not in b"".join(late)
    console.clear_history()
    fresh: list[bytes] = []
    console.attach(fresh.append, replay=True)
    assert fresh == []


def test_console_input_is_bounded():
    console = Console(input_limit=10)
    console.receive(b"0123456789abcdef")
    assert console.read(0) == b"0123456789"
    assert console.dropped_input == 6


def test_terminal_keypress_and_smp_during_countdown():
    console = Console()
    out: list[bytes] = []
    console.attach(out.append)
    smp_lines: list[bytes] = []
    term = Terminal(console, check=lambda: None, smp=smp_lines.append)
    frame = next(iter(smp_encode(bytes(EchoWriteRequest(d="hi")))))
    console.receive(frame)
    assert term.wait_key(0.2) is False                 # an SMP frame is not a keypress
    assert smp_lines == [frame[:-1]]
    console.receive(b" status\r")
    assert term.wait_key(5) is True                    # the space stops autoboot, swallowed
    assert term.read_line() == Line("status")
    assert b"".join(out) == b"status\r\n"


def test_terminal_read_is_stopped_by_power_loss():
    console = Console()
    powered = threading.Event()
    powered.set()

    def check():
        if not powered.is_set():
            raise PowerLost()

    term = Terminal(console, check=check)
    result: list = []

    def reader():
        try:
            term.read_line()
        except PowerLost:
            result.append("power lost")

    thread = threading.Thread(target=reader)
    thread.start()
    powered.clear()
    console.wake()
    thread.join(10)
    assert result == ["power lost"]


def test_tcp_transport_clients_see_each_other_and_a_stuck_one_is_bounded():
    console = Console(log_bytes=4096)
    transport = TcpTransport(console)
    try:
        console.print("hello")
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((transport.host, transport.port))
        reader = socket.create_connection((transport.host, transport.port), timeout=10)
        reader.sendall(b"typed")
        assert _read_console(console, 5) == b"typed"        # so both clients are attached
        console.print("live")
        # Output from before the connection is not replayed: the first bytes are live.
        assert _recv_until(reader, b"live\r\n") == b"live\r\n"
        # 2 MB to a client that never reads: every write returns at once.
        for n in range(2000):
            console.print(f"{n:04d} " + "x" * 1000)
        console.print("end-marker")
        assert _recv_until(reader, b"end-marker\r\n").endswith(b"end-marker\r\n")
        stuck.settimeout(10)
        got = _recv_until(stuck, b"end-marker\r\n")
        assert got.endswith(b"end-marker\r\n")
        assert len(got) < 500_000                          # the oldest output was dropped
        stuck.close()
        reader.close()
    finally:
        transport.close()


@pytest.mark.parametrize("kind", [TcpTransport, Rfc2217Transport])
def test_network_clients_get_the_recent_output_only_with_replay(kind):
    console = Console(log_bytes=4096)
    transport = kind(console, replay=True)
    try:
        console.print("from before the connection")
        sock = socket.create_connection((transport.host, transport.port), timeout=10)
        got = _recv_until(sock, b"connection\r\n")
        if kind is TcpTransport:
            assert got == b"from before the connection\r\n"
        else:
            # After the server's Telnet option negotiation. (pyserial's RFC 2217
            # client purges its input once the port is open, so it may never show these.)
            assert got.startswith(b"\xff") and got.endswith(b"from before the connection\r\n")
        sock.close()
    finally:
        transport.close()


def _recv_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}"
        data += chunk
    return data


def _read_console(console: Console, size: int) -> bytes:
    data = b""
    for _ in range(100):
        data += console.read(0.1)
        if len(data) >= size:
            break
    return data
