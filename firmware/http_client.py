"""A small HTTP/1.1 client over one `TlsConnection`.

Enough HTTP for BRSKI and EST: requests with a body and Content-Length;
responses delimited by Content-Length, chunked transfer coding, or the end of
the connection; keep-alive so the voucher-request, voucher_status and EST
calls can share one mutually authenticated connection. Redirects are
returned, not followed: the pledge state machine decides what a 307 means.

Every request has one deadline for sending it and reading the whole
response, and the response body has a size limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from .tls_client import ConnectionFailed, TlsConnection, TlsTimeout, TransportError, host_port_text

DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 16 * 1024
# Headers that define message framing: this module writes them itself.
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "host"}
_NO_BODY_STATUSES = {204, 304}


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


def _connection_tokens(headers: Headers) -> set[str]:
    return {token.strip().lower() for value in headers.get_all("Connection") for token in value.split(",")}


def _check_token(text: str, what: str) -> None:
    if not text or any(ch in text for ch in " \t\r\n:") or not text.isascii():
        raise BadRequest(f"invalid HTTP {what} {text!r}")


def _check_value(name: str, value: str) -> None:
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
        self._buffer = bytearray()
        self._reusable = True
        #: How many TLS connections this client has used (1 + reconnects).
        self.connections_used = 1

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
        headers = Headers((headers or {}).items())
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        message = self._build(method, path, headers, body)
        if not self.reusable:
            self._replace_connection()
        try:
            self.connection.sendall(message, deadline=deadline)
            response = self._read_response(method, deadline)
        except TlsTimeout:
            self._drop()
            raise TlsTimeout(f"{method} {path} to {self.connection.peer}: no complete response "
                             f"within {limit:g} s") from None
        except TransportError:
            self._drop()
            raise
        if not self._reusable or "close" in _connection_tokens(headers) or not self._keeps_alive(response):
            self._drop()
        return response

    def close(self) -> None:
        self.connection.close()
        self._reusable = False

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- request ---

    def _build(self, method: str, path: str, headers: Headers, body: bytes) -> bytes:
        _check_token(method, "method")
        if not path.startswith("/") or not path.isascii() or any(ch in path for ch in " \t\r\n\0"):
            raise BadRequest(f"invalid request path {path!r} (must start with '/', ASCII, no spaces)")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header()}"]
        for name, value in headers.raw_items():
            _check_token(name, "header name")
            _check_value(name, value)
            if name.lower() in _FRAMING_HEADERS:
                raise BadRequest(f"header {name!r} is set by the HTTP client itself")
            lines.append(f"{name}: {value}")
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head + body

    # --- response ---

    def _replace_connection(self) -> None:
        if self._reconnect is None:
            raise ConnectionFailed(
                f"{self.connection.peer} closed the connection; open a new one for the next request")
        self.connection.close()
        self.connection = self._reconnect()
        self.connections_used += 1
        self._buffer.clear()
        self._reusable = True

    def _drop(self) -> None:
        self._reusable = False
        self._buffer.clear()
        self.connection.close()

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at end of connection."""
        data = self.connection.recv(_READ_SIZE, deadline=deadline)
        self._buffer += data
        return bool(data)

    def _read_line(self, deadline: float, limit: int, what: str) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end + 1])
                del self._buffer[:end + 1]
                return line.rstrip(b"\r\n")
            if len(self._buffer) > limit:
                raise MalformedResponse(f"{self.connection.peer}: {what} longer than {limit} bytes")
            if not self._fill(deadline):
                raise ConnectionFailed(f"{self.connection.peer} closed the connection in the {what}")

    def _read_head(self, deadline: float) -> tuple[str, int, str, Headers]:
        peer = self.connection.peer
        status_line = self._read_line(deadline, MAX_HEADER_BYTES, "status line")
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (
                len(parts[1]) == 3 and parts[1].isdigit()):
            raise MalformedResponse(f"{peer}: not an HTTP/1.x status line: {status_line[:80]!r}")
        version, status, reason = parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""
        items, used = [], len(status_line)
        while True:
            line = self._read_line(deadline, MAX_HEADER_BYTES, "response headers")
            used += len(line) + 2
            if used > MAX_HEADER_BYTES:
                raise MalformedResponse(f"{peer}: response headers longer than {MAX_HEADER_BYTES} bytes")
            if not line:
                return version, status, reason, Headers(items)
            if line[:1] in (b" ", b"\t"):
                raise MalformedResponse(f"{peer}: obsolete folded header line")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise MalformedResponse(f"{peer}: malformed header line {line[:80]!r}")
            items.append((name, value.strip()))

    def _read_response(self, method: str, deadline: float) -> Response:
        while True:
            version, status, reason, headers = self._read_head(deadline)
            if status == 101:
                raise MalformedResponse(f"{self.connection.peer} switched protocols; only HTTP/1.1 is spoken here")
            if status >= 200:
                break  # 1xx interim responses (100 Continue, 103) carry no body: skip them
        if method.upper() == "HEAD" or status in _NO_BODY_STATUSES:
            body = b""
        elif "transfer-encoding" in {k.lower() for k in headers}:
            body = self._read_chunked(headers, deadline)
        elif "content-length" in {k.lower() for k in headers}:
            body = self._read_exact(self._content_length(headers), deadline)
        else:
            body = self._read_to_close(deadline)
        return Response(status, reason, headers, body, version)

    def _content_length(self, headers: Headers) -> int:
        values = {v.strip() for value in headers.get_all("Content-Length") for v in value.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise MalformedResponse(f"{self.connection.peer}: bad Content-Length {sorted(values)}")
        return int(values.pop())

    def _too_large(self, size_hint: str) -> ResponseTooLarge:
        self._drop()  # the rest of the body is still on the wire: this connection is done
        return ResponseTooLarge(
            f"response from {self.connection.peer} is larger than the limit of "
            f"{self.max_response_bytes} bytes ({size_hint})")

    def _read_exact(self, length: int, deadline: float) -> bytes:
        if length > self.max_response_bytes:
            raise self._too_large(f"Content-Length {length}")
        while len(self._buffer) < length:
            if not self._fill(deadline):
                raise ConnectionFailed(
                    f"{self.connection.peer} closed the connection after {len(self._buffer)} "
                    f"of {length} body bytes")
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    def _read_chunked(self, headers: Headers, deadline: float) -> bytes:
        codings = [c.strip().lower() for value in headers.get_all("Transfer-Encoding")
                   for c in value.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise MalformedResponse(
                f"{self.connection.peer}: unsupported Transfer-Encoding {', '.join(codings)}")
        body = bytearray()
        while True:
            size_line = self._read_line(deadline, 1024, "chunk size line")
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise MalformedResponse(f"{self.connection.peer}: bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                break
            if len(body) + size > self.max_response_bytes:
                raise self._too_large(f"chunked body passed {len(body) + size} bytes")
            body += self._read_exact(size, deadline)
            if self._read_line(deadline, 2, "chunk end"):
                raise MalformedResponse(f"{self.connection.peer}: chunk not followed by CRLF")
        trailer_bytes = 0
        while True:  # trailer fields: read and dropped
            line = self._read_line(deadline, MAX_HEADER_BYTES, "chunked trailer")
            trailer_bytes += len(line) + 2
            if trailer_bytes > MAX_HEADER_BYTES:
                raise MalformedResponse(f"{self.connection.peer}: chunked trailer too long")
            if not line:
                return bytes(body)

    def _read_to_close(self, deadline: float) -> bytes:
        # No length given: the body ends with the connection (HTTP/1.0 style).
        self._reusable = False
        while self._fill(deadline):
            if len(self._buffer) > self.max_response_bytes:
                raise self._too_large("body delimited by connection close")
        body = bytes(self._buffer)
        self._buffer.clear()
        return body

    @staticmethod
    def _keeps_alive(response: Response) -> bool:
        tokens = _connection_tokens(response.headers)
        if "close" in tokens:
            return False
        if response.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return True


__all__ = ["HttpClient", "Response", "Headers", "HttpError", "MalformedResponse",
           "ResponseTooLarge", "BadRequest", "DEFAULT_MAX_RESPONSE_BYTES"]
