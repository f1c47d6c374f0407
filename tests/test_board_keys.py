"""A board's key store over its life: bootstrap again and again, power cuts in the middle of an
enrollment, factory resets and LDevID renewal from the shell never leave a key behind.

The boards run in-process with the pledge firmware against the lab, made by the lab's
manufacturing station over their pty and then driven over it; their keys are counted with tools nobody here wrote (tpm2_getcap over the board's TPM socket,
pkcs11-tool on the board's token) and the renewed LDevID is checked with openssl.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from boardrunner import factory_board, manufacture, quick_profile
from clirunner import openssl
from pledgeforge.bench import login, open_console, run
from pledgeforge.boards.assembly import assemble_board
from pledgeforge.boards.profile import load_profile
from pledgeforge.hsm import keystore
from pledgeforge.hsm.keyuri import SOFTHSM2_MODULE
from pledgeforge.hsm.softhsm import file_store_lock

pytestmark = pytest.mark.slow

# No boot delays: these tests wait for the prompt, not for a countdown.
GATEWAY = load_profile("gateway-tpm").with_timings(autoboot_seconds=0, firmware_seconds=0)
MCU = load_profile("mcu-se").with_timings(autoboot_seconds=0, firmware_seconds=0)
BOARDS = [pytest.param(GATEWAY, "redirect", id="tpm"), pytest.param(MCU, "est-domain", id="pkcs11")]

#: states in which the power is cut: before the LDevID key exists, while the CSR or the
#: certificate is on its way, and once the pledge is enrolled while it stores what it got
CUT_AT = ("voucher-verified", "est-csrattrs", "est-enroll", "est-status", "enrolled")


def key_store(described: dict) -> list[str]:
    """A board's keys as tools nobody here wrote list them (`described`: its key store's
    describe()): the persistent handles of its TPM (tpm2_getcap over the board's TPM socket),
    or the object labels on its token (pkcs11-tool)."""
    if described["type"] == "tpm":
        out = subprocess.run(["tpm2_getcap", "handles-persistent"],
                             env={**os.environ, "TPM2TOOLS_TCTI": described["tcti"]},
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return sorted(line.strip("- \n") for line in out.splitlines() if line.strip())
    pin = Path(described["pin_file"]).read_text().strip()
    # pkcs11-tool's login rewrites the token's files; a board generating a key at that moment
    # would read them half-written and fail. It takes its turn as every pledgeforge process does.
    lock = file_store_lock(SOFTHSM2_MODULE, {"SOFTHSM2_CONF": described["softhsm2_conf"]})
    with lock.held():
        out = subprocess.run(["pkcs11-tool", "--module", SOFTHSM2_MODULE, "--token-label", described["token"],
                              "--login", "--pin", pin, "--list-objects"],
                             env={**os.environ, "SOFTHSM2_CONF": described["softhsm2_conf"]},
                             capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.strip().startswith("label:"))


def ldevid_key(store_type: str, slot: str | None) -> list[str]:
    """What the LDevID key in `slot` ("a", "b"; None: no key) adds to key_store()."""
    if slot is None:
        return []
    if store_type == "tpm":
        return [f"0x{0x81020001 + (slot == 'b'):08x}"]
    return [f"ldevid-{slot}"] * 2   # the private and the public half


class BenchBoard:
    """A board with the pledge firmware, manufactured by the lab's station over its console
    (and then off), and that console."""

    def __init__(self, lab, profile, flow: str, state_dir):
        self.lab = lab
        self.profile = profile
        self.prompt = profile.console.prompt
        self.board = assemble_board(profile, state_dir, app="pledge", manufacturing="manufacturing",
                                    factory_console=True, maker_dir=lab.tpm_maker_dir)
        try:
            self.board.open_console("pty")
            self.board.power_on()
            lab.manufacture_board(str(self.board.state_dir / "console"), flow)
            self.board.power_off()
        except BaseException:
            self.board.close()
            raise
        self.con = open_console(self.board.state_dir / "console", 60)

    def close(self) -> None:
        self.board.close()
        self.con.close()

    def __enter__(self) -> "BenchBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def booted(self) -> None:
        """Wait for the boot to end at the shell (logging in where the profile asks to)."""
        self.con.expect_exact(self.profile.boot.bootloader_banner.strip().splitlines()[0])
        if self.profile.console.login:
            login(self.con, self.profile.console.username, self.profile.console.password, self.prompt)
        else:
            self.con.expect_exact(self.prompt)

    def power_on(self) -> None:
        self.board.power_on()
        self.booted()

    def run(self, command: str) -> str:
        return run(self.con, command, self.prompt).replace("\r\n", "\n")

    def status(self) -> int:
        return int(self.run("echo $?").strip())

    def bootstrap(self) -> str:
        out = self.run("bootstrap")
        assert self.status() == 0 and "enrolled: LDevID" in out, out
        return out

    def cut_power_at(self, state: str) -> None:
        """Start a bootstrap and pull the plug as soon as the pledge enters `state`."""
        self.con.send("bootstrap\r")
        self.con.expect(rf"-> {re.escape(state)} ")
        self.board.power_off()
        self.power_on()

    def factory_reset(self) -> str:
        self.con.send("factory-reset\r")
        self.con.expect_exact("Rebooting...")
        out = self.con.before.decode(errors="replace")
        self.booted()
        # The owner's configuration went with the reset; this owner's board points at the lab again.
        self.run(f"config set registrar.url {self.lab.url('cloud')}")
        return out

    def keys(self) -> list[str]:
        return key_store(self.board.keystore.describe())

    def ldevid_key(self, slot: str | None) -> list[str]:
        return ldevid_key(self.board.keystore.type, slot)

    def current_slot(self) -> str | None:
        enrollment = self.board.flash.state.enrollment
        return enrollment.slot if enrollment is not None else None

    def expected_keys(self, factory: list[str]) -> list[str]:
        return sorted(factory + self.ldevid_key(self.current_slot()))


#: one round of the cycles: a power cut and a bootstrap both meet an enrolled board and one
#: that is not, and a bootstrap follows a cut that left the enrollment unfinished
ROUND = ("bootstrap", "power-cut", "bootstrap", "power-cut", "factory-reset")


@pytest.mark.parametrize("profile, flow", BOARDS)
def test_key_store_keeps_its_size_over_50_bootstrap_power_cut_and_reset_cycles(lab, tmp_path, profile, flow):
    with BenchBoard(lab, profile, flow, tmp_path / "board") as bench:
        bench.power_on()
        factory = bench.keys()   # the IDevID (and on a TPM, its maker's keys)
        assert ("0x81020000" in factory) if profile is GATEWAY else factory == ["idevid", "idevid"]
        slots_used, cuts = set(), 0
        for cycle in range(50):
            kind = ROUND[cycle % len(ROUND)]
            if kind == "bootstrap":
                bench.bootstrap()
                slots_used.add(bench.current_slot())
            elif kind == "power-cut":
                bench.cut_power_at(CUT_AT[cuts % len(CUT_AT)])
                cuts += 1
            else:
                out = bench.factory_reset()
                assert bench.current_slot() is None
                assert "idevid" not in out and "0x81020000" not in out, out
            assert bench.keys() == bench.expected_keys(factory), (cycle, kind, bench.current_slot())
        assert cuts == 20 and slots_used == {"a", "b"}
        # Still a working pledge after all that.
        bench.bootstrap()
        assert bench.keys() == bench.expected_keys(factory)


def public_key(path) -> bytes:
    out = openssl("x509", "-in", path, "-noout", "-pubkey")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("profile, flow", BOARDS)
def test_reenroll_from_the_shell_renews_the_ldevid_with_a_key_in_the_other_slot(lab, tmp_path, profile, flow):
    with BenchBoard(lab, profile, flow, tmp_path / "board") as bench:
        bench.power_on()
        assert re.search(r"^  reenroll +renew the LDevID", bench.run("help"), re.M)
        out = bench.run("reenroll")
        assert bench.status() == 1 and "holds no LDevID; run `bootstrap` first" in out
        factory = bench.keys()
        bench.bootstrap()
        old_slot = bench.current_slot()
        (tmp_path / "old.pem").write_text(bench.run("ldevid"))

        out = bench.run("reenroll")
        assert bench.status() == 0, out
        new_slot = "b" if old_slot == "a" else "a"
        assert f"(key slot {old_slot})" in out and "/simplereenroll, new key in slot " + new_slot in out
        assert "enrollstatus answered 200" in out and "renewed: LDevID CN=" in out
        shown = bench.run("ldevid")
        assert shown.startswith(f"key slot: {new_slot}\n")
        (tmp_path / "new.pem").write_text(shown)

        # The new LDevID chains to the owner CA, for a new key, with the same subject.
        verified = openssl("verify", "-CAfile", lab.pki("owner-ca"), tmp_path / "new.pem")
        assert verified.returncode == 0, verified.stderr
        assert public_key(tmp_path / "new.pem") != public_key(tmp_path / "old.pem")
        subject = lambda name: openssl("x509", "-in", tmp_path / name, "-noout", "-subject", "-serial").stdout
        assert subject("new.pem").splitlines()[0] == subject("old.pem").splitlines()[0]
        assert subject("new.pem") != subject("old.pem")
        # The old slot is empty, the new one holds the key, and nothing else changed.
        keys = bench.keys()
        assert keys == sorted(factory + bench.ldevid_key(new_slot))
        assert not set(bench.ldevid_key(old_slot)) & set(keys)

        # What the flash recorded is what the board boots with.
        bench.board.power_off()
        bench.power_on()
        assert bench.run("ldevid") == shown and bench.keys() == keys


@pytest.mark.parametrize("profile, flow", BOARDS)
def test_a_power_cut_of_the_board_process_mid_enrollment_leaves_no_key_after_power_on(lab, tmp_path, profile, flow):
    """A real power cut (the board process killed) while the new LDevID key is being enrolled:
    nothing runs the firmware's own clean-up; the next power-on deletes the key of the
    enrollment cut short."""
    state = tmp_path / "board"
    quick = quick_profile(profile.name, tmp_path)

    def boot(process) -> tuple:
        con = process.open_pty()
        if profile.console.login:
            login(con, profile.console.username, profile.console.password, profile.console.prompt)
        else:
            con.expect_exact(profile.console.prompt)
        return con, process.info["keystore"]

    with factory_board(lab, quick, state) as process:
        manufacture(lab, process, flow)
        con, described = boot(process)
        factory = key_store(described)
        out = run(con, "bootstrap", profile.console.prompt)
        assert "enrolled: LDevID" in out, out
        slot = re.search(r"^key slot: (a|b)\r?$", run(con, "ldevid", profile.console.prompt), re.M).group(1)
        enrolled = sorted(factory + ldevid_key(described["type"], slot))
        assert key_store(described) == enrolled
        # Bootstrap again, and pull the plug once the new key exists and its enrollment is on
        # its way. The owner registrar is held (SIGSTOP) from est-enroll on, so whether or not
        # it issued the certificate first, it cannot answer the enrollment status the board
        # records the enrollment after: the cut always lands before that record.
        new_key = sorted(enrolled + ldevid_key(described["type"], "b" if slot == "a" else "a"))
        con.send("bootstrap\r")
        con.expect_exact("-> est-enroll ")
        owner = lab.pid("owner")
        os.kill(owner, signal.SIGSTOP)
        try:
            checks = 0
            while key_store(described) != new_key:
                checks += 1
                assert checks < 300, f"the new LDevID key never appeared: {key_store(described)}"
                threading.Event().wait(0.1)
            process.kill()
        finally:
            os.kill(owner, signal.SIGCONT)
        con.close()

    with factory_board(lab, quick, state) as process:   # locked: it boots its firmware
        con, described = boot(process)
        log = run(con, "log", profile.console.prompt)
        assert "deleted the key of an enrollment cut short" in log, log
        assert key_store(described) == enrolled
        assert f"key slot: {slot}" in run(con, "ldevid", profile.console.prompt)
        con.close()


@pytest.mark.parametrize("profile, flow", BOARDS)
def test_factory_reset_destroys_every_key_the_firmware_made_but_not_the_idevid(lab, tmp_path, profile, flow):
    with BenchBoard(lab, profile, flow, tmp_path / "board") as bench:
        bench.power_on()
        factory = bench.keys()
        store = bench.board.keystore
        # Keys an older firmware left (a numbered LDevID label, a handle further up) beside both
        # LDevID slots: each the firmware's, none the factory's.
        names = ["ldevid-a", "ldevid-b", "ldevid-1"] if store.type == "pkcs11" else \
            [0x81020001, 0x81020002, 0x81020007]
        for name in names:
            keystore.generate_key(store.key_uri(name), store.algorithm)
        assert len(bench.keys()) == len(factory) + len(names) * (2 if store.type == "pkcs11" else 1)
        out = bench.factory_reset()
        assert out.count("destroyed ") == len(names), out
        assert bench.keys() == factory
        # The IDevID key is still there: the one its certificate names.
        identity = bench.board.flash.state.identity
        idevid_key = keystore.open_signer(store.current_uri(identity.idevid_key_uri))
        assert idevid_key.public_key_pem() == identity.idevid.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
