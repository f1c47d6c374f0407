"""The keys the service signs with, and the processes that do the signing.

A PKCS#11 module such as SoftHSM2 signs one call at a time per process
(python-pkcs11 runs it unlocked, so calls into one instance are serialised),
so one process cannot sign in parallel. A PKCS#11 key is therefore served by
`workers_per_token` module hosts (hsm/pkcs11_host.py): child processes with
the key's module environment, each with its own session on the token. A
signature request takes an idle worker, sends it every digest it has in one
round trip (`sign_many`), and gives the worker back. A worker that dies or
hangs is replaced by the host on its next call, and the call is tried once
more; a session the token lost is reopened inside the worker
(pkcs11_backend).

Other keys (a TPM) are opened through the key-store registry and sign with
their own executor, one digest at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.hsm.chain import load_certificate_file, load_certificate_files
from pledgeforge.hsm.errors import KeyStoreError, ModuleHostError
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.keyuri import Pkcs11Uri
from pledgeforge.hsm.pkcs11_host import HostedModule
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, Signer, check_digest_length

from .config import KeySettings

log = logging.getLogger("pledgeforge.keyserver")


class WorkerSigner(Signer):
    """A PKCS#11 key signed with by a pool of module-host processes."""

    def __init__(self, uri: Pkcs11Uri, workers: int):
        if uri.token is None:
            raise KeyStoreError("the pkcs11 URI names no token (add token=LABEL)")
        self.uri = uri
        self.description = f"{uri} ({workers} worker process(es))"
        path = os.path.realpath(uri.module_path)
        self.hosts = [HostedModule(path, dict(uri.module_env)) for _ in range(workers)]
        self._ref = (uri.token, uri.object, uri.id)
        # One at a time: SoftHSM2 rewrites a token's file at login, and workers
        # logging in together would read it half-written.
        spki = None
        for host in self.hosts:
            spki = host.public_key(uri.token, uri.pin(), uri.object, uri.id)
        self._public_key = serialization.load_der_public_key(spki)
        self._public_key_der = self._public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._algorithm = KeyAlgorithm.of_public_key(self._public_key)
        self._idle: asyncio.Queue | None = None

    @property
    def public_key(self):
        return self._public_key

    @property
    def algorithm(self):
        return self._algorithm

    def public_key_der(self) -> bytes:
        return self._public_key_der   # asked for by every SignedData built with this key

    def worker_pids(self) -> list[int]:
        """The process ids of the running workers (for operators and tests)."""
        return [host._proc.pid for host in self.hosts if host._proc is not None and host._proc.poll() is None]

    def _pad(self, pad: Padding) -> str:
        return Padding.PKCS1V15.value if self._algorithm.is_ec else pad.value

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        check_digest_length(dgst, hash_name)
        token, label, key_id = self._ref
        return self.hosts[0].sign(token, self.uri.pin(), label, key_id, dgst, hash_name, self._pad(pad))

    async def sign_digest_async(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        return (await self.sign_digests_async([dgst], hash_name, pad))[0]

    async def sign_digests_async(self, digests: Sequence[bytes], hash_name: str = "sha256",
                                 pad: Padding = Padding.PKCS1V15) -> list[bytes]:
        """One signature per digest, made by the next idle worker in one round trip."""
        for dgst in digests:
            check_digest_length(dgst, hash_name)
        if self._idle is None:
            self._idle = asyncio.Queue()
            for host in self.hosts:
                self._idle.put_nowait(host)
        host = await self._idle.get()
        token, label, key_id = self._ref
        try:
            for attempt in (1, 2):
                try:
                    return await host.sign_many_async(token, self.uri.pin(), label, key_id,
                                                      list(digests), hash_name, self._pad(pad))
                except ModuleHostError as exc:
                    if attempt == 2:
                        raise
                    log.warning("signing worker for %s failed (%s); starting a new one", self.uri, exc)
        finally:
            self._idle.put_nowait(host)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for host in self.hosts:
            host.close()
            host.executor.shutdown(wait=False)


class SequentialSigner:
    """Gives any Signer the batch form: its digests signed one after the other."""

    def __init__(self, signer: Signer):
        self.signer = signer

    async def sign_digests_async(self, digests, hash_name="sha256", pad=Padding.PKCS1V15):
        return [await self.signer.sign_digest_async(d, hash_name, pad) for d in digests]


@dataclass
class ServedKey:
    """A key the service holds: its signer, certificate and chain."""

    name: str
    signer: Signer
    cert: x509.Certificate
    chain: list[x509.Certificate]

    async def sign_digests_async(self, digests, hash_name, pad) -> list[bytes]:
        batch = self.signer if isinstance(self.signer, WorkerSigner) else SequentialSigner(self.signer)
        return await batch.sign_digests_async(digests, hash_name, pad)

    def close(self) -> None:
        self.signer.close()


def open_key(settings: KeySettings, workers: int) -> ServedKey:
    uri = settings.uri
    if isinstance(uri, Pkcs11Uri):
        signer: Signer = WorkerSigner(uri, workers)
    else:
        signer = open_signer(uri)
    cert = load_certificate_file(str(settings.cert), f"certificate of key {settings.name}")[0]
    if cert.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) \
            != signer.public_key_der():
        signer.close()
        raise KeyStoreError(f"key {settings.name}: {settings.cert} is not the certificate of {uri}")
    chain = load_certificate_files(settings.chain, f"chain of key {settings.name}")
    return ServedKey(settings.name, signer, cert, chain)
