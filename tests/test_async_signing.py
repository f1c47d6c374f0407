"""Servers sign through the async form of Signer: a registrar keeps answering while its HSM is slow.

The slow key store is real: a backend registered for the test under `held:`
whose signer waits for the test's go-ahead, then signs with the lab's EST CA
key in SoftHSM. The owner registrar runs in this process (as `registrar
serve` runs it) with that key as its CA key.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass, replace

import pytest

from clirunner import openssl
from registrar_standin import StandIn, https
from pledgeforge.hsm import keystore
from pledgeforge.hsm.cms import sign_cms_async, verify_cms
from pledgeforge.hsm.errors import KeyStoreError
from pledgeforge.hsm.est_wire import CsrAttributes, parse_certs_only
from pledgeforge.hsm.keyuri import KeyUri, parse_key_uri
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, Signer, SoftwareSigner
from pledgeforge.hsm.x509 import make_csr, to_der, to_pem
from pledgeforge.registrar.config import load_config
from pledgeforge.registrar.owner_registrar import OwnerRegistrar
from pledgeforge.registrar.web import serve

EST = "/.well-known/est"
WAIT_S = 30


@dataclass(frozen=True)
class HeldUri(KeyUri):
    """`held:<key URI>`: that key, with every signature held until released."""

    target: KeyUri
    scheme = "held"


class HeldSigner(Signer):
    """A real key whose signatures start, then wait for `release`."""

    def __init__(self, inner: Signer, started: threading.Event, release: threading.Event):
        self.inner, self.started, self.release = inner, started, release
        self.description = f"held {inner.description}"

    @property
    def public_key(self):
        return self.inner.public_key

    @property
    def executor(self):
        return self.inner.executor

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        self.started.set()
        if not self.release.wait(60):
            raise KeyStoreError("the held signature was never released")
        return self.inner.sign_digest(dgst, hash_name, pad)


@pytest.fixture
def held():
    """(started, release) of the `held:` key store, registered for this test only."""
    started, release = threading.Event(), threading.Event()

    class HeldBackend:
        ALGORITHMS = ()

        @staticmethod
        def open_signer(uri: HeldUri) -> HeldSigner:
            return HeldSigner(keystore.open_signer(uri.target), started, release)

    keystore.register_backend("held", lambda rest, pin_env: HeldUri(parse_key_uri(rest, pin_env=pin_env)),
                              lambda: HeldBackend)
    yield started, release
    release.set()
    keystore.unregister_backend("held")


def test_registrar_answers_other_requests_while_a_signature_is_slow(lab, held, tmp_path):
    started, release = held
    config = load_config(lab.config_path("owner"))
    config = replace(config, server=replace(config.server, port=0, extra_ports={}),
                     est=replace(config.est, ca_key_uri=HeldUri(config.est.ca_key_uri)))
    pledge = StandIn.create(tmp_path, "ASYNC-1", lab.issue_idevid)
    lab.register_pledge(pledge.serial, "est-domain")
    anchors = [lab.pki("owner-ca")]

    async def scenario():
        stop = asyncio.Event()
        registrar = OwnerRegistrar(config, stop)
        ready = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve(registrar.app(), config.server, registrar.ssl_context(),
                                           on_ready=ready.set_result, on_cleanup=registrar.close,
                                           stop=stop))
        try:
            url = f"https://127.0.0.1:{(await asyncio.wait_for(ready, WAIT_S)).ports['main']}"
            asked = await asyncio.to_thread(https, url + EST + "/csrattrs", identity=pledge, anchors=anchors)
            names = [n.value for n in CsrAttributes.decode(asked.body).subject_alt_names]
            csr = make_csr(SoftwareSigner.generate(KeyAlgorithm.EC_P256),
                           f"CN=ldevid {pledge.serial},serialNumber={pledge.serial}", dns_names=names)
            enrollment = asyncio.create_task(asyncio.to_thread(
                https, url + EST + "/simpleenroll", "POST", base64.encodebytes(to_der(csr)),
                identity=pledge, anchors=anchors, headers={"Content-Type": "application/pkcs10"},
                timeout=WAIT_S * 2))
            # The CA key is signing the LDevID now, and will until released.
            assert await asyncio.to_thread(started.wait, WAIT_S)
            meanwhile = [await asyncio.to_thread(https, url + path, identity=pledge, anchors=anchors,
                                                 timeout=WAIT_S)
                         for path in (EST + "/cacerts", EST + "/csrattrs")]
            still_signing = not enrollment.done()
            release.set()
            enrolled = await asyncio.wait_for(enrollment, WAIT_S * 2)
        finally:
            release.set()
            stop.set()
            await asyncio.wait_for(server, WAIT_S)
        return meanwhile, still_signing, enrolled

    meanwhile, still_signing, enrolled = asyncio.run(scenario())
    assert [answer.status for answer in meanwhile] == [200, 200]
    assert still_signing
    assert enrolled.status == 200, enrolled.body
    (cert,) = parse_certs_only(base64.b64decode(enrolled.body))
    (tmp_path / "ldevid.pem").write_bytes(to_pem(cert))
    checked = openssl("verify", "-CAfile", lab.pki("owner-ca"), tmp_path / "ldevid.pem")
    assert checked.returncode == 0, checked.stderr


def test_async_cms_is_the_sync_cms(token, tmp_path):
    """sign_cms_async builds what sign_cms builds; only the wait for the key differs."""
    from pledgeforge.hsm.x509 import issue_certificate, issue_certificate_async, make_ca

    key = keystore.generate_key(token.uri("async"), "ec-p256")
    ca = make_ca(key, "CN=async CA")
    der = asyncio.run(sign_cms_async(b'{"a":1}', key, ca))
    assert verify_cms(der, [ca]).content == b'{"a":1}'
    leaf_key = SoftwareSigner.generate(KeyAlgorithm.EC_P384)
    issued = asyncio.run(issue_certificate_async(key, ca, leaf_key.public_key, "CN=leaf", dns_names=["a.example"]))
    plain = issue_certificate(key, ca, leaf_key.public_key, "CN=leaf", dns_names=["a.example"])
    assert list(issued.extensions) == list(plain.extensions) and issued.subject == plain.subject
    (tmp_path / "ca.pem").write_bytes(to_pem(ca))
    (tmp_path / "leaf.pem").write_bytes(to_pem(issued))
    assert openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "leaf.pem").returncode == 0
