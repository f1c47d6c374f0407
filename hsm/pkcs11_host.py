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

From an event loop (`sign_async`, `sign_many_async`) the frame is written and
the answer read on the loop's thread when the socket is readable: no thread
stands between the loop and the host, which saves two thread wake-ups a call
(a fifth of a single signature's CPU in the signing service). One loop's
callers take turns (an asyncio.Lock per loop); the one whose turn it is
holds the host's lock from the write to the read. The executor makes the
call instead when another thread holds that lock or the host must first be
started. A caller that is cancelled leaves the answer to be read all the
same, so the next call gets its own.
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
import weakref
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from . import errors
from .errors import KeyStoreError, ModuleHostError

#: how long loading a module may take, and one operation (RSA-4096 generation
#: on a slow token is the longest): beyond that the host is taken for hung
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 5.0
#: longest wait for another caller's turn: a start and a call (an event loop that stopped
#: while it awaited an answer never gives the host back)
LOCK_TIMEOUT_S = START_TIMEOUT_S + CALL_TIMEOUT_S
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
        #: the thread whose event loop holds the lock across an exchange (see _call)
        self._loop_holder: int | None = None
        #: per event loop, the turn its async callers wait for (an asyncio.Lock serves one loop)
        self._turns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        #: one worker (started on first use): an async call that finds the host busy in another
        #: thread, or not started, makes its blocking call here
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

    async def sign_async(self, token, pin, label, key_id, dgst, hash_name, pad) -> bytes:
        return await self._call_async("sign", token, pin, label, key_id, dgst, hash_name, pad)

    async def sign_many_async(self, token, pin, label, key_id, digests, hash_name, pad) -> list[bytes]:
        return await self._call_async("sign_many", token, pin, label, key_id, list(digests), hash_name, pad)

    def generate(self, token, pin, label, key_id, algorithm) -> bytes:
        return self._call("generate", token, pin, label, key_id, algorithm)

    def list_keys(self, token, pin) -> list[tuple]:
        return self._call("list_keys", token, pin)

    def delete(self, token, pin, label, key_id) -> tuple[int, int]:
        return self._call("delete", token, pin, label, key_id)

    # ------------------------------------------------------------------ the host process

    def _running(self) -> bool:
        return self._conn is not None and self._proc is not None and self._proc.poll() is None

    def _call(self, operation: str, *args):
        if self._loop_holder == threading.get_ident():
            # Waiting for the lock here would stop the very loop that is to release it.
            raise RuntimeError(f"a blocking call to the module host of {self.path} from the event loop "
                               "that awaits another call to it; use the async form")
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise ModuleHostError(f"the module host of {self.path} stayed busy for {LOCK_TIMEOUT_S:g} s")
        try:
            if not self._running():
                self._start()
            answer = self._exchange(marshal.dumps((operation, args)), CALL_TIMEOUT_S, operation)
        finally:
            self._lock.release()
        return self._result(answer)

    async def _call_async(self, operation: str, *args):
        """`_call` from the running event loop, with the host's answer read on the loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = asyncio.Lock()
        async with turn:   # this loop's callers one after the other, without threads
            return await self._exchange_async(loop, operation, args)

    async def _exchange_async(self, loop, operation: str, args: tuple):
        import asyncio

        if not self._lock.acquire(blocking=False):   # another thread's turn: wait in a thread
            return await loop.run_in_executor(self.executor, self._call, operation, *args)
        if not self._running():
            self._lock.release()
            return await loop.run_in_executor(self.executor, self._call, operation, *args)
        self._loop_holder = threading.get_ident()
        conn, answered = self._conn, loop.create_future()
        fd = conn.fileno()

        def finish(answer=None, error: ModuleHostError | None = None) -> None:
            self._loop_holder = None
            self._lock.release()
            # A caller that was cancelled still had its answer read: the next call gets its own.
            if not answered.done():
                if error is not None:
                    answered.set_exception(error)
                else:
                    answered.set_result(answer)

        def readable() -> None:
            loop.remove_reader(fd)
            timer.cancel()
            try:
                answer = marshal.loads(conn.recv_bytes(MAX_FRAME))
            except Exception:   # gone, or a frame that does not read: either way the host is stopped
                finish(error=self._exited(operation))
                return
            finish(answer)

        def timed_out() -> None:
            loop.remove_reader(fd)
            if self._proc is not None:
                self._proc.kill()   # it has had CALL_TIMEOUT_S: no grace period on the loop
            finish(error=self._hung(CALL_TIMEOUT_S, operation))

        try:
            conn.send_bytes(marshal.dumps((operation, args)))
        except OSError:
            error = self._exited(operation)
            self._loop_holder = None
            self._lock.release()
            raise error from None
        loop.add_reader(fd, readable)
        timer = loop.call_later(CALL_TIMEOUT_S, timed_out)
        return self._result(await asyncio.shield(answered))

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
            raise self._exited(what) from None
        raise self._hung(timeout, what)

    def _exited(self, what: str) -> ModuleHostError:
        """The host is gone: reap it; the error to raise."""
        self._stop()
        return ModuleHostError(f"the module host of {self.path} exited during {what} "
                               f"({self._exit_status()}); the next call starts a new one")

    def _hung(self, timeout: float, what: str) -> ModuleHostError:
        """The host did not answer: stop it; the error to raise."""
        self._stop()
        return ModuleHostError(f"the PKCS#11 module {self.path} did not answer within {timeout:g} s "
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
        held = self._lock.acquire(timeout=STOP_TIMEOUT_S)
        try:
            self._stop()   # also when a caller never gave it back: nobody else will use it now
        finally:
            if held:
                self._lock.release()


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
