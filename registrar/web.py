"""What the three aiohttp servers share: refusals, the client certificate, serving until SIGTERM.

Handlers raise `Refusal(status, message)`; the middleware turns it into the
plain-text UTF-8 error body RFC 8995 5.6 asks for and logs it. Whatever a
request carries goes into the log through `loggable`. Handlers write
to their database only after every check passed, so a refusal leaves no trace
but the log line.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web
from cryptography import x509

from pledgeforge.hsm.wellknown import HEALTH_PATH

from .config import ServerSettings

log = logging.getLogger("pledgeforge.registrar")

MAX_BODY = 256 * 1024  # vouchers and CSRs are a few kB

ENDPOINT_KEY = web.AppKey("endpoints", dict)
ROLE_KEY = web.AppKey("role", str)


class Refusal(Exception):
    """An HTTP error answer: status, a human-readable reason, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def text_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain",
                        charset="utf-8", headers=headers)


def loggable(value: object) -> str:
    """Request data for a log line: every character that could end or rewrite the line
    (control characters, Unicode line separators) escaped as in a Python literal, so
    that no client can write a line of its own into the log (`%0A` in a path, a newline
    in a status report's reason)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


@web.middleware
async def refusal_middleware(request: web.Request, handler):
    path = loggable(request.path)
    try:
        response = await handler(request)
    except Refusal as refusal:
        log.info("%s %s -> %d %s", request.method, path, refusal.status, loggable(refusal.message))
        return text_response(refusal.status, refusal.message, refusal.headers)
    except web.HTTPException:
        raise
    except Exception:  # the pledge gets a 500; the operator gets the traceback
        log.exception("%s %s failed", request.method, path)
        return text_response(500, "internal error; see the server log")
    log.info("%s %s -> %d", request.method, path, response.status)
    return response


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The TLS client certificate (already verified by the ssl module), or None."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return x509.load_der_x509_certificate(der) if der else None


def endpoint_of(request: web.Request) -> str:
    """Which of the server's endpoints (ports) the request came in on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else None
    return request.app[ENDPOINT_KEY].get(port, "main")


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def require_content_type(request: web.Request, expected: str) -> None:
    """415 for a body we do not understand (RFC 8995 5.6)."""
    got = media_type(request.headers.get("Content-Type"))
    if got != expected:
        raise Refusal(415, f"Content-Type must be {expected}, not {got or 'missing'}")


def accepts(accept_header: str | None, offered: str) -> bool:
    """Whether an Accept header admits the media type `offered` (no header admits anything)."""
    if not accept_header:
        return True
    major = offered.split("/", 1)[0]
    for item in accept_header.split(","):
        kind, *params = [p.strip() for p in item.split(";")]
        if kind.lower() in (offered, f"{major}/*", "*/*") and _quality(params) > 0:
            return True
    return False


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def require_acceptable(request: web.Request, offered: str) -> None:
    """406 when the Accept header rules out the only type we answer with (RFC 8995 5.6)."""
    if not accepts(request.headers.get("Accept"), offered):
        raise Refusal(406, f"this server answers with {offered} only, which the Accept header excludes")


async def read_body(request: web.Request) -> bytes:
    body = await request.read()
    if not body:
        raise Refusal(400, "the request has no body")
    return body


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "role": request.app[ROLE_KEY],
                              "endpoint": endpoint_of(request)})


def new_app(role: str) -> web.Application:
    app = web.Application(middlewares=[refusal_middleware], client_max_size=MAX_BODY)
    app[ROLE_KEY] = role
    app.router.add_get(HEALTH_PATH, health)
    return app


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A non-blocking listening socket, its bind failure one OSError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


@dataclass
class RunningServer:
    """What `serve` reports once every endpoint listens."""

    ports: dict[str, int] = field(default_factory=dict)


async def serve(app: web.Application, settings: ServerSettings, context: ssl.SSLContext,
                on_ready: Callable[[RunningServer], None] | None = None,
                on_cleanup: Callable[[], Awaitable[None]] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve `app` on every configured endpoint until SIGTERM/SIGINT (or `stop` is set),
    then finish requests in flight (bounded by shutdown_timeout_s) and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sockets = {name: listening_socket(settings.host, port) for name, port in settings.ports().items()}
    running = RunningServer({name: s.getsockname()[1] for name, s in sockets.items()})
    app[ENDPOINT_KEY] = {port: name for name, port in running.ports.items()}
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    try:
        for sock in sockets.values():
            await web.SockSite(runner, sock, ssl_context=context).start()
        log.info("%s listening on %s", app[ROLE_KEY],
                 ", ".join(f"{n}=https://{settings.host}:{p}" for n, p in running.ports.items()))
        if on_ready:
            on_ready(running)
        await stop.wait()
        log.info("%s shutting down", app[ROLE_KEY])
    finally:
        await runner.cleanup()
        if on_cleanup:
            await on_cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
