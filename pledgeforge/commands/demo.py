"""`pledgeforge demo`: a lab and two boards bootstrapping over their consoles, in one command."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from pledgeforge.errors import VerificationFailure

from .common import json_option, messages, print_json


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="where the lab and the boards live (default: a new temporary directory)")
@click.option("--keep", is_flag=True, help="leave the lab and the boards running to attach to them")
@json_option(help="print one JSON summary object on stdout (progress goes to stderr)")
def demo(directory, keep, as_json):
    """Bring up a lab, start a TPM board (redirect flow) and a PKCS#11 board (est-domain flow),
    drive their consoles through boot, login and `bootstrap`, and summarise. Each board's
    IDevID, voucher, LDevID and CA certificates are written to D/pledges/<serial>/ and the
    summary lists the openssl commands that check them. Exit 0 when both enroll."""
    from pledgeforge.demo import run_demo, summary_text

    temporary = directory is None
    where = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="pledgeforge-demo-"))
    result = run_demo(where, keep=keep, say=messages(as_json))
    if temporary and not keep and result["ok"]:
        shutil.rmtree(where, ignore_errors=True)
        result["dir"] = None
        for board in result["boards"]:     # gone with the directory
            board["files"], board["checks"] = {}, []
    if as_json:
        print_json(result)
    else:
        click.echo(summary_text(result))
    if not result["ok"]:
        failed = ", ".join(b["board"] for b in result["boards"] if b["state"] != "enrolled")
        raise VerificationFailure(f"not every board enrolled ({failed}); the summary says why")
