"""One process at a time in a file-backed token store: an exclusive lock across processes.

SoftHSM2's file object store keeps each token in a directory of files and
rewrites them in place: `token.object` at every login (the PIN-count flags),
an object file and the `generation` file at every key generation or deletion.
Another process reading those files at that moment gets CKR_GENERAL_ERROR, or
does not see the token at all: 32 pledge processes generating keys on one
token lost about one in four attempts that way (benchmarks/softhsm_shared_token.py
measures it). SoftHSM2 builds with a database object store that avoids this,
but Debian's package leaves it out ("Could not select token backend").

So every call pledgeforge makes into such a module, from loading it
(C_Initialize reads every token) to signing, holds an exclusive `flock` on
one lock file inside the token directory (`.pledgeforge.lock`; SoftHSM2 takes
only subdirectories there for tokens). `flock` locks are independent of the
`fcntl` record locks SoftHSM2 takes on its own files, belong to an open file
description, and go away when the holder exits or is killed: a power cut
leaves no stale lock. A call holds the lock for milliseconds (a signature, a
login); the wait for it is bounded (`LOCK_TIMEOUT_S`) so that a stopped
process cannot hang every other one forever.

Only processes that take this lock are serialised with each other: the
PKCS#11 backend, and softhsm2-util when pledgeforge runs it (hsm/softhsm.py).
Tools run by hand, such as pkcs11-tool, do not take it; for them the backend
still retries a token it cannot read, bounded.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import KeyStoreError

LOCK_FILE = ".pledgeforge.lock"
#: longest wait for the lock: far beyond one call (an RSA-4096 generation on a
#: slow machine), short enough that a stopped holder is reported, not waited on
LOCK_TIMEOUT_S = 120.0


class StoreLock:
    """An exclusive lock on `path`, shared by every process that opens the same file."""

    def __init__(self, path: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S):
        self.path = Path(path)
        self.timeout = timeout

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = self._acquire()
        try:
            yield
        finally:
            os.close(fd)  # the only descriptor of this open file: closing it releases the lock

    def _acquire(self) -> int:
        """A new descriptor of the lock file that holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot open the token store's lock file {self.path}: "
                                f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError as exc:
            os.close(fd)
            raise KeyStoreError(f"cannot lock {self.path}: {exc.strerror}") from None
        return self._wait(fd)

    def _wait(self, fd: int) -> int:
        """Block on the lock in a helper thread, so that this thread's wait has a bound.

        The kernel wakes the helper when the holder lets go; if the bound passes
        first, the helper gives the lock back as soon as it gets it."""
        guard = threading.Lock()
        done = threading.Event()
        outcome: dict[str, object] = {}

        def block() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                outcome["error"] = exc.strerror
            with guard:
                if outcome.get("abandoned"):
                    os.close(fd)
                    return
                outcome["acquired"] = "error" not in outcome
            done.set()

        threading.Thread(target=block, name="store-lock", daemon=True).start()
        done.wait(self.timeout)
        with guard:
            if outcome.get("acquired"):
                return fd
            if "error" in outcome:
                os.close(fd)
                raise KeyStoreError(f"cannot lock {self.path}: {outcome['error']}")
            outcome["abandoned"] = True
        raise KeyStoreError(f"another process has held the token store lock {self.path} for over "
                            f"{self.timeout:g} s; find it with `fuser {self.path}`")


__all__ = ["StoreLock", "LOCK_FILE", "LOCK_TIMEOUT_S"]
