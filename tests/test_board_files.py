"""A running board's files: the flash partition outlives a reboot and a power
cycle, /tmp does not, and a full partition says so; over the board's pty."""

from __future__ import annotations

import os

import pexpect.fdpexpect

from pledgeforge.boards.profile import load_profile
from pledgeforge.boards.runtime import Board

LEGACY = load_profile("legacy-rsa")
PROMPT = LEGACY.console.prompt


def login(con) -> None:
    con.expect_exact("login: ")
    con.send("admin\r")
    con.expect_exact("Password: ")
    con.send("admin\r")
    con.expect_exact(PROMPT)


def command(con, line: str) -> str:
    con.send(line + "\r")
    con.expect_exact(line + "\r\n")
    con.expect_exact(PROMPT)
    return con.before.decode().replace("\r\n", "\n")


def test_files_outlive_reboot_and_power_cycle_and_tmp_does_not(tmp_path):
    with Board(LEGACY, tmp_path / "legacy") as board:
        board.open_console("pty")
        board.power_on()
        con = pexpect.fdpexpect.fdspawn(os.open(board.state_dir / "console", os.O_RDWR | os.O_NOCTTY),
                                        timeout=30)
        login(con)
        assert command(con, "echo kept > notes; echo gone > /tmp/notes; cat notes /tmp/notes") == "kept\ngone\n"

        con.send("reboot\r")
        login(con)
        assert command(con, "cat /root/notes; ls /tmp; echo $?") == "kept\n0\n"

        board.power_cycle()
        login(con)
        assert command(con, "cat ~/notes") == "kept\n"
        # The profile's 128 KiB partition: a file that does not fit is refused whole.
        command(con, f"echo {'x' * 900} > k; cat k k k k k k k k > k8")         # 7 KB
        command(con, "cat k8 k8 k8 k8 k8 k8 k8 k8 > /tmp/k64")           # 58 KB, in RAM
        assert command(con, "cat /tmp/k64 /tmp/k64 /tmp/k64 > /root/huge; echo $?") == \
            "sh: can't write /root/huge: No space left on device\n1\n"
        assert command(con, "ls /root") == "k\nk8\nnotes\n"
        flash_line = command(con, "df").splitlines()[1].split()
        assert flash_line[:2] == ["flash", "128"] and flash_line[-1] == "/"
