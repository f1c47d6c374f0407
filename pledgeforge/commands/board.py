"""`pledgeforge board run|power|profiles|console-log|pty-bridge`: emulated boards on the bench."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from pledgeforge.boards.power import power_request
from pledgeforge.boards.profile import load_profile, profile_names
from pledgeforge.boards.pty_bridge import BridgeError, PtyBridge
from pledgeforge.boards.runtime import SERIAL_KINDS
from pledgeforge.boards.transcript import follow_lines, parse_line, read_lines, transcript_path
from pledgeforge.commands.common import UsageError


@click.group()
def board() -> None:
    """Run emulated boards and switch their power."""


@board.command()
@click.option("--profile", "profile_name", required=True,
              help="a shipped profile name (see `board profiles`) or the path of a .toml file")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="the board's state directory (flash, key store, console link); created if missing")
@click.option("--serial", "serial_kind", type=click.Choice(SERIAL_KINDS), default="pty", show_default=True,
              help="how the console is offered: a pty linked from DIR/console, RFC 2217 or raw TCP")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port for rfc2217/tcp on 127.0.0.1 (0 picks a free one)")
@click.option("--replay", is_flag=True,
              help="rfc2217/tcp: send each client the recent output when it connects (off by default, "
                   "so a script waiting for a prompt never matches one printed before it connected)")
@click.option("--lab", "lab_dir", type=click.Path(file_okay=False, exists=True),
              help="lab directory whose registrars and manufacturer CA the pledge firmware uses")
@click.option("--flow", type=click.Choice(["redirect", "est-domain"]), default="redirect", show_default=True,
              help="with --lab: how the lab's cloud registrar treats this board, recorded when it is "
                   "manufactured (307 to the owner registrar, or a voucher naming the EST server)")
@click.option("--serial-number", help="serial number for a new board (default: generated)")
@click.option("--power-off", is_flag=True, help="start with the power off (switch it on with `board power on`)")
def run(profile_name, state_dir, serial_kind, port, replay, lab_dir, flow, serial_number, power_off):
    """Run one board until interrupted. Prints one JSON line once the console is up:
    the console path or URL, the power-control address and the key store."""
    if replay and serial_kind == "pty":
        raise click.UsageError("--replay applies to --serial rfc2217|tcp; a pty keeps the latest "
                               "output for its next reader anyway")
    logging.basicConfig(level=logging.WARNING, format="board: %(message)s")
    profile = load_profile(profile_name)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    with _assemble(profile, state_dir, lab_dir, flow, serial_number) as running:
        running.open_console(serial_kind, port, replay=replay)
        running.serve_power()
        if not power_off:
            running.power_on()
        click.echo(json.dumps(running.describe()))
        while not stop.wait(3600):
            pass


def _assemble(profile, state_dir, lab_dir, flow, serial_number):
    """The board of `profile`; with a lab, the pledge firmware and the lab's factory step
    (the board is manufactured at its first power-on by the lab's CA)."""
    from pledgeforge.boards.assembly import assemble_board

    if lab_dir is None:
        return assemble_board(profile, state_dir, serial_number=serial_number)
    from pledgeforge.lab import Lab
    from pledgeforge.lab.manufacture import LabManufacturing

    return assemble_board(profile, state_dir, app="pledge", serial_number=serial_number,
                          provisioning=LabManufacturing(Lab.load(Path(lab_dir)), flow))


@board.command()
@click.argument("action", type=click.Choice(["on", "off", "cycle", "status"]))
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="the state directory of the running board")
@click.option("--timeout", type=click.FloatRange(1, 600), default=30, show_default=True,
              help="seconds to wait for the board to answer")
def power(action, state_dir, timeout):
    """Switch a running board's power (what lab tools' power hooks call)."""
    reply = power_request(state_dir, action, timeout=timeout)
    click.echo(f"power {reply['power']}" + (f" ({reply['phase']})" if reply.get("phase") else ""))


@board.command("pty-bridge")
@click.option("--url", required=True,
              help="the board's network console: rfc2217://HOST:PORT or socket://HOST:PORT "
                   "(what `board run --serial rfc2217|tcp` prints)")
@click.option("--link", "link", required=True, type=click.Path(dir_okay=False),
              help="where to put a symlink to the pty (give this path to smpmgr --port)")
@click.option("--baud", type=click.IntRange(300, 4_000_000), default=115200, show_default=True,
              help="line speed asked of an RFC 2217 server and set on the pty")
def pty_bridge(url, link, baud):
    """Offer a network console as a local pty, for tools that only open serial
    ports by path (smpmgr, smpclient). Prints one JSON line once the pty is up
    and runs until interrupted or until the console closes the connection."""
    bridge = PtyBridge(url, link, baudrate=baud)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: bridge.closed.set())
    try:
        click.echo(json.dumps(bridge.describe()))
        while not bridge.closed.wait(3600):
            pass
    finally:
        bridge.close()
    if bridge.error:
        raise BridgeError(bridge.error)


@board.command("console-log")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="the board's state directory")
@click.option("--follow", "-f", is_flag=True,
              help="keep printing new lines as the board writes them (across rotation) until "
                   "interrupted")
@click.option("--lines", "-n", "last", type=click.IntRange(1), help="start with the last N lines only")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object per line: time (UTC), dir (out, in or event) and text")
def console_log(state_dir, follow, last, as_json):
    """Show a board's console transcript: everything its console sent (out) and
    received (in), with a timestamp per line, from DIR/console.log and its
    rotated predecessors."""
    state = Path(state_dir)
    path = transcript_path(state)
    if not state.is_dir():
        raise UsageError(f"no board state directory {state} (give the --state of `board run`)")
    if not follow and not path.exists():
        raise UsageError(f"no console transcript in {state}: a board writes {path} while it runs "
                         "(unless its profile sets transcript_files = 0)")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    lines = follow_lines(state, stop, last) if follow else read_lines(state, last)
    try:
        for line in lines:
            click.echo(json.dumps(parse_line(line)) if as_json else line.rstrip("\n"))
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at
        # /dev/null so that the interpreter's last flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@board.command()
def profiles():
    """List the shipped board profiles."""
    for name in profile_names():
        profile = load_profile(name)
        click.echo(f"{name:<14} {profile.keystore.type:<7} {profile.keystore.algorithm.value:<9} "
                   f"{profile.board.description}")
