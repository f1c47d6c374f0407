"""Voucher and voucher-request models against the published JSON examples."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pledgeforge.hsm.errors import VoucherError
from pledgeforge.hsm.voucher import StatusReport, Voucher, parse_date
from vectors import VECTORS

JSON_EXAMPLES = sorted(p for p in VECTORS.glob("*/*.json") if "status" not in p.name)


def _load(path):
    # The appendix C .json files are folded at 60 columns, as printed in the RFC.
    return path.read_bytes().replace(b"\n", b"") if "appendixC" in str(path) else path.read_bytes()


@pytest.mark.parametrize("path", JSON_EXAMPLES, ids=lambda p: p.name)
def test_published_examples_parse_and_round_trip(path):
    voucher = Voucher.from_json(_load(path))
    assert voucher.serial_number in ("JADA123456789", "00-D0-E5-F2-00-02")
    assert voucher.is_request == ("voucher-request" in json.loads(_load(path)).popitem()[0])
    assert Voucher.from_json(voucher.to_json()) == voucher


def test_rfc8366_string_boolean_is_tolerated_and_normalised():
    v = Voucher.from_json((VECTORS / "rfc8366-json/rfc8366-5.2-nonceless-verified.json").read_bytes())
    assert v.domain_cert_revocation_checks is True
    assert b'"domain-cert-revocation-checks":true' in v.to_json()
    with pytest.raises(VoucherError, match="boolean"):
        Voucher.from_json({"ietf-voucher:voucher": {"serial-number": "x", "domain-cert-revocation-checks": "yes"}})


def test_base64url_nonce_of_appendix_c():
    v = Voucher.from_json(_load(VECTORS / "rfc8995-appendixC/vr_00-D0-E5-F2-00-02.json"))
    assert v.nonce == __import__("base64").urlsafe_b64decode("-_XE9zK9q8Ll1qylMtLKeg==")
    assert v.created_on == dt.datetime(2021, 4, 13, 21, 43, 23, 747000, tzinfo=dt.timezone.utc)


def test_a_nonce_keeps_the_string_it_came_in():
    """Pledges compare nonces as strings: a voucher made from a request repeats the request's
    string (base64url without padding stays so); a changed nonce is written as base64."""
    request = Voucher.from_json(_load(VECTORS / "rfc8995-appendixC/vr_00-D0-E5-F2-00-02.json"))
    assert request.nonce_text == "-_XE9zK9q8Ll1qylMtLKeg"
    assert b'"nonce":"-_XE9zK9q8Ll1qylMtLKeg"' in request.to_json()
    voucher = Voucher(serial_number="x", nonce=request.nonce, nonce_text=request.nonce_text)
    assert voucher.to_dict()["ietf-voucher:voucher"]["nonce"] == "-_XE9zK9q8Ll1qylMtLKeg"
    assert voucher == Voucher(serial_number="x", nonce=request.nonce)     # same nonce, same voucher
    changed = voucher.replace(nonce=b"other")
    assert changed.to_dict()["ietf-voucher:voucher"]["nonce"] == "b3RoZXI="
    assert Voucher(serial_number="x", nonce=b"\xfb\xff").to_dict()["ietf-voucher:voucher"]["nonce"] == "+/8="


@pytest.mark.parametrize("body,message", [
    ({"created-on": 12}, "date-and-time"),
    ({"created-on": "yesterday"}, "RFC 3339"),
    ({"created-on": "2021-02-30T00:00:00Z"}, "not a valid date"),
    ({"assertion": "trusted"}, "assertion"),
    ({"nonce": "***"}, "base64"),
    ({"pinned-domain-cert": 5}, "base64"),
    ({"colour": "blue"}, "unknown leaf"),
    ({"prior-signed-voucher-request": "AAAA"}, "unknown leaf"),
    ({"est-domain": ""}, "non-empty"),
    ({"additional-configuration": "https://a", "additional-configuration-url": "https://b"}, "both present"),
])
def test_type_and_leaf_errors_are_named(body, message):
    with pytest.raises(VoucherError, match=message):
        Voucher.from_json({"ietf-voucher:voucher": {"serial-number": "S1", **body}})


def test_structure_errors():
    for bad in (b"not json", b"[]", b"{}", b'{"ietf-voucher:voucher": []}',
                b'{"ietf-voucher:voucher": {"assertion": "logged"}}',
                b'{"a": {}, "b": {}}', b'{"other:voucher": {"serial-number": "x"}}'):
        with pytest.raises(VoucherError):
            Voucher.from_json(bad)
    with pytest.raises(VoucherError, match="expected a voucher-request"):
        Voucher.from_json({"ietf-voucher:voucher": {"serial-number": "x"}}, expect_request=True)


def test_cloud_leaves_both_spellings_are_kept_as_given():
    old = Voucher.from_json({"ietf-voucher:voucher": {"serial-number": "S", "est-domain": "https://est.example:8443",
                                                      "additional-configuration": "https://cfg.example/x"}})
    new = Voucher.from_json({"ietf-voucher:voucher": {"serial-number": "S",
                                                      "additional-configuration-url": "https://cfg.example/x"}})
    assert old.additional_configuration == new.additional_configuration == "https://cfg.example/x"
    assert b'"additional-configuration":' in old.to_json()
    assert b'"additional-configuration-url":' in new.to_json()
    assert old.est_domain == "https://est.example:8443"


def test_augmentations_are_kept():
    v = Voucher.from_json({"ietf-voucher-request:voucher": {"serial-number": "S",
                                                            "ietf-voucher-request-prm:agent-signed-data": "AAAA"}})
    assert v.extensions == {"ietf-voucher-request-prm:agent-signed-data": "AAAA"}
    assert Voucher.from_json(v.to_json()) == v


def test_time_checks():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    v = Voucher(serial_number="S", created_on=now - dt.timedelta(hours=1), expires_on=now + dt.timedelta(hours=1))
    v.check_time(now)
    with pytest.raises(VoucherError, match="expired"):
        v.check_time(now + dt.timedelta(hours=2))
    with pytest.raises(VoucherError, match="future"):
        v.check_time(now - dt.timedelta(hours=2))
    with pytest.raises(VoucherError, match="pinned-domain-cert"):
        v.require("serial_number", "pinned_domain_cert")
    assert parse_date("2021-04-13T17:43:23.747-04:00") == dt.datetime(2021, 4, 13, 21, 43, 23, 747000,
                                                                       tzinfo=dt.timezone.utc)


def test_status_reports():
    for name in ("voucher_status-example.json", "enrollstatus-example.json"):
        report = StatusReport.from_json((VECTORS / "rfc8995-json" / name).read_bytes())
        assert report.reason == "Informative human readable message"
        assert StatusReport.from_json(report.to_json()) == report
    for bad in (b'{"status": "true"}', b'{"version": 1}', b'{"status": true, "extra": 1}', b"[1]"):
        with pytest.raises(VoucherError):
            StatusReport.from_json(bad)
