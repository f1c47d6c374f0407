"""`pledgeforge lab up|down|status --dir D`: a local MASA, cloud and owner registrar."""

from __future__ import annotations

import click

from .common import json_option, print_json

DIR_OPTION = click.option("--dir", "directory", required=True,
                          type=click.Path(file_okay=False), help="the lab directory")
JSON_OPTION = json_option


@click.group()
def lab() -> None:
    """A local BRSKI lab: MASA, cloud registrar and owner registrar on loopback."""


@lab.command()
@DIR_OPTION
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True,
              help="seconds to wait for the servers to answer")
@click.option("--signer", type=click.Choice(["keyless", "short-term"]), is_flag=False,
              flag_value="keyless", default=None,
              help="put every registrar-side key behind a signing service the lab starts (chosen "
                   "when the lab is created); short-term: the owner registrar keeps its own key "
                   "under a short-term certificate the service renews")
@JSON_OPTION
def up(directory, timeout, signer, as_json):
    """Create (first time) or reuse the lab and start its servers."""
    from pledgeforge.lab import Lab

    the_lab, report = Lab.up(directory, timeout_s=timeout, signer=signer)
    if as_json:
        print_json(({"created": report.created, "started": report.started,
                               "already_running": report.already_running, **the_lab.status()}))
        return
    click.echo(("created" if report.created else "reusing") + f" lab in {the_lab.dir}")
    for role in report.already_running:
        click.echo(f"  {role:6} already running (pid {the_lab.pid(role)}) at {the_lab.url(role)}")
    for role in report.started:
        click.echo(f"  {role:6} started (pid {the_lab.pid(role)}) at {the_lab.url(role)}")
    click.echo(f"details: {the_lab.dir / 'lab.json'}")


@lab.command()
@DIR_OPTION
@JSON_OPTION
def down(directory, as_json):
    """Stop the lab's servers (SIGTERM, then SIGKILL after a bounded wait)."""
    from pledgeforge.lab import Lab

    stopped = Lab.load(directory).down()
    if as_json:
        print_json(({"stopped": stopped}))
    else:
        click.echo("stopped " + (", ".join(stopped) if stopped else "nothing (no server was running)"))


@lab.command()
@DIR_OPTION
@JSON_OPTION
def status(directory, as_json):
    """Show which servers run and answer."""
    from pledgeforge.lab import Lab

    state = Lab.load(directory).status()
    if as_json:
        print_json((state))
        return
    click.echo(f"lab {state['dir']}")
    for role, info in state["servers"].items():
        word = "answering" if info["answering"] else "running, not answering" if info["running"] else "stopped"
        pid = f"pid {info['pid']}" if info["pid"] else "no pid"
        click.echo(f"  {role:6} {word:22} {pid:11} {info['url']}")
        if "keys" in info:   # a signing service
            click.echo(f"  {'':6} holds the keys {', '.join(info['keys'])} ({info['mode']})")
        renewal = info.get("renewal")
        if renewal:
            process = f"pid {renewal['pid']}" if renewal["running"] else "not running"
            click.echo(f"  {'':6} owner registrar node certificate valid until {renewal['valid_until']}, "
                       f"renewal process {process}")
