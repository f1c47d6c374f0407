"""`pledgeforge verify --bulk`: summary, failing items, JSON lines, exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pexpect
from click.testing import CliRunner

from clirunner import PLEDGEFORGE
from vectors import APPC
from pledgeforge.cli import main


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    good = (APPC / "vr_00-D0-E5-F2-00-02.der").read_bytes()
    bad = bytearray(good)
    bad[bad.index(b"proximity")] ^= 1           # content altered after signing
    stream = tmp_path / "batch.der"
    stream.write_bytes(good + bytes(bad) + good)
    return stream, APPC / "vendor.crt"


def test_summary_and_failures(tmp_path):
    stream, anchors = _setup(tmp_path)
    result = CliRunner().invoke(main, ["verify", "--bulk", str(stream), "--anchors", str(anchors),
                                       "--no-check-time", "--threads", "2"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("DIGEST_MISMATCH") and f"batch.der@{1652}" in lines[0]
    assert "serial 00-D0-E5-F2-00-02" in lines[0]
    assert "3 items" in lines[-1] and "OK 2, DIGEST_MISMATCH 1" in lines[-1]


def test_json_lines(tmp_path):
    stream, anchors = _setup(tmp_path)
    result = CliRunner().invoke(main, ["verify", "--bulk", str(stream), "--anchors", str(anchors),
                                       "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    # The published certificates expired years ago: with time checks on, all fail.
    assert [r["result"] for r in rows[:-1]] == ["EXPIRED", "DIGEST_MISMATCH", "EXPIRED"]
    assert rows[-1]["summary"]["EXPIRED"] == 2 and rows[-1]["items"] == 3
    assert result.exit_code == 1


def test_a_broken_length_is_reported_at_its_offset_and_the_rest_is_verified(tmp_path):
    good = (APPC / "vr_00-D0-E5-F2-00-02.der").read_bytes()
    broken = bytearray(good)
    broken[3] += 7                              # the outer length now reaches into the next item
    stream = tmp_path / "batch.der"
    stream.write_bytes(good + bytes(broken) + good + good)
    result = CliRunner().invoke(main, ["verify", "--bulk", str(stream), "--anchors",
                                       str(APPC / "vendor.crt"), "--no-check-time", "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[:-1] == [{"index": 1, "name": "batch.der", "offset": len(good), "result": "MALFORMED",
                          "serial": None}]
    assert rows[-1]["summary"]["OK"] == 3 and rows[-1]["items"] == 4
    assert result.exit_code == 1


def test_all_ok_exits_zero_and_bad_anchor_file_is_one_clear_error(tmp_path):
    stream, anchors = _setup(tmp_path)
    good_only = tmp_path / "good.der"
    good_only.write_bytes((APPC / "vr_00-D0-E5-F2-00-02.der").read_bytes())
    ok = CliRunner().invoke(main, ["verify", "--bulk", str(good_only), "--anchors", str(anchors),
                                   "--no-check-time"])
    assert ok.exit_code == 0 and "OK 1" in ok.output
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    bad = CliRunner().invoke(main, ["verify", "--bulk", str(stream), "--anchors", str(junk)])
    assert bad.exit_code == 1 and "trust anchor file" in bad.output
    assert "Traceback" not in bad.output


def test_a_terminal_gets_a_progress_bar_and_pipes_do_not(tmp_path):
    _, anchors = _setup(tmp_path)
    batch = tmp_path / "batch"
    batch.mkdir()
    good = (APPC / "vr_00-D0-E5-F2-00-02.der").read_bytes()
    for i in range(5):
        (batch / f"vr-{i}.der").write_bytes(good)
    (batch / "broken.der").write_bytes(good[:100])
    args = ["verify", "--bulk", str(batch), "--anchors", str(anchors), "--no-check-time"]
    on_tty = pexpect.spawn(PLEDGEFORGE, args, timeout=60, dimensions=(24, 120))
    on_tty.expect(pexpect.EOF)
    on_tty.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", on_tty.before.decode())  # colours off
    assert on_tty.exitstatus == 1
    assert "verifying" in shown and "6/6 items" in shown      # a directory has a known count
    assert "MALFORMED" in shown and "broken.der" in shown
    piped = CliRunner().invoke(main, args)
    assert "verifying" not in piped.output and "MALFORMED" in piped.output
