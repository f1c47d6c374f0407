"""The LDevID key lifecycle: its rules walked without I/O, then real keys in SoftHSM2 and swtpm."""

from __future__ import annotations

import subprocess
from itertools import product

import pytest

from pledgeforge.firmware.ldevid_keys import (Delete, Generate, LdevidKeys, LdevidSlots,
                                              LifecycleError, Slot, SlotPlan)
from pledgeforge.hsm import keystore
from pledgeforge.hsm.errors import KeyNotFoundError, KeyUriError, UnsupportedAlgorithmError
from pledgeforge.hsm.keyuri import TpmUri

A, B = Slot.A, Slot.B


# --------------------------------------------------------------------------- the rules, no I/O

def test_a_first_enrollment_then_renewals_alternate_slots_and_delete_the_old_key():
    plan = SlotPlan()
    assert plan.recover() == [Delete(A), Delete(B)]  # a pledge never enrolled keeps no LDevID key
    assert plan.begin() == [Delete(A), Generate(A)]
    assert plan.promote() == [] and plan.current is A
    assert plan.begin() == [Delete(B), Generate(B)]
    assert plan.promote() == [Delete(A)] and plan.current is B
    assert plan.begin() == [Delete(A), Generate(A)]
    assert plan.discard() == [Delete(A)] and plan.current is B and plan.pending is None
    assert plan.recover() == [Delete(A)]


def test_moves_out_of_order_are_refused_and_change_nothing():
    plan = SlotPlan(B)
    with pytest.raises(LifecycleError):
        plan.promote()
    assert plan.discard() == []
    plan.begin()
    for move in (plan.begin, plan.recover):
        with pytest.raises(LifecycleError):
            move()
    assert (plan.current, plan.pending) == (B, A)


MOVES = ("begin", "promote", "discard", "recover")


def _walk(moves: tuple[str, ...], cut_after: int | None) -> None:
    """Run `moves` against a model key store (the set of occupied slots). The pledge's record
    (the current slot) changes only when a promote stores it; a power cut after `cut_after`
    steps of the last move loses everything else, and the pledge starts again from its record."""
    recorded: Slot | None = None
    occupied: set[Slot] = set()
    plan = SlotPlan(recorded)
    for index, move in enumerate(moves):
        try:
            steps = getattr(plan, move)()
        except LifecycleError:
            continue
        if move == "promote":
            recorded = plan.current  # store(): the certificate and the slot, in one write
        last = index == len(moves) - 1
        for number, step in enumerate(steps):
            if last and cut_after is not None and number >= cut_after:
                break
            if isinstance(step, Delete):
                assert step.slot != recorded, f"{moves}: the recorded current key was deleted"
                occupied.discard(step.slot)
            else:
                assert step.slot not in occupied, f"{moves}: generating over a key"
                occupied.add(step.slot)
        assert len(occupied) <= 2
        if recorded is not None:
            assert recorded in occupied, f"{moves}: the current key is gone"
    # Power cut (or a clean stop): the pledge starts again from its record.
    plan = SlotPlan(recorded)
    for step in plan.recover():
        occupied.discard(step.slot)
    assert occupied == ({recorded} if recorded else set()), moves


@pytest.mark.parametrize("length", range(1, 7))
def test_every_sequence_with_a_power_cut_anywhere_ends_with_only_the_current_key(length):
    for moves in product(MOVES, repeat=length):
        for cut_after in (None, 0, 1):
            _walk(moves, cut_after)


def test_slots_beside_a_key_uri(token, tpm_uri):
    slots = LdevidSlots.beside(token.uri("ldevid-S1"))
    assert (slots.a.object, slots.b.object) == ("ldevid-S1-a", "ldevid-S1-b")
    assert slots.a.module_env == token.uri().module_env and slots.a.pin_source == token.uri().pin_source
    tpm = LdevidSlots.beside(tpm_uri(0x81020001))
    assert (tpm.a.handle, tpm.b.handle) == (0x81020001, 0x81020002) and tpm.a.tcti == tpm.b.tcti
    defaults = LdevidSlots.next_to(token.uri("idevid"))
    assert defaults.a.object == "ldevid-a" and defaults.a.token == token.label
    with pytest.raises(KeyUriError):
        LdevidSlots.beside(token.uri(None))
    with pytest.raises(KeyUriError):
        LdevidSlots.beside(TpmUri(handle=None))


# --------------------------------------------------------------------------- real keys

def pkcs11_labels(token) -> list[str]:
    """Every object label on the token, as pkcs11-tool lists them (private and public halves)."""
    out = subprocess.run(["pkcs11-tool", "--module", token.hsm.module_path, "--token-label", token.label,
                          "--login", "--pin", token.pin, "--list-objects"],
                         env=token.hsm.env(), capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.strip().startswith("label:"))


def tpm_handles(swtpm) -> list[str]:
    out = subprocess.run(["tpm2_getcap", "handles-persistent"], env=swtpm.env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return sorted(line.strip("- \n") for line in out.splitlines() if line.strip())


def test_pkcs11_renewals_keep_one_key_and_a_failure_leaves_none(token):
    keystore.generate_key(token.uri("idevid"), "ec-p256")
    slots = LdevidSlots.beside(token.uri("ldevid"))
    keys = LdevidKeys(slots)
    recorded = []
    first = keys.begin("ec-p256")
    keys.promote(first, recorded.append)
    assert pkcs11_labels(token) == ["idevid"] * 2 + ["ldevid-a"] * 2
    second = keys.begin("ec-p256")
    assert pkcs11_labels(token) == ["idevid"] * 2 + ["ldevid-a"] * 2 + ["ldevid-b"] * 2
    assert second.signer.public_key_der() != first.signer.public_key_der()
    keys.promote(second, recorded.append)
    assert [p.slot for p in recorded] == [A, B]
    assert pkcs11_labels(token) == ["idevid"] * 2 + ["ldevid-b"] * 2
    with pytest.raises(KeyNotFoundError):
        keystore.open_signer(slots.a)
    # A failed renewal: its key goes, the current one stays.
    third = keys.begin("ec-p256")
    keys.discard(third)
    assert pkcs11_labels(token) == ["idevid"] * 2 + ["ldevid-b"] * 2
    assert keys.open_current().public_key_der() == second.signer.public_key_der()


def test_pkcs11_an_attempt_cut_short_is_cleaned_up_at_the_next_start(token):
    slots = LdevidSlots.beside(token.uri("ldevid"))
    keys = LdevidKeys(slots)
    keys.promote(keys.begin("ec-p256"), lambda pending: None)  # current: A
    LdevidKeys(slots, A).begin("ec-p256")  # power cut: B generated, never stored
    assert pkcs11_labels(token).count("ldevid-b") == 2
    assert LdevidKeys(slots, A).recover() and pkcs11_labels(token) == ["ldevid-a"] * 2
    # A generation cut short between its halves left only a public key: the next begin() clears it.
    LdevidKeys(slots, A).begin("ec-p256")
    subprocess.run(["pkcs11-tool", "--module", token.hsm.module_path, "--token-label", token.label,
                    "--login", "--pin", token.pin, "--delete-object", "--type", "privkey",
                    "--label", "ldevid-b"], env=token.hsm.env(), capture_output=True, timeout=60, check=True)
    assert pkcs11_labels(token) == ["ldevid-a"] * 2 + ["ldevid-b"]
    pending = LdevidKeys(slots, A).begin("ec-p256")
    assert pending.slot is B and pkcs11_labels(token) == ["ldevid-a"] * 2 + ["ldevid-b"] * 2


def test_a_store_that_fails_leaves_the_current_key_and_no_new_one(token):
    keys = LdevidKeys(LdevidSlots.beside(token.uri("ldevid")))
    keys.promote(keys.begin("ec-p256"), lambda pending: None)

    def broken_store(pending):
        raise OSError("flash full")

    with pytest.raises(OSError):
        keys.promote(keys.begin("ec-p256"), broken_store)
    assert keys.current is A and pkcs11_labels(token) == ["ldevid-a"] * 2


def test_tpm_renewal_evicts_the_old_handle(swtpm, tpm_uri):
    keystore.generate_key(tpm_uri(0x81020000), "ec-p256")  # the IDevID
    slots = LdevidSlots.beside(tpm_uri(0x81020001))
    keys = LdevidKeys(slots)
    keys.promote(keys.begin("ec-p256"), lambda pending: None)
    assert tpm_handles(swtpm) == ["0x81020000", "0x81020001"]
    old = keys.open_current().public_key_der()
    pending = keys.begin("ec-p256")
    assert tpm_handles(swtpm) == ["0x81020000", "0x81020001", "0x81020002"]
    keys.promote(pending, lambda pending: None)
    assert tpm_handles(swtpm) == ["0x81020000", "0x81020002"]
    assert keys.open_current().public_key_der() not in (old, None)
    # Cut short, then started again: the abandoned handle is evicted.
    LdevidKeys(slots, B).begin("ec-p256")
    assert LdevidKeys(slots, B).recover()
    assert tpm_handles(swtpm) == ["0x81020000", "0x81020002"]


def test_a_generation_that_fails_leaves_nothing_pending(swtpm, tpm_uri):
    keys = LdevidKeys(LdevidSlots.beside(tpm_uri(0x81020001)))
    with pytest.raises(UnsupportedAlgorithmError):
        keys.begin("ec-p999")
    assert keys.plan.pending is None and tpm_handles(swtpm) == []
    keys.promote(keys.begin("ec-p256"), lambda pending: None)  # and the next attempt works
    assert tpm_handles(swtpm) == ["0x81020001"]
