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


# Every byte value, CR/LF pairs, XMODEM's own control bytes (SOH, EOT, ACK,
# NAK, CAN, its 0x1a padding), Telnet's IAC and SMP's frame starts; a length
# that is not a multiple of XMODEM's 128-byte blocks.
PAYLOAD = bytes(range(256)) * 2 + b"\r\n\n\r\x01\x04\x06\x15\x18\x1a\xff\xff\x06\x09\x04\x14tail"

SCRIPT = b"""#!/bin/sh
# a script as a lab runs one: files, pipes, redirections and statuses
echo "script $0 with $# arguments"
base64 /root/payload.bin > /tmp/payload.b64
base64 -d < /tmp/payload.b64 | cat > /root/copy.bin
stat /root/copy.bin
cat /root/nothing-here 2>/dev/null || echo "cat failed with $?"
exit 3
"""


def test_files_scripts_and_transfers(target):
    strategy = target.get_driver("ShellStrategy")
    strategy.transition("shell")
    shell = target.get_driver("ShellDriver")

    shell.put_bytes(PAYLOAD, "/root/payload.bin")         # mktemp, rx (XMODEM), dd, rm
    assert shell.get_bytes("/root/payload.bin") == PAYLOAD  # stat, sz (XMODEM)

    out, _, status = shell.run_script(SCRIPT)             # put_bytes, chmod +x, run by path
    assert status == 3
    assert out[0] == "script /tmp/labgrid-run-script with 0 arguments"
    assert f"Size: {len(PAYLOAD)}" in "\n".join(out)
    assert out[-1] == "cat failed with 1"
    assert shell.get_bytes("/root/copy.bin") == PAYLOAD

    # Files on the flash survive a power cycle; /tmp is RAM and does not.
    strategy.transition("off")
    strategy.transition("shell")
    assert shell.get_bytes("/root/payload.bin") == PAYLOAD
    assert shell.run("cat /tmp/labgrid-run-script")[2] == 1
    shell.run_check("rm /root/payload.bin /root/copy.bin")
    assert shell.run_check("ls /root") == []
