"""Bulk verification: batches of items through the libcrypto extension.

    verifier = BulkVerifier(anchors=[ca_cert])
    for result in verifier.verify_stream("requests.der"):
        ...

Items are verified in batches of `batch_size`; within a batch every distinct
certificate is parsed and checked once and the work is spread over `threads`
OS threads with the GIL released. Between batches only certificates still in
use are kept, so memory is bounded by the batch, not by the input.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Iterable, Iterator, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from . import _verify
from ._verify import ItemResult
from .sources import Item, items_from

DEFAULT_BATCH = 4096


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _der(cert: x509.Certificate | bytes) -> bytes:
    return bytes(cert) if isinstance(cert, (bytes, bytearray)) else cert.public_bytes(Encoding.DER)


def _micros(at_time: dt.datetime | None) -> int:
    when = at_time or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


class BulkVerifier:
    """Verifies CMS SignedData (vouchers, voucher-requests) or bare certificates in bulk.

    `anchors` and `extra_certs` are cryptography certificates or DER bytes;
    `at_time` defaults to the moment the verifier is made. Results agree item by
    item with pledgeforge.fastpath.reference (hsm.cms.verify_cms and
    hsm.chain.build_chain on DER items).
    """

    def __init__(self, anchors: Sequence[x509.Certificate | bytes],
                 extra_certs: Sequence[x509.Certificate | bytes] = (), *,
                 threads: int | None = None, at_time: dt.datetime | None = None,
                 check_time: bool = True, batch_size: int = DEFAULT_BATCH):
        self.threads = default_threads() if threads is None else threads
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self._engine = _verify.Engine([_der(c) for c in anchors], [_der(c) for c in extra_certs],
                                      self.threads, check_time, _micros(at_time))

    @property
    def stats(self) -> dict:
        """Certificates parsed and certificate signatures checked so far (each once per batch)."""
        return self._engine.stats

    def verify_batch(self, items: Sequence[bytes], *, certificates: bool = False,
                     first_index: int = 0) -> list[ItemResult]:
        """One batch of DER items, in order."""
        return self._engine.verify([bytes(i) if type(i) is not bytes else i for i in items],
                                   certificates, first_index)

    def verify_items(self, items: Iterable[Item], *, certificates: bool = False) -> Iterator[ItemResult]:
        """Results for a stream of items, in order, verified batch by batch."""
        batch: list[Item] = []
        index = 0
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from self._run(batch, certificates, index)
                index += len(batch)
                batch = []
        if batch:
            yield from self._run(batch, certificates, index)

    def _run(self, batch: list[Item], certificates: bool, index: int) -> list[ItemResult]:
        return self._engine.verify([i.data for i in batch], certificates, index,
                                   [i.name for i in batch], [i.offset for i in batch])

    def verify(self, source, *, certificates: bool = False) -> Iterator[ItemResult]:
        """Results for a list of bytes, a directory, or a file of concatenated DER."""
        return self.verify_items(items_from(source, certificates=certificates),
                                 certificates=certificates)


def verify_bulk(source, anchors: Sequence[x509.Certificate | bytes], *,
                extra_certs: Sequence[x509.Certificate | bytes] = (), threads: int | None = None,
                at_time: dt.datetime | None = None, check_time: bool = True,
                certificates: bool = False, batch_size: int = DEFAULT_BATCH) -> Iterator[ItemResult]:
    """Verify every item of `source` (see BulkVerifier.verify)."""
    verifier = BulkVerifier(anchors, extra_certs, threads=threads, at_time=at_time,
                            check_time=check_time, batch_size=batch_size)
    return verifier.verify(source, certificates=certificates)
