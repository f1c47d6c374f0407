"""A board put together from its profile and parts chosen by name.

    profile [keystore] type   -> the key-store driver bound to it (board_keystore.py)
    app name ("pledge")       -> the firmware app behind `bootstrap` (firmware_apps.py)
    manufacturing name        -> the firmware app that serves a manufacturing station on the
    ("manufacturing")            console until the board is locked (manufacturing_app.py)

Importing this module registers the built-in parts. `pledgeforge board run`
assembles its board here; nothing in boards/ knows where the factory is: a
station reaches the board over its console.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import manufacturing_app, pledge_app  # noqa: F401  (register "manufacturing", "pledge")
from .board_keystore import keystore_for
from .firmware_apps import FIRMWARE_APPS
from .profile import Profile
from .runtime import Board


def firmware_app_names() -> tuple[str, ...]:
    return FIRMWARE_APPS.names()


def assemble_board(profile: Profile, state_dir: str | os.PathLike, *, app: str | None = None,
                   manufacturing: str | None = None, factory_console: bool = False,
                   maker_dir: str | os.PathLike | None = None,
                   serial_number: str | None = None) -> Board:
    """The board of `profile` in `state_dir`, running the firmware app named `app` (None: no
    pledge firmware) and the manufacturing mode named `manufacturing` (None: none; a station
    cannot provision it). `factory_console`: a board not yet locked boots into a console that
    serves only the station. `maker_dir`: the key store maker's CA (a TPM's EK certificate)."""
    firmware = FIRMWARE_APPS.get(app)() if app is not None else None
    factory = FIRMWARE_APPS.get(manufacturing)() if manufacturing is not None else None
    keystore = keystore_for(profile.keystore, Path(state_dir).resolve(),
                            maker_dir=Path(maker_dir).resolve() if maker_dir is not None else None)
    return Board(profile, state_dir, keystore=keystore, app=firmware, manufacturing=factory,
                 factory_console=factory_console, serial_number=serial_number)
