"""`pledgeforge lab up|status|down` as users run them, and the Python API the pledge side uses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from clirunner import jq, openssl, run_cli
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.errors import PinError
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.x509 import masa_url_of, serial_number_of
from pledgeforge.lab import LabError
from pledgeforge.lab.configs import server_configs
from pledgeforge.registrar.config import load_config


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and \
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _json(result) -> dict:
    """The one JSON object a `--json` command printed, as jq reads it."""
    assert result.returncode == 0, result.stderr.decode()
    [value] = jq(result.stdout)
    return value


def test_up_status_down_as_commands(tmp_path):
    lab_dir = tmp_path / "lab"
    first = _json(run_cli("lab", "up", "--dir", lab_dir, "--json"))
    try:
        assert first["created"] is True and sorted(first["started"]) == ["cloud", "masa", "owner"]
        pids = {role: info["pid"] for role, info in first["servers"].items()}
        assert all(_alive(pid) for pid in pids.values())
        lab_json = json.loads((lab_dir / "lab.json").read_text())
        for key in ("servers", "trust_anchors", "softhsm", "urls", "swtpm_dir"):
            assert key in lab_json
        assert all(Path(p).exists() for p in lab_json["trust_anchors"].values())
        assert Path(lab_json["softhsm"]["conf"]).exists() and Path(lab_json["softhsm"]["pin_file"]).exists()
        assert oct(Path(lab_json["softhsm"]["pin_file"]).stat().st_mode & 0o777) == "0o600"

        status = _json(run_cli("lab", "status", "--dir", lab_dir, "--json"))
        assert all(s["running"] and s["answering"] for s in status["servers"].values())
        human = run_cli("lab", "status", "--dir", lab_dir)
        assert human.stdout.decode().count("answering") == 3

        # Idempotent: the second `up` reuses the lab and the running servers.
        again = _json(run_cli("lab", "up", "--dir", lab_dir, "--json"))
        assert again["created"] is False and again["started"] == []
        assert sorted(again["already_running"]) == ["cloud", "masa", "owner"]
        assert {role: info["pid"] for role, info in again["servers"].items()} == pids
    finally:
        down = _json(run_cli("lab", "down", "--dir", lab_dir, "--json"))
    assert sorted(down["stopped"]) == ["cloud", "masa", "owner"]
    assert not any(_alive(pid) for pid in pids.values())
    stopped = _json(run_cli("lab", "status", "--dir", lab_dir, "--json"))
    assert not any(s["running"] or s["answering"] for s in stopped["servers"].values())
    # SIGTERM is a clean shutdown: each server logged it.
    for role in ("masa", "cloud", "owner"):
        assert f"{role} shutting down" in (lab_dir / "logs" / f"{role}.log").read_text()

    # Up again after down: same keys, same ports, new processes.
    ports = {role: info["ports"] for role, info in stopped["servers"].items()}
    restarted = _json(run_cli("lab", "up", "--dir", lab_dir, "--json"))
    try:
        assert restarted["created"] is False and sorted(restarted["started"]) == ["cloud", "masa", "owner"]
        assert {role: info["ports"] for role, info in restarted["servers"].items()} == ports
    finally:
        run_cli("lab", "down", "--dir", lab_dir)


def test_failed_start_stops_what_was_started_and_shows_the_log(tmp_path):
    lab_dir = tmp_path / "lab"
    assert run_cli("lab", "up", "--dir", lab_dir).returncode == 0
    assert run_cli("lab", "down", "--dir", lab_dir).returncode == 0
    owner_port = json.loads((lab_dir / "lab.json").read_text())["servers"]["owner"]["ports"]["main"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", owner_port))
        squatter.listen()
        result = run_cli("lab", "up", "--dir", lab_dir, "--timeout", "30")
    assert result.returncode == 3
    message = result.stderr.decode()
    assert "owner server" in message and "last lines of" in message
    assert f"cannot listen on 127.0.0.1:{owner_port}" in message
    status = _json(run_cli("lab", "status", "--dir", lab_dir, "--json"))
    assert not any(s["running"] for s in status["servers"].values())


def test_commands_name_a_missing_lab(tmp_path):
    result = run_cli("lab", "status", "--dir", tmp_path / "nothing")
    assert result.returncode == 3
    assert b"holds no lab; create one with `pledgeforge lab up" in result.stderr


@pytest.mark.parametrize("keystore, algorithm, flow", [
    ("pkcs11", "ec-p256", "redirect"),
    ("pkcs11", "ec-p384", "est-domain"),
    ("tpm", "ec-p256", "est-domain"),
    ("tpm", "rsa-2048", "redirect"),
])
def test_provision_pledge(lab, keystore, algorithm, flow, tmp_path):
    identity = lab.provision_pledge(keystore=keystore, algorithm=algorithm, flow=flow,
                                    additional_configuration=b'{"k": 1}')
    try:
        idevid = load_certificate_file(str(identity.idevid_cert))[0]
        assert serial_number_of(idevid) == identity.serial
        assert masa_url_of(idevid) == identity.masa_url == lab.masa_url
        # The key lives in the key store the URI names, and the IDevID is for it.
        signer = open_signer(identity.key_uri)
        assert signer.public_key == idevid.public_key()
        assert signer.algorithm.value == algorithm
        assert identity.key_uri.startswith("pkcs11:" if keystore == "pkcs11" else "tpm:")
        verified = openssl("verify", "-CAfile", identity.manufacturer_ca, identity.idevid_cert)
        assert verified.returncode == 0, verified.stdout
        assert identity.cloud_registrar_url == lab.url("cloud")
        assert identity.cloud_anchor == lab.pki("web-ca")
        # Ownership is registered in the three databases, for the chosen flow.
        device = lab.masa_store().device(identity.serial)
        assert device.owner == "lab-owner"
        assert device.est_domain == (lab.url("owner") if flow == "est-domain" else None)
        assert device.additional_configuration_url.endswith(f"/pledge-config/{identity.serial}.json")
        assert lab.owner_store().pledge_flow(identity.serial) == flow
        record = lab.cloud_store().take_response(identity.serial, "main")
        assert record.response == ("voucher" if flow == "est-domain" else "redirect")
        # The pledge's directory keeps its identity in the one stored form.
        assert PledgeIdentity.load(identity.directory) == identity.identity
        described = json.loads(json.dumps(identity.to_dict()))
        assert described["key_uri"] == identity.key_uri and described["serial"] == identity.serial
        with pytest.raises(LabError, match="already provisioned"):
            lab.provision_pledge(identity.serial, keystore=keystore, flow=flow)
    finally:
        identity.close()
    if identity.swtpm is not None:
        assert not identity.swtpm.running


def test_lab_api_refuses_bad_input(lab):
    with pytest.raises(LabError, match="keystore must be tpm or pkcs11"):
        lab.provision_pledge(keystore="usb-stick")
    with pytest.raises(LabError, match="serial"):
        lab.provision_pledge("../escape")
    with pytest.raises(LabError, match="retry_after"):
        lab.set_cloud_response("X", "accepted")
    # The lab's keys carry its SoftHSM configuration; this process's environment is left alone.
    assert dict(lab.key_uri("web", "web-ca").module_env)["SOFTHSM2_CONF"] == str(lab.softhsm.conf)
    assert os.environ.get("SOFTHSM2_CONF") != str(lab.softhsm.conf)


def test_the_lab_writes_its_servers_configurations_from_the_dataclasses_they_read(lab):
    written = server_configs(lab)
    assert sorted(config.role for config in written) == ["cloud", "masa", "owner"]
    for config in written:
        assert load_config(config.path) == config


def _pin_files(config) -> set[Path]:
    """The PIN files a server configuration names (pin-source=file:...)."""
    keys = [config.signer.key_uri] + ([config.est.ca_key_uri] if getattr(config, "est", None) else [])
    return {Path(key.pin_source.removeprefix("file:")) for key in keys}


def test_each_trust_role_has_its_own_token_and_each_server_only_its_own_pins(lab):
    configs = {role: load_config(lab.config_path(role)) for role in ("masa", "cloud", "owner")}
    pins = {role: _pin_files(config) for role, config in configs.items()}
    assert pins == {"masa": {lab.pin_file("masa")}, "cloud": {lab.pin_file("cloud")},
                    "owner": {lab.pin_file("owner"), lab.pin_file("registrar")}}
    # The manufacturer CA's PIN is the factory's: no server configuration names it.
    held = set().union(*pins.values())
    assert lab.pin_file("manufacturer") not in held and lab.pin_file("web") not in held
    # One PIN per token, each its own, readable by the lab's user only.
    every = [lab.pin_file(t) for t in ("manufacturer", "web", "masa", "owner", "registrar", "cloud", "pledges")]
    every += [lab.so_pin_file(t) for t in ("manufacturer", "masa", "owner")]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in every)
    assert len({p.read_text() for p in every}) == len(every)

    # With the PIN sources the MASA's configuration holds, no other role's key opens.
    masa_key = configs["masa"].signer.key_uri
    assert open_signer(masa_key).public_key == load_certificate_file(str(lab.pki("masa-signer")))[0].public_key()
    for token, label in (("owner", "owner-ca"), ("registrar", "registrar-signer"),
                         ("manufacturer", "manufacturer-ca"), ("cloud", "registrar-signer")):
        with pytest.raises(PinError, match=f"wrong PIN for PKCS#11 token '{token}'"):
            open_signer(replace(masa_key, token=token, object=label))
    # Nor the other way round: the owner registrar's PINs do not open the MASA's key.
    for key in (configs["owner"].signer.key_uri, configs["owner"].est.ca_key_uri):
        with pytest.raises(PinError, match="wrong PIN for PKCS#11 token 'masa'"):
            open_signer(replace(key, token="masa", object="voucher-signer"))

    # pkcs11-tool says the same: the owner CA's token refuses the MASA's PIN, takes its own.
    def login(token: str, pin_file: Path):
        return subprocess.run(["pkcs11-tool", "--module", lab.softhsm.module_path, "--token-label", token,
                               "--login", "--pin", pin_file.read_text().strip(), "--list-objects"],
                              env=lab.softhsm.env(), capture_output=True, text=True, timeout=60)
    refused = login("owner", lab.pin_file("masa"))
    assert refused.returncode != 0 and "CKR_PIN_INCORRECT" in refused.stdout + refused.stderr
    accepted = login("owner", lab.pin_file("owner"))
    assert accepted.returncode == 0 and "owner-ca" in accepted.stdout
