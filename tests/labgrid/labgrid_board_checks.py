"""Checks run by labgrid's own pytest plugin (`pytest --lg-env board-env.yaml`).

Not collected by the main test run: tests/test_board_labgrid.py starts a board
and runs this file in a child pytest with the environment file, the way
labgrid's documentation runs tests against a real board.
"""

from __future__ import annotations


def fields(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def test_shell_status_and_power_cycle(target):
    strategy = target.get_driver("ShellStrategy")
    strategy.transition("shell")                  # power cycle, boot, login, systemctl wait
    shell = target.get_driver("ShellDriver")

    first = fields(shell.run_check("status"))
    assert first["model"] == "PledgeForge GW-100 Gateway"
    assert first["firmware"] == "1.0.0"
    assert shell.run("false")[2] == 1
    assert shell.run_check("echo one two; echo three") == ["one two", "three"]

    strategy.transition("off")
    strategy.transition("shell")                  # a second, real power cycle
    second = fields(shell.run_check("status"))
    assert second["serial"] == first["serial"]
    assert int(second["boots"]) == int(first["boots"]) + 1

    shell.run_check("config set labgrid.seen yes")
    target.get_driver("ExternalPowerDriver").cycle()
    target.deactivate(shell)
    target.activate(shell)                        # logs in again after the cycle
    assert shell.run_check("config get labgrid.seen") == ["yes"]
