"""The cloud registrar (draft-friel-anima-brski-cloud-04, final text draft-ietf-anima-brski-cloud-20).

TLS requires a client certificate issued by a configured manufacturer CA;
anything else ends at the handshake (see tls.py). A voucher-request then goes
through, in order:

- the global overload switch: 503 + Retry-After;
- Content-Type 415, Accept 406, malformed 400, bad signature 403, a JSON
  serial-number that differs from the IDevID's 400, a pinned
  proximity-registrar-cert that is not ours 401 (see brski.py);
- the pledge's record, looked up by the IDevID's serialNumber and the
  endpoint (port) the request came in on. No record: 404 (unknown pledge).
  Otherwise what the record says:

  ==============  =================================================================
  redirect        307, Location = the owner registrar (or another cloud registrar)
  voucher         200: a voucher from the MASA, which carries est-domain (and
                  additional-configuration-url when the MASA has one) -- the
                  est-domain flow
  accepted        202 + Retry-After (voucher being prepared)
  owner-unknown   401 (+ Retry-After when configured): no owner known yet
  unknown         404
  bad-request     400
  overloaded      503 (+ Retry-After)
  ==============  =================================================================

  A record may answer N times, then switch to a follow-up (e.g. 202 twice,
  then the voucher), so tests can walk a pledge through retries.

POST /.well-known/brski/voucher_status records the pledge's telemetry (the
est-domain flow reports here). The cloud registrar is no EST server: every
/.well-known/est request gets 404, as brski-cloud-20 requires for /csrattrs.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from pledgeforge.hsm.cloud_responses import CloudResponse
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER, VOUCHER_STATUS

from .brski import nonce_text, parse_status_report, require_serial
from .config import RegistrarConfig
from .db import CloudStore
from .tls import server_context
from .voucher_relay import VoucherRelay, voucher_response
from .web import (Refusal, endpoint_of, loggable, new_app, read_body, require_content_type,
                  text_response)

log = logging.getLogger("pledgeforge.registrar.cloud")



def _retry_after(seconds: int | None) -> dict[str, str]:
    return {} if seconds is None else {"Retry-After": str(seconds)}


class CloudRegistrar:
    def __init__(self, config: RegistrarConfig, stop: asyncio.Event):
        self.config = config
        self.store = CloudStore(config.database_url)
        self.relay = VoucherRelay(config, stop)

    def ssl_context(self):
        server = self.config.server
        return server_context(server.tls_cert, server.tls_key, client_auth="required",
                              client_cas=self.config.manufacturer_cas)

    def app(self) -> web.Application:
        app = new_app("cloud")
        app.router.add_post(REQUEST_VOUCHER, self.request_voucher)
        app.router.add_post(VOUCHER_STATUS, self.voucher_status)
        return app

    async def close(self) -> None:
        await self.relay.close()

    async def request_voucher(self, request: web.Request) -> web.Response:
        overloaded = self.store.overloaded()
        if overloaded is not None:
            raise Refusal(CloudResponse.OVERLOADED.status,
                          "the cloud registrar is overloaded; try again later",
                          _retry_after(overloaded))
        pledge = await self.relay.read_request(request)
        endpoint = endpoint_of(request)
        record = self.store.take_response(pledge.serial, endpoint)
        answer = CloudResponse.UNKNOWN if record is None else record.response
        if answer is CloudResponse.UNKNOWN:
            raise Refusal(answer.status, f"pledge {pledge.serial} is unknown to this cloud registrar")
        log.info("pledge %s on %s: %s", pledge.serial, endpoint, answer)
        if answer is CloudResponse.REDIRECT:
            return text_response(answer.status, f"continue at {record.location}",
                                 {"Location": record.location})
        if answer is CloudResponse.VOUCHER:
            voucher = await self.relay.voucher_for(pledge)
            self.store.record_voucher(pledge.serial, nonce_text(pledge.request), voucher)
            return voucher_response(voucher)
        messages = {
            CloudResponse.ACCEPTED: "the voucher is being prepared; ask again later",
            CloudResponse.OWNER_UNKNOWN: "no owner is known for this pledge yet",
            CloudResponse.BAD_REQUEST: "the voucher-request is not acceptable",
            CloudResponse.OVERLOADED: "the cloud registrar is overloaded; try again later",
        }
        raise Refusal(answer.status, messages[answer], _retry_after(record.retry_after))

    async def voucher_status(self, request: web.Request) -> web.Response:
        serial = require_serial(self.relay.client_idevid(request))
        require_content_type(request, "application/json")
        report = parse_status_report(await read_body(request))
        self.store.record_status(serial, "voucher_status", report)
        log.info("voucher_status from %s: %s %s", serial, report.status, loggable(report.reason or ""))
        return text_response(200, "status recorded")
