"""`pledgeforge board run|power|profiles|console-log|pty-bridge|set-verify-key`: emulated boards
on the bench."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from pathlib import Path

import click

# Only what every command of the group needs is imported here: `board power` is what lab
# tools' power hooks run, many times a session, and should not load a board's firmware
# stack (profiles, key stores, TPMs) to write one request. The commands import the rest.
from pledgeforge.boards.power import power_request
from pledgeforge.boards.transports import SERIAL_KINDS
from pledgeforge.errors import FileAccessError
from pledgeforge.hsm.identity_names import check_serial_number

from .common import json_option, print_json, read_input


def _serial_number(ctx, param, value):
    """A bad serial number is a usage error, found before anything starts."""
    if value is not None:
        check_serial_number(value, "--serial-number")
    return value


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
@click.option("--factory-new", is_flag=True,
              help="boot a board that no station has locked yet into its manufacturing console: it "
                   "serves only a station's requests (pledgeforge provision) until locked, then "
                   "waits for a power cycle; without it an unlocked board still serves a station "
                   "wherever its console reads a line")
@click.option("--tpm-maker", "tpm_maker", type=click.Path(file_okay=False),
              help="the TPM maker's CA directory a new board's TPM gets its EK certificate from "
                   "(made on first use; boards of one maker share it; default: the board's own)")
@click.option("--pace", is_flag=True,
              help="move console bytes at the profile's baud rate, as a real UART does (off: as "
                   "fast as the host allows)")
@click.option("--serial-number", callback=_serial_number,
              help="serial number for a new board (default: generated)")
@click.option("--power-off", is_flag=True, help="start with the power off (switch it on with `board power on`)")
def run(profile_name, state_dir, serial_kind, port, replay, factory_new, tpm_maker, pace, serial_number,
        power_off):
    """Run one board until interrupted. Prints one JSON line once the console is up:
    the console path or URL, the power-control address and the key store.

    The board runs the pledge firmware (`bootstrap` on its console) and, until a
    manufacturing station locks it, its manufacturing mode: a station provisions it
    over this console (`pledgeforge provision --port ...`)."""
    if replay and serial_kind == "pty":
        raise click.UsageError("--replay applies to --serial rfc2217|tcp; a pty keeps the latest "
                               "output for its next reader anyway")
    from pledgeforge.boards.assembly import assemble_board
    from pledgeforge.boards.profile import load_profile

    logging.basicConfig(level=logging.WARNING, format="board: %(message)s")
    profile = load_profile(profile_name)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    with assemble_board(profile, state_dir, app="pledge", manufacturing="manufacturing",
                        factory_console=factory_new, maker_dir=tpm_maker,
                        serial_number=serial_number) as running:
        running.open_console(serial_kind, port, replay=replay, pace=pace)
        running.serve_power()
        if not power_off:
            running.power_on()
        print_json(running.describe())
        while not stop.wait(3600):
            pass


@board.command()
@click.argument("action", type=click.Choice(["on", "off", "cycle", "status"]))
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="the state directory of the running board")
@click.option("--timeout", type=click.FloatRange(1, 600), default=30, show_default=True,
              help="seconds to wait for the board to answer")
@json_option(help='print the power state and boot phase as JSON: {"power": "on", "phase": "shell"}')
def power(action, state_dir, timeout, as_json):
    """Switch a running board's power (what lab tools' power hooks call)."""
    reply = power_request(state_dir, action, timeout=timeout)
    if as_json:
        print_json({"power": reply["power"], "phase": reply.get("phase")})
    else:
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
    from pledgeforge.boards.pty_bridge import BridgeError, PtyBridge

    bridge = PtyBridge(url, link, baudrate=baud)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: bridge.closed.set())
    try:
        print_json(bridge.describe())
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
@json_option(help="one JSON object per line: time (UTC), dir (out, in or event) and text")
def console_log(state_dir, follow, last, as_json):
    """Show a board's console transcript: everything its console sent (out) and
    received (in), with a timestamp per line, from DIR/console.log and its
    rotated predecessors."""
    from pledgeforge.boards.transcript import follow_lines, parse_line, read_lines, transcript_path

    state = Path(state_dir)
    path = transcript_path(state)
    if not state.is_dir():
        raise FileAccessError(f"no board state directory {state} (give the --state of `board run`)")
    if not follow and not path.exists():
        raise FileAccessError(f"no console transcript in {state}: a board writes {path} while it "
                              "runs (unless its profile sets transcript_files = 0)")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    for line in follow_lines(state, stop, last) if follow else read_lines(state, last):
        if as_json:
            print_json(parse_line(line))
        else:
            click.echo(line.rstrip("\n"))


@board.command()
@json_option(help="one JSON object per profile and line: name, description, key store, "
                  "algorithm, console (baud, prompt, login), image slots")
def profiles(as_json):
    """List the shipped board profiles."""
    from pledgeforge.boards.profile import load_profile, profile_names

    for name in profile_names():
        profile = load_profile(name)
        if as_json:
            print_json({"name": name, "description": profile.board.description,
                        "model": profile.board.model, "keystore": profile.keystore.type,
                        "algorithm": profile.keystore.algorithm.value,
                        "console": {"baud": profile.console.baud, "prompt": profile.console.prompt,
                                    "login": profile.console.login},
                        "image": {"slots": profile.image.slots,
                                  "slot_size_kib": profile.image.slot_size_kib,
                                  "version": profile.image.version},
                        "path": str(profile.path)})
        else:
            click.echo(f"{name:<14} {profile.keystore.type:<7} {profile.keystore.algorithm.value:<9} "
                       f"{profile.board.description}")


@board.command("set-verify-key")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="the board's state directory (created if missing, to prepare a new board)")
@click.option("--key-pem", required=True,
              help="the firmware public key (PEM, EC P-256/P-384 or RSA-2048/3072) images must be "
                   "signed with: `pledgeforge keys public --key URI` of the firmware-signing key")
@json_option(help="print the key file written and its MCUboot key hash as JSON")
def set_verify_key(state_dir, key_pem, as_json):
    """Install the firmware verification key in a stopped board's flash.

    The bootloader checks every image against it at boot: an image signed with
    another key, or any image while a board has no key, is erased instead of
    booted. A manufacturing station installs it when it provisions the board
    (`pledgeforge provision --image-key`); a profile that sets [image] verify_key
    uses that file instead.
    """
    from pledgeforge.boards import mcuboot
    from pledgeforge.boards.image_slots import install_verify_key
    from pledgeforge.boards.runtime import BoardError, lock_state_dir

    pem = read_input(key_pem, "firmware key")
    public_key = mcuboot.load_public_key(pem, f"firmware key {key_pem}")
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_state_dir(state)
    except BoardError as exc:
        raise BoardError(f"{exc}: a board's firmware key is set while the board is stopped") from None
    try:
        path = install_verify_key(state, pem)
    finally:
        os.close(lock)
    key_hash = hashlib.new(mcuboot.hash_name_for_key(public_key), mcuboot.key_bytes(public_key)).hexdigest()
    if as_json:
        print_json({"state_dir": str(state), "verify_key": str(path), "key_hash": key_hash})
    else:
        click.echo(f"installed firmware key {path} (key hash {key_hash}); the board checks images "
                   "against it from its next power-on")
