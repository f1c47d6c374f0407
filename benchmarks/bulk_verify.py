"""Bulk verification speed and memory: the fastpath against raw OpenSSL and the reference.

    .venv/bin/python benchmarks/bulk_verify.py --n 20000

Generates N registrar voucher-requests (each carrying the pledge's request as
prior-signed-voucher-request, as a MASA receives them) signed with P-256 keys
by `--signers` registrars under one owner CA, 1 % of them bad (bad signature,
altered content, unknown registrar, truncated). Then prints, in one run: items/s
of the fastpath on 1 thread and on all threads, of the pure-Python reference,
the machine's raw ECDSA P-256 verify rate (`openssl speed -multi`) over the
same cores, the ratios, and the peak RSS of streaming 1k items against N items
from a file (each in its own process, so the peaks are comparable).

Goals: all-thread fastpath >= 0.85 x raw OpenSSL verify on the same cores, and
>= 8 x the reference; peak memory flat in N. With `--signers N` every item has
its own signer certificate, so each item costs two signature checks (the CMS
signature and the certificate's) and the ceiling is about 0.5 x raw verify.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from pledgeforge.fastpath import BulkVerifier, Result, default_threads
from pledgeforge.fastpath.reference import verify_cms_item
from pledgeforge.hsm.chain import load_certificates
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, make_ca

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
PRIOR = VECTORS / "rfc8995-appendixC" / "vr_00-D0-E5-F2-00-02.der"
REFERENCE_SAMPLE = 1500


class Pki:
    """An owner CA, its registrars, and a registrar under a CA nobody trusts."""

    def __init__(self, signers: int):
        ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.ca = make_ca(ca_key, "CN=bench owner CA")
        self.registrars = []
        for i in range(max(1, signers)):
            key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
            self.registrars.append((key, issue_certificate(ca_key, self.ca, key.public_key,
                                                           f"CN=registrar {i}")))
        other_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        other_ca = make_ca(other_key, "CN=unknown owner CA")
        self.stranger = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.stranger_cert = issue_certificate(other_key, other_ca, self.stranger.public_key,
                                               "CN=registrar elsewhere")


def write_batch(n: int, pki: Pki, path: Path) -> Path:
    """n voucher-requests as concatenated DER; every 100th is bad, in four ways."""
    prior = base64.b64encode(PRIOR.read_bytes()).decode() if PRIOR.exists() else ""
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with open(path, "wb") as fh:
        for i in range(n):
            body = json.dumps({"ietf-voucher-request:voucher": {
                "assertion": "proximity", "serial-number": f"PF-{i:08d}",
                "nonce": base64.b64encode(i.to_bytes(16, "big")).decode(),
                "created-on": (when + dt.timedelta(seconds=i)).isoformat(),
                "prior-signed-voucher-request": prior}}).encode()
            key, cert = pki.registrars[i % len(pki.registrars)]
            bad = i % 100 == 99
            kind = (i // 100) % 4
            if bad and kind == 2:
                key, cert = pki.stranger, pki.stranger_cert
            der = bytearray(sign_cms(body, key, cert, content_type="voucher", signing_time=when))
            if bad and kind == 0:
                der[-5] ^= 0x01                     # inside the signature
            elif bad and kind == 1:
                der[der.index(b"PF-") + 3] ^= 0x01  # the content
            elif bad and kind == 3:
                der[4] ^= 0x03                      # contentType OID tag: not CMS any more
            fh.write(der)
    return path


def read_items(path: Path) -> list[bytes]:
    from pledgeforge.fastpath import read_der_stream

    with open(path, "rb") as fh:
        return [item.data for item in read_der_stream(fh)]


def fastpath_rate(items: list[bytes], anchors, threads: int) -> tuple[float, dict]:
    verifier = BulkVerifier(anchors, threads=threads)
    verifier.verify_batch(items[:64])                        # warm the libcrypto method caches
    verifier = BulkVerifier(anchors, threads=threads)
    start = time.perf_counter()
    counts: dict = {}
    for first in range(0, len(items), verifier.batch_size):
        for r in verifier.verify_batch(items[first:first + verifier.batch_size], first_index=first):
            counts[r.code.name] = counts.get(r.code.name, 0) + 1
    return len(items) / (time.perf_counter() - start), counts


def reference_rate(items: list[bytes], anchors) -> float:
    sample = items[:REFERENCE_SAMPLE]
    start = time.perf_counter()
    for der in sample:
        verify_cms_item(der, anchors)
    return len(sample) / (time.perf_counter() - start)


def openssl_verify_rate(threads: int, seconds: int) -> float:
    """ECDSA P-256 verifies per second over `threads` processes (`openssl speed -multi`)."""
    cmd = ["openssl", "speed", "-seconds", str(seconds)]
    if threads > 1:
        cmd += ["-multi", str(threads)]
    out = subprocess.run(cmd + ["ecdsap256"], capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if "nistp256" in line and "ecdsa" in line]
    return float(rows[-1].split()[-1])


def stream_peak_rss(path: Path, anchors: Path, threads: int) -> tuple[int, int]:
    """(items, peak RSS in KiB) of streaming `path` through the fastpath in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--stream-child", str(path), "--anchors",
                          str(anchors), "--threads", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    items, rss = out.split()
    return int(items), int(rss)


def stream_child(path: str, anchors: str, threads: int) -> None:
    verifier = BulkVerifier(load_certificates(Path(anchors).read_bytes()), threads=threads)
    count = sum(1 for _ in verifier.verify(path))
    print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="voucher-requests to verify")
    parser.add_argument("--signers", type=int, default=16,
                        help="distinct registrar certificates (N: one per item)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="all cores by default")
    parser.add_argument("--openssl-seconds", type=int, default=3)
    parser.add_argument("--stream-child", help=argparse.SUPPRESS)
    parser.add_argument("--anchors", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        stream_child(args.stream_child, args.anchors, args.threads)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        pki = Pki(args.signers)
        anchors = [pki.ca]
        anchors_pem = tmp_path / "anchors.pem"
        anchors_pem.write_bytes(pki.ca.public_bytes(Encoding.PEM))
        batch = write_batch(args.n, pki, tmp_path / "requests.der")
        small = write_batch(min(1000, args.n), pki, tmp_path / "requests-1k.der")
        print(f"generated {args.n} voucher-requests ({args.signers} signers, 1 % bad) "
              f"in {time.perf_counter() - started:.1f} s")
        small_items, small_rss = stream_peak_rss(small, anchors_pem, args.threads)
        big_items, big_rss = stream_peak_rss(batch, anchors_pem, args.threads)

        items = read_items(batch)
        input_mib = sum(map(len, items)) / 2**20
        one, counts = fastpath_rate(items, anchors, 1)
        many, _ = fastpath_rate(items, anchors, args.threads)
        ref = reference_rate(items, anchors)
        raw_one = openssl_verify_rate(1, args.openssl_seconds)
        raw_many = openssl_verify_rate(args.threads, args.openssl_seconds)

    print(f"results: {counts}")
    print(f"fastpath, 1 thread          {one:12,.0f} items/s")
    print(f"fastpath, {args.threads} threads        {many:12,.0f} items/s")
    print(f"pure-Python reference       {ref:12,.0f} items/s")
    print(f"openssl ECDSA P-256, 1 core  {raw_one:11,.0f} verify/s")
    print(f"openssl ECDSA P-256, {args.threads} cores {raw_many:11,.0f} verify/s")
    print(f"fastpath / raw OpenSSL, 1 thread:    {one / raw_one:5.2f}")
    print(f"fastpath / raw OpenSSL, all threads: {many / raw_many:5.2f}   (goal >= 0.85)")
    print(f"fastpath all threads / reference:    {many / ref:5.1f}x  (goal >= 8x)")
    print(f"peak RSS streaming {small_items} items: {small_rss / 1024:7.1f} MiB; "
          f"{big_items} items: {big_rss / 1024:7.1f} MiB (input file {input_mib:.1f} MiB)")
    assert counts.get("OK", 0) + sum(v for k, v in counts.items() if k != "OK") == args.n
    assert set(counts) <= {r.name for r in Result}


if __name__ == "__main__":
    main()
