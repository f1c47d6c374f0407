"""The owner's BRSKI registrar (RFC 8995) with its EST server (RFC 7030).

TLS asks for a client certificate and checks it against the manufacturer CAs
(IDevIDs) and the owner CA (LDevIDs issued here, for /simplereenroll and
enrollstatus over the new credentials); /cacerts needs none (RFC 7030 4.1.1).
A certificate from an unknown issuer ends the handshake (see tls.py); a
missing one gets 401 where an identity is needed.

- POST /.well-known/brski/requestvoucher: the checks of brski.py, then the
  pledge list (404 for a pledge not in it, RFC 8995 5.3), then a registrar
  voucher-request signed in the HSM goes to the MASA the IDevID names (or the
  configured one) and its voucher comes back (200).
- POST /.well-known/brski/voucher_status and /enrollstatus: telemetry, stored
  with the client certificate it came over; an enrollstatus also confirms (or
  marks failed) the LDevID it is about (db.OwnerStore.record_enroll_status).
- /.well-known/est/*: see est.py.
- GET /crl: the owner CA's CRL (crl.py), for anyone.
- GET /pledge-config/<name>: files of the configured additional-configuration
  directory (targets of additional-configuration-url).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from aiohttp import web

from pledgeforge.hsm.identity_names import IdentityNameError, check_file_name, shown
from pledgeforge.hsm.wellknown import ENROLL_STATUS, REQUEST_VOUCHER, VOUCHER_STATUS
from pledgeforge.hsm.x509 import to_pem

from .brski import nonce_text, parse_status_report
from .config import RegistrarConfig
from .crl import CRL_MEDIA_TYPE, CRL_PATH, CrlPublisher
from .db import OwnerStore
from .est import EstServer
from .tls import server_context
from .voucher_relay import VoucherRelay, voucher_response
from .web import Refusal, loggable, new_app, read_body, require_content_type, text_response

log = logging.getLogger("pledgeforge.registrar.owner")

CONFIG_PATH = "/pledge-config"


class OwnerRegistrar:
    def __init__(self, config: RegistrarConfig, stop: asyncio.Event):
        if config.est is None:
            raise ValueError("an owner registrar needs its [est] settings")
        self.config = config
        self.store = OwnerStore(config.database_url)
        self.relay = VoucherRelay(config, stop)
        self.est = EstServer(config.est, self.store, self.relay.manufacturer_cas, config.check_time)
        self.crl = CrlPublisher(self.store, self.est.ca_signer, self.est.ca_cert,
                                dt.timedelta(days=config.est.crl_days))

    def ssl_context(self):
        server = self.config.server
        est = self.config.est
        return server_context(server.tls_cert, server.tls_key, client_auth="optional",
                              client_cas=[*self.config.manufacturer_cas, est.ca_cert])

    def app(self) -> web.Application:
        app = new_app("owner")
        app.router.add_post(REQUEST_VOUCHER, self.request_voucher)
        app.router.add_post(VOUCHER_STATUS, self.status("voucher_status"))
        app.router.add_post(ENROLL_STATUS, self.status("enrollstatus"))
        app.router.add_get(CONFIG_PATH + "/{name}", self.additional_configuration)
        app.router.add_get(CRL_PATH, self.revocation_list)
        self.est.add_routes(app)
        return app

    async def close(self) -> None:
        await self.relay.close()

    async def request_voucher(self, request: web.Request) -> web.Response:
        pledge = await self.relay.read_request(request)
        if self.config.require_pledge_list and self.store.pledge_flow(pledge.serial) is None:
            raise Refusal(404, f"pledge {pledge.serial} is not in this owner's pledge list")
        voucher = await self.relay.voucher_for(pledge)
        self.store.record_voucher(pledge.serial, nonce_text(pledge.request), voucher)
        return voucher_response(voucher)

    def status(self, kind: str):
        async def handler(request: web.Request) -> web.Response:
            client = self.est.identify(request)
            require_content_type(request, "application/json")
            report = parse_status_report(await read_body(request))
            self.store.record_status(client.serial, kind, report, to_pem(client.certificate).decode())
            about = ""
            if kind == "enrollstatus":
                ldevid = self.store.record_enroll_status(
                    client.serial, report,
                    client.certificate.serial_number if client.kind == "ldevid" else None)
                about = f" about LDevID {ldevid}" if ldevid else " (no LDevID issued to it)"
            log.info("%s from %s (%s)%s: %s %s", kind, client.serial, client.kind, about, report.status,
                     loggable(report.reason or ""))
            return text_response(200, "status recorded")
        return handler

    async def revocation_list(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.crl.current(), content_type=CRL_MEDIA_TYPE)

    async def additional_configuration(self, request: web.Request) -> web.Response:
        directory = self.config.est.additional_configuration_dir
        name = request.match_info["name"]
        try:
            check_file_name(name, "configuration")
        except IdentityNameError as exc:  # no such file can exist: not found, whatever the name
            raise Refusal(404, str(exc)) from None
        path = directory / name if directory else None
        if path is None or not path.is_file():
            raise Refusal(404, f"no configuration {shown(name)}")
        return web.Response(body=path.read_bytes(), content_type="application/json"
                            if name.endswith(".json") else "application/octet-stream")
