"""No console input can halt a board, and a real firmware fault leaves its
traceback in the board's log.

Boards run in-process on every shipped profile; their consoles are opened
through the pty as a terminal program would. The property tests send
arbitrary bytes at the shell prompt and at the bootloader prompt and check,
after each example, that the board still answers.
"""

from __future__ import annotations

import itertools
import logging
import os

import pexpect.fdpexpect
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pledgeforge.boards.file_commands import FILE_COMMANDS
from pledgeforge.boards.filesystem import BoardFiles
from pledgeforge.boards.flash import Flash
from pledgeforge.boards.profile import load_profile, profile_names
from pledgeforge.boards.runtime import Board
from pledgeforge.boards.shell import BUILTINS, CapturedConsole, Shell, ShellExit, ShellSyntaxError, parse

PROFILES = [load_profile(name) for name in profile_names()]
# Lines made of the grammar's own pieces reach the parser's corners far more
# often than random text does.
FRAGMENTS = ["\\", ";", "|", ">", ">>", "<", "2>", ">&", "'", '"', "$", "${", "$?", "$@", "{", "}",
             "(", ")", "&&", "||", "&", "!", "#", "~", "=", "A=", " ", "\t", "echo", "cat", "f()",
             "sh -c", "x", "/dev/null", "`", "$(", "<<", "\n", "2>&1", "base64 -d", "/tmp/f", "rm",
             "dd if=", "of=", "stat", "chmod +x", "mktemp", "./", "-", "printenv", "setenv", "run"]
LINES = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(FRAGMENTS), max_size=16).map("".join))
CONSOLE_INPUT = st.one_of(st.binary(max_size=80), LINES.map(lambda line: line.encode()))
# Commands whose job is to end the session or wait for a file transfer:
# legitimate, but this property is about input that is not meant to do that.
SESSION_ENDERS = (b"exit", b"logout", b"reboot", b"reset", b"boot", b"run", b"rx", b"sz")
_marker_numbers = itertools.count()


def test_parser_accepts_or_refuses_every_line():
    @settings(max_examples=3000, deadline=None)
    @given(LINES)
    def check(line):
        try:
            parse(line)
        except ShellSyntaxError:
            pass

    check()


def test_the_shell_runs_or_refuses_every_line(tmp_path):
    # Every built-in and file command, on a real flash partition: whatever the
    # line, the shell answers it, and never with an internal error.
    flash = Flash.in_state_dir(tmp_path, 64 * 1024, 64 * 1024)
    files = BoardFiles(flash.files)

    @settings(max_examples=1500, deadline=None)
    @given(LINES)
    # Digits str.isdigit takes and int() refuses, where the shell reads a number.
    @example("¹<")
    @example("echo a ²>x")
    @example("exit ³")
    @example("echo $¹")
    @example("base64 -w ¹ /root")
    def check(line):
        console = CapturedConsole()
        shell = Shell(BUILTINS.merged(FILE_COMMANDS), console, files=files, variables={"HOME": "/root"})
        try:
            shell.execute(line)
        except ShellExit:
            pass
        assert "internal error" not in console.text, (line, console.text)

    check()


def _open(board: Board) -> pexpect.fdpexpect.fdspawn:
    fd = os.open(board.state_dir / "console", os.O_RDWR | os.O_NOCTTY)
    return pexpect.fdpexpect.fdspawn(fd, timeout=15)


def _answers(con, prompt: str) -> None:
    """Whatever state the input left (half a line, an SMP frame, an escape
    sequence), a line end and Ctrl-C get back to the prompt, which answers,
    and nothing on the way was an internal error."""
    number = next(_marker_numbers)
    con.send(b"\r\x03")
    con.send(f"echo 'alive''-{number}'\r")
    con.expect_exact(f"alive-{number}\r\n{prompt}")
    assert b"internal error" not in con.before


@pytest.fixture(scope="module", params=PROFILES, ids=lambda p: p.name)
def shell_board(request, tmp_path_factory):
    profile = request.param
    with Board(profile, tmp_path_factory.mktemp(profile.name)) as board:
        board.open_console("pty")
        board.power_on()
        con = _open(board)
        if profile.console.login:
            con.expect_exact("login: ")
            con.send(profile.console.username + "\r")
            con.expect_exact("Password: ")
            con.send(profile.console.password + "\r")
        con.expect_exact(profile.console.prompt)
        yield board, con, profile.console.prompt


@pytest.fixture(scope="module", params=PROFILES, ids=lambda p: p.name)
def bootloader_board(request, tmp_path_factory):
    profile = request.param
    with Board(profile, tmp_path_factory.mktemp(profile.name)) as board:
        board.open_console("pty")
        board.power_on()
        con = _open(board)
        con.expect_exact("stop autoboot")
        con.send(" ")
        con.expect_exact(profile.boot.bootloader_prompt)
        yield board, con, profile.boot.bootloader_prompt


def test_a_lone_backslash_is_a_word_not_a_halt(shell_board):
    board, con, prompt = shell_board
    con.send("\\\r")
    con.expect_exact(f"\\: not found\r\n{prompt}")
    con.send("echo a;\\\r")
    con.expect_exact(f"a\r\nsh: \\: not found\r\n{prompt}")
    con.send("echo \\\r")
    con.expect_exact(f"\r\n\\\r\n{prompt}")
    assert board.phase == "shell"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=CONSOLE_INPUT)
def test_no_console_input_halts_the_shell(shell_board, data):
    assume(not any(word in data for word in SESSION_ENDERS))
    board, con, prompt = shell_board
    con.send(data)
    _answers(con, prompt)
    assert board.phase == "shell"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=CONSOLE_INPUT)
def test_no_console_input_halts_the_bootloader(bootloader_board, data):
    assume(not any(word in data for word in SESSION_ENDERS))
    board, con, prompt = bootloader_board
    con.send(data)
    _answers(con, prompt)
    assert board.phase == "bootloader"


def test_a_firmware_fault_logs_its_traceback(tmp_path, caplog):
    profile = load_profile("mcu-se")
    with Board(profile, tmp_path / "mcu") as board:
        board.open_console("pty")
        board.power_on()
        con = _open(board)
        con.expect_exact(profile.console.prompt)
        # The host breaks the flash file under the running board: the next
        # boot cannot record itself, a genuine fault of the firmware.
        flash = board.state_dir / "flash.bin"
        flash.unlink()
        flash.mkdir()
        (flash / "in-the-way").write_bytes(b"")
        with caplog.at_level(logging.ERROR, logger="pledgeforge.boards.runtime"):
            con.send("reboot\r")
            con.expect_exact("Kernel panic - not syncing: IsADirectoryError")
            assert board.wait_for_phase("halted", 30)
    faults = [r for r in caplog.records if r.getMessage().startswith("firmware fault")]
    assert len(faults) == 1, caplog.text
    assert "NoneType: None" not in caplog.text
    assert "record_boot" in caplog.text and "IsADirectoryError" in caplog.text
