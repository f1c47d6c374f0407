"""HTTP/1.1 requests over one `TlsConnection`, framed by h11.

h11 (sans-I/O) does the HTTP/1.1 parsing and framing: status line and
headers, Content-Length, chunked transfer coding, bodies that end with the
connection, keep-alive. This module is the thin layer around it that the
pledge needs: it moves bytes between h11 and the tlslite connection, gives
every request one deadline for sending it and reading the whole response,
bounds the response head (`MAX_HEADER_BYTES`) and body (`max_response_bytes`),
and turns every failure into one `TransportError` naming the server. Keep-alive
lets the voucher-request, voucher_status and EST calls share one mutually
authenticated connection. Redirects are returned, not followed: the pledge
state machine decides what a 307 means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import h11

from .tls_client import ConnectionFailed, TlsConnection, TlsTimeout, TransportError, host_port_text

DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 16 * 1024
# Headers that define message framing: this module (with h11) writes them itself.
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "host"}


class HttpError(TransportError):
    """Base of HTTP-level failures."""


class MalformedResponse(HttpError):
    """The server's response is not valid HTTP/1.1."""


class ResponseTooLarge(HttpError):
    """The response is bigger than the limit the caller set."""


class BadRequest(HttpError):
    """The request the caller built cannot be sent (bad method, path or header)."""


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive names, order and repeats kept.

    `headers[name]` and `get` give the first value; `get_all` gives every one.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        self._items = list(items)

    def __getitem__(self, name: str) -> str:
        lowered = name.lower()
        for key, value in self._items:
            if key.lower() == lowered:
                return value
        raise KeyError(name)

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self._items if key.lower() == lowered]

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for key, _ in self._items:
            if key.lower() not in seen:
                seen.add(key.lower())
                yield key

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self._items})

    def raw_items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes
    version: str = "HTTP/1.1"

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value else None


def _check_value(name: str, value: str) -> None:
    # h11 refuses these too; checked here first to say which header and why.
    if "\r" in value or "\n" in value or "\0" in value:
        raise BadRequest(f"header {name!r} contains a line break or NUL")
    if not value.isascii():
        raise BadRequest(f"header {name!r} has non-ASCII text; encode it first")


class HttpClient:
    """HTTP/1.1 requests over a TlsConnection, reusing it while the server allows.

    When the server closes the connection (Connection: close, or a body that
    ends with the connection), the next request calls `reconnect` for a new
    one if given, and otherwise raises ConnectionFailed: whether and how to
    reconnect (which server authentication) is the caller's decision.
    """

    def __init__(self, connection: TlsConnection, *, timeout: float = 30.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 reconnect: Callable[[], TlsConnection] | None = None):
        self.connection = connection
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._reconnect = reconnect
        self._http = self._new_protocol()
        self._reusable = True
        #: How many TLS connections this client has used (1 + reconnects).
        self.connections_used = 1

    @staticmethod
    def _new_protocol() -> h11.Connection:
        return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)

    @property
    def reusable(self) -> bool:
        """True while the next request can go over the current connection."""
        return self._reusable and not self.connection.closed

    def host_header(self) -> str:
        """The server name (the one its certificate was checked for), with the port unless 443."""
        text = host_port_text(self.connection.server_name, self.connection.port)
        return text.removesuffix(":443") if self.connection.port == 443 else text

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"", *, timeout: float | None = None) -> Response:
        """Send one request and read its whole response (status, headers, body)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        head = self._head(method, path, Headers((headers or {}).items()), body)
        if not self.reusable:
            self._replace_connection()
        events = [head, h11.Data(data=body), h11.EndOfMessage()] if body else [head, h11.EndOfMessage()]
        try:
            message = b"".join(self._http.send(event) for event in events)
        except h11.LocalProtocolError as exc:
            # Nothing was sent: the connection is as good as before.
            self._http = self._new_protocol()
            raise BadRequest(f"cannot send {method} {path}: {exc}") from None
        try:
            self.connection.sendall(message, deadline=deadline)
            response = self._read_response(deadline)
        except TlsTimeout:
            self._drop()
            raise TlsTimeout(f"{method} {path} to {self.connection.peer}: no complete response "
                             f"within {limit:g} s") from None
        except TransportError:
            self._drop()
            raise
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()  # keep-alive: the next request reuses the connection
        else:
            self._drop()  # Connection: close, HTTP/1.0, or a body that ended with the connection
        return response

    def close(self) -> None:
        self.connection.close()
        self._reusable = False

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- request ---

    def _head(self, method: str, path: str, headers: Headers, body: bytes) -> h11.Request:
        if not path.startswith("/"):
            raise BadRequest(f"invalid request path {path!r} (must start with '/')")
        fields = [("Host", self.host_header())]
        for name, value in headers.raw_items():
            _check_value(name, value)
            if name.lower() in _FRAMING_HEADERS:
                raise BadRequest(f"header {name!r} is set by the HTTP client itself")
            fields.append((name, value))
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body))))
        try:
            return h11.Request(method=method, target=path, headers=fields)
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise BadRequest(f"cannot send {method} {path}: {exc}") from None

    # --- response ---

    def _replace_connection(self) -> None:
        if self._reconnect is None:
            raise ConnectionFailed(
                f"{self.connection.peer} closed the connection; open a new one for the next request")
        self.connection.close()
        self.connection = self._reconnect()
        self.connections_used += 1
        self._http = self._new_protocol()
        self._reusable = True

    def _drop(self) -> None:
        self._reusable = False
        self.connection.close()

    def _read_response(self, deadline: float) -> Response:
        """Feed h11 from the connection until the response is complete."""
        peer = self.connection.peer
        head: h11.Response | None = None
        body = bytearray()
        received = 0
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._protocol_failure(exc, head, received, len(body)) from None
            if event is h11.NEED_DATA:
                want = _READ_SIZE
                if head is None:
                    # Read the head no further than its limit, so the limit is exact
                    # (h11 alone would let it pass by up to one read).
                    if received > MAX_HEADER_BYTES:
                        raise self._head_too_long()
                    want = min(want, MAX_HEADER_BYTES + 1 - received)
                data = self.connection.recv(want, deadline=deadline)
                received += len(data)
                self._http.receive_data(data)  # b"": the server closed its side
            elif isinstance(event, h11.InformationalResponse):
                pass  # 100 Continue, 103 Early Hints: no body, the real response follows
            elif isinstance(event, h11.Response):
                head = event
                length = _content_length(event)
                if length is not None and length > self.max_response_bytes:
                    raise self._too_large(f"Content-Length {length}")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_response_bytes:
                    raise self._too_large(f"body passed {len(body)} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # h11 sends the head before the end of a message
                # raw_items: the header names as the server spelled them
                fields = ((name.decode("latin-1"), value.decode("latin-1"))
                          for name, value in head.headers.raw_items())
                return Response(head.status_code, head.reason.decode("latin-1"), Headers(fields),
                                bytes(body), f"HTTP/{head.http_version.decode('ascii')}")
            else:  # h11 reports a close before the end of the response as an error (above)
                raise ConnectionFailed(f"{peer}: unexpected {type(event).__name__} in a response")

    def _protocol_failure(self, exc: h11.RemoteProtocolError, head: h11.Response | None,
                          received: int, body_bytes: int) -> TransportError:
        peer = self.connection.peer
        if self.connection.closed:
            if head is None:
                return ConnectionFailed(f"{peer} closed the connection before sending a complete response")
            return ConnectionFailed(
                f"{peer} closed the connection after {body_bytes} body bytes, "
                f"before the response was complete")
        if head is None and received > MAX_HEADER_BYTES:
            return self._head_too_long()
        return MalformedResponse(f"{peer}: malformed HTTP/1.1 response: {exc}")

    def _head_too_long(self) -> MalformedResponse:
        return MalformedResponse(
            f"{self.connection.peer}: response headers longer than {MAX_HEADER_BYTES} bytes")

    def _too_large(self, size_hint: str) -> ResponseTooLarge:
        self._drop()  # the rest of the body is still on the wire: this connection is done
        return ResponseTooLarge(
            f"response from {self.connection.peer} is larger than the limit of "
            f"{self.max_response_bytes} bytes ({size_hint})")


def _content_length(head: h11.Response) -> int | None:
    """The Content-Length h11 has already validated, or None (chunked, to close, none)."""
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)
    return None


__all__ = ["HttpClient", "Response", "Headers", "HttpError", "MalformedResponse",
           "ResponseTooLarge", "BadRequest", "DEFAULT_MAX_RESPONSE_BYTES"]
