"""Where a fleet's pledges keep their keys: pools of tokens and TPMs, each holding a bounded share.

Every pledge of a fleet has its own IDevID key and LDevID key slots in hardware,
as a lab pledge has. What a pool bounds is how many pledges share one key store,
because that decides what one enrollment costs:

- SoftHSM's file store searches every object of a token on each key lookup,
  generation and deletion (each a C_FindObjects over the token's files): a key
  generation costs about 14 ms of CPU on a token of 50 keys, 30 ms on 200 and
  120 ms on 1,000 (measured on this machine kind). 1,000 pledges on the lab's one
  `pledges` token would make the thousandth enrollment ten times dearer than the
  first. The key operations of one enrollment (open the IDevID key, empty the
  LDevID slots, generate the new key, four signatures) cost 10 ms of CPU with 2
  pledges on a token, 14 ms with 8, 32 ms with 32 and 52 ms with 64, and the
  same with 125 tokens of 8 in one SoftHSM as with one. So the PKCS#11 pool puts
  `PLEDGES_PER_TOKEN` pledges on each token, and its tokens live in a SoftHSM of
  the fleet's own (one configuration, one module host): the servers' signatures
  never wait on the store lock (hsm/store_lock.py) while the fleet writes its key
  files, and the lab's `pledges` token stays small for `pledgeforge pledge bootstrap`.
- One swtpm per pledge, as a lab pledge has, would be 1,000 processes. A swtpm
  keeps about 65 persistent P-256 keys; a pledge needs three handles at most (its
  IDevID and two LDevID slots), so the TPM pool puts `PLEDGES_PER_TPM` pledges on
  each swtpm and runs at most `MAX_TPMS` of them: a fleet that needs more is
  refused before anything is made, with a message that says what fits.

Either way the cost of one enrollment does not grow with the fleet, and the
number of processes stays bounded. A pool's state lives in the fleet's
directory; `close()` stops its TPMs.
"""

from __future__ import annotations

import math
from pathlib import Path

from pledgeforge.errors import UsageError
from pledgeforge.hsm.softhsm import SoftHsm
from pledgeforge.lab import KeyHome
from pledgeforge.lab.pki import ensure_pin

#: pledges per SoftHSM token: at most 24 key pairs on a token (IDevID and two LDevID slots each)
PLEDGES_PER_TOKEN = 8
#: pledges per swtpm: 3 persistent handles each, 60 of the about 65 a swtpm holds
PLEDGES_PER_TPM = 20
HANDLES_PER_PLEDGE = 3
#: swtpm processes one fleet runs at most
MAX_TPMS = 64
#: the first pledge's IDevID handle in each TPM (the lab's pledges use it too)
FIRST_HANDLE = 0x81020000


def tpms_needed(count: int) -> int:
    return math.ceil(count / PLEDGES_PER_TPM)


def check_tpm_fleet(count: int) -> None:
    """UsageError when `count` TPM pledges need more swtpm processes than a fleet runs."""
    if tpms_needed(count) > MAX_TPMS:
        raise UsageError(
            f"{count} TPM pledges need {tpms_needed(count)} swtpm processes ({PLEDGES_PER_TPM} pledges "
            f"each); a fleet runs at most {MAX_TPMS}, so at most {MAX_TPMS * PLEDGES_PER_TPM} TPM "
            "pledges: lower --count, or use --keystore pkcs11 (or mixed) for the rest")


class TokenPool:
    """PKCS#11 pledges' keys: tokens `fleet-000`, `fleet-001`, ... of the fleet's own SoftHSM,
    `PLEDGES_PER_TOKEN` pledges on each. All tokens share one PIN: they are one trust role,
    the devices' secure elements."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.softhsm = SoftHsm(directory / "softhsm")
        self.pin_file = directory / "secrets" / "pledges.pin"
        self._so_pin_file = directory / "secrets" / "pledges.so.pin"
        self._tokens: set[str] = set()

    @staticmethod
    def token_name(index: int) -> str:
        return f"fleet-{index // PLEDGES_PER_TOKEN:03d}"

    def prepare(self, count: int) -> None:
        """Create the tokens `count` pledges need, before any key is made (a module that is
        already loaded re-reads its tokens when one appears, dropping its sessions)."""
        (self.directory / "secrets").mkdir(parents=True, exist_ok=True)
        (self.directory / "secrets").chmod(0o700)
        self.softhsm.ensure()
        pin, so_pin = ensure_pin(self.pin_file), ensure_pin(self._so_pin_file)
        existing = set(self.softhsm.token_labels())
        for index in range(0, count, PLEDGES_PER_TOKEN):
            name = self.token_name(index)
            if name not in existing:
                self.softhsm.ensure_token(name, pin, so_pin)
            self._tokens.add(name)

    def home(self, index: int, serial: str) -> KeyHome:
        """Where the `index`th pledge's keys go (labels idevid-SERIAL, ldevid-SERIAL-a/-b)."""
        name = self.token_name(index)
        if name not in self._tokens:
            raise ValueError(f"token {name} was not prepared (prepare(count) first)")
        token = self.softhsm.token_uri(name, pin_file=self.pin_file)
        return KeyHome("pkcs11", token.with_object(f"idevid-{serial}"), token.with_object(f"ldevid-{serial}"),
                       token_uri=str(token), softhsm2_conf=self.softhsm.conf)

    def close(self) -> None:
        """Stop the module host of the fleet's SoftHSM (the tokens stay in its directory)."""
        if self._tokens:
            from pledgeforge.hsm import pkcs11_backend

            pkcs11_backend.release_module(self.softhsm.token_uri(min(self._tokens), pin_file=self.pin_file))


class TpmPool:
    """TPM pledges' keys: swtpm processes under swtpm/tpm-NN/, `PLEDGES_PER_TPM` pledges each,
    at handles FIRST_HANDLE + 3 * n (IDevID) and the next two (LDevID slots)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._tpms: dict[int, object] = {}

    def prepare(self, count: int) -> None:
        check_tpm_fleet(count)

    def _tpm(self, number: int):
        if number not in self._tpms:
            from pledgeforge.hsm.swtpm import Swtpm

            state = self.directory / "swtpm" / f"tpm-{number:02d}"
            self._tpms[number] = Swtpm(state, key_file=self.directory / "swtpm" / f"tpm-{number:02d}.key").start()
        return self._tpms[number]

    def home(self, index: int, serial: str) -> KeyHome:
        """Where the `index`th pledge's keys go (its TPM is started on first use)."""
        number, place = divmod(index, PLEDGES_PER_TPM)
        if number >= MAX_TPMS:
            check_tpm_fleet(index + 1)
        tpm = self._tpm(number)
        handle = FIRST_HANDLE + HANDLES_PER_PLEDGE * place
        return KeyHome("tpm", tpm.key_uri(handle), tpm.key_uri(handle + 1))

    @property
    def pids(self) -> list[int]:
        return [tpm.pid for tpm in self._tpms.values() if tpm.pid is not None]

    def close(self) -> None:
        """Stop every TPM of the pool (their state stays in the fleet's directory)."""
        from pledgeforge.hsm import tpm_backend

        for tpm in self._tpms.values():
            tcti = tpm.tcti
            tpm.stop()
            tpm_backend.disconnect(tcti)
        self._tpms.clear()


__all__ = ["TokenPool", "TpmPool", "PLEDGES_PER_TOKEN", "PLEDGES_PER_TPM", "MAX_TPMS", "check_tpm_fleet"]
