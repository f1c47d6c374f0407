"""Parts registered by name, as labgrid registers its drivers.

A part (a key-store driver, a firmware app) is a class that declares the name
it binds to (`binds_to`); registering it makes that name choosable: a
profile's `[keystore] type = "tpm"` picks the key-store driver bound to
"tpm", `board run` the firmware apps bound to "pledge" and "manufacturing". An unknown name
is an error that lists the registered ones.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pledgeforge.errors import PledgeforgeError

Part = TypeVar("Part", bound=type)


class UnknownPartError(PledgeforgeError):
    """No part is registered under the name asked for."""


class Registry(Generic[Part]):
    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, Part] = {}

    def register(self, part: Part) -> Part:
        """Register `part` under its `binds_to` name (usable as a class decorator)."""
        name = part.binds_to
        if name in self._parts and self._parts[name] is not part:
            raise ValueError(f"a {self.kind} is already registered as {name!r}")
        self._parts[name] = part
        return part

    def unregister(self, name: str) -> None:
        self._parts.pop(name, None)

    def get(self, name: str) -> Part:
        try:
            return self._parts[name]
        except KeyError:
            raise UnknownPartError(f"no {self.kind} is registered as {name!r}; "
                                   f"registered: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in the order they were registered."""
        return tuple(self._parts)
