"""The SoftHSM2 file store's cross-process lock, held against util-linux flock(1)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from pledgeforge.hsm import keystore
from pledgeforge.hsm.errors import KeyStoreError
from pledgeforge.hsm.keyuri import SOFTHSM2_MODULE
from pledgeforge.hsm.softhsm import file_store_lock
from pledgeforge.hsm.store_lock import LOCK_FILE, StoreLock


class Holder:
    """flock(1) holding the lock on `path` until stopped: a process that is no pledgeforge."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen(["flock", str(path), "-c", "echo held; exec cat"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"held\n"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def free_now(path: Path) -> bool:
    """flock(1) can take the lock at once."""
    return subprocess.run(["flock", "-n", str(path), "true"], timeout=30).returncode == 0


def free_soon(path: Path) -> bool:
    """flock(1) gets the lock within a bounded wait."""
    return subprocess.run(["flock", "-w", "30", str(path), "true"], timeout=60).returncode == 0


def test_the_lock_lives_in_the_softhsm_token_directory(softhsm, tmp_path):
    lock = file_store_lock(SOFTHSM2_MODULE, softhsm.env())
    assert lock is not None and lock.path == softhsm.token_dir / LOCK_FILE
    # A database object store, or another module, needs none of ours.
    db_conf = tmp_path / "db.conf"
    db_conf.write_text(f"directories.tokendir = {softhsm.token_dir}\nobjectstore.backend = db\n")
    assert file_store_lock(SOFTHSM2_MODULE, {"SOFTHSM2_CONF": str(db_conf)}) is None
    assert file_store_lock("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", softhsm.env()) is None


def test_key_operations_wait_while_another_process_holds_the_lock(softhsm, token):
    lock_path = softhsm.token_dir / LOCK_FILE
    holder = Holder(lock_path)
    done = threading.Event()
    errors = []

    def generate():
        try:
            keystore.generate_key(token.uri("waited"), "ec-p256")
        except Exception as exc:  # reported below
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        assert not done.wait(1.0), "the key was generated while another process held the store lock"
    finally:
        holder.release()
    assert done.wait(60) and not errors
    thread.join()
    assert keystore.open_signer(token.uri("waited")).algorithm.value == "ec-p256"
    assert free_now(lock_path)


def test_a_holder_that_never_lets_go_is_reported_and_the_lock_comes_back(tmp_path):
    path = tmp_path / LOCK_FILE
    holder = Holder(path)
    try:
        with pytest.raises(KeyStoreError, match=str(path)):
            with StoreLock(path, timeout=0.3).held():
                pass
    finally:
        holder.release()
    # The waiter that gave up returns the lock once it gets it: nobody keeps it.
    with StoreLock(path, timeout=30).held():
        assert not free_now(path)
    assert free_soon(path)
