"""What both registrars do with a pledge's voucher-request: check it, wrap it, ask the MASA.

The pledge's identity is the TLS client certificate (its IDevID); the serial
number is read from that certificate, never from the JSON (RFC 8995 5.5).
The registrar voucher-request is signed with the registrar's key in the HSM
and carries the pledge's request as prior-signed-voucher-request.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from cryptography import x509

from pledgeforge.hsm.chain import CertificateFile, load_certificate_files
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.wellknown import VOUCHER_MEDIA_TYPE

from .brski import (PledgeRequest, check_proximity, decode_cms_body,
                    read_pledge_request, registrar_voucher_request)
from .config import RegistrarConfig
from .masa_client import MasaClient
from .tls import leaf_certificate
from .web import (Refusal, peer_certificate, read_body, require_acceptable,
                  require_content_type)


class VoucherRelay:
    def __init__(self, config: RegistrarConfig, stop: asyncio.Event):
        self.config = config
        self.signer = open_signer(config.signer.key_uri)
        # Read again when the file changes: a short-term certificate is renewed beside
        # the running registrar (pledgeforge signer renew).
        self.signer_cert = CertificateFile(config.signer.cert, "registrar signing certificate")
        self.signer_chain = load_certificate_files(config.signer.chain, "registrar signing chain")
        self.manufacturer_cas = load_certificate_files(config.manufacturer_cas, "manufacturer CA")
        self.tls_cert: x509.Certificate = leaf_certificate(config.server.tls_cert)
        self.masa = MasaClient(config.upstream, stop)

    def client_idevid(self, request: web.Request) -> x509.Certificate:
        cert = peer_certificate(request)
        if cert is None:
            raise Refusal(401, "present the IDevID as TLS client certificate")
        return cert

    async def read_request(self, request: web.Request) -> PledgeRequest:
        """The pledge voucher-request of this HTTP request, checked (RFC 8995 5.2, 5.3)."""
        idevid = self.client_idevid(request)
        require_content_type(request, VOUCHER_MEDIA_TYPE)
        require_acceptable(request, VOUCHER_MEDIA_TYPE)
        der = decode_cms_body(await read_body(request), "pledge voucher-request")
        pledge = read_pledge_request(der, self.manufacturer_cas, tls_idevid=idevid,
                                     check_time=self.config.check_time)
        check_proximity(pledge.request, self.tls_cert)
        return pledge

    async def voucher_for(self, pledge: PledgeRequest) -> bytes:
        """Sign a registrar voucher-request around the pledge's and get the MASA's voucher."""
        request = await registrar_voucher_request(pledge, self.signer, self.signer_cert.current(),
                                                  self.signer_chain)
        url = self.masa.base_url(pledge.idevid) + "/requestvoucher"
        body, content_type = await self.masa.post(url, request)
        if content_type != VOUCHER_MEDIA_TYPE:
            raise Refusal(502, f"the MASA answered with {content_type or 'no Content-Type'}, "
                               f"not {VOUCHER_MEDIA_TYPE}")
        return body

    async def close(self) -> None:
        await self.masa.close()


def voucher_response(voucher: bytes) -> web.Response:
    return web.Response(body=voucher, content_type=VOUCHER_MEDIA_TYPE)
