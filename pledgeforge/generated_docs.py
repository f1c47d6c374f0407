"""The command line of a generator of a checked-in document (docs/*.md written from code).

    python -m MODULE PATH           # (re)write PATH
    python -m MODULE --check PATH   # exit 1, naming the command that fixes it, when PATH is stale
    python -m MODULE                # print the document

Tests call `--check` (or compare with `render()` directly), so a document
cannot drift from the code it describes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from pledgeforge.atomicfile import atomic_write


def generator_main(module: str, description: str, default_path: str, render: Callable[[], str],
                   argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("path", nargs="?", help=f"write here (e.g. {default_path}); default: print")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when PATH differs from what the code says")
    args = parser.parse_args(argv)
    text = render()
    if args.path is None:
        if args.check:
            parser.error("--check needs the PATH to compare")
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            print(f"{path} is stale: regenerate it with `python -m {module} {path}`", file=sys.stderr)
            return 1
        return 0
    atomic_write(path, text.encode("utf-8"))
    return 0
