"""Run the installed `pledgeforge` console script as users do: a real subprocess."""

from __future__ import annotations

import json
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


SMPMGR = str(Path(sys.executable).with_name("smpmgr"))


def smpmgr(port: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """smpmgr (the SMP client embedded teams use) against a serial port; it must succeed."""
    result = subprocess.run([SMPMGR, "--port", port, *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def jq(stdout: bytes, program: str = ".") -> list:
    """Every JSON value jq (a JSON tool nobody here wrote) prints for `program` over a
    command's stdout. jq reads a stream of values, so one object and JSON lines both work;
    anything on stdout that is not JSON makes it fail."""
    done = subprocess.run(["jq", "-c", program], input=stdout, capture_output=True, timeout=60)
    assert done.returncode == 0, (stdout[-2000:], done.stderr.decode())
    return [json.loads(line) for line in done.stdout.decode().splitlines()]
