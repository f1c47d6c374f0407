"""The factory step: what puts a pledge identity on a board whose flash holds none.

On a production line a manufacturing station does it; here whoever starts the
board passes a `ProvisioningStep` (the lab's, for `board run --lab`). The
runtime calls `provision` in the firmware thread at power-on, before the
boot, while the flash holds no identity; an exception is reported on the
console and the board boots unprovisioned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class ProvisioningStep(ABC):
    @abstractmethod
    def provision(self, board) -> None:
        """Create the IDevID key in `board.keystore` (its "idevid" slot), have it certified,
        and store the identity with `board.flash.set_identity(...)`."""

    def status_fields(self, board) -> dict[str, str]:
        """Extra `status` lines about what the factory set up."""
        return {}
