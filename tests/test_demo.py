"""`pledgeforge demo`, the project's main job, as users run it."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from clirunner import jq, openssl, run_cli
from pledgeforge.boards.profile import load_profile
from pledgeforge.demo import BoardConsole, summary_text
from pledgeforge.lab import stop_process
from pledgeforge.bench import run

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _demo(*args) -> dict:
    out = run_cli("demo", "--json", *args, timeout=600)
    assert out.returncode == 0, out.stdout.decode()[-3000:] + out.stderr.decode()[-3000:]
    lines = out.stdout.decode().strip().splitlines()
    assert len(lines) == 1, "--json prints one object and nothing else"
    [summary] = jq(out.stdout)
    assert "lab: starting" in out.stderr.decode()      # progress goes to stderr
    return summary


def test_demo_json_from_a_clean_directory(tmp_path):
    result = _demo("--dir", tmp_path / "demo")
    assert result["ok"] is True and result["kept_running"] is False
    boards = {b["board"]: b for b in result["boards"]}
    assert set(boards) == {"gateway-tpm", "mcu-se"}
    assert boards["gateway-tpm"]["flow"] == "redirect" and boards["gateway-tpm"]["keystore"].startswith("tpm")
    assert boards["mcu-se"]["flow"] == "est-domain" and boards["mcu-se"]["keystore"].startswith("pkcs11")
    for board in boards.values():
        assert board["state"] == "enrolled" and board["error"] is None
        assert board["states"][0] == "cloud-connect" and board["states"][-1] == "enrolled"
        assert board["serial"] in board["idevid_subject"] and board["serial"] in board["ldevid_subject"]
        assert not _alive(board["pid"])
    for board in boards.values():
        # Each console's transcript stays in the board's state directory, and the summary says where.
        transcript = Path(board["state_dir"]) / "console.log"
        assert board["transcript"] == str(transcript)
        text = transcript.read_text()
        assert " in  bootstrap\n" in text and " out -> enrolled" in text
        assert text.rstrip().endswith("--- transcript stopped")
        assert f"console: {transcript} (pledgeforge board console-log --state" in summary_text(result)
    assert "redirected" in boards["gateway-tpm"]["states"]
    assert "redirected" not in boards["mcu-se"]["states"] and "est-connect" in boards["mcu-se"]["states"]
    for board in boards.values():
        # What the board holds, as files beside the lab, and the commands that check them.
        where = tmp_path / "demo" / "pledges" / board["serial"]
        assert board["files"] == {name: str(where / file) for name, file in (
            ("idevid", "idevid.crt"), ("manufacturer_ca", "manufacturer-ca.crt"),
            ("voucher", "voucher.p7b"), ("ldevid", "ldevid.crt"), ("cacerts", "cacerts.pem"))}
        assert [c.split()[:2] for c in board["checks"]] == [["openssl", "verify"], ["openssl", "cms"],
                                                             ["openssl", "verify"]]
        for check in board["checks"]:
            assert check in summary_text(result)          # printed as they run
            done = subprocess.run(shlex.split(check), capture_output=True, timeout=60)
            assert done.returncode == 0, (check, done.stderr.decode())
            if " cms " in check:
                voucher = json.loads(done.stdout)["ietf-voucher:voucher"]
                assert voucher["serial-number"] == board["serial"]
        # The checks check: an LDevID from elsewhere fails its one.
        Path(board["files"]["ldevid"]).write_bytes(Path(board["files"]["manufacturer_ca"]).read_bytes())
        refused = subprocess.run(shlex.split(board["checks"][-1]), capture_output=True, timeout=60)
        assert refused.returncode != 0
    status = json.loads(run_cli("lab", "status", "--dir", result["lab"], "--json").stdout)
    assert not any(s["running"] for s in status["servers"].values())


def test_demo_keep_leaves_boards_to_attach_to(tmp_path):
    result = _demo("--dir", tmp_path / "demo", "--keep")
    try:
        assert result["ok"] and result["kept_running"]
        for board in result["boards"]:
            assert _alive(board["pid"])
            assert board["attach"].startswith("picocom -b ")
            profile = load_profile(board["board"])
            console = BoardConsole(board["attach"].split()[-1], profile)
            try:
                # Reattaching gives a prompt (a late client sees a fresh one after Enter).
                console.child.send("\r")
                console.child.expect_exact(profile.console.prompt)
                status = run(console.child, "status", profile.console.prompt)
                assert "enrolled" in status and board["serial"] in status
                ldevid = tmp_path / f"{board['board']}.pem"
                ldevid.write_text(run(console.child, "ldevid", profile.console.prompt).replace("\r\n", "\n"))
                owner_ca = Path(result["lab"]) / "pki" / "owner-ca.crt"
                verified = openssl("verify", "-CAfile", owner_ca, ldevid)
                assert verified.returncode == 0, verified.stderr.decode()
            finally:
                console.close()
    finally:
        for board in result["boards"]:
            stop_process(board["pid"])
        run_cli("lab", "down", "--dir", result["lab"])
