"""The board shell: its POSIX subset, the BusyBox file commands over a real
flash partition, and the bootloader's hush prompt. Pure logic over a
captured console; the consoles of running boards are tested in
test_board_labgrid.py and test_board_faults.py."""

from __future__ import annotations

import base64

import pytest

from pledgeforge.boards.boot import UBOOT, UBOOT_COMMANDS, BootRequested
from pledgeforge.boards.file_commands import FILE_COMMANDS
from pledgeforge.boards.filesystem import BoardFiles
from pledgeforge.boards.flash import Flash
from pledgeforge.boards.shell import (BUILTINS, HUSH, CapturedConsole, CommandRegistry, Shell, ShellExit,
                                      ShellSyntaxError, tokenize)

FILES_CAPACITY = 16 * 1024


def board_registry() -> CommandRegistry:
    registry = CommandRegistry()

    @registry.command("status", "two lines")
    def status(ctx, args):
        ctx.print("state: ok")
        ctx.print("serial: X-1")

    @registry.command("fail", "exit with the given status")
    def fail(ctx, args):
        return int(args[0]) if args else 1

    @registry.command("args", "print each argument in brackets")
    def show_args(ctx, args):
        ctx.print(" ".join(f"[{a}]" for a in args))

    @registry.command("env", "print a variable")
    def env(ctx, args):
        ctx.print(ctx.shell.vars.get(args[0], "<unset>"))

    @registry.command("crash", "a command with a bug")
    def crash(ctx, args):
        raise KeyError("boom")

    return BUILTINS.merged(registry, FILE_COMMANDS)


def flash_in(tmp_path) -> Flash:
    return Flash.in_state_dir(tmp_path, 64 * 1024, FILES_CAPACITY)


def new_shell(flash: Flash) -> Shell:
    """A login shell of one boot: the flash's files and a fresh /tmp."""
    sh = Shell(board_registry(), CapturedConsole(), files=BoardFiles(flash.files),
               variables={"HOME": "/root"})
    return sh


@pytest.fixture
def flash(tmp_path):
    return flash_in(tmp_path)


@pytest.fixture
def shell(flash):
    return new_shell(flash)


def run(sh, line: str) -> tuple[int, str]:
    sh.console.data.clear()
    status = sh.execute(line)
    return status, sh.console.text


def test_labgrid_shell_driver_protocol(shell):
    # Exactly what labgrid's ShellDriver sends (driver/shelldriver.py).
    assert run(shell, "echo 'ABCD''EFGHIJ'") == (0, "ABCDEFGHIJ\n")
    assert run(shell, '''run() { echo -n "$MARKER"; sh -c "$@"; echo "$MARKER $?"; }''') == (0, "")
    assert run(shell, "MARKER='ABCD''EFGHIJ' run 'status'") == \
        (0, "ABCDEFGHIJstate: ok\nserial: X-1\nABCDEFGHIJ 0\n")
    assert run(shell, "MARKER='QQQQ''ZZZZZZ' run 'fail 3'")[1] == "QQQQZZZZZZQQQQZZZZZZ 3\n"
    # The prefix assignment lasted for that command only.
    assert run(shell, "env MARKER") == (0, "<unset>\n")
    # put_bytes and get_bytes, around their XMODEM transfers.
    status, tmp = run(shell, "MARKER=M run mktemp")
    assert status == 0 and tmp.startswith("M/tmp/tmp.") and tmp.endswith("M 0\n")
    assert run(shell, "which lrz; echo $?; which rx") == (0, "1\n/bin/rx\n")
    assert run(shell, "which lsz rz sz") == (1, "/bin/sz\n")


def test_exit_status_and_lists(shell):
    assert run(shell, "fail 4; echo $?") == (0, "4\n")
    assert run(shell, "nosuchcommand")[0] == 127
    assert run(shell, "echo $?") == (0, "127\n")
    assert run(shell, "true && echo yes || echo no") == (0, "yes\n")
    assert run(shell, "false && echo yes || echo no") == (0, "no\n")
    assert run(shell, "fail 2 ; echo a ; ") == (0, "a\n")
    assert run(shell, "# only a comment") == (0, "")
    assert run(shell, "! fail 3; echo $?; ! true; echo $?") == (0, "0\n1\n")


def test_quoting_and_expansion(shell):
    assert run(shell, "A=1 B='two  words'")[0] == 0
    assert run(shell, 'args $A $B "$B" ${A}x \'$A\' "\\$A" a\\ b ""') == \
        (0, "[1] [two] [words] [two  words] [1x] [$A] [$A] [a b] []\n")
    assert run(shell, 'args "$UNSET" $UNSET end') == (0, "[] [end]\n")
    assert run(shell, "echo -n no-newline") == (0, "no-newline")
    assert run(shell, "echo -e 'a\\tb'") == (0, "a\tb\n")
    assert run(shell, "args ~ ~/x '~' a~") == (0, "[/root] [/root/x] [~] [a~]\n")
    # A backslash that ends the input stands for itself (dash and bash agree).
    assert run(shell, "args a\\") == (0, "[a\\]\n")
    assert run(shell, "\\") == (127, "sh: \\: not found\n")


def test_functions_positional_parameters_and_sh_c(shell):
    run(shell, 'f() { args "$@"; echo $# "$1"; }')
    assert run(shell, "f 'a b' c") == (0, "[a b] [c]\n2 a b\n")
    assert run(shell, "f") == (0, "\n0 \n")
    assert run(shell, "sh -c 'args $0 $1' name first") == (0, "[name] [first]\n")
    assert run(shell, "sh -c 'exit 5'; echo $?") == (0, "5\n")
    assert run(shell, "loop() { loop; }; loop")[0] == 2          # nesting is bounded
    assert run(shell, "(A=inner; echo $A); echo \"[$A]\"") == (0, "inner\n[]\n")


def test_pipes_and_redirections(shell):
    assert run(shell, "echo hello > greeting; echo again >> greeting; cat greeting") == \
        (0, "hello\nagain\n")
    assert run(shell, "cat < greeting | cat | args") == (0, "\n")     # args reads no input
    assert run(shell, "echo aGVsbG8= | base64 -d; echo") == (0, "hello\n")
    assert run(shell, "cat greeting | base64 | base64 -d > /tmp/copy; cat /tmp/copy") == \
        (0, "hello\nagain\n")
    assert run(shell, "cat missing 2>/dev/null; echo $?") == (0, "1\n")
    assert run(shell, "cat missing 2>&1 | base64 -d") == (1, "base64: invalid input\n")
    assert run(shell, "{ echo out; echo err >&2; } 2>/tmp/err >/tmp/out; cat /tmp/out /tmp/err") == \
        (0, "out\nerr\n")
    assert run(shell, "nosuch 2>/dev/null; echo $?") == (0, "127\n")
    assert run(shell, "echo x > /nowhere/f; echo $?") == \
        (0, "sh: can't create /nowhere/f: No such file or directory\n1\n")
    assert run(shell, "cat < missing") == (1, "sh: can't open missing: No such file or directory\n")
    assert run(shell, "cat") == \
        (1, "cat: standard input is the console; give a file or use a pipe or <\n")


def test_binary_files_through_base64(shell, flash):
    blob = bytes(range(256)) * 3
    shell.files.write("/tmp/blob", blob)
    status, encoded = run(shell, "base64 /tmp/blob")
    assert status == 0 and max(len(line) for line in encoded.splitlines()) == 76
    assert base64.b64decode(encoded) == blob
    assert run(shell, "base64 /tmp/blob | base64 -d > /root/blob; echo $?") == (0, "0\n")
    assert flash.files.files["/root/blob"].data == blob
    assert run(shell, "base64 -w 0 /tmp/blob")[1] == base64.b64encode(blob).decode()
    assert run(shell, "echo '!!' | base64 -d") == (1, "base64: invalid input\n")


def test_scripts_modes_and_dd(shell):
    shell.files.write("/root/s", b"#!/bin/sh\n# comment\necho \"$0 got $#: $1\"\n"
                                 b"f() {\n  echo in f\n}\nf && exit 4\necho never\n")
    assert run(shell, "./s a") == (126, "sh: ./s: Permission denied\n")
    assert run(shell, "chmod +x s; stat s")[1].splitlines()[2].startswith("Access: (0755/-rwxr-xr-x)")
    assert run(shell, "/root/s one two; echo $?") == (0, "/root/s got 2: one\nin f\n4\n")
    assert run(shell, "sh s x; echo $?") == (0, "s got 1: x\nin f\n4\n")
    assert run(shell, "chmod 600 s; ./s")[0] == 126
    assert run(shell, "./missing")[0] == 127
    # labgrid's put_bytes: XMODEM pads to 128 bytes; dd cuts the padding off.
    shell.files.write("/tmp/upload", b"payload" + b"\x1a" * 121)
    assert run(shell, "dd if=/tmp/upload of=/root/p bs=1 count=7") == \
        (0, "7+0 records in\n7+0 records out\n")
    assert run(shell, "cat p; rm -f /tmp/upload nothing; ls /tmp") == (0, "payload")
    assert run(shell, "stat p")[1].splitlines()[1].split()[:2] == ["Size:", "7"]
    assert run(shell, "rm p; rm p") == (1, "rm: can't remove 'p': No such file or directory\n")


def test_files_survive_a_new_boot_and_tmp_does_not(tmp_path, flash, shell):
    assert run(shell, "echo kept > /root/f; echo lost > /tmp/f; mktemp -p /tmp")[0] == 0
    flash.close()                                          # the power goes
    again = new_shell(flash_in(tmp_path))
    assert run(again, "cat /root/f") == (0, "kept\n")
    assert run(again, "ls /tmp; cat /tmp/f 2>/dev/null || echo gone") == (0, "gone\n")


def test_the_flash_partition_is_bounded_and_writes_are_whole(tmp_path, flash, shell):
    assert run(shell, "dd if=/dev/null of=/root/empty")[0] == 0
    shell.files.write("/tmp/big", b"x" * FILES_CAPACITY)
    assert run(shell, "echo small > /root/f; cat /tmp/big > /root/f; echo $?; cat /root/f") == \
        (0, "sh: can't write /root/f: No space left on device\n1\nsmall\n")
    # A shell whose board lost power writes nothing more.
    flash.close()
    assert run(shell, "echo late > /root/f")[0] == 1
    assert run(new_shell(flash_in(tmp_path)), "cat /root/f") == (0, "small\n")
    status, df = run(shell, "df")
    assert status == 0 and df.splitlines()[1].split()[:2] == ["flash", str(FILES_CAPACITY // 1024)]


def test_factory_reset_erases_the_files(tmp_path, flash, shell):
    run(shell, "echo owner-data > /root/f")
    flash.factory_reset()
    assert run(new_shell(flash_in(tmp_path)), "ls /root") == (0, "")


def test_unsupported_syntax_is_an_error_line(shell):
    for line, word in [("echo $(date)", "command substitution"), ("echo `date`", "command substitution"),
                       ("echo 'open", "unterminated"), ("}", "unexpected"), ("f() echo", "group"),
                       ("cat <<EOF", "here-documents"), ("sleep 1 &", "background"),
                       ("if true; then echo; fi", "'if' is not supported"), ("echo >", "file name"),
                       ("echo |", "command is missing"), ("(", "missing ')'"),
                       ("{ " * 40 + "true" + "; }" * 40, "nested")]:
        status, out = run(shell, line)
        assert status == 2 and out.startswith("sh: syntax error:") and word in out, (line, out)


def test_a_crashing_command_is_an_error_not_a_dead_shell(shell):
    status, out = run(shell, "crash")
    assert status == 1 and out.startswith("crash: internal error: KeyError")
    assert run(shell, "echo alive") == (0, "alive\n")


def test_exit_leaves_the_shell(shell):
    with pytest.raises(ShellExit) as info:
        shell.execute("exit 3")
    assert info.value.status == 3


def test_tokenizer_joins_adjacent_quotes():
    (word,) = tokenize("'AB''CD'\"EF\"GH")
    assert "".join(s.text for s in word.segments) == "ABCDEFGH"
    with pytest.raises(ShellSyntaxError):
        tokenize('"unterminated')


@pytest.fixture
def uboot():
    return Shell(UBOOT_COMMANDS, CapturedConsole(), grammar=HUSH, dialect=UBOOT,
                 variables={"bootcmd": "bootm", "bootdelay": "1"})


def test_uboot_hush_as_labgrid_uboot_driver_runs_commands(uboot):
    # UBootDriver wraps every command like this (driver/ubootdriver.py).
    wrapped = "echo 'ABCD''EFGHIJ'; {}; echo \"$?\"; echo 'ABCD''EFGHIJ';"
    assert run(uboot, wrapped.format("printenv bootdelay")) == \
        (0, "ABCDEFGHIJ\nbootdelay=1\n0\nABCDEFGHIJ\n")
    assert run(uboot, wrapped.format("false"))[1] == "ABCDEFGHIJ\n1\nABCDEFGHIJ\n"
    assert run(uboot, wrapped.format("frobnicate"))[1] == \
        "ABCDEFGHIJ\nUnknown command 'frobnicate' - try 'help'\n1\nABCDEFGHIJ\n"
    assert run(uboot, "setenv msg 'a  b'; echo \"$msg\" ${msg}") == (0, "a  b a b\n")
    assert run(uboot, "setenv greet 'echo hi; false'; run greet || echo failed") == (0, "hi\nfailed\n")
    assert run(uboot, "setenv again 'run again'; run again")[0] == 1      # nesting is bounded
    assert run(uboot, "echo a | echo b") == (2, "syntax error: pipes are not supported here\n")
    assert run(uboot, "echo a > f") == (2, "syntax error: redirections are not supported here\n")
    assert run(uboot, "sh -c true")[1] == "Unknown command 'sh' - try 'help'\n"
    with pytest.raises(BootRequested):
        uboot.execute("echo booting; boot")


def test_a_board_without_a_file_system():
    # mcu-se: built-ins and board commands only; /dev/null still swallows output.
    sh = Shell(BUILTINS, CapturedConsole(), variables={"HOME": "/root"})
    assert run(sh, "echo x > f; echo $?") == (0, "sh: can't create f: this board has no file system\n1\n")
    assert run(sh, "nosuch 2>/dev/null; cat /etc/hosts 2>&1") == (127, "sh: cat: not found\n")
    assert run(sh, "./script") == (127, "sh: ./script: not found\n")
    assert run(sh, "echo one | sh -c 'echo two'") == (0, "two\n")
