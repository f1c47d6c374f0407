"""Boards are assembled from parts registered by name: key-store drivers picked by the
profile's [keystore] type, firmware apps (the pledge, the manufacturing mode) picked by name."""

from __future__ import annotations

import pytest

from pledgeforge.boards.assembly import assemble_board, firmware_app_names
from pledgeforge.boards.board_keystore import (KEYSTORE_DRIVERS, BoardKeyStore, KeyStoreNotRunningError,
                                               SoftHsmKeyStore, TpmKeyStore, keystore_for)
from pledgeforge.boards.manufacturing_app import ManufacturingApp
from pledgeforge.boards.pledge_app import PledgeApp
from pledgeforge.boards.profile import ProfileError, load_profile
from pledgeforge.boards.registry import UnknownPartError
from pledgeforge.hsm.keystore import parse_key_uri
from pledgeforge.hsm.keyuri import Pkcs11Uri

MCU = load_profile("mcu-se")
GATEWAY = load_profile("gateway-tpm")


def test_the_profile_type_picks_the_driver_bound_to_it(tmp_path):
    assert KEYSTORE_DRIVERS.names() == ("tpm", "pkcs11")
    assert isinstance(keystore_for(GATEWAY.keystore, tmp_path), TpmKeyStore)
    store = keystore_for(MCU.keystore, tmp_path)
    assert isinstance(store, SoftHsmKeyStore) and store.type == "pkcs11"
    # Slots are the firmware's names; each driver maps them to its own (a label here).
    uri = parse_key_uri(store.slot_uri("ldevid"))
    assert isinstance(uri, Pkcs11Uri) and (uri.token, uri.object) == ("secure-element", "ldevid")
    assert dict(uri.module_env)["SOFTHSM2_CONF"] == str(tmp_path / "softhsm" / "softhsm2.conf")
    assert uri.pin_source == f"file:{tmp_path / 'softhsm' / 'user.pin'}"
    # A TPM's keys are reached through the swtpm running while the board has power.
    with pytest.raises(KeyStoreNotRunningError, match="power the board on"):
        keystore_for(GATEWAY.keystore, tmp_path).slot_uri("idevid")


def test_a_registered_driver_is_a_profile_type(tmp_path):
    class CardKeyStore(BoardKeyStore):
        binds_to = "smartcard"
        scheme = "pkcs11"
        SLOTS = {"idevid": "card-idevid"}

        def power_on(self):
            pass

        def key_uri(self, name=None):
            return f"pkcs11:token=card;object={name}"

    profile = tmp_path / "card.toml"
    profile.write_text(MCU.path.read_text().replace('type = "pkcs11"', 'type = "smartcard"'))
    with pytest.raises(ProfileError, match="must be one of tpm, pkcs11, got 'smartcard'"):
        load_profile(profile)
    KEYSTORE_DRIVERS.register(CardKeyStore)
    try:
        with assemble_board(load_profile(profile), tmp_path / "board") as board:
            assert isinstance(board.keystore, CardKeyStore)
            assert board.keystore.slot_uri("idevid") == "pkcs11:token=card;object=card-idevid"
    finally:
        KEYSTORE_DRIVERS.unregister("smartcard")


def test_firmware_apps_are_chosen_by_name(tmp_path):
    assert {"pledge", "manufacturing"} <= set(firmware_app_names())
    with assemble_board(MCU, tmp_path / "plain") as board:
        assert board.app is None and board.manufacturing is None
    with assemble_board(MCU, tmp_path / "pledge", app="pledge", manufacturing="manufacturing") as board:
        assert isinstance(board.app, PledgeApp) and isinstance(board.manufacturing, ManufacturingApp)
        assert board.status_fields() == {"pledge": "idle", "manufacturing": "factory-new"}
    with pytest.raises(UnknownPartError, match="no firmware app is registered as 'bridge'; "
                                               "registered: .*pledge"):
        assemble_board(MCU, tmp_path / "nope", app="bridge")
