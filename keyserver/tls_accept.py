"""Accepting TLS connections so that a refused handshake is known, not just logged in debug mode.

The `ssl` module verifies a client certificate inside the handshake and
ends a handshake whose certificate chains to no configured CA with an alert
(unknown_ca); asyncio reports that only in debug mode and never tells the
application. The service must audit that refusal with the peer's address,
so it accepts plain TCP connections itself, runs the TLS handshake with
`loop.start_tls`, reports a failure to `on_refused`, and hands a completed
connection to aiohttp's request handler (the protocol `make_handler()`
returns). Decrypted bytes that arrive before the handover are kept and
passed on.

asyncio also aborts a failed handshake without sending the alert OpenSSL
wrote, so the client would see the connection drop and learn nothing. The
context of such a server is an `AlertingContext`: the TLS object of each
connection sends that alert (e.g. unknown_ca) itself before the abort.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Callable

HANDSHAKE_TIMEOUT_S = 10.0

#: (peer "host:port", the exception the handshake ended with)
OnRefused = Callable[[str, BaseException], None]


class AlertingSSLObject(ssl.SSLObject):
    """A connection's TLS object that sends OpenSSL's alert when its handshake fails."""

    _alert_to: tuple[ssl.MemoryBIO, int] | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError:
            if self._alert_to is not None:
                outgoing, fd = self._alert_to
                try:
                    os.write(fd, outgoing.read())   # a few bytes on a socket nothing else writes now
                except OSError:
                    pass   # the client is gone already
            raise


class AlertingContext(ssl.SSLContext):
    """A server context whose connections send their handshake alerts (see AlertingSSLObject).

    `alert_fd` is the socket of the connection whose TLS layer is made next: set just
    before loop.start_tls, which makes it without waiting in between."""

    sslobject_class = AlertingSSLObject
    alert_fd: int | None = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        sslobj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if self.alert_fd is not None and isinstance(sslobj, AlertingSSLObject):
            sslobj._alert_to = (outgoing, self.alert_fd)
        self.alert_fd = None
        return sslobj


def peer_text(peername) -> str:
    if not peername:
        return "unknown"
    host, port = peername[0], peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TlsHandshake(asyncio.Protocol):
    """One accepted connection up to the end of its TLS handshake."""

    def __init__(self, make_handler: Callable[[], asyncio.Protocol], context: ssl.SSLContext,
                 on_refused: OnRefused, timeout: float = HANDSHAKE_TIMEOUT_S):
        self._make_handler = make_handler
        self._context = context
        self._on_refused = on_refused
        self._timeout = timeout
        self._handler: asyncio.Protocol | None = None
        self._early: list[bytes] = []
        self._eof = False
        self._lost: tuple[BaseException | None] | None = None
        self._task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Nothing is read until start_tls has put the TLS layer in place.
        transport.pause_reading()
        self._peer = peer_text(transport.get_extra_info("peername"))
        self._task = asyncio.get_running_loop().create_task(self._upgrade(transport))

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if isinstance(self._context, AlertingContext) and sock is not None:
            self._context.alert_fd = sock.fileno()
        try:
            tls = await loop.start_tls(transport, self, self._context, server_side=True,
                                       ssl_handshake_timeout=self._timeout)
        except (OSError, asyncio.TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            transport.close()
            self._on_refused(self._peer, exc)
            return
        handler = self._make_handler()
        tls.set_protocol(handler)
        handler.connection_made(tls)
        self._handler = handler
        for chunk in self._early:
            handler.data_received(chunk)
        self._early.clear()
        if self._eof:
            handler.eof_received()
        if self._lost is not None:
            handler.connection_lost(self._lost[0])

    # What the TLS layer delivers between the end of the handshake and the handover.

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool:
        if self._handler is not None:
            return bool(self._handler.eof_received())
        self._eof = True
        return True   # keep the transport open until the handler has seen the request

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._handler is not None:
            self._handler.connection_lost(exc)
        else:
            self._lost = (exc,)


def refusal_reason(exc: BaseException) -> str:
    """What an audit record says about a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("TLS handshake refused (alert unknown_ca): the client certificate does not chain "
                f"to a configured client CA ({exc.verify_message})")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return "TLS handshake not completed in time"
    return f"connection ended during the TLS handshake ({type(exc).__name__})"
