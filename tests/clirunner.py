"""Run the installed `pledgeforge` console script as users do: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLEDGEFORGE = str(Path(sys.executable).with_name("pledgeforge"))


def run_cli(*args: str, env: dict | None = None, input: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PLEDGEFORGE, *map(str, args)], env=env or dict(os.environ), input=input,
                          capture_output=True, timeout=timeout)


def openssl(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True, timeout=timeout)
