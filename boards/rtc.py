"""The board's real-time clock, as a board without a backup battery has one.

It holds no time until someone sets it (over SMP, as `mcumgr datetime` does);
from then on it runs with the host's clock. A warm reset keeps it; a power-off
loses it, so the next power-on starts unset again. The time is naive: the RTC
keeps whatever wall-clock time it was given, with no time zone.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Callable


class Rtc:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        # What the RTC read at one instant of `clock`; None while unset.
        self._base: tuple[datetime, float] | None = None

    def set(self, when: datetime) -> None:
        with self._lock:
            self._base = (when.replace(tzinfo=None), self._clock())

    def now(self) -> datetime | None:
        """The current time, or None while the clock is unset."""
        with self._lock:
            if self._base is None:
                return None
            when, at = self._base
            return when + timedelta(seconds=self._clock() - at)

    def lose_power(self) -> None:
        with self._lock:
            self._base = None
