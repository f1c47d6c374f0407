"""Render the click commands as docs/cli.md, the command reference.

    python -m pledgeforge.docs_cli docs/cli.md          # regenerate
    python -m pledgeforge.docs_cli --check docs/cli.md  # exit 1 when stale
    python -m pledgeforge.docs_cli                      # print it

Every word of a command's entry is what `--help` says: its usage line, its
help text and, per option, click's own option help (names, metavar, default,
required). A test fails when the checked-in file and the commands differ.
"""

from __future__ import annotations

import html
import inspect
import sys
from collections.abc import Iterator

import click

from pledgeforge.cli import main as cli_main
from pledgeforge.generated_docs import generator_main

DEFAULT_PATH = "docs/cli.md"
MODULE = "pledgeforge.docs_cli"
PROG = "pledgeforge"
WIDTH = 100

PREAMBLE = f"""\
# pledgeforge command reference

Generated from the click commands by `python -m {MODULE} {DEFAULT_PATH}`; do not edit by hand (a
test fails when this file and the commands differ). `pledgeforge COMMAND --help` says the same.

## For scripts

Exit status, for every command: **0** success; **1** verification or protocol failure (a bad
signature, an untrusted chain, a refused image, a pledge or board that did not enroll); **2**
usage error (a missing or malformed option, a bad key URI, an unknown profile, a bad serial
number, a configuration that does not parse); **3** environment (a missing token, a wrong PIN, a
TPM, server or board that does not answer, a file that cannot be read or written). An error is
one line on stderr, `pledgeforge: error: ...`.

With `--json`, stdout carries JSON only (one object; listings and streams one object per line)
and lines for people go to stderr. Commands without `--json`: `board run` and `board pty-bridge`
always print one JSON line and nothing else; `cms sign` and `keys public` print the data itself
(or nothing); `provision export` writes its JSON lines; `masa serve` and `registrar serve` are
servers and log.

## Shell completion

```sh
eval "$(_PLEDGEFORGE_COMPLETE=bash_source pledgeforge)"     # bash (>= 4.4), e.g. in ~/.bashrc
eval "$(_PLEDGEFORGE_COMPLETE=zsh_source pledgeforge)"      # zsh, in ~/.zshrc
_PLEDGEFORGE_COMPLETE=fish_source pledgeforge | source      # fish, in ~/.config/fish/completions/pledgeforge.fish
```

Commands, options and the values of choice options (`board power on|off|cycle|status`,
`--serial pty|rfc2217|tcp`, `--flow`, ...) complete on Tab; options that take a file or directory
complete file names.
"""


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    # list_commands/get_command: the top-level group imports its commands on demand.
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        sub = click.Context(command, info_name=name, parent=ctx)
        yield command, sub
        if isinstance(command, click.Group):
            yield from _commands(command, sub)


def _title(ctx: click.Context) -> str:
    return ctx.command_path


def _anchor(title: str) -> str:
    return title.replace(" ", "-")


def _text(help_text: str | None) -> str:
    """A help text as Markdown paragraphs (angle brackets are text, not HTML)."""
    if not help_text:
        return ""
    paragraphs = [" ".join(line.strip() for line in block.splitlines())
                  for block in inspect.cleandoc(help_text).split("\n\n")]
    return "\n\n".join(html.escape(p, quote=False) for p in paragraphs if p.strip())


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _entry(command: click.Command, ctx: click.Context) -> str:
    title = _title(ctx)
    lines = [f"## {title}", "", "```", command.get_usage(ctx).strip(), "```", ""]
    text = _text(command.help)
    if text:
        lines += [text, ""]
    if isinstance(command, click.Group):
        lines.append("Commands: " + ", ".join(
            f"[`{name}`](#{_anchor(f'{title} {name}')})" for name in sorted(command.list_commands(ctx))) + ".")
        lines.append("")
    # Arguments are in the usage line; --help is on every command.
    rows = [record for param in command.get_params(ctx)
            if isinstance(param, click.Option) and "--help" not in param.opts
            and (record := param.get_help_record(ctx)) is not None]
    if rows:
        lines += ["| option | what it does |", "|---|---|"]
        lines += [f"| `{_cell(names)}` | {_cell(what)} |" for names, what in rows]
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    """The whole of docs/cli.md."""
    # A fixed width: the usage lines must not depend on the terminal that generates the file.
    root = click.Context(cli_main, info_name=PROG, terminal_width=WIDTH, max_content_width=WIDTH)
    entries = list(_commands(cli_main, root))
    contents = ["## Commands", ""] + [
        f"- [`{_title(ctx)}`](#{_anchor(_title(ctx))})" + (
            f": {_cell(command.get_short_help_str(80))}" if not isinstance(command, click.Group) else "")
        for command, ctx in entries]
    parts = [PREAMBLE, "\n".join(contents) + "\n", _entry(cli_main, root)]
    parts += [_entry(command, ctx) for command, ctx in entries]
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    return generator_main(MODULE, __doc__.split("\n\n")[0], DEFAULT_PATH, render, argv)


if __name__ == "__main__":
    sys.exit(main())
