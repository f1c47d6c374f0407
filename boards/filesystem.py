"""The board's file system, as its shell sees it.

A Linux-like board has a small tree, fixed in its shape:

    /            flash   (persistent: survives reboot and power cycle)
    /root        flash   (the login user's home)
    /tmp         RAM     (emptied at every boot, as a tmpfs is)
    /dev/null    reads nothing, swallows writes

Files live in a `Partition`, a bounded map of path to contents and mode.
The flash partition (flash.py's `FlashPartition`) writes every change as one
atomic image, so a power cut leaves a file either as it was or as it was
written, never half of it. There are no subdirectories beyond these: a board
needs files, not a tree.

Errors are OSError with errno and the path, which the shell reports as
BusyBox does (`cat: /x: No such file or directory`).
"""

from __future__ import annotations

import errno
import os
import posixpath
import threading
from dataclasses import dataclass
from typing import Mapping

DEV_NULL = "/dev/null"
FLASH_DIRS = ("/", "/root")
TMP_DIR = "/tmp"
DIRECTORIES = FLASH_DIRS + (TMP_DIR, "/dev")
# What /tmp may hold: the board's RAM is not the host's.
TMPFS_BYTES = 1024 * 1024
# What each file costs beyond its contents (its name and mode), so that a
# partition also runs out when filled with empty files.
FILE_OVERHEAD = 64
NAME_MAX = 255
PATH_MAX = 1024


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


@dataclass(frozen=True)
class FileData:
    data: bytes
    mode: int = 0o644            # permission bits: chmod +x makes a script runnable


@dataclass(frozen=True)
class FileInfo:
    path: str
    is_dir: bool
    size: int
    mode: int


class Partition:
    """A bounded set of files, kept in memory (a tmpfs). Subclasses persist it."""

    def __init__(self, name: str, capacity: int, files: Mapping[str, FileData] | None = None):
        self.name = name
        self.capacity = capacity
        self._files: dict[str, FileData] = dict(files or {})
        self._lock = threading.Lock()

    @property
    def files(self) -> Mapping[str, FileData]:
        return self._files

    @staticmethod
    def cost(files: Mapping[str, FileData]) -> int:
        return sum(len(f.data) + FILE_OVERHEAD for f in files.values())

    @property
    def used(self) -> int:
        return self.cost(self._files)

    def store(self, path: str, entry: FileData | None) -> None:
        """Create, replace (entry) or remove (None) one file, all or nothing."""
        with self._lock:
            new = dict(self._files)
            if entry is None:
                new.pop(path, None)
            else:
                new[path] = entry
            if entry is not None and self.cost(new) > self.capacity:
                raise _error(errno.ENOSPC, path)
            self._persist(new)
            self._files = new

    def erase(self) -> None:
        with self._lock:
            self._persist({})
            self._files = {}

    def _persist(self, files: dict[str, FileData]) -> None:
        """Make `files` the partition's contents durably (RAM: nothing to do)."""


class BoardFiles:
    """The tree above over a flash partition and a RAM one. Paths given to it
    are absolute and normalised (the shell resolves relative names)."""

    def __init__(self, flash: Partition, tmp: Partition | None = None):
        self.flash = flash
        self.tmp = tmp if tmp is not None else Partition("tmpfs", TMPFS_BYTES)

    def partition_of(self, path: str) -> Partition:
        """The partition a file path belongs to; errors for paths no file can have."""
        if len(path) > PATH_MAX or len(posixpath.basename(path)) > NAME_MAX:
            raise _error(errno.ENAMETOOLONG, path)
        if not path.startswith("/") or "\0" in path:
            raise _error(errno.EINVAL, path)
        parent = posixpath.dirname(path)
        if parent == TMP_DIR:
            return self.tmp
        if parent in FLASH_DIRS:
            return self.flash
        if parent == "/dev":
            raise _error(errno.EROFS, path)
        raise _error(errno.ENOENT, path)

    def is_dir(self, path: str) -> bool:
        return path in DIRECTORIES

    def stat(self, path: str) -> FileInfo:
        if path in DIRECTORIES:
            return FileInfo(path, True, 0, 0o755)
        if path == DEV_NULL:
            return FileInfo(path, False, 0, 0o666)
        entry = self.partition_of(path).files.get(path)
        if entry is None:
            raise _error(errno.ENOENT, path)
        return FileInfo(path, False, len(entry.data), entry.mode)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except OSError:
            return False

    def read(self, path: str) -> bytes:
        if path == DEV_NULL:
            return b""
        if path in DIRECTORIES:
            raise _error(errno.EISDIR, path)
        entry = self.partition_of(path).files.get(path)
        if entry is None:
            raise _error(errno.ENOENT, path)
        return entry.data

    def check_writable(self, path: str) -> None:
        """Raise what `write` would raise for a bad path, before any work is done."""
        if path == DEV_NULL:
            return
        if path in DIRECTORIES:
            raise _error(errno.EISDIR, path)
        self.partition_of(path)

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        """Create or replace a file; an existing file keeps its mode unless one is given."""
        if path == DEV_NULL:
            return
        self.check_writable(path)
        partition = self.partition_of(path)
        old = partition.files.get(path)
        if mode is None:
            mode = old.mode if old is not None else 0o644
        partition.store(path, FileData(bytes(data), mode))

    def append(self, path: str, data: bytes) -> None:
        if path == DEV_NULL:
            return
        self.check_writable(path)
        old = self.partition_of(path).files.get(path)
        self.write(path, (old.data if old is not None else b"") + data)

    def create(self, path: str, mode: int = 0o644) -> bool:
        """An empty file if none is there; False if it already existed."""
        if self.exists(path):
            return False
        self.write(path, b"", mode)
        return True

    def chmod(self, path: str, mode: int) -> None:
        if path in DIRECTORIES or path == DEV_NULL:
            raise _error(errno.EPERM, path)
        self.write(path, self.read(path), mode & 0o7777)

    def remove(self, path: str) -> None:
        if path in DIRECTORIES:
            raise _error(errno.EISDIR, path)
        if path == DEV_NULL:
            raise _error(errno.EPERM, path)
        partition = self.partition_of(path)
        if path not in partition.files:
            raise _error(errno.ENOENT, path)
        partition.store(path, None)

    def listdir(self, path: str) -> list[str]:
        if path not in DIRECTORIES:
            self.stat(path)                         # ENOENT for missing paths
            raise _error(errno.ENOTDIR, path)
        names = {posixpath.basename(d) for d in DIRECTORIES if d != "/" and posixpath.dirname(d) == path}
        if path == "/dev":
            names.add("null")
        partition = self.tmp if path == TMP_DIR else self.flash
        names.update(posixpath.basename(p) for p in partition.files if posixpath.dirname(p) == path)
        return sorted(names)

    def partitions(self) -> list[tuple[Partition, str]]:
        """Each partition with where it is mounted (what `df` shows)."""
        return [(self.flash, "/"), (self.tmp, TMP_DIR)]
