"""swtpm fixtures: a real swtpm process per test, with fresh state in tmp_path.

A TPM is cheap to start (tens of milliseconds), so every test gets its own and
no key leaks from one test into another.
"""

from __future__ import annotations

from typing import Callable

import pytest

from pledgeforge.hsm import tpm_backend
from pledgeforge.hsm.keyuri import TpmUri
from pledgeforge.hsm.swtpm import Swtpm
from pledgeforge.hsm.tpm_maker_ca import TpmMakerCa, create_tpm_maker_ca

#: The first handle of the range tests put keys in (TCG registry: IDevID/IAK keys).
DEFAULT_HANDLE = 0x81020000


@pytest.fixture
def swtpm(tmp_path) -> Swtpm:
    """A running swtpm (Unix sockets, encrypted state) in tmp_path/swtpm, stopped after the test."""
    tpm = Swtpm(tmp_path / "swtpm").start()
    yield tpm
    tpm.stop()
    # Close this TPM's ESAPI context: its sockets are gone.
    tpm_backend.disconnect(tpm.tcti)


@pytest.fixture
def tpm_uri(swtpm) -> Callable[..., TpmUri]:
    """tpm_uri(handle=0x81020000, hierarchy="endorsement") -> TpmUri on the test's swtpm."""

    def make(handle: int | None = DEFAULT_HANDLE, hierarchy: str = "endorsement") -> TpmUri:
        return swtpm.key_uri(handle, hierarchy)

    return make


@pytest.fixture
def tpm_maker(tmp_path) -> TpmMakerCa:
    """A TPM maker's CA (root and issuing CA) in tmp_path/tpm-maker."""
    return create_tpm_maker_ca(tmp_path / "tpm-maker")


@pytest.fixture
def manufactured_swtpm(tmp_path, tpm_maker) -> Swtpm:
    """A running swtpm born as a board's TPM: EKs and EK certificates from `tpm_maker`."""
    tpm = Swtpm(tmp_path / "board-tpm")
    tpm.manufacture(create_ek_cert=True, ca_dir=tpm_maker.directory)
    tpm.start()
    yield tpm
    tpm.stop()
    tpm_backend.disconnect(tpm.tcti)
