"""labgrid drives an emulated board through its own pytest plugin: ShellDriver
and UBootDriver over an RFC 2217 NetworkSerialPort, ExternalPowerDriver calling
`pledgeforge board power`, ShellStrategy and UBootStrategy, all unmodified. The labgrid run is a child pytest with `--lg-env`,
as labgrid's documentation runs tests against a board."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from boardrunner import BoardProcess
from clirunner import PLEDGEFORGE

pytestmark = pytest.mark.slow

LABGRID_DIR = Path(__file__).parent / "labgrid"


def run_labgrid_checks(tmp_path, env_file: str, checks: str, passed: int) -> None:
    """Start a gateway board powered off and run `checks` under labgrid's plugin."""
    state = tmp_path / "gw"
    with BoardProcess("gateway-tpm", state, "--serial", "rfc2217", "--power-off") as board:
        env = {
            **os.environ,
            "LG_PLEDGEFORGE_CONSOLE": board.info["console"].split("://", 1)[1],
            "LG_PLEDGEFORGE_STATE": str(state),
            "LG_PLEDGEFORGE_CLI": PLEDGEFORGE,
        }
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
             "--lg-env", str(LABGRID_DIR / env_file),
             "--rootdir", str(LABGRID_DIR), "-c", os.devnull,
             str(LABGRID_DIR / checks)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        report = result.stdout + result.stderr
        assert result.returncode == 0, report
        assert f"{passed} passed" in report, report


def test_labgrid_shell_driver_and_external_power(tmp_path):
    # ShellStrategy; ShellDriver run, run_script, put_bytes and get_bytes.
    run_labgrid_checks(tmp_path, "board-env.yaml", "labgrid_board_checks.py", passed=2)


def test_labgrid_uboot_driver_and_strategy(tmp_path):
    # UBootStrategy; UBootDriver run at the bootloader prompt, then boot to the shell.
    run_labgrid_checks(tmp_path, "board-uboot-env.yaml", "labgrid_uboot_checks.py", passed=1)
