"""The board's shell: a command registry and the POSIX-shell subset lab tools use.

labgrid's ShellDriver drives a target with a few shell constructs:

    echo 'ABCD''EFGHIJ'                                   (quote joining)
    run() { echo -n "$MARKER"; sh -c "$@"; echo "$MARKER $?"; }
    MARKER='ABCD''EFGHIJ' run 'status'                    (VAR=x cmd, "$@", $?)
    dmesg -n 1

so this shell implements exactly that much of POSIX sh, properly: single and
double quotes, backslash escapes, `$VAR`/`${VAR}`/`$?`/`$#`/`$@`/`$1`..,
`;`, `&&`, `||`, `{ ...; }` groups, function definitions, prefix assignments,
`sh -c`, `echo`, `true`, `false`, `export`, `unset`, `exit`. Pipes,
redirections and command substitution are refused with an error rather than
misread. Board commands (status, config, ...) are registered by the runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pledgeforge.errors import PledgeforgeError

MAX_DEPTH = 32
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")


class ShellSyntaxError(Exception):
    """The line is not valid in this shell's grammar."""


class ShellExit(BaseException):
    """`exit` or `logout`: leave the (sub)shell. A BaseException so that a
    command's own error handling does not swallow it."""

    def __init__(self, status: int = 0):
        super().__init__(status)
        self.status = status


# -- words and tokens ---------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    text: str
    kind: str            # "lit" (no expansion), "dq" (expand, no splitting), "bare" (expand, split)


@dataclass(frozen=True)
class Word:
    segments: tuple[Segment, ...]

    @property
    def quoted(self) -> bool:
        return any(s.kind != "bare" for s in self.segments)

    @property
    def plain(self) -> str | None:
        """The word's text if it has no quotes and nothing to expand."""
        if len(self.segments) == 1 and self.segments[0].kind == "bare" and "$" not in self.segments[0].text:
            return self.segments[0].text
        return None


@dataclass(frozen=True)
class Op:
    text: str


_OPERATORS = ("&&", "||", ";", "(", ")", "|", "&", ">>", ">", "<")
_UNSUPPORTED = {"|": "pipes", "&": "background jobs", ">": "redirections", ">>": "redirections",
                "<": "redirections"}


def tokenize(line: str) -> list[Word | Op]:
    tokens: list[Word | Op] = []
    segments: list[Segment] = []
    bare: list[str] = []
    in_word = False
    i, n = 0, len(line)

    def flush_bare() -> None:
        if bare:
            segments.append(Segment("".join(bare), "bare"))
            bare.clear()

    def end_word() -> None:
        nonlocal in_word
        flush_bare()
        if in_word:
            tokens.append(Word(tuple(segments)))
        segments.clear()
        in_word = False

    while i < n:
        c = line[i]
        if c in " \t":
            end_word()
            i += 1
        elif c == "#" and not in_word:
            break                                   # a comment runs to the end of the line
        elif c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            flush_bare()
            segments.append(Segment(line[i + 1:end], "lit"))
            in_word = True
            i = end + 1
        elif c == '"':
            flush_bare()
            i = _double_quoted(line, i + 1, segments)
            in_word = True
        elif c == "\\":
            # A backslash quotes the next character; one that ends the input
            # has nothing to quote and stands for itself, as in dash and bash.
            flush_bare()
            segments.append(Segment(line[i + 1:i + 2] or "\\", "lit"))
            i += 2
            in_word = True
        elif c == "`" or line.startswith("$(", i):
            raise ShellSyntaxError("command substitution is not supported on this board")
        else:
            op = next((o for o in _OPERATORS if line.startswith(o, i)), None)
            if op is not None:
                end_word()
                if op in _UNSUPPORTED:
                    raise ShellSyntaxError(f"{_UNSUPPORTED[op]} are not supported on this board")
                tokens.append(Op(op))
                i += len(op)
            else:
                bare.append(c)
                in_word = True
                i += 1
    end_word()
    return tokens


def _double_quoted(line: str, i: int, segments: list[Segment]) -> int:
    """Read a double-quoted string starting after its quote; returns the index after it."""
    text: list[str] = []
    while i < len(line):
        c = line[i]
        if c == '"':
            segments.append(Segment("".join(text), "dq"))
            return i + 1
        if c == "\\" and i + 1 < len(line) and line[i + 1] in '$`"\\':
            segments.append(Segment("".join(text), "dq"))
            text.clear()
            segments.append(Segment(line[i + 1], "lit"))
            i += 2
            continue
        if c == "`" or line.startswith("$(", i):
            raise ShellSyntaxError("command substitution is not supported on this board")
        text.append(c)
        i += 1
    raise ShellSyntaxError("unterminated double quote")


# -- syntax tree ---------------------------------------------------------------

@dataclass
class Simple:
    assignments: list[tuple[str, Word]]
    words: list[Word]


@dataclass
class Group:
    body: "Sequence"


@dataclass
class FunctionDef:
    name: str
    body: Group


@dataclass
class AndOr:
    first: Any
    rest: list[tuple[str, Any]]          # ("&&" | "||", command)


@dataclass
class Sequence:
    items: list[AndOr] = field(default_factory=list)


class _Parser:
    def __init__(self, tokens: list[Word | Op]):
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset: int = 0):
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def is_reserved(self, token, text: str) -> bool:
        return isinstance(token, Word) and token.plain == text

    def sequence(self, closing: str | None = None) -> Sequence:
        seq = Sequence()
        while True:
            token = self.peek()
            if token is None:
                if closing:
                    raise ShellSyntaxError(f"missing '{closing}'")
                return seq
            if closing and self.is_reserved(token, closing):
                return seq
            if isinstance(token, Op) and token.text == ";":
                raise ShellSyntaxError("unexpected ';'")
            seq.items.append(self.and_or())
            token = self.peek()
            if isinstance(token, Op) and token.text == ";":
                self.pos += 1
            elif token is not None and not (closing and self.is_reserved(token, closing)):
                raise ShellSyntaxError(f"unexpected {_describe(token)}")

    def and_or(self) -> AndOr:
        node = AndOr(self.command(), [])
        while isinstance(self.peek(), Op) and self.peek().text in ("&&", "||"):
            op = self.peek().text
            self.pos += 1
            node.rest.append((op, self.command()))
        return node

    def command(self):
        token = self.peek()
        if token is None:
            raise ShellSyntaxError("a command is missing")
        if self.is_reserved(token, "{"):
            return self.group()
        if self.is_reserved(token, "}"):
            raise ShellSyntaxError("unexpected '}'")
        nxt = self.peek(1)
        if isinstance(token, Word) and isinstance(nxt, Op) and nxt.text == "(":
            return self.function_def(token)
        if isinstance(token, Op):
            raise ShellSyntaxError(f"unexpected {_describe(token)}")
        return self.simple()

    def group(self) -> Group:
        self.pos += 1                                           # "{"
        body = self.sequence(closing="}")
        if not body.items:
            raise ShellSyntaxError("empty { } group")
        self.pos += 1                                           # "}"
        return Group(body)

    def function_def(self, name_token: Word) -> FunctionDef:
        name = name_token.plain
        if name is None or not _NAME_RE.fullmatch(name):
            raise ShellSyntaxError("bad function name")
        self.pos += 1
        close = self.peek(1)
        if not (isinstance(close, Op) and close.text == ")"):
            raise ShellSyntaxError("expected '()' after a function name")
        self.pos += 2
        if not self.is_reserved(self.peek(), "{"):
            raise ShellSyntaxError("a function body must be a { ...; } group")
        return FunctionDef(name, self.group())

    def simple(self) -> Simple:
        node = Simple([], [])
        while isinstance(self.peek(), Word):
            word = self.peek()
            first = word.segments[0]
            match = _ASSIGN_RE.match(first.text) if first.kind == "bare" else None
            if match and not node.words:
                value = Word((Segment(first.text[match.end():], "bare"),) + word.segments[1:])
                node.assignments.append((match.group(1), value))
            else:
                node.words.append(word)
            self.pos += 1
        return node


def _describe(token) -> str:
    return f"'{token.text}'" if isinstance(token, Op) else "word"


def parse(line: str) -> Sequence:
    parser = _Parser(tokenize(line))
    seq = parser.sequence()
    return seq


# -- commands -----------------------------------------------------------------

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

    def merged(self, other: "CommandRegistry") -> "CommandRegistry":
        both = CommandRegistry()
        both._commands = {**self._commands, **other._commands}
        return both


class CommandError(PledgeforgeError):
    """A command was used wrongly; the message says how to use it."""


@dataclass
class CommandContext:
    """What a command sees: its shell, the board, and the console to write to."""

    shell: "Shell"
    name: str

    @property
    def board(self) -> Any:
        return self.shell.board

    def write(self, text: str) -> None:
        self.shell.write(text)

    def print(self, text: str = "") -> None:
        self.shell.write(text + "\n")

    def error(self, message: str) -> int:
        self.print(f"{self.name}: {message}")
        return 1


class Shell:
    """One shell session. `write` receives output text with "\\n" line ends."""

    def __init__(self, registry: CommandRegistry, write: Callable[[str], None], *,
                 board: Any = None, variables: dict[str, str] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None):
        self.registry = BUILTINS.merged(registry)
        self.write = write
        self.board = board
        self.vars: dict[str, str] = dict(variables or {})
        self.functions: dict[str, Group] = {}
        self.status = 0
        self.positional: list[str] = []
        self.arg0 = "sh"
        self.on_error = on_error
        self._depth = 0

    def execute(self, line: str) -> int:
        """Run one input line; returns its exit status (also kept as $?)."""
        try:
            tree = parse(line)
        except ShellSyntaxError as exc:
            self.write(f"sh: syntax error: {exc}\n")
            self.status = 2
            return 2
        if tree.items:
            self._run_sequence(tree)
        return self.status

    def subshell(self) -> "Shell":
        child = Shell(CommandRegistry(), self.write, board=self.board, variables=self.vars,
                      on_error=self.on_error)
        child.registry = self.registry
        child.functions = dict(self.functions)
        child.status = self.status
        return child

    # -- execution ------------------------------------------------------------

    def _run_sequence(self, seq: Sequence) -> None:
        for item in seq.items:
            self._run_node(item.first)
            for op, node in item.rest:
                if (op == "&&") == (self.status == 0):
                    self._run_node(node)

    def _run_node(self, node) -> None:
        if isinstance(node, Simple):
            self._run_simple(node)
        elif isinstance(node, Group):
            self._run_sequence(node.body)
        elif isinstance(node, FunctionDef):
            self.functions[node.name] = node.body
            self.status = 0

    def _run_simple(self, node: Simple) -> None:
        assignments = [(name, "".join(self._expand(value, split=False))) for name, value in node.assignments]
        argv: list[str] = []
        for word in node.words:
            argv.extend(self._expand(word, split=True))
        if not argv:
            self.vars.update(assignments)
            self.status = 0
            return
        saved = {name: self.vars.get(name) for name, _ in assignments}
        self.vars.update(assignments)
        try:
            self.status = self._invoke(argv)
        finally:
            for name, old in saved.items():
                if old is None:
                    self.vars.pop(name, None)
                else:
                    self.vars[name] = old

    def _invoke(self, argv: list[str]) -> int:
        name = argv[0]
        if name in self.functions:
            if self._depth >= MAX_DEPTH:
                self.write(f"sh: {name}: functions nested too deeply\n")
                return 2
            saved = self.positional
            self.positional = argv[1:]
            self._depth += 1
            try:
                self._run_sequence(self.functions[name].body)
                return self.status
            finally:
                self._depth -= 1
                self.positional = saved
        command = self.registry.get(name)
        if command is None:
            self.write(f"sh: {name}: not found\n")
            return 127
        ctx = CommandContext(self, name)
        try:
            status = command.func(ctx, argv[1:])
        except (PledgeforgeError, OSError) as exc:
            text = str(exc) if isinstance(exc, PledgeforgeError) else (exc.strerror or str(exc))
            ctx.print(f"{name}: {text}")
            return 1
        except Exception as exc:        # a bug in a command must not take the console down
            ctx.print(f"{name}: internal error: {type(exc).__name__}: {exc}")
            if self.on_error is not None:
                self.on_error(name, exc)
            return 1
        return 0 if status is None else int(status)

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
        if name.isdigit():
            index = int(name)
            return self.positional[index - 1] if index <= len(self.positional) else ""
        return None

    def _value(self, name: str) -> str:
        special = self._special(name)
        return special if special is not None else self.vars.get(name, "")

    def _expand(self, word: Word, *, split: bool) -> list[str]:
        """A word after parameter expansion: zero or more fields."""
        fields: list[str] = []
        current: list[str] = []
        has_field = False              # quotes make a field even when empty

        def emit():
            nonlocal has_field
            if current or has_field:
                fields.append("".join(current))
            current.clear()
            has_field = False

        for seg in word.segments:
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


@BUILTINS.command("sh", "run a command string in a new shell", "sh -c COMMAND [NAME [ARG...]]")
def _sh(ctx: CommandContext, args: list[str]) -> int:
    if len(args) < 2 or args[0] != "-c":
        return ctx.error("only `sh -c COMMAND` is supported on this board")
    child = ctx.shell.subshell()
    child._depth = ctx.shell._depth + 1
    if child._depth > MAX_DEPTH:
        return ctx.error("shells nested too deeply")
    if len(args) > 2:
        child.arg0 = args[2]
        child.positional = args[3:]
    try:
        return child.execute(args[1])
    except ShellExit as exc:
        return exc.status


@BUILTINS.command("export", "set shell variables", "export NAME[=VALUE]...")
def _export(ctx: CommandContext, args: list[str]) -> int:
    for arg in args:
        name, eq, value = arg.partition("=")
        if not _NAME_RE.fullmatch(name):
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
        if not args[0].isdigit():
            return ctx.error(f"numeric status required, got {args[0]!r}")
        status = int(args[0]) & 0xFF
    raise ShellExit(status)


@BUILTINS.command("logout", "leave the login shell")
def _logout(ctx: CommandContext, args: list[str]) -> int:
    raise ShellExit(0)
