"""A PKCS#11 module in a process of its own, started with the environment the module needs.

SoftHSM2 reads SOFTHSM2_CONF from the process environment at C_Initialize and
takes it from nowhere else; the dynamic loader hands one process one instance
of a library. A key whose module needs an environment this process does not
have is therefore served by a module host: a child process started with the
parent's environment plus the key's `x-module-env`, which loads the module
(as `pkcs11_backend.LocalModule`) and answers requests over a socket pair.

The protocol is one request, one answer, each a length-prefixed frame
(multiprocessing.connection) holding a `marshal`led tuple of plain values:

    request   (operation, arguments)
    answer    ("ok", result) | ("error", exception class name, message)

with the operations of LocalModule: public_key, key_attributes, sign,
sign_many, generate, list_keys, delete. The first frame the host sends is
("ok", module description) once the module is loaded, or the error that
stopped it. Both ends are the same Python (sys.executable), so marshal's
format always matches. PINs travel in the frames only: never on a command
line, in the environment or in a log.

The host serves one request at a time; the parent holds one lock per host.
It exits when the parent closes its end (or dies): EOF on the socket.
"""

from __future__ import annotations

import argparse
import atexit
import marshal
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from . import errors
from .errors import KeyStoreError, ModuleHostError

#: how long loading a module may take, and one operation (RSA-4096 generation
#: on a slow token is the longest): beyond that the host is taken for hung
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 5.0
MAX_FRAME = 1 << 20

OPERATIONS = ("public_key", "key_attributes", "sign", "sign_many", "generate", "list_keys", "delete")


def _error_class(name: str) -> type[KeyStoreError]:
    """The KeyStoreError subclass of that name (anything else is a plain KeyStoreError)."""
    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, KeyStoreError) else KeyStoreError


class HostedModule:
    """The parent's handle on a module host: LocalModule's operations, one round trip each."""

    def __init__(self, path: str, env: dict[str, str]):
        self.path = path
        self.env = dict(env)
        settings = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        self.description = f"{path} with {settings}"
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        #: one worker (started on first use): async signatures on this host wait their turn here
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="pkcs11-host")
        atexit.register(self.close)

    # ------------------------------------------------------------------ operations

    def public_key(self, token, pin, label, key_id) -> bytes:
        return self._call("public_key", token, pin, label, key_id)

    def key_attributes(self, token, pin, label, key_id) -> tuple:
        return self._call("key_attributes", token, pin, label, key_id)

    def sign(self, token, pin, label, key_id, dgst, hash_name, pad) -> bytes:
        return self._call("sign", token, pin, label, key_id, dgst, hash_name, pad)

    def sign_many(self, token, pin, label, key_id, digests, hash_name, pad) -> list[bytes]:
        return self._call("sign_many", token, pin, label, key_id, list(digests), hash_name, pad)

    def generate(self, token, pin, label, key_id, algorithm) -> bytes:
        return self._call("generate", token, pin, label, key_id, algorithm)

    def list_keys(self, token, pin) -> list[tuple]:
        return self._call("list_keys", token, pin)

    def delete(self, token, pin, label, key_id) -> tuple[int, int]:
        return self._call("delete", token, pin, label, key_id)

    # ------------------------------------------------------------------ the host process

    def _call(self, operation: str, *args):
        with self._lock:
            if self._conn is None or self._proc is None or self._proc.poll() is not None:
                self._start()
            answer = self._exchange(marshal.dumps((operation, args)), CALL_TIMEOUT_S, operation)
        return self._result(answer)

    def _start(self) -> None:
        self._stop()
        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pledgeforge.hsm.pkcs11_host", "--fd", str(child.fileno()),
                 "--module", self.path, "--description", self.description],
                env={**os.environ, **self.env}, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                close_fds=True)
        except OSError as exc:
            parent.close()
            raise KeyStoreError(f"cannot start a module host for {self.path}: {exc.strerror}") from None
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        answer = self._exchange(None, START_TIMEOUT_S, "loading the module")
        if answer[0] != "ok":
            self._stop()  # the host gave up: it could not load the module
            self._result(answer)

    def _exchange(self, frame: bytes | None, timeout: float, what: str):
        """Send `frame` (if any), then read the answer; a host that dies or hangs is stopped."""
        try:
            if frame is not None:
                self._conn.send_bytes(frame)
            answered = self._conn.poll(timeout)
            if answered:
                return marshal.loads(self._conn.recv_bytes(MAX_FRAME))
        except (OSError, EOFError):
            self._stop()
            raise ModuleHostError(f"the module host of {self.path} exited during {what} "
                                  f"({self._exit_status()}); the next call starts a new one") from None
        self._stop()
        raise ModuleHostError(f"the PKCS#11 module {self.path} did not answer within {timeout:g} s "
                              f"({what}); its host was stopped")

    @staticmethod
    def _result(answer):
        if answer[0] == "ok":
            return answer[1]
        raise _error_class(answer[1])(answer[2])

    def _exit_status(self) -> str:
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def _stop(self) -> None:
        """Close our end (the host exits on EOF) and reap it, bounded."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)

    def close(self) -> None:
        with self._lock:
            self._stop()


# --------------------------------------------------------------------------- the host side

def serve(conn: Connection, module_path: str, description: str | None = None) -> None:
    """Load the module, then answer requests until the parent hangs up."""
    from .pkcs11_backend import LocalModule

    try:
        module = LocalModule(module_path, description)
    except KeyStoreError as exc:
        conn.send_bytes(marshal.dumps(("error", type(exc).__name__, str(exc))))
        return
    operations = {name: getattr(module, name) for name in OPERATIONS}
    conn.send_bytes(marshal.dumps(("ok", module.description)))
    while True:
        try:
            operation, args = marshal.loads(conn.recv_bytes(MAX_FRAME))
        except EOFError:
            return
        try:
            answer = ("ok", operations[operation](*args))
        except KeyStoreError as exc:
            answer = ("error", type(exc).__name__, str(exc))
        except Exception as exc:  # reported to the parent, which names the module
            answer = ("error", "KeyStoreError",
                      f"PKCS#11 module {module_path}: {operation} failed: {type(exc).__name__}: {exc}")
        conn.send_bytes(marshal.dumps(answer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pledgeforge.hsm.pkcs11_host")
    parser.add_argument("--fd", type=int, required=True, help="our end of the socket pair")
    parser.add_argument("--module", required=True, help="the PKCS#11 module to load")
    parser.add_argument("--description", help="how errors name the module and its configuration")
    args = parser.parse_args(argv)
    # The parent decides when we stop (it closes the socket); a Ctrl-C meant
    # for it must not kill us in the middle of a token write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(args.fd)
    try:
        serve(conn, args.module, args.description)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent went away
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
