"""The board shell's grammar: a tokenizer and a recursive-descent parser.

The grammar is the part of POSIX sh that lab tools and people type at a
board (the names follow the POSIX shell grammar):

    sequence   := linebreak (and_or (';' | newline) linebreak)*
    and_or     := pipeline (('&&' | '||') linebreak pipeline)*
    pipeline   := ['!'] command ('|' linebreak command)*
    command    := simple | '{' sequence '}' redirect* | '(' sequence ')' redirect*
                | NAME '(' ')' linebreak '{' sequence '}'
    simple     := (ASSIGNMENT | redirect)* (WORD | redirect)*
    redirect   := [IO_NUMBER] ('>' | '>>' | '<' | '>&' | '<&' | '>|') WORD

Words keep their quoting as segments, so expansion later knows what is
literal. `parse` either returns a `Sequence` or raises `ShellSyntaxError` with
one line saying what is wrong: whatever the input, nothing else escapes it.
What the grammar leaves out (command substitution, here-documents, `if`,
`for`, `while`, `case`, background jobs) is refused by name rather than
misread. A `Grammar` can leave out more: U-Boot's hush has no pipes,
redirections, groups or functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

# Groups and subshells nest; a bound keeps the recursive descent far from
# Python's recursion limit whatever the input.
MAX_NESTING = 32
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_COMPOUND_WORDS = ("if", "for", "while", "until", "case", "select", "function")
_RESERVED_ENDS = ("then", "else", "elif", "fi", "do", "done", "esac", "in")
# Longest first, so that ">>" is not read as two ">".
_OPERATORS = ("&&", "||", ">>", ">&", "<&", ">|", "<<", ";", "(", ")", "|", "&", ">", "<", "\n")
REDIRECT_OPS = (">", ">>", "<", ">&", "<&", ">|")


class ShellSyntaxError(Exception):
    """The input is not valid in this shell's grammar."""


# -- tokens ------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    text: str
    kind: str            # "lit" (no expansion), "dq" (expand, no splitting), "bare" (expand, split)


@dataclass(frozen=True)
class Word:
    segments: tuple[Segment, ...]

    @property
    def plain(self) -> str | None:
        """The word's text if it has no quotes and nothing to expand."""
        if len(self.segments) == 1 and self.segments[0].kind == "bare" and "$" not in self.segments[0].text:
            return self.segments[0].text
        return None


@dataclass(frozen=True)
class Op:
    text: str


@dataclass(frozen=True)
class IoNumber:
    """The digits right before a redirection operator, as in `2>/dev/null`."""
    fd: int


Token = Union[Word, Op, IoNumber]


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    segments: list[Segment] = []
    bare: list[str] = []
    in_word = False
    i, n = 0, len(text)

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
        c = text[i]
        if c in " \t\r":
            end_word()
            i += 1
        elif c == "#" and not in_word:
            end = text.find("\n", i)                # a comment runs to the end of its line
            i = n if end < 0 else end
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            flush_bare()
            segments.append(Segment(text[i + 1:end], "lit"))
            in_word = True
            i = end + 1
        elif c == '"':
            flush_bare()
            i = _double_quoted(text, i + 1, segments)
            in_word = True
        elif c == "\\":
            if text.startswith("\n", i + 1):
                i += 2                              # a line continuation
                continue
            # A backslash quotes the next character; one that ends the input
            # has nothing to quote and stands for itself, as in dash and bash.
            flush_bare()
            segments.append(Segment(text[i + 1:i + 2] or "\\", "lit"))
            i += 2
            in_word = True
        elif c == "`" or text.startswith("$(", i):
            raise ShellSyntaxError("command substitution is not supported on this board")
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
            if op is None:
                bare.append(c)
                in_word = True
                i += 1
                continue
            if op in REDIRECT_OPS and in_word and not segments and _is_io_number("".join(bare)):
                tokens.append(IoNumber(int("".join(bare))))
                bare.clear()
                in_word = False
            else:
                end_word()
            tokens.append(Op(op))
            i += len(op)
    end_word()
    return tokens


def _is_io_number(text: str) -> bool:
    """POSIX's IO_NUMBER (the 2 of `2>`) is ASCII digits; str.isdigit alone also takes
    superscripts and other digits that int() refuses."""
    return text.isascii() and text.isdigit()


def _double_quoted(text: str, i: int, segments: list[Segment]) -> int:
    """Read a double-quoted string starting after its quote; returns the index after it."""
    chars: list[str] = []
    while i < len(text):
        c = text[i]
        if c == '"':
            segments.append(Segment("".join(chars), "dq"))
            return i + 1
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\\n':
            segments.append(Segment("".join(chars), "dq"))
            chars.clear()
            if text[i + 1] != "\n":                 # backslash-newline joins lines
                segments.append(Segment(text[i + 1], "lit"))
            i += 2
            continue
        if c == "`" or text.startswith("$(", i):
            raise ShellSyntaxError("command substitution is not supported on this board")
        chars.append(c)
        i += 1
    raise ShellSyntaxError("unterminated double quote")


# -- syntax tree -------------------------------------------------------------------

@dataclass
class Redirect:
    fd: int              # the descriptor redirected: 0 (input), 1 (output), 2 (errors)
    op: str              # one of REDIRECT_OPS
    target: Word         # a file name, or a descriptor number for >& and <&


@dataclass
class Simple:
    assignments: list[tuple[str, Word]]
    words: list[Word]
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class Group:
    body: "Sequence"
    subshell: bool = False                          # ( ... ) rather than { ...; }
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class FunctionDef:
    name: str
    body: Group


@dataclass
class Pipeline:
    commands: list                                  # Simple | Group | FunctionDef
    negated: bool = False


@dataclass
class AndOr:
    first: Pipeline
    rest: list[tuple[str, Pipeline]]                # ("&&" | "||", pipeline)


@dataclass
class Sequence:
    items: list[AndOr] = field(default_factory=list)


@dataclass(frozen=True)
class Grammar:
    """Which optional constructs a shell accepts."""

    pipes: bool = True
    redirections: bool = True
    groups: bool = True                            # { ...; } and ( ... )
    functions: bool = True


POSIX = Grammar()
HUSH = Grammar(pipes=False, redirections=False, groups=False, functions=False)


class _Parser:
    def __init__(self, tokens: list[Token], grammar: Grammar):
        self.tokens = tokens
        self.grammar = grammar
        self.pos = 0
        self.nesting = 0

    def peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def at_op(self, *texts: str) -> bool:
        token = self.peek()
        return isinstance(token, Op) and token.text in texts

    @staticmethod
    def is_reserved(token, text: str) -> bool:
        return isinstance(token, Word) and token.plain == text

    def require(self, allowed: bool, what: str) -> None:
        if not allowed:
            raise ShellSyntaxError(f"{what} are not supported here")

    def linebreak(self) -> None:
        while self.at_op("\n"):
            self.pos += 1

    def sequence(self, closing: str | None = None) -> Sequence:
        seq = Sequence()
        while True:
            self.linebreak()
            token = self.peek()
            if token is None:
                if closing:
                    raise ShellSyntaxError(f"missing '{closing}'")
                return seq
            if closing and self._closes(token, closing):
                return seq
            seq.items.append(self.and_or())
            token = self.peek()
            if isinstance(token, Op) and token.text in (";", "\n"):
                self.pos += 1
            elif isinstance(token, Op) and token.text == "&":
                raise ShellSyntaxError("background jobs (&) are not supported on this board")
            elif token is not None and not (closing and self._closes(token, closing)):
                raise ShellSyntaxError(f"unexpected {_describe(token)}")

    def _closes(self, token, closing: str) -> bool:
        return self.is_reserved(token, closing) if closing == "}" else \
            isinstance(token, Op) and token.text == closing

    def and_or(self) -> AndOr:
        node = AndOr(self.pipeline(), [])
        while self.at_op("&&", "||"):
            op = self.peek().text
            self.pos += 1
            self.linebreak()
            node.rest.append((op, self.pipeline()))
        return node

    def pipeline(self) -> Pipeline:
        negated = self.is_reserved(self.peek(), "!")
        if negated:
            self.pos += 1
        node = Pipeline([self.command()], negated)
        while self.at_op("|"):
            self.require(self.grammar.pipes, "pipes")
            self.pos += 1
            self.linebreak()
            node.commands.append(self.command())
        return node

    def command(self):
        token = self.peek()
        if token is None:
            raise ShellSyntaxError("a command is missing")
        if isinstance(token, Word):
            word = token.plain
            if word == "{":
                return self.group("}")
            if word in _COMPOUND_WORDS:
                raise ShellSyntaxError(f"'{word}' is not supported on this board "
                                       "(commands, lists, pipes, { } groups and functions are)")
            if word in _RESERVED_ENDS or word in ("}", "!"):
                raise ShellSyntaxError(f"unexpected '{word}'")
            nxt = self.peek(1)
            if isinstance(nxt, Op) and nxt.text == "(":
                return self.function_def(token)
        elif isinstance(token, Op) and token.text == "(":
            return self.group(")")
        elif isinstance(token, Op) and token.text not in REDIRECT_OPS + ("<<",):
            raise ShellSyntaxError(f"unexpected {_describe(token)}")
        return self.simple()

    def group(self, closing: str) -> Group:
        self.require(self.grammar.groups, "{ } groups and ( ) subshells")
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ShellSyntaxError(f"groups nested more than {MAX_NESTING} deep")
        self.pos += 1                                           # "{" or "("
        body = self.sequence(closing=closing)
        if not body.items:
            raise ShellSyntaxError(f"empty {'{ }' if closing == '}' else '( )'} group")
        self.pos += 1                                           # "}" or ")"
        self.nesting -= 1
        node = Group(body, subshell=closing == ")")
        while self._at_redirect():
            node.redirects.append(self.redirect())
        return node

    def function_def(self, name_token: Word) -> FunctionDef:
        self.require(self.grammar.functions, "function definitions")
        name = name_token.plain
        if name is None or not NAME_RE.fullmatch(name):
            raise ShellSyntaxError("bad function name")
        self.pos += 1
        close = self.peek(1)
        if not (isinstance(close, Op) and close.text == ")"):
            raise ShellSyntaxError("expected '()' after a function name")
        self.pos += 2
        self.linebreak()
        if not self.is_reserved(self.peek(), "{"):
            raise ShellSyntaxError("a function body must be a { ...; } group")
        return FunctionDef(name, self.group("}"))

    def _at_redirect(self) -> bool:
        token = self.peek()
        return isinstance(token, IoNumber) or (isinstance(token, Op) and token.text in REDIRECT_OPS + ("<<",))

    def redirect(self) -> Redirect:
        self.require(self.grammar.redirections, "redirections")
        fd = None
        if isinstance(self.peek(), IoNumber):
            fd = self.peek().fd
            self.pos += 1
        op = self.peek()
        if op.text == "<<":
            raise ShellSyntaxError("here-documents (<<) are not supported on this board")
        self.pos += 1
        target = self.peek()
        if not isinstance(target, Word):
            raise ShellSyntaxError(f"a file name is missing after '{op.text}'")
        self.pos += 1
        if fd is None:
            fd = 0 if op.text in ("<", "<&") else 1
        return Redirect(fd, op.text, target)

    def simple(self) -> Simple:
        node = Simple([], [])
        while True:
            if self._at_redirect():
                node.redirects.append(self.redirect())
                continue
            word = self.peek()
            if not isinstance(word, Word):
                break
            first = word.segments[0] if word.segments else Segment("", "lit")
            match = _ASSIGN_RE.match(first.text) if first.kind == "bare" else None
            if match and not node.words:
                value = Word((Segment(first.text[match.end():], "bare"),) + word.segments[1:])
                node.assignments.append((match.group(1), value))
            else:
                node.words.append(word)
            self.pos += 1
        if not (node.assignments or node.words or node.redirects):
            raise ShellSyntaxError(f"unexpected {_describe(self.peek())}")
        return node


def _describe(token) -> str:
    if token is None:
        return "end of line"
    if isinstance(token, Op):
        return "newline" if token.text == "\n" else f"'{token.text}'"
    if isinstance(token, IoNumber):
        return f"'{token.fd}'"
    return "word"


def parse(text: str, grammar: Grammar = POSIX) -> Sequence:
    """A line (or a whole script) as a command list; ShellSyntaxError if it is not one."""
    return _Parser(tokenize(text), grammar).sequence()
