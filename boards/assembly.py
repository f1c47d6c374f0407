"""A board put together from its profile and parts chosen by name.

    profile [keystore] type   -> the key-store driver bound to it (board_keystore.py)
    app name ("pledge")       -> the firmware app bound to it (firmware_apps.py)
    provisioning step         -> whoever manufactures a board without an identity,
                                 passed in by the caller (the lab's, for `board run --lab`)

Importing this module registers the built-in parts. `pledgeforge board run`
assembles its board here; nothing in boards/ knows where the factory is.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import pledge_app  # noqa: F401  (registers the "pledge" firmware app)
from .board_keystore import keystore_for
from .firmware_apps import FIRMWARE_APPS
from .profile import Profile
from .provisioning import ProvisioningStep
from .runtime import Board


def firmware_app_names() -> tuple[str, ...]:
    return FIRMWARE_APPS.names()


def assemble_board(profile: Profile, state_dir: str | os.PathLike, *, app: str | None = None,
                   provisioning: ProvisioningStep | None = None,
                   serial_number: str | None = None) -> Board:
    """The board of `profile` in `state_dir`, running the firmware app named `app`
    (None: no pledge firmware) and manufactured by `provisioning` when new."""
    firmware = FIRMWARE_APPS.get(app)() if app is not None else None
    keystore = keystore_for(profile.keystore, Path(state_dir).resolve())
    return Board(profile, state_dir, keystore=keystore, app=firmware, provisioning=provisioning,
                 serial_number=serial_number)
