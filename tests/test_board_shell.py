"""The board shell's POSIX subset, as labgrid's ShellDriver and people use it."""

from __future__ import annotations

import pytest

from pledgeforge.boards.shell import CommandRegistry, Shell, ShellExit, ShellSyntaxError, tokenize


@pytest.fixture
def shell():
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

    out: list[str] = []
    sh = Shell(registry, out.append)
    sh.out = out
    return sh


def run(sh, line: str) -> tuple[int, str]:
    sh.out.clear()
    status = sh.execute(line)
    return status, "".join(sh.out)


def test_labgrid_shell_driver_protocol(shell):
    # Exactly what labgrid's ShellDriver sends (driver/shelldriver.py).
    assert run(shell, "echo 'ABCD''EFGHIJ'") == (0, "ABCDEFGHIJ\n")
    assert run(shell, '''run() { echo -n "$MARKER"; sh -c "$@"; echo "$MARKER $?"; }''') == (0, "")
    assert run(shell, "MARKER='ABCD''EFGHIJ' run 'status'") == \
        (0, "ABCDEFGHIJstate: ok\nserial: X-1\nABCDEFGHIJ 0\n")
    assert run(shell, "MARKER='QQQQ''ZZZZZZ' run 'fail 3'")[1] == "QQQQZZZZZZQQQQZZZZZZ 3\n"
    # The prefix assignment lasted for that command only.
    assert run(shell, "env MARKER") == (0, "<unset>\n")


def test_exit_status_and_lists(shell):
    assert run(shell, "fail 4; echo $?") == (0, "4\n")
    assert run(shell, "nosuchcommand")[0] == 127
    assert run(shell, "echo $?") == (0, "127\n")
    assert run(shell, "true && echo yes || echo no") == (0, "yes\n")
    assert run(shell, "false && echo yes || echo no") == (0, "no\n")
    assert run(shell, "fail 2 ; echo a ; ") == (0, "a\n")
    assert run(shell, "# only a comment") == (0, "")


def test_quoting_and_expansion(shell):
    assert run(shell, "A=1 B='two  words'")[0] == 0
    assert run(shell, 'args $A $B "$B" ${A}x \'$A\' "\\$A" a\\ b ""') == \
        (0, "[1] [two] [words] [two  words] [1x] [$A] [$A] [a b] []\n")
    assert run(shell, 'args "$UNSET" $UNSET end') == (0, "[] [end]\n")
    assert run(shell, "echo -n no-newline") == (0, "no-newline")
    assert run(shell, "echo -e 'a\\tb'") == (0, "a\tb\n")


def test_functions_positional_parameters_and_sh_c(shell):
    run(shell, 'f() { args "$@"; echo $# "$1"; }')
    assert run(shell, "f 'a b' c") == (0, "[a b] [c]\n2 a b\n")
    assert run(shell, "f") == (0, "\n0 \n")
    assert run(shell, "sh -c 'args $0 $1' name first") == (0, "[name] [first]\n")
    assert run(shell, "sh -c 'exit 5'; echo $?") == (0, "5\n")
    assert run(shell, "loop() { loop; }; loop")[0] == 2          # nesting is bounded


def test_unsupported_syntax_is_an_error_line(shell):
    for line, word in [("echo a | wc", "pipes"), ("echo a > f", "redirections"),
                       ("echo $(date)", "command substitution"), ("echo `date`", "command substitution"),
                       ("echo 'open", "unterminated"), ("}", "unexpected"), ("f() echo", "group")]:
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
