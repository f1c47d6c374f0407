"""The manufacturing station over real consoles: `pledgeforge provision` as users run it on
`board run` processes (pty, RFC 2217, a rack of eight), and the lab's station in-process on
boards that lie, a line that garbles replies, a TPM that dies half way.

What others wrote checks the result: tpm2_readpublic shows the keys resident in the board's
swtpm, pkcs11-tool the secure element's attributes, openssl verify chains the certificates to
the manufacturer CA, jq reads every --json line, and the board then bootstraps with its IDevID.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pexpect.fdpexpect
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from boardrunner import factory_board, quick_profile
from clirunner import PLEDGEFORGE, jq, openssl, run_cli
from pledgeforge.bench import login, run
from pledgeforge.boards.board_keystore import keystore_for
from pledgeforge.boards.manufacturing_app import ManufacturingApp, Refusal
from pledgeforge.boards.power import power_request
from pledgeforge.boards.profile import load_profile
from pledgeforge.boards.runtime import Board
from pledgeforge.boards.transports import LinePacer
from pledgeforge.errors import EnvironmentFailure, VerificationFailure
from pledgeforge.hsm import keystore, tpm_backend, tpm_identity
from pledgeforge.hsm.keyuri import SOFTHSM2_MODULE
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.tpm_maker_ca import create_tpm_maker_ca
from pledgeforge.hsm.x509 import ID_ON_HARDWARE_MODULE_NAME, make_csr
from pledgeforge.lab.manufacture import station_config, tpm_maker
from pledgeforge.station.export import ImportFileError, read_masa
from pledgeforge.station.link import BoardLink, BoardRefusal
from pledgeforge.station.provisioner import Station
from pledgeforge.station.records import ManufacturingDb, sha256_hex

GATEWAY = load_profile("gateway-tpm").with_timings(autoboot_seconds=0, firmware_seconds=0)
MCU = load_profile("mcu-se").with_timings(autoboot_seconds=0, firmware_seconds=0)
IDEVID, IAK = "0x81020000", "0x81020003"


def station_args(lab, db: str) -> list[str]:
    """`pledgeforge provision` for the lab's factory, as its README shows it."""
    maker = tpm_maker(lab)
    return ["provision", "--ca-key", str(lab.key_uri("manufacturer", "manufacturer-ca")),
            "--ca-cert", lab.pki("manufacturer-ca"), "--masa-url", lab.masa_url,
            "--cloud-registrar", lab.url("cloud"), "--cloud-anchor", lab.pki("web-ca"),
            "--anchors", lab.pki("manufacturer-ca"), "--image-key", lab.firmware_key_pem_path,
            "--tpm-maker-root", maker.root_path, "--tpm-maker-ca", maker.issuer_path, "--db", db]


def provision_cli(lab, db: str, *ports: str, extra=()) -> list[dict]:
    done = run_cli(*station_args(lab, db), *(a for p in ports for a in ("--port", p)), *extra,
                   "--json", timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return jq(done.stdout)


def verify_chain(lab, pem: str, path: Path) -> None:
    path.write_text(pem)
    verified = openssl("verify", "-CAfile", lab.pki("manufacturer-ca"), path)
    assert verified.returncode == 0 and b": OK" in verified.stdout, verified.stderr.decode()


def readpublic(tcti: str, handle: str, *args: str) -> str:
    done = subprocess.run(["tpm2_readpublic", "-T", tcti, "-c", handle, *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def attributes(readpublic_text: str) -> set[str]:
    lines = readpublic_text.splitlines()
    return set(lines[lines.index("attributes:") + 1].strip().removeprefix("value: ").split("|"))


# --------------------------------------------------------------------------- boards as users run them

def test_a_tpm_board_is_provisioned_over_its_pty_then_bootstraps(lab, tmp_path):
    db = f"sqlite:///{tmp_path / 'line-1.sqlite'}"
    with factory_board(lab, quick_profile("gateway-tpm", tmp_path), tmp_path / "gw") as board:
        [made] = provision_cli(lab, db, board.console_path, extra=("--station", "line-1"))
        assert (made["status"], made["keystore"], made["assurance"]) == \
            ("provisioned", "tpm", "tpm-attested")
        assert made["steps"][-2:] == ["record", "lock"] and made["error"] is None
        record = made["record"]
        serial = made["serial"]
        assert record["station"] == "line-1" and record["serial"] == serial
        assert record["ek_issuer"].startswith("CN=pledgeforge TPM maker EK issuing CA")

        # The keys are resident in the board's TPM, as tpm2-tools see them: the IDevID signs
        # and nothing else, both fixed to the TPM and made in it; the IAK is restricted.
        tcti = board.info["keystore"]["tcti"]
        idevid_attrs = attributes(readpublic(tcti, IDEVID))
        assert {"fixedtpm", "fixedparent", "sensitivedataorigin", "sign"} <= idevid_attrs
        assert not {"decrypt", "restricted"} & idevid_attrs
        assert {"fixedtpm", "fixedparent", "sensitivedataorigin", "sign", "restricted"} <= \
            attributes(readpublic(tcti, IAK))
        # ... and the key certified is that very key.
        readpublic(tcti, IDEVID, "-f", "der", "-o", str(tmp_path / "idevid.spki"))
        assert sha256_hex((tmp_path / "idevid.spki").read_bytes()) == record["public_key_sha256"]

        # openssl chains both certificates to the manufacturer CA; the IDevID is 802.1AR's
        # with the TCG's hardwareModuleName, the IAK's says what the CA verified.
        verify_chain(lab, record["certificate_pem"], tmp_path / "idevid.pem")
        verify_chain(lab, record["iak_certificate_pem"], tmp_path / "iak.pem")
        idevid = x509.load_pem_x509_certificate(record["certificate_pem"].encode())
        sans = idevid.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        [module] = [n for n in sans.get_values_for_type(x509.OtherName)
                    if n.type_id == ID_ON_HARDWARE_MODULE_NAME]
        # hwType tcg-sv-tpm20, hwSerialNum "<TPM maker>:<EK AKI>:<EK serial>" (swtpm's id)
        assert b"\x06\x05\x67\x81\x05\x01\x02" in module.value and b"00001014:" in module.value
        iak_text = openssl("x509", "-in", tmp_path / "iak.pem", "-noout", "-text").stdout.decode()
        assert "2.23.133.8.3" in iak_text and "2.23.133.11.1.1" in iak_text

        # Run again: the board says it is locked; nothing changes.
        again = run_cli(*station_args(lab, db), "--port", board.console_path)
        assert again.returncode == 0, again.stderr.decode()
        assert f"{serial} was provisioned already, left as it is" in again.stdout.decode()
        assert ManufacturingDb(db).get(serial).to_dict() == record
        # A locked board refuses manufacturing for good, and says so.
        with BoardLink(board.console_path, timeout=2) as link:
            assert link.request("identify")["state"] == "locked"
            with pytest.raises(BoardRefusal, match=f"board {serial} is locked: it was manufactured "
                                                   "and refuses manufacturing commands for good"):
                link.request("generate", {"algorithm": "ec-p256"})

        # The MASA and the registrars import the station's export, as their operators would.
        owner_registrar = lab.url("owner") + "/.well-known/brski/requestvoucher"
        for fmt, extra in (("masa", ["--owner", "lab-owner"]),
                           ("ownership", ["--location", owner_registrar])):
            exported = run_cli("provision", "export", "--db", db, "--format", fmt, *extra,
                               "--out", tmp_path / f"{fmt}.jsonl")
            assert exported.returncode == 0, exported.stderr.decode()
        for command, role, fmt in (("masa add-device", "masa", "masa"),
                                   ("registrar add-pledge", "owner", "ownership"),
                                   ("registrar set-response", "cloud", "ownership")):
            imported = run_cli(*command.split(), "--config", lab.config_path(role),
                               "--from", tmp_path / f"{fmt}.jsonl", "--json")
            assert imported.returncode == 0, imported.stderr.decode()
            assert [line["serial"] for line in jq(imported.stdout)] == [serial]

        # Into the firmware: the board bootstraps through the lab with its new IDevID.
        power_request(board.state_dir, "cycle")
        con = board.open_pty()
        prompt = GATEWAY.console.prompt
        login(con, GATEWAY.console.username, GATEWAY.console.password, prompt)
        out = run(con, "bootstrap", prompt)
        assert "-> redirected" in out and f"enrolled: LDevID CN={serial}" in out


def test_a_pkcs11_board_over_rfc2217_is_token_reported(lab, tmp_path):
    db = f"sqlite:///{tmp_path / 'm.sqlite'}"
    with factory_board(lab, quick_profile("mcu-se", tmp_path), tmp_path / "mcu", "--serial",
                       "rfc2217", "--pace") as board:
        # A UART's pace (115200 baud): the station's requests and the board's answers take
        # the time they would on the line.
        assert board.console_path.startswith("rfc2217://") and board.info["paced"]
        [made] = provision_cli(lab, db, board.console_path)
        assert (made["status"], made["keystore"], made["assurance"]) == \
            ("provisioned", "pkcs11", "token-reported")
        evidence = made["record"]["evidence"]
        assert evidence == {"CKA_LOCAL": "true", "CKA_NEVER_EXTRACTABLE": "true",
                            "CKA_SENSITIVE": "true", "CKA_ALWAYS_SENSITIVE": "true",
                            "CKA_EXTRACTABLE": "false"}
        assert made["record"]["iak_certificate_pem"] is None
        verify_chain(lab, made["record"]["certificate_pem"], tmp_path / "idevid.pem")
        # What the board reported is what the token says to pkcs11-tool.
        keys = board.info["keystore"]
        listed = subprocess.run(
            ["pkcs11-tool", "--module", SOFTHSM2_MODULE, "--token-label",
             keys["token"], "--login", "--pin", Path(keys["pin_file"]).read_text().strip(),
             "--list-objects", "--type", "privkey"],
            env={**os.environ, "SOFTHSM2_CONF": keys["softhsm2_conf"]}, capture_output=True,
            text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        idevid_entry = listed.stdout.split('label:      idevid')[1].split("Private Key Object")[0]
        for word in ("sensitive", "always sensitive", "never extractable", "local"):
            assert word in idevid_entry, listed.stdout


def test_eight_boards_in_parallel(lab, tmp_path):
    db = f"sqlite:///{tmp_path / 'rack.sqlite'}"
    profiles = {name: quick_profile(name, tmp_path) for name in ("gateway-tpm", "mcu-se")}
    boards = [factory_board(lab, profiles["gateway-tpm" if i % 2 else "mcu-se"],
                            tmp_path / "rack" / f"b{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: b.start(), boards))
    try:
        lines = provision_cli(lab, db, str(tmp_path / "rack" / "b*" / "console"))
    finally:
        for board in boards:
            board.stop()
    assert len(lines) == 8 and {line["status"] for line in lines} == {"provisioned"}
    assert sorted(line["port"] for line in lines) == sorted(b.console_path for b in boards)
    records = ManufacturingDb(db).boards()
    assert sorted(r.serial for r in records) == sorted(line["serial"] for line in lines)
    assert len({r.public_key_sha256 for r in records}) == 8
    assert {r.assurance for r in records} == {"tpm-attested", "token-reported"}
    ca = x509.load_pem_x509_certificate(lab.pki("manufacturer-ca").read_bytes())
    for record in records:
        certificate = x509.load_pem_x509_certificate(record.certificate_pem.encode())
        certificate.verify_directly_issued_by(ca)
        spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        assert sha256_hex(spki) == record.public_key_sha256
        assert (record.ek_certificate_sha256 is not None) == (record.keystore == "tpm")
    exported = run_cli("provision", "export", "--db", db, "--format", "ownership", "--flow", "est-domain")
    assert [json.loads(line)["response"] for line in exported.stdout.splitlines()] == ["voucher"] * 8


def test_a_terminal_shows_a_progress_bar_per_board_while_stdout_holds_json_only(lab, tmp_path):
    db = f"sqlite:///{tmp_path / 'tty.sqlite'}"
    profile = quick_profile("mcu-se", tmp_path)
    boards = [factory_board(lab, profile, tmp_path / f"b{i}") for i in range(2)]
    for board in boards:
        board.start()
    try:
        # stderr is a terminal (a pty as wide as the console paths), stdout a file.
        args = [*station_args(lab, db), *(a for b in boards for a in ("--port", b.console_path)),
                "--json"]
        command = " ".join(shlex.quote(str(a)) for a in [PLEDGEFORGE, *args])
        out = tmp_path / "stdout.jsonl"
        # The terminal's size is the pty's: COLUMNS and LINES (which pytest-xdist workers set
        # to 80x24) would override it.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        terminal = pexpect.spawn("sh", ["-c", f"exec {command} > {shlex.quote(str(out))}"],
                                 timeout=300, dimensions=(24, 250), env=env)
        terminal.expect(pexpect.EOF)
        terminal.close()
    finally:
        for board in boards:
            board.stop()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.before.decode(errors="replace"))
    assert terminal.exitstatus == 0, shown
    lines = jq(out.read_bytes())
    assert sorted(line["port"] for line in lines) == sorted(b.console_path for b in boards)
    assert {line["status"] for line in lines} == {"provisioned"}
    # One bar per board, each at its last step, and no JSON on the terminal.
    for board in boards:
        assert re.search(re.escape(board.console_path) + r" +\S+ +lock\b", shown), shown
    assert '{"port"' not in shown


# --------------------------------------------------------------------------- boards that lie, lines that break

@contextmanager
def factory_board_here(directory: Path, profile=GATEWAY, *, manufacturing=None, maker_dir=None,
                       console: str = "pty", factory_console: bool = True):
    """A factory-new board in this process (its swtpm or token its own), for boards made to
    misbehave: a subclass of the manufacturing firmware."""
    store = keystore_for(profile.keystore, directory.resolve(), maker_dir=maker_dir)
    board = Board(profile, directory, keystore=store, manufacturing=manufacturing or ManufacturingApp(),
                  factory_console=factory_console)
    tcti = None
    try:
        transport = board.open_console(console)
        board.power_on()
        tcti = getattr(getattr(store, "swtpm", None), "tcti", None)
        yield board, transport.address if console != "pty" else str(directory / "console")
    finally:
        board.close()
        if tcti:
            tpm_backend.disconnect(tcti)


@pytest.fixture
def station(lab, tmp_path) -> Station:
    """The lab's station (its CA and TPM maker) with a database of the test's own."""
    return Station(station_config(lab, timeout=2.0), ManufacturingDb(f"sqlite:///{tmp_path / 'm.sqlite'}"))


class SoftwareCsr(ManufacturingApp):
    """Claims a TPM, attests its TPM key, but signs the CSR with a key in software."""

    def do_csr(self, board, request):
        software = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        return {"csr": make_csr(software, "CN=IDevID").public_bytes(serialization.Encoding.DER)}


class ForeignCertifier(ManufacturingApp):
    """Certifies its IDevID with another restricted key of the TPM than the IAK it bound."""

    def do_certify(self, board, request):
        other = dataclasses.replace(self._tpm_uri(board, "iak"), handle=0x81020010)
        try:
            keystore.delete_key(other)
        except EnvironmentFailure:
            pass
        tpm_identity.create_iak(other)
        certification = tpm_identity.certify(self._tpm_uri(board, "idevid"), other,
                                             request.args["nonce"])
        return {"attest": certification.attest, "signature": certification.signature,
                "public": tpm_identity.read_public(self._tpm_uri(board, "idevid"))}


class ReplayingCertifier(ManufacturingApp):
    """Answers with a certify over a nonce of its own choosing (a recorded answer)."""

    def do_certify(self, board, request):
        stale = dataclasses.replace(request, args={"nonce": b"an earlier station run's nonce!!"})
        return super().do_certify(board, stale)


@pytest.mark.parametrize("lie, refusal", [
    ("software-csr", "the CSR's key is not the IDevID key the TPM certified"),
    ("foreign-certifier", "the certify is signed by a key other than the activated IAK"),
    ("replayed-nonce", "the nonce differs: replayed attestation"),
    ("unknown-maker", "EK certificate from an unknown TPM maker: issued by CN=pledgeforge TPM maker"),
])
def test_evidence_that_does_not_hold_is_refused_and_nothing_recorded(lab, station, tmp_path, lie,
                                                                    refusal):
    apps = {"software-csr": SoftwareCsr, "foreign-certifier": ForeignCertifier,
            "replayed-nonce": ReplayingCertifier, "unknown-maker": ManufacturingApp}
    maker = create_tpm_maker_ca(tmp_path / "stranger").directory if lie == "unknown-maker" else \
        lab.tpm_maker_dir
    with factory_board_here(tmp_path / "board", manufacturing=apps[lie](), maker_dir=maker) as (board, port):
        result = station.provision(port)
        assert result.status == "failed" and result.error.startswith(refusal), result.error
        assert isinstance(result.failure, VerificationFailure)
        assert "issue" not in result.steps                      # nothing was issued
        assert station.db.get(board.serial_number) is None       # nothing recorded
        assert board.manufacturing.state(board) == "keyed"       # provisionable again


class WillNotLock(ManufacturingApp):
    """Takes everything, then refuses to lock (its flash is worn out, say)."""

    def do_lock(self, board, request):
        raise Refusal("invalid", "the lock bit cannot be written")


def test_a_board_that_will_not_lock_leaves_no_record(station, tmp_path):
    with factory_board_here(tmp_path / "board", MCU, manufacturing=WillNotLock()) as (board, port):
        result = station.provision(port)
        assert result.status == "failed" and result.steps[-1] == "record"
        assert result.error == "the board refused lock: the lock bit cannot be written (invalid)"
        assert station.db.get(board.serial_number) is None       # recorded, then taken back
        assert board.manufacturing.state(board) == "keyed"


class NoisyWire(threading.Thread):
    """A TCP hop between the station and a board's raw TCP console that damages one character
    of every `every`-th reply line the board sends, as bursts of noise on a UART would. The
    lines between are clean and outnumber the longest reply with the rest of the one it
    damaged, so the request sent again gets through."""

    def __init__(self, board_address: str, every: int = 25):
        super().__init__(daemon=True)
        host, port = board_address.split("://", 1)[1].rsplit(":", 1)
        self.board = (host, int(port))
        self.every = every
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.damaged = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        station, _ = self.listener.accept()
        board = socket.create_connection(self.board)
        selector = selectors.DefaultSelector()
        selector.register(station, selectors.EVENT_READ, board)
        selector.register(board, selectors.EVENT_READ, station)
        pending, lines = bytearray(), 0
        while not self.stopped.is_set():
            for key, _ in selector.select(0.2):
                data = key.fileobj.recv(65536)
                if not data:
                    self.stopped.set()
                    break
                if key.fileobj is station:
                    board.sendall(data)
                    continue
                pending += data
                while b"\n" in pending:
                    end = pending.index(b"\n") + 1
                    line, pending[:end] = bytearray(pending[:end]), b""
                    lines += b"@mfg " in line
                    if b"@mfg " in line and lines % self.every == 3:
                        middle = len(line) // 2
                        line[middle] = ord("A") if line[middle] != ord("A") else ord("B")
                        self.damaged += 1
                    station.sendall(line)
        station.close()
        board.close()


def test_line_noise_in_replies_is_detected_and_retried_never_misread(lab, station, tmp_path):
    with factory_board_here(tmp_path / "board", maker_dir=lab.tpm_maker_dir,
                            console="tcp") as (board, port):
        wire = NoisyWire(port)
        wire.start()
        result = station.provision(wire.address)
        wire.stopped.set()
        assert result.status == "provisioned", result.error
        assert wire.damaged >= 2 and result.damaged_lines >= wire.damaged and result.retries > 0
        # Never misread: what was recorded is the key the board holds, certified.
        held = keystore.open_signer(board.keystore.slot_uri("idevid")).public_key_der()
        assert result.record.public_key_sha256 == sha256_hex(held)
        assert board.flash.state.identity.idevid.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == held


def test_a_tpm_that_dies_half_way_leaves_the_board_provisionable(lab, station, tmp_path):
    with factory_board_here(tmp_path / "board", maker_dir=lab.tpm_maker_dir) as (board, port):
        def pull_the_tpm(step, done, total):
            if step == "read-ek":
                os.kill(board.keystore.swtpm.pid, signal.SIGKILL)

        failed = station.provision(port, pull_the_tpm)
        assert failed.status == "failed" and isinstance(failed.failure, VerificationFailure)
        assert failed.error.startswith("the board refused create-iak: the key store failed:"), failed.error
        assert station.db.get(board.serial_number) is None
        assert board.manufacturing.state(board) == "keyed"

        board.power_cycle()                                      # the TPM comes back with power
        again = station.provision(port)
        assert again.status == "provisioned", again.error
        assert station.db.get(board.serial_number).public_key_sha256 == \
            sha256_hex(keystore.open_signer(board.keystore.slot_uri("idevid")).public_key_der())


def test_a_generate_repeated_after_a_reboot_gets_the_same_key(tmp_path):
    with factory_board_here(tmp_path / "board", MCU) as (board, port):
        with BoardLink(port, timeout=2) as link:
            first = link.request("generate", {"algorithm": "ec-p256"}, rid="gen-1")["public-key"]
        board.power_cycle()                                      # the reply memory (RAM) is gone
        with BoardLink(port, timeout=2) as link:
            assert link.request("generate", {"algorithm": "ec-p256"}, rid="gen-1")["public-key"] == first
            assert link.request("identify")["state"] == "keyed"
            # A new request id is a new attempt: a new key replaces the old one.
            second = link.request("generate", {"algorithm": "ec-p256"}, rid="gen-2")["public-key"]
            assert second != first
            with pytest.raises(BoardRefusal, match="makes ec-p256 keys, not rsa-2048"):
                link.request("generate", {"algorithm": "rsa-2048"})
            with pytest.raises(BoardRefusal, match="install idevid-certificate, trust-anchors, "
                                                   "cloud-registrar before locking"):
                link.request("lock")


def test_a_board_that_boots_as_usual_serves_the_station_wherever_it_reads(station, tmp_path):
    """Without a factory console, a board no station locked still serves one: here the first
    request's first byte stops the autoboot countdown, the rest reaches the bootloader prompt as
    a command it does not know, and the request sent again is served there."""
    counting = MCU.with_timings(autoboot_seconds=30)
    with factory_board_here(tmp_path / "board", counting, factory_console=False) as (board, port):
        assert board.wait_for_phase("bootloader", 30)
        result = station.provision(port)
        assert result.status == "provisioned", result.error
        assert result.retries >= 1
        con = pexpect.fdpexpect.fdspawn(os.open(port, os.O_RDWR | os.O_NOCTTY), timeout=30)
        con.send("\r")
        con.expect_exact(counting.boot.bootloader_prompt)
        con.send("boot\r")
        con.expect_exact(counting.console.prompt)
        status = run(con, "status", counting.console.prompt)
        assert re.search(r"^state: +provisioned", status, re.M)
        assert re.search(r"^manufacturing: +locked", status, re.M)
        con.close()


def test_a_console_that_is_not_there_is_an_environment_failure(station, tmp_path):
    result = station.provision(str(tmp_path / "no-board" / "console"))
    assert result.status == "failed" and isinstance(result.failure, EnvironmentFailure)
    assert result.error.startswith(f"cannot open the board's console {tmp_path}/no-board/console")


# --------------------------------------------------------------------------- pure logic

def test_a_paced_line_lets_bytes_through_at_the_baud_rate():
    pacer = LinePacer(115200)                  # 11520 bytes a second
    pacer.started(10.0)
    assert pacer.due(1000, 10.0) == 0          # nothing has crossed the line yet
    assert pacer.due(1000, 10.002) == 0        # less than a batch (46 bytes, 4 ms)
    assert pacer.due(1000, 10.01) == 115       # 10 ms of line time
    assert pacer.deadline(885) == pytest.approx(10.0 + (115 + 46) / 11520)
    assert pacer.due(885, 10.1) == 885         # all of them crossed by then
    assert pacer.deadline(0) is None
    pacer.started(20.0)                        # idle, then new bytes: the line starts again
    assert pacer.due(10, 20.0) == 0 and pacer.due(10, 20.001) == 10


def test_an_import_file_names_what_is_wrong():
    assert read_masa('{"serial": "GW-1", "owner": "acme"}\n') == \
        [read_masa('{"serial": "GW-1", "owner": "acme", "est_domain": null}')[0]]
    with pytest.raises(ImportFileError, match="masa.jsonl line 2: unknown field 'ownr'; "
                                              "did you mean 'owner'"):
        read_masa('{"serial": "GW-1", "owner": "a"}\n{"serial": "GW-2", "ownr": "a"}', "masa.jsonl")
    with pytest.raises(ImportFileError, match="line 1: 'owner' is missing"):
        read_masa('{"serial": "GW-1"}')
    with pytest.raises(ImportFileError, match="serial"):
        read_masa('{"serial": "../etc", "owner": "a"}')
