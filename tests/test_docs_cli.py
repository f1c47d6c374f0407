"""docs/cli.md is generated from the click commands and stays current; shell completion
works as the reference documents it, in a real bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from clirunner import PLEDGEFORGE
from pledgeforge.docs_cli import render
from test_cli_json import commands

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_the_checked_in_command_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"{DOC} is stale: regenerate it with `python -m pledgeforge.docs_cli docs/cli.md`")


def test_the_reference_does_not_depend_on_the_terminal_width():
    narrow = subprocess.run([sys.executable, "-m", "pledgeforge.docs_cli"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "30"})
    assert narrow.returncode == 0 and narrow.stdout == render()


def test_every_command_and_option_is_in_the_reference():
    text = render()
    for name, command in commands():
        assert f"\n## pledgeforge {name}\n" in text, name
        section = text.split(f"\n## pledgeforge {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option) and param.help is not None:
                assert f"`{param.opts[0]}" in section or f", {param.opts[0]}" in section, \
                    (name, param.opts)


def test_the_generator_writes_and_checks_the_file(tmp_path):
    target = tmp_path / "cli.md"
    command = [sys.executable, "-m", "pledgeforge.docs_cli"]
    subprocess.run([*command, str(target)], check=True, timeout=60)
    assert target.read_text(encoding="utf-8") == render()
    ok = subprocess.run([*command, "--check", str(target)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    target.write_text(render().replace("--serial-number", "--serial-no"), encoding="utf-8")
    stale = subprocess.run([*command, "--check", str(target)], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1
    assert stale.stderr.strip() == (f"{target} is stale: regenerate it with "
                                    f"`python -m pledgeforge.docs_cli {target}`")


def bash_complete(*words: str) -> list[str]:
    """What bash offers after `words` (the last one being typed), with the completion
    script installed the way docs/cli.md says."""
    script = ('eval "$(_PLEDGEFORGE_COMPLETE=bash_source pledgeforge)"\n'
              f"COMP_WORDS=(pledgeforge {' '.join(repr(w) for w in words)}); "
              f"COMP_CWORD={len(words)}\n"
              "_pledgeforge_completion pledgeforge 2>/dev/null\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {**os.environ, "PATH": f"{Path(PLEDGEFORGE).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.parametrize("words,offered", [
    (("bo",), ["board"]),
    (("board", "set-"), ["set-verify-key"]),
    (("board", "power", ""), ["on", "off", "cycle", "status"]),
    (("board", "run", "--serial", ""), ["pty", "rfc2217", "tcp"]),
    (("pledge", "bootstrap", "--fl"), ["--flow"]),
])
def test_bash_completes_commands_options_and_choices(words, offered):
    assert bash_complete(*words) == offered
