"""labgrid drives an emulated board through its own pytest plugin: ShellDriver
over an RFC 2217 NetworkSerialPort, ExternalPowerDriver calling
`pledgeforge board power`. The labgrid run is a child pytest with `--lg-env`,
as labgrid's documentation runs tests against a board."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from boardrunner import BoardProcess
from clirunner import PLEDGEFORGE

LABGRID_DIR = Path(__file__).parent / "labgrid"


def test_labgrid_shell_driver_and_external_power(tmp_path):
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
             "--lg-env", str(LABGRID_DIR / "board-env.yaml"),
             "--rootdir", str(LABGRID_DIR), "-c", os.devnull,
             str(LABGRID_DIR / "labgrid_board_checks.py")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        report = result.stdout + result.stderr
        assert result.returncode == 0, report
        assert "1 passed" in report, report
