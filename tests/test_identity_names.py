"""Device serial numbers and the names built from them: one rule, enforced where certificates
are issued (the CA command, the lab, boards, the servers' stores) with one clear error line."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, strategies as st

from clirunner import openssl, run_cli
from pledgeforge.hsm.identity_names import (IdentityNameError, check_dns_name, check_file_name,
                                            check_name, check_serial_number)
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, issue_idevid, make_ca

# What a factory line or an attacker may type as a serial number.
BAD_SERIALS = [
    "../../../../tmp/x", "/etc/passwd", " ", "", "x" * 5000, "x" * 65, "a\nb", "50%", "ÄB-1",
    "a_b", "-AB", "AB-", "a..b", ".hidden", "a b", "a/b", "x" * 64,
]
GOOD_SERIALS = ["00-D0-E5-F2-00-02", "PF-000123", "lab-probe", "S", "SN.1234.rev-B", "1" * 63,
                "a" * 31 + "." + "b" * 32]


def _is_host_name(value: str, max_length: int) -> bool:
    """RFC 1123 host name, from the RFC's words: dot-separated labels of 1 to 63 ASCII letters,
    digits and hyphens that neither start nor end with a hyphen; at most max_length long."""
    def label_ok(label: str) -> bool:
        return (0 < len(label) <= 63 and all(c in string.ascii_letters + string.digits + "-" for c in label)
                and not label.startswith("-") and not label.endswith("-"))
    return 0 < len(value) <= max_length and all(label_ok(label) for label in value.split("."))


def _accepts(check, value: str) -> bool:
    try:
        check(value)
    except IdentityNameError:
        return False
    return True


@given(st.text(alphabet=st.sampled_from("aZ09-._ \n¹٣Ä"), max_size=140)
       | st.builds(".".join, st.lists(st.text(alphabet="ab-1", min_size=0, max_size=66), max_size=4)))
@example("a" * 63)
@example("a" * 64)
@example("a." + "b" * 62)
@example("-")
def test_serial_numbers_and_dns_names_are_accepted_exactly_when_they_are_host_names(value):
    assert _accepts(check_serial_number, value) == _is_host_name(value, 64), value
    assert _accepts(check_dns_name, value) == _is_host_name(value, 253), value


@pytest.mark.parametrize("serial", BAD_SERIALS, ids=range(len(BAD_SERIALS)))
def test_bad_serials_are_refused_with_one_line_naming_the_value(serial):
    with pytest.raises(IdentityNameError) as refused:
        check_serial_number(serial)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 200, message
    assert message.startswith("serial number ")


@pytest.mark.parametrize("serial", GOOD_SERIALS)
def test_good_serials_pass_and_make_valid_dns_names(serial):
    assert check_serial_number(serial) == serial
    check_dns_name(f"{serial}.pledges.example")
    check_file_name(f"{serial}.json")


def test_dns_names_file_names_and_record_names():
    check_dns_name("*.example.com", wildcard=True)
    for bad in ("*.example.com", "a..b", "-a.example", "a" * 64 + ".example", "x." * 127 + "x",
                "under_score.example", "", "a b"):
        with pytest.raises(IdentityNameError):
            check_dns_name(bad)
    for bad in ("", ".", "..", ".hidden", "a/b", "a\nb", "x" * 256, "a\\b"):
        with pytest.raises(IdentityNameError):
            check_file_name(bad)
    assert check_name("Example Owner 1") == "Example Owner 1"
    for bad in ("", " lead", "trail ", "new\nline", "x" * 61, "semi;colon"):
        with pytest.raises(IdentityNameError):
            check_name(bad)


def test_issuance_refuses_bad_serials_and_dns_names():
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = make_ca(key, "CN=test CA")
    for serial in ("../../../../tmp/x", " ", "x" * 5000, "a\nb", "50%", "ÄB-1"):
        with pytest.raises(IdentityNameError):
            issue_idevid(key, ca, key.public_key, serial, subject="CN=device")
    with pytest.raises(IdentityNameError):
        issue_certificate(key, ca, key.public_key, "CN=x", dns_names=["../../x.pledges.example"])
    # TLS server certificates may name a wildcard; everything else must be a host name.
    issue_certificate(key, ca, key.public_key, "CN=x", dns_names=["*.example.com", "localhost"])


def test_cli_refuses_bad_serials_in_one_line_and_writes_nothing(token, tmp_path):
    env = token.hsm.env()
    ca_uri, dev_uri = token.uri_text("ca"), token.uri_text("dev")
    for args in (("keys", "generate", "--key", ca_uri), ("keys", "generate", "--key", dev_uri),
                 ("ca", "init", "--key", ca_uri, "--subject", "CN=line CA", "--out", tmp_path / "ca.pem"),
                 ("csr", "--key", dev_uri, "--subject", "CN=device", "--out", tmp_path / "csr.pem")):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr.decode()
    out = tmp_path / "idevid.pem"
    for serial in ("../../../../tmp/x", "/etc/passwd", " ", "x" * 5000, "a\nb", "50%", "ÄB-1"):
        result = run_cli("ca", "issue-idevid", "--ca-key", ca_uri, "--ca-cert", tmp_path / "ca.pem",
                         "--csr", tmp_path / "csr.pem", "--serial", serial, "--out", out, env=env)
        err = result.stderr.decode()
        assert result.returncode != 0, f"{serial[:20]!r} was accepted"
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "serial number" in err, err
        assert not out.exists()
    result = run_cli("ca", "issue-idevid", "--ca-key", ca_uri, "--ca-cert", tmp_path / "ca.pem",
                     "--csr", tmp_path / "csr.pem", "--serial", "PF-000124", "--out", out, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert "serialNumber = PF-000124" in openssl("x509", "-in", out, "-noout", "-subject").stdout.decode()


def test_boards_refuse_bad_serial_numbers_before_manufacture(tmp_path):
    from pledgeforge.boards.profile import load_profile
    from pledgeforge.boards.runtime import Board, BoardError

    for serial in ("../x", "AB_1", "a\nb"):
        with pytest.raises(BoardError, match="serial number"):
            Board(load_profile("mcu-se"), tmp_path / "board", serial_number=serial)
    with Board(load_profile("mcu-se"), tmp_path / "board", serial_number="SE-0001") as board:
        assert board.state_dir == (tmp_path / "board").resolve()
