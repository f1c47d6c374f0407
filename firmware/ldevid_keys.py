"""The LDevID key's lifecycle: two slots per pledge, one current, the other for the next enrollment.

Every enrollment (the first bootstrap, a bootstrap again, a renewal) needs a
new LDevID key, while the current one must stay usable until the new
certificate is stored: a power cut in between leaves the pledge with its
last good identity, and at its next start no key of the attempt that was cut
short may be left. So a pledge has exactly two slots for its LDevID key, A
and B (two TPM persistent handles, or two PKCS#11 labels):

- a new enrollment always uses the slot that is not current, deleting
  whatever is there first (a key of an abandoned attempt);
- success makes it current once the certificate is stored; only then is the
  previous key deleted;
- failure deletes the new key.

Whoever keeps the pledge's state (the `pledge` CLI, a board's flash, a fleet)
records which slot is current, in the same atomic write as the certificate:

    keys = LdevidKeys(LdevidSlots.beside(base_uri), current=recorded_slot)
    keys.recover()                      # at start: delete what a cut-short attempt left
    pending = keys.begin(algorithm)     # empty the other slot, generate the key there
    ...                                 # enroll with pending.signer
    keys.promote(pending, store)        # store(pending) writes certificate + slot; the old key goes
    keys.discard(pending)               # or: the attempt failed; its key goes

A pledge key store thus never holds more than two LDevID keys, and after
`recover()` exactly the current one. The rules are a pure core (`SlotPlan`:
which slot, which keys to delete and generate) that unit tests walk without
I/O; `LdevidKeys` carries its steps out through the key-store registry
(hsm/keystore.py), so any key store registered there works.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable

from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm import keystore
from pledgeforge.hsm.errors import KeyNotFoundError, KeyUriError
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri, TpmUri
from pledgeforge.hsm.signer import KeyAlgorithm, OtherKeyAlgorithm, Signer


class LifecycleError(PledgeforgeError):
    """A lifecycle step was asked for out of order (a bug in the caller)."""


# --------------------------------------------------------------------------- the pure core

class Slot(enum.Enum):
    A = "a"
    B = "b"

    @property
    def other(self) -> "Slot":
        return Slot.B if self is Slot.A else Slot.A


@dataclass(frozen=True)
class Delete:
    """Destroy the key in `slot`, if there is one."""

    slot: Slot


@dataclass(frozen=True)
class Generate:
    """Generate a new key in `slot` (it was just emptied)."""

    slot: Slot


KeyStep = Delete | Generate


class SlotPlan:
    """Which slot is current and which is pending, and the key-store steps each move needs.

    No I/O: `LdevidKeys` performs the steps. A move asked for out of order
    raises LifecycleError and changes nothing.
    """

    def __init__(self, current: Slot | None = None):
        self.current = current
        self.pending: Slot | None = None

    def recover(self) -> list[KeyStep]:
        """Empty every slot but the current one (at start, before any enrollment)."""
        if self.pending is not None:
            raise LifecycleError(f"slot {self.pending.value} is pending; promote or discard it first")
        return [Delete(slot) for slot in Slot if slot is not self.current]

    def begin(self) -> list[KeyStep]:
        """A new enrollment: the slot that is not current, emptied, then a key generated there."""
        if self.pending is not None:
            raise LifecycleError(f"an enrollment is already pending in slot {self.pending.value}")
        target = self.current.other if self.current is not None else Slot.A
        self.pending = target
        return [Delete(target), Generate(target)]

    def promote(self) -> list[KeyStep]:
        """The pending key's certificate is stored: it is current; the previous key goes."""
        if self.pending is None:
            raise LifecycleError("no enrollment is pending; nothing to promote")
        previous, self.current, self.pending = self.current, self.pending, None
        return [Delete(previous)] if previous is not None else []

    def discard(self) -> list[KeyStep]:
        """The enrollment failed or was abandoned: its key goes (nothing if none is pending)."""
        if self.pending is None:
            return []
        slot, self.pending = self.pending, None
        return [Delete(slot)]


# --------------------------------------------------------------------------- the key store side

#: where LDevID keys go when the pledge's configuration names no place
DEFAULT_LABEL = "ldevid"
DEFAULT_TPM_HANDLE = 0x81000100


@dataclass(frozen=True)
class LdevidSlots:
    """The two places an LDevID key may live: key URIs of one key store."""

    a: KeyUri
    b: KeyUri

    def uri(self, slot: Slot) -> KeyUri:
        return self.a if slot is Slot.A else self.b

    @classmethod
    def beside(cls, base: str | KeyUri, *, pin_env: str | None = None) -> "LdevidSlots":
        """Two slots derived from one key URI: a pkcs11 `object=L` gives labels L-a and L-b on
        the same token (same module, configuration and PIN source); a tpm `handle=H` gives the
        persistent handles H and H+1 of the same TPM."""
        uri = keystore.parse_key_uri(base, pin_env=pin_env) if isinstance(base, str) else base
        if isinstance(uri, Pkcs11Uri):
            if not uri.object:
                raise KeyUriError(f"name the LDevID key with object=LABEL in {uri}")
            return cls(*(replace(uri, object=f"{uri.object}-{s.value}", id=None) for s in Slot))
        if isinstance(uri, TpmUri):
            if uri.handle is None:
                raise KeyUriError(f"give the LDevID key a persistent handle in {uri}")
            return cls(uri, replace(uri, handle=uri.handle + 1))
        raise KeyUriError(f"LDevID keys cannot live in {uri.scheme}: key stores")

    @classmethod
    def next_to(cls, idevid_key_uri: str | KeyUri, *, pin_env: str | None = None) -> "LdevidSlots":
        """The default slots in the IDevID's own key store: labels ldevid-a/-b on its token,
        or handles 0x81000100/0x81000101 of its TPM."""
        idevid = (keystore.parse_key_uri(idevid_key_uri, pin_env=pin_env)
                  if isinstance(idevid_key_uri, str) else idevid_key_uri)
        if isinstance(idevid, Pkcs11Uri):
            return cls.beside(replace(idevid, object=DEFAULT_LABEL, id=None))
        if isinstance(idevid, TpmUri):
            return cls.beside(replace(idevid, handle=DEFAULT_TPM_HANDLE))
        raise KeyUriError(f"LDevID keys cannot live in {idevid.scheme}: key stores")


@dataclass(frozen=True)
class PendingKey:
    """The new LDevID key of an enrollment in progress."""

    slot: Slot
    uri: KeyUri
    signer: Signer

    @property
    def uri_text(self) -> str:
        """The key's URI without its PIN, for records and logs."""
        return str(self.uri)


class LdevidKeys:
    """One pledge's LDevID slots and which one is current; performs the SlotPlan's steps."""

    def __init__(self, slots: LdevidSlots, current: Slot | None = None):
        self.slots = slots
        self.plan = SlotPlan(current)

    @property
    def current(self) -> Slot | None:
        return self.plan.current

    def current_uri(self) -> KeyUri | None:
        return self.slots.uri(self.current) if self.current is not None else None

    def open_current(self) -> Signer:
        """The current LDevID key (the pledge is enrolled)."""
        if self.current is None:
            raise LifecycleError("this pledge has no current LDevID key (bootstrap it first)")
        return keystore.open_signer(self.slots.uri(self.current))

    def recover(self) -> list[str]:
        """Delete every LDevID key but the current one; what was deleted, for the log."""
        return self._run(self.plan.recover())

    def begin(self, algorithm: KeyAlgorithm | OtherKeyAlgorithm | str) -> PendingKey:
        """Empty the slot that is not current and generate the new key there.

        If generation fails, whatever it left is deleted and the error raised."""
        steps = self.plan.begin()
        slot = self.plan.pending
        try:
            self._run([s for s in steps if isinstance(s, Delete)])
            signer = keystore.generate_key(self.slots.uri(slot), algorithm)
        except BaseException:
            self._discard_quietly()
            raise
        return PendingKey(slot, self.slots.uri(slot), signer)

    def promote(self, pending: PendingKey, store: Callable[[PendingKey], None]) -> list[str]:
        """`store(pending)` persists the certificate and `pending.slot` in one atomic write; then
        the slot is current and the previous key deleted. If `store` raises, the new key is."""
        self._check_pending(pending)
        try:
            store(pending)
        except BaseException:
            self._discard_quietly()
            raise
        return self._run(self.plan.promote())

    def discard(self, pending: PendingKey | None = None) -> list[str]:
        """Delete the pending key (the enrollment failed or was given up)."""
        if pending is not None:
            self._check_pending(pending)
        return self._run(self.plan.discard())

    # ------------------------------------------------------------------ steps

    def _check_pending(self, pending: PendingKey) -> None:
        if self.plan.pending is not pending.slot:
            raise LifecycleError(f"slot {pending.slot.value} is not the pending one")

    def _discard_quietly(self) -> None:
        try:
            self.discard()
        except PledgeforgeError:
            pass  # the error being raised says more; the next begin() or recover() deletes it

    def _run(self, steps: list[KeyStep]) -> list[str]:
        done = []
        for step in steps:
            if isinstance(step, Generate):  # begin() generates itself, with the caller's algorithm
                raise LifecycleError("a Generate step cannot run without an algorithm")
            try:
                done.append(keystore.delete_key(self.slots.uri(step.slot)))
            except KeyNotFoundError:
                pass  # the slot was empty already
        return done


__all__ = ["Slot", "Delete", "Generate", "KeyStep", "SlotPlan", "LdevidSlots", "PendingKey",
           "LdevidKeys", "LifecycleError", "DEFAULT_LABEL", "DEFAULT_TPM_HANDLE"]
