"""The board's XMODEM receiver against lrzsz, a C implementation nobody here
wrote: the host's `sx` sends to the board's `rx` over the board's pty, as a
user's bench would, in 128-byte and 1 KiB blocks.

The other direction (the board's `sz`) is checked with labgrid's get_bytes
(test_board_labgrid.py): lrzsz's `rx` flushes its terminal's output queue
(TCIOFLUSH) as it exits, which on a pty can drop its final ACK before the
board has read it, so the board's sender would wait for an ACK that never
comes although the file arrived whole."""

from __future__ import annotations

import os
import random
import subprocess

import pexpect.fdpexpect
import pytest

from pledgeforge.boards.profile import load_profile
from pledgeforge.boards.runtime import Board

LEGACY = load_profile("legacy-rsa")
PROMPT = LEGACY.console.prompt


def command(con, line: str) -> str:
    con.send(line + "\r")
    con.expect_exact(line + "\r\n")
    con.expect_exact(PROMPT)
    return con.before.decode()


@pytest.mark.parametrize("block_option", [[], ["-k"]], ids=["128-byte blocks", "1k blocks"])
def test_lrzsz_sx_sends_to_the_boards_rx(tmp_path, block_option):
    payload = random.Random(8995).randbytes(3000) + b"\x1a\r\n"
    sent = tmp_path / "sent.bin"
    sent.write_bytes(payload)
    with Board(LEGACY, tmp_path / "legacy") as board:
        board.open_console("pty")
        board.power_on()
        fd = os.open(board.state_dir / "console", os.O_RDWR | os.O_NOCTTY)
        con = pexpect.fdpexpect.fdspawn(fd, timeout=30)
        con.expect_exact("login: ")
        con.send("admin\r")
        con.expect_exact("Password: ")
        con.send("admin\r")
        con.expect_exact(PROMPT)

        con.send("rx /root/up.bin\r")
        con.expect_exact("rx /root/up.bin\r\n")           # the board now waits for blocks
        subprocess.run(["sx", "-b", *block_option, str(sent)], stdin=fd, stdout=fd,
                       stderr=subprocess.DEVNULL, timeout=120, check=True)
        # lrzsz may have read the prompt that followed the transfer: ask anew.
        assert command(con, "echo $?").strip() == "0"
        # As BusyBox rx keeps it: every block, the last one padded with 0x1a.
        stored = board.flash.files.files["/root/up.bin"].data
        assert stored.rstrip(b"\x1a") == payload.rstrip(b"\x1a") and len(stored) % 128 == 0

        assert command(con, "stat /root/up.bin").splitlines()[1].split()[:2] == ["Size:", str(len(stored))]
        os.close(fd)
