"""A registrar's calls to the MASA: a timeout on each, a bounded number of attempts.

Only failures that may go away are retried (no connection, timeout, 429,
502/503/504); a MASA that refuses (4xx) or presents an untrusted certificate is
answered at once. What the pledge then gets: the MASA's own 403 or 404 (no
right to the device, unknown device: they concern the pledge), 504 when the
MASA did not answer in time, 502 for everything else the MASA did wrong.

A MASA that is busy (503) or finds this registrar asking too often (429) may
say how long to wait (Retry-After). A wait longer than the registrar's own
next backoff, or one with no attempt left after it, is passed on to the
pledge as 503 with that Retry-After: the registrar does not hold the
pledge's request open for it, nor ask again sooner than it was told.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math

import aiohttp
from cryptography import x509

from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.retry_after import parse_http_date, parse_retry_after
from pledgeforge.hsm.wellknown import VOUCHER_MEDIA_TYPE
from pledgeforge.hsm.x509 import masa_base_url, masa_url_of

from .config import UpstreamSettings
from .tls import client_context
from .web import Refusal, loggable, media_type

log = logging.getLogger("pledgeforge.registrar.masa_client")

RETRYABLE_STATUS = {429, 502, 503, 504}
RELAYED_STATUS = {403, 404}


class MasaClient:
    def __init__(self, settings: UpstreamSettings, stop: asyncio.Event):
        self.settings = settings
        self.stop = stop
        self.context = client_context(settings.anchors)
        self._session: aiohttp.ClientSession | None = None

    def base_url(self, idevid: x509.Certificate) -> str:
        """The configured MASA, else the one the IDevID names (RFC 8995 2.8)."""
        try:
            raw = self.settings.masa_url or masa_url_of(idevid)
        except CertificateError as exc:
            raise Refusal(400, f"the IDevID's MASA URL extension is unreadable: {exc}") from None
        if not raw:
            raise Refusal(403, "the IDevID names no MASA (no id-pe-masa-url) and this registrar "
                               "has no masa_url configured")
        return masa_base_url(raw)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _backoff_s(self, attempt: int) -> float:
        """The wait before attempt `attempt + 1` (counted from 0)."""
        return self.settings.backoff_s * (2 ** attempt)

    async def _pause(self, attempt: int) -> None:
        """Back off before the next attempt; a shutdown cuts the wait short."""
        delay = self._backoff_s(attempt)
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=delay)
        except asyncio.TimeoutError:
            return
        raise Refusal(503, "the registrar is shutting down", {"Retry-After": "5"})

    async def post(self, url: str, body: bytes, accept: str = VOUCHER_MEDIA_TYPE) -> tuple[bytes, str]:
        """POST a registrar voucher-request; return (body, content type) of the 200 answer."""
        headers = {"Content-Type": VOUCHER_MEDIA_TYPE, "Accept": accept}
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        problem = "no attempt made"
        timed_out = False
        for attempt in range(self.settings.attempts):
            if attempt:
                await self._pause(attempt - 1)
            try:
                async with self._client().post(url, data=body, headers=headers, timeout=timeout) as resp:
                    answer = await resp.read()
                    if resp.status == 200:
                        return answer, media_type(resp.headers.get("Content-Type"))
                    text = answer.decode("utf-8", "replace").strip()[:300]
                    problem = f"the MASA answered {resp.status}: {text}"
                    if resp.status in RELAYED_STATUS:
                        raise Refusal(resp.status, problem)
                    if resp.status not in RETRYABLE_STATUS:
                        raise Refusal(502, problem)
                    self._pass_on_long_wait(resp, attempt, problem)
            except aiohttp.ClientConnectorCertificateError as exc:
                raise Refusal(502, f"the MASA at {url} presented a certificate this registrar does "
                                   f"not trust: {exc.certificate_error}") from None
            except asyncio.TimeoutError:
                problem, timed_out = f"no answer within {self.settings.timeout_s:g} s", True
            except aiohttp.ClientError as exc:
                problem, timed_out = f"{exc.__class__.__name__}: {exc}", False
            log.warning("MASA %s attempt %d/%d failed: %s", loggable(url), attempt + 1,
                        self.settings.attempts, loggable(problem))
        raise Refusal(504 if timed_out else 502,
                      f"could not get a voucher from the MASA at {url} after "
                      f"{self.settings.attempts} attempt(s): {problem}")

    def _pass_on_long_wait(self, resp: aiohttp.ClientResponse, attempt: int, problem: str) -> None:
        """503 + Retry-After for the pledge when the MASA asked for a wait that the next
        attempt would not honour (or there is no next attempt)."""
        sent = parse_http_date(resp.headers.get("Date", "")) or dt.datetime.now(dt.timezone.utc)
        wait = parse_retry_after(resp.headers.get("Retry-After"), sent)
        if wait is None:
            return
        last = attempt + 1 >= self.settings.attempts
        if last or wait > self._backoff_s(attempt):
            seconds = max(1, math.ceil(wait))
            raise Refusal(503, f"{problem}; the MASA asks to wait {seconds} s",
                          {"Retry-After": str(seconds)})
