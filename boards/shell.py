"""The board's shell: runs what `shell_grammar` parses, over the board's console.

labgrid's ShellDriver drives a target with a few shell constructs:

    echo 'ABCD''EFGHIJ'                                   (quote joining)
    run() { echo -n "$MARKER"; sh -c "$@"; echo "$MARKER $?"; }
    MARKER='ABCD''EFGHIJ' run 'status'                    (VAR=x cmd, "$@", $?)
    mktemp; rx '/tmp/tmp.X' 2>/dev/null; dd if=... of=...  (put_bytes, run_script)

so this shell runs a real part of POSIX sh: quoting, parameter expansion
(`$VAR`, `${VAR}`, `$?`, `$#`, `$@`, `$1`.., `~`), lists (`;`, `&&`, `||`),
pipelines (`|`, `!`), redirections (`>`, `>>`, `<`, `2>`, `2>&1`, `>&2`),
`{ ...; }` groups, `( ... )` subshells, functions, prefix assignments and
scripts run by path. Commands are registered by name (`CommandRegistry`);
the board's own commands and the file commands live in their own modules.

A pipeline runs its commands one after the other, each reading what the one
before wrote (bounded by `PIPE_LIMIT`), as a board without job control would.
A redirection to a file writes the file once, when the command has finished:
the file then holds all of the output or, if the power went first, what it
held before.

The same executor, with U-Boot's messages and a smaller grammar, is the
bootloader's hush prompt (boot.py).
"""

from __future__ import annotations

import errno
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pledgeforge.errors import PledgeforgeError

from .shell_grammar import (NAME_RE, POSIX, FunctionDef, Grammar, Group, Pipeline, Redirect, Sequence,
                            ShellSyntaxError, Simple, Word, parse)
# What users of the shell also need of its grammar.
from .shell_grammar import HUSH, tokenize  # noqa: F401

MAX_DEPTH = 32                   # nested function calls, `sh -c` and scripts
PIPE_LIMIT = 1024 * 1024         # bytes one command may hand to the next, or to a file
DEV_NULL = "/dev/null"


class ShellExit(BaseException):
    """`exit` or `logout`: leave the (sub)shell. A BaseException so that a
    command's own error handling does not swallow it."""

    def __init__(self, status: int = 0):
        super().__init__(status)
        self.status = status


def absolute_path(cwd: str, name: str) -> str:
    """`name` as a normalised absolute path, relative names taken from `cwd`."""
    path = posixpath.normpath(posixpath.join(cwd, name))
    return "/" + path.lstrip("/") if path.startswith("//") else path


# -- the console and the streams commands write to ------------------------------------

class ShellConsole(Protocol):
    """What the shell needs of a console (the runtime's `Terminal` is one)."""

    def output(self, data: bytes) -> None:
        """Command output; "\\n" ends a line and the console adds its line ending."""

    def write(self, data: bytes) -> None:
        """Bytes exactly as given (file transfers)."""

    def read_raw(self, size: int, timeout: float) -> bytes:
        """Up to `size` input bytes, unechoed and unedited, within `timeout` seconds."""


class CapturedConsole:
    """A console that keeps what is written and has no input: for running
    commands whose output is wanted as data rather than on a serial line."""

    def __init__(self):
        self.data = bytearray()

    def output(self, data: bytes) -> None:
        self.data += data

    write = output

    def read_raw(self, size: int, timeout: float) -> bytes:
        return b""

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class ConsoleOut:
    def __init__(self, console: ShellConsole):
        self.console = console

    def write(self, data: bytes) -> None:
        self.console.output(data)


class Capture:
    """Output kept for the next command of a pipeline or for a file."""

    def __init__(self, limit: int = PIPE_LIMIT):
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.limit:
            raise OSError(errno.EFBIG, f"output larger than {self.limit} bytes")
        self.data += data


class Discard:
    def write(self, data: bytes) -> None:
        pass


@dataclass(frozen=True)
class Io:
    """A command's standard streams. `stdin` None is the console itself."""

    stdin: bytes | None
    stdout: Any
    stderr: Any


@dataclass(frozen=True)
class Dialect:
    """How the shell words its own messages."""

    name: str = "sh"                                   # prefix of its messages; "" for none
    not_found: str = "{name}: not found"
    not_found_status: int = 127


SH = Dialect()


# -- commands -----------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    func: Callable[["CommandContext", list[str]], int | None]
    summary: str
    usage: str = ""


class CommandRegistry:
    """Named commands with a one-line summary each (what `help` lists)."""

    def __init__(self):
        self._commands: dict[str, Command] = {}

    def add(self, name: str, func, summary: str, usage: str = "") -> None:
        self._commands[name] = Command(name, func, summary, usage or name)

    def command(self, name: str, summary: str, usage: str = ""):
        def register(func):
            self.add(name, func, summary, usage)
            return func
        return register

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def __iter__(self):
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def merged(self, *others: "CommandRegistry") -> "CommandRegistry":
        both = CommandRegistry()
        both._commands = dict(self._commands)
        for other in others:
            both._commands.update(other._commands)
        return both

    def subset(self, *names: str) -> "CommandRegistry":
        part = CommandRegistry()
        part._commands = {name: self._commands[name] for name in names}
        return part


class CommandError(PledgeforgeError):
    """A command was used wrongly; the message says how to use it."""


@dataclass
class CommandContext:
    """What a command sees: its shell, the board, its streams and the files."""

    shell: "Shell"
    name: str
    io: Io

    @property
    def board(self) -> Any:
        return self.shell.board

    @property
    def files(self):
        """The board's file system (filesystem.BoardFiles)."""
        if self.shell.files is None:
            raise CommandError("this board has no file system")
        return self.shell.files

    def path(self, name: str) -> str:
        """A file name as an absolute path, relative ones from the working directory."""
        return absolute_path(self.shell.cwd, name)

    def write(self, data: str | bytes) -> None:
        self.io.stdout.write(data.encode() if isinstance(data, str) else data)

    def print(self, text: str = "") -> None:
        self.write(text + "\n")

    def error(self, message: str) -> int:
        self.io.stderr.write(f"{self.name}: {message}\n".encode())
        return 1

    def read_input(self) -> bytes:
        """Standard input when it is a pipe or a file."""
        if self.io.stdin is None:
            raise CommandError("standard input is the console; give a file or use a pipe or <")
        return self.io.stdin

    def serial(self) -> ShellConsole:
        """The console as a byte stream (file transfers): only when both
        standard input and output are the console."""
        if self.io.stdin is not None or not isinstance(self.io.stdout, ConsoleOut):
            raise CommandError("needs the console as standard input and output")
        return self.io.stdout.console


# -- the shell ------------------------------------------------------------------------

class Shell:
    """One shell session on a console."""

    def __init__(self, registry: CommandRegistry, console: ShellConsole, *,
                 board: Any = None, files: Any = None, variables: dict[str, str] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None,
                 grammar: Grammar = POSIX, dialect: Dialect = SH):
        self.registry = registry
        self.console = console
        self.io = Io(None, ConsoleOut(console), ConsoleOut(console))
        self.board = board
        self.files = files
        self.vars: dict[str, str] = dict(variables or {})
        self.functions: dict[str, Group] = {}
        self.status = 0
        self.positional: list[str] = []
        self.arg0 = dialect.name or "sh"
        self.on_error = on_error
        self.grammar = grammar
        self.dialect = dialect
        home = self.vars.get("HOME", "/")
        self.cwd = home if files is not None and files.is_dir(home) else "/"
        self._depth = 0

    def execute(self, text: str, io: Io | None = None) -> int:
        """Run one input line (or a script's text); returns its exit status (also kept as $?)."""
        io = io or self.io
        try:
            tree = parse(text, self.grammar)
        except ShellSyntaxError as exc:
            self._say(io, f"syntax error: {exc}")
            self.status = 2
            return 2
        try:
            self._run_sequence(tree, io)
        except Exception as exc:     # a bug in the shell itself must not take the console down
            self._say(io, f"internal error: {type(exc).__name__}: {exc}")
            self.status = 2
            if self.on_error is not None:
                self.on_error(self.arg0, exc)
        return self.status

    def subshell(self) -> "Shell":
        child = Shell(self.registry, self.console, board=self.board, files=self.files,
                      variables=self.vars, on_error=self.on_error, grammar=self.grammar,
                      dialect=self.dialect)
        child.functions = dict(self.functions)
        child.status = self.status
        child.cwd = self.cwd
        child.positional = list(self.positional)
        child.arg0 = self.arg0
        child._depth = self._depth + 1
        return child

    def run_in_subshell(self, text: str, io: Io, *, arg0: str | None = None,
                        args: list[str] | None = None) -> int:
        """`sh -c TEXT` and scripts: a child shell; `exit` ends only the child."""
        if self._depth >= MAX_DEPTH:
            self._say(io, "shells nested too deeply")
            return 2
        child = self.subshell()
        if arg0 is not None:
            child.arg0 = arg0
            child.positional = list(args or [])
        try:
            return child.execute(text, io)
        except ShellExit as exc:
            return exc.status

    def source(self, text: str, io: Io) -> int:
        """Run `text` in this shell itself (as `.` does; U-Boot's `run`), its
        variables and functions kept; nesting is bounded."""
        if self._depth >= MAX_DEPTH:
            self._say(io, "commands nested too deeply")
            return 2
        self._depth += 1
        try:
            return self.execute(text, io)
        finally:
            self._depth -= 1

    def _say(self, io: Io, text: str) -> None:
        prefix = f"{self.dialect.name}: " if self.dialect.name else ""
        io.stderr.write(f"{prefix}{text}\n".encode("utf-8", "replace"))

    # -- execution ------------------------------------------------------------

    def _run_sequence(self, seq: Sequence, io: Io) -> None:
        for item in seq.items:
            self._run_pipeline(item.first, io)
            for op, pipeline in item.rest:
                if (op == "&&") == (self.status == 0):
                    self._run_pipeline(pipeline, io)

    def _run_pipeline(self, pipeline: Pipeline, io: Io) -> None:
        if len(pipeline.commands) == 1:
            self._run_command(pipeline.commands[0], io)
        else:
            # Each command of a pipeline runs in a subshell, reading what the
            # one before it wrote.
            stdin = io.stdin
            for index, command in enumerate(pipeline.commands):
                last = index == len(pipeline.commands) - 1
                out = io.stdout if last else Capture()
                child = self.subshell()
                try:
                    child._run_command(command, Io(stdin, out, io.stderr))
                except ShellExit as exc:
                    child.status = exc.status
                stdin = None if last else bytes(out.data)
            self.status = child.status
        if pipeline.negated:
            self.status = int(self.status == 0)

    def _run_command(self, node, io: Io) -> None:
        if isinstance(node, Simple):
            self._run_simple(node, io)
        elif isinstance(node, FunctionDef):
            self.functions[node.name] = node.body
            self.status = 0
        else:
            opened = self._open_redirects(node.redirects, io)
            if opened is None:
                return
            inner, commits = opened
            if node.subshell:
                child = self.subshell()
                try:
                    child._run_sequence(node.body, inner)
                except ShellExit as exc:
                    child.status = exc.status
                self.status = child.status
            else:
                self._run_sequence(node.body, inner)
            self._commit(commits, io)

    def _run_simple(self, node: Simple, io: Io) -> None:
        assignments = [(name, "".join(self._expand(value, split=False))) for name, value in node.assignments]
        argv: list[str] = []
        for word in node.words:
            argv.extend(self._expand(word, split=True))
        opened = self._open_redirects(node.redirects, io)
        if opened is None:
            return
        inner, commits = opened
        if not argv:
            self.vars.update(assignments)
            self.status = 0
        else:
            saved = {name: self.vars.get(name) for name, _ in assignments}
            self.vars.update(assignments)
            try:
                self.status = self._invoke(argv, inner)
            finally:
                for name, old in saved.items():
                    if old is None:
                        self.vars.pop(name, None)
                    else:
                        self.vars[name] = old
        self._commit(commits, io)

    # -- redirections ------------------------------------------------------------

    def _open_redirects(self, redirects: list[Redirect], io: Io):
        """The streams a command runs with, and the file writes to make after
        it; None (after saying why) if a redirection cannot be set up."""
        streams = {0: io.stdin, 1: io.stdout, 2: io.stderr}
        commits: list[tuple[str, str, Capture]] = []
        for redirect in redirects:
            fields = self._expand(redirect.target, split=True)
            if len(fields) != 1:
                self._say(io, "ambiguous redirect")
                self.status = 1
                return None
            target = fields[0]
            try:
                if redirect.op == ">&":              # 2>&1, >&2
                    if redirect.fd not in (1, 2) or target not in ("1", "2"):
                        raise OSError(errno.EBADF, "only 1>&2 and 2>&1 are supported on this board")
                    streams[redirect.fd] = streams[int(target)]
                    continue
                if redirect.op == "<&" or redirect.fd not in streams:
                    raise OSError(errno.EBADF, "Bad file descriptor")
                path = absolute_path(self.cwd, target)
                if redirect.op == "<":
                    if redirect.fd != 0:
                        raise OSError(errno.EBADF, f"{redirect.fd}: bad file descriptor")
                    streams[0] = b"" if path == DEV_NULL else self._files_for(path).read(path)
                    continue
                if redirect.fd == 0:
                    raise OSError(errno.EBADF, "0: bad file descriptor")
                if path == DEV_NULL:
                    streams[redirect.fd] = Discard()
                    continue
                self._files_for(path).check_writable(path)
                capture = Capture()
                commits.append((redirect.op, path, capture))
                streams[redirect.fd] = capture
            except OSError as exc:
                verb = "open" if redirect.op == "<" else "create"
                self._say(io, f"can't {verb} {target}: {exc.strerror or exc}")
                self.status = 1
                return None
        return Io(streams[0], streams[1], streams[2]), commits

    def _files_for(self, path: str):
        if self.files is None:
            raise OSError(errno.EROFS, "this board has no file system")
        return self.files

    def _commit(self, commits, io: Io) -> None:
        for op, path, capture in commits:
            try:
                if op == ">>":
                    self.files.append(path, bytes(capture.data))
                else:
                    self.files.write(path, bytes(capture.data))
            except (OSError, PledgeforgeError) as exc:
                self._say(io, f"can't write {path}: {getattr(exc, 'strerror', None) or exc}")
                self.status = 1

    # -- commands -------------------------------------------------------------------

    def _invoke(self, argv: list[str], io: Io) -> int:
        name = argv[0]
        if name in self.functions:
            return self._call_function(name, argv[1:], io)
        command = self.registry.get(name)
        if command is None and name.startswith("/bin/"):
            command = self.registry.get(name[len("/bin/"):])
        if command is None and "/" in name and self.files is not None:
            return self._run_script_file(name, argv[1:], io)
        if command is None:
            self._say(io, self.dialect.not_found.format(name=name))
            return self.dialect.not_found_status
        ctx = CommandContext(self, name, io)
        try:
            status = command.func(ctx, argv[1:])
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return ctx.error(f"{where}{exc.strerror or exc}")
        except PledgeforgeError as exc:
            return ctx.error(str(exc))
        except Exception as exc:        # a bug in a command must not take the console down
            ctx.error(f"internal error: {type(exc).__name__}: {exc}")
            if self.on_error is not None:
                self.on_error(name, exc)
            return 1
        return 0 if status is None else int(status)

    def _call_function(self, name: str, args: list[str], io: Io) -> int:
        if self._depth >= MAX_DEPTH:
            self._say(io, f"{name}: functions nested too deeply")
            return 2
        saved = self.positional
        self.positional = args
        self._depth += 1
        try:
            self._run_sequence(self.functions[name].body, io)
            return self.status
        finally:
            self._depth -= 1
            self.positional = saved

    def _run_script_file(self, name: str, args: list[str], io: Io) -> int:
        """A command named by path: a shell script in the board's files."""
        path = absolute_path(self.cwd, name)
        try:
            info = self.files.stat(path)
            if info.is_dir or not info.mode & 0o111:
                raise OSError(errno.EACCES, "Permission denied")
            text = self.files.read(path).decode("utf-8")
        except OSError as exc:
            self._say(io, f"{name}: {exc.strerror or exc}")
            return 127 if exc.errno == errno.ENOENT else 126
        except UnicodeDecodeError:
            self._say(io, f"{name}: cannot execute binary file")
            return 126
        return self.run_in_subshell(text, io, arg0=name, args=args)

    # -- expansion ------------------------------------------------------------

    def _special(self, name: str) -> str | None:
        if name == "?":
            return str(self.status)
        if name == "#":
            return str(len(self.positional))
        if name == "$":
            return "1"
        if name == "0":
            return self.arg0
        if name in ("@", "*"):
            return " ".join(self.positional)
        if name.isascii() and name.isdigit():
            index = int(name)
            return self.positional[index - 1] if index <= len(self.positional) else ""
        return None

    def _value(self, name: str) -> str:
        special = self._special(name)
        return special if special is not None else self.vars.get(name, "")

    def _expand(self, word: Word, *, split: bool) -> list[str]:
        """A word after tilde and parameter expansion: zero or more fields."""
        fields: list[str] = []
        current: list[str] = []
        has_field = False              # quotes make a field even when empty

        def emit():
            nonlocal has_field
            if current or has_field:
                fields.append("".join(current))
            current.clear()
            has_field = False

        segments = word.segments
        first = segments[0] if segments else None
        if first is not None and first.kind == "bare" and (first.text == "~" or first.text.startswith("~/")):
            current.append(self.vars.get("HOME", "/"))
            has_field = True
            segments = (type(first)(first.text[1:], "bare"),) + segments[1:]

        for seg in segments:
            if seg.kind == "lit":
                current.append(seg.text)
                has_field = True
                continue
            if seg.kind == "dq":
                has_field = True
            for piece, is_param, name in _scan(seg.text):
                if not is_param:
                    current.append(piece)
                    if piece:
                        has_field = True
                    continue
                if name == "@" and seg.kind == "dq":
                    # "$@": one field per positional parameter.
                    for index, arg in enumerate(self.positional):
                        if index:
                            emit()
                            has_field = True
                        current.append(arg)
                    if not self.positional and len(word.segments) == 1 and seg.text == "$@":
                        has_field = False
                    continue
                value = self._value(name)
                if seg.kind == "bare" and split:
                    parts = value.split()
                    if not parts:
                        continue
                    if value[:1].isspace():
                        emit()
                    for index, part in enumerate(parts):
                        if index:
                            emit()
                        current.append(part)
                        has_field = True
                    if value[-1:].isspace():
                        emit()
                else:
                    current.append(value)
        emit()
        return fields


_PARAM_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[?#@*$])\}|([A-Za-z_][A-Za-z0-9_]*|[0-9]|[?#@*$]))")


def _scan(text: str):
    """Split text into (literal, False, "") and (raw, True, parameter-name) pieces."""
    pos = 0
    for match in _PARAM_RE.finditer(text):
        if match.start() > pos:
            yield text[pos:match.start()], False, ""
        yield match.group(0), True, match.group(1) or match.group(2)
        pos = match.end()
    if pos < len(text):
        yield text[pos:], False, ""


# -- built-in commands -------------------------------------------------------------

BUILTINS = CommandRegistry()


@BUILTINS.command("echo", "print arguments", "echo [-n] [-e] [ARG...]")
def _echo(ctx: CommandContext, args: list[str]) -> int:
    newline, escapes = True, False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        for flag in args[0][1:]:
            if flag == "n":
                newline = False
            else:
                escapes = flag == "e"
        args = args[1:]
    text = " ".join(args)
    if escapes:
        text, stop = _echo_escapes(text)
        if stop:
            newline = False
    ctx.write(text + ("\n" if newline else ""))
    return 0


def _echo_escapes(text: str) -> tuple[str, bool]:
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "a": "\a", "b": "\b"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "c":
                return "".join(out), True
            if nxt in table:
                out.append(table[nxt])
                i += 2
                continue
        out.append(text[i])
        i += 1
    return "".join(out), False


@BUILTINS.command("true", "do nothing, successfully")
def _true(ctx, args) -> int:
    return 0


@BUILTINS.command(":", "do nothing, successfully")
def _colon(ctx, args) -> int:
    return 0


@BUILTINS.command("false", "do nothing, unsuccessfully")
def _false(ctx, args) -> int:
    return 1


@BUILTINS.command("sh", "run a command string or a script in a new shell",
                  "sh -c COMMAND [NAME [ARG...]] | sh FILE [ARG...]")
def _sh(ctx: CommandContext, args: list[str]) -> int:
    shell = ctx.shell
    if len(args) >= 2 and args[0] == "-c":
        return shell.run_in_subshell(args[1], ctx.io, arg0=args[2] if len(args) > 2 else shell.arg0,
                                     args=args[3:])
    if args and not args[0].startswith("-"):
        path = ctx.path(args[0])
        try:
            text = ctx.files.read(path).decode("utf-8")
        except UnicodeDecodeError:
            return ctx.error(f"{args[0]}: cannot execute binary file")
        return shell.run_in_subshell(text, ctx.io, arg0=args[0], args=args[1:])
    return ctx.error("usage: sh -c COMMAND [NAME [ARG...]] | sh FILE [ARG...]")


@BUILTINS.command("export", "set shell variables", "export NAME[=VALUE]...")
def _export(ctx: CommandContext, args: list[str]) -> int:
    for arg in args:
        name, eq, value = arg.partition("=")
        if not NAME_RE.fullmatch(name):
            return ctx.error(f"bad variable name {name!r}")
        if eq:
            ctx.shell.vars[name] = value
        else:
            ctx.shell.vars.setdefault(name, "")
    return 0


@BUILTINS.command("unset", "remove shell variables or functions", "unset [-f] NAME...")
def _unset(ctx: CommandContext, args: list[str]) -> int:
    functions = bool(args) and args[0] == "-f"
    for name in args[1:] if functions else args:
        (ctx.shell.functions if functions else ctx.shell.vars).pop(name, None)
    return 0


@BUILTINS.command("exit", "leave the shell", "exit [STATUS]")
def _exit(ctx: CommandContext, args: list[str]) -> int:
    status = ctx.shell.status
    if args:
        if not (args[0].isascii() and args[0].isdigit()):
            return ctx.error(f"numeric status required, got {args[0]!r}")
        status = int(args[0]) & 0xFF
    raise ShellExit(status)


@BUILTINS.command("logout", "leave the login shell")
def _logout(ctx: CommandContext, args: list[str]) -> int:
    raise ShellExit(0)


@BUILTINS.command("cd", "change the working directory", "cd [DIR]")
def _cd(ctx: CommandContext, args: list[str]) -> int:
    target = ctx.path(args[0] if args else ctx.shell.vars.get("HOME", "/"))
    if not ctx.files.is_dir(target):
        return ctx.error(f"can't cd to {args[0] if args else target}")
    ctx.shell.cwd = target
    return 0


@BUILTINS.command("pwd", "print the working directory")
def _pwd(ctx: CommandContext, args: list[str]) -> int:
    ctx.print(ctx.shell.cwd)
    return 0
