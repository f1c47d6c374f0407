"""SoftHSM2 fixtures: one real SoftHSM2 instance per test session, in a temp dir.

Its keys' URIs carry its configuration (x-module-env=SOFTHSM2_CONF=...), so
the tests reach it without touching the environment. Starting an instance
costs a module host, so it is session-wide; tests get fresh tokens (unique
labels) instead of fresh instances.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pledgeforge.hsm.keyuri import Pkcs11Uri
from pledgeforge.hsm.softhsm import SoftHsm

USER_PIN = "1234"
SO_PIN = "123456"
_labels = itertools.count(1)


@dataclass
class Token:
    """An initialised token and the ways to reach it."""

    hsm: SoftHsm
    label: str
    pin: str
    pin_file: Path

    def uri(self, obj: str | None = None, **attributes) -> Pkcs11Uri:
        """URI of an object on this token, PIN read from a file (as users would);
        `attributes` replace fields (e.g. pin_source=None)."""
        uri = Pkcs11Uri(token=self.label, object=obj, module_path=self.hsm.module_path,
                        pin_source=f"file:{self.pin_file}").with_module_env(self.hsm.module_env)
        return replace(uri, **attributes)

    def uri_text(self, obj: str | None = None) -> str:
        return str(self.uri(obj))


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> SoftHsm:
    return SoftHsm(tmp_path_factory.mktemp("softhsm")).ensure()


@pytest.fixture
def token(softhsm, tmp_path) -> Token:
    """A fresh token with a user PIN stored in a 0600 file."""
    label = f"t{next(_labels)}"
    softhsm.ensure_token(label, USER_PIN, SO_PIN)
    pin_file = tmp_path / f"{label}.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    return Token(softhsm, label, USER_PIN, pin_file)
