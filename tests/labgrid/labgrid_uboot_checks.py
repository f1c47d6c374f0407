"""Checks run by labgrid's pytest plugin with board-uboot-env.yaml: the
bootloader prompt as labgrid's UBootDriver drives it (`;` and `$?`, which its
`run` wraps every command in), then UBootStrategy's boot into the shell.

Started by tests/test_board_labgrid.py; not collected by the main test run.
"""

from __future__ import annotations


def test_uboot_run_and_boot_to_the_shell(target):
    strategy = target.get_driver("UBootStrategy")
    strategy.transition("uboot")                  # power cycle, stop the autoboot countdown
    uboot = target.get_driver("UBootDriver")

    assert uboot.run_check("version")[0].startswith("U-Boot 2024.01-pledgeforge")
    assert uboot.run_check("echo one; echo two") == ["one", "two"]
    assert uboot.run("false")[2] == 1
    assert uboot.run("frobnicate") == (["Unknown command 'frobnicate' - try 'help'"], [], 1)
    assert uboot.run_check("printenv bootdelay") == ["bootdelay=1"]
    uboot.run_check("setenv greeting 'hello  there'")
    assert uboot.run_check('echo "$greeting"; echo $greeting') == ["hello  there", "hello there"]
    assert uboot.run_check("false || echo recovered && echo chained") == ["recovered", "chained"]

    strategy.transition("shell")                  # run bootcmd, "Linux version", login
    shell = target.get_driver("ShellDriver")
    assert "PledgeForge GW-100 Gateway" in "\n".join(shell.run_check("status"))
    assert shell.run_check("which rx sz") == ["/bin/rx", "/bin/sz"]
