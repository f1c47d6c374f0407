"""Bulk verification speed and memory: the fastpath against raw OpenSSL and the reference.

    .venv/bin/python benchmarks/bulk_verify.py --n 20000

Generates N registrar voucher-requests (each carrying the pledge's request as
prior-signed-voucher-request, as a MASA receives them) signed with P-256 keys
by `--signers` registrars under one owner CA, 1 % of them bad (bad signature,
altered content, unknown registrar, not CMS). Then prints, in one run: items/s
of the fastpath on 1 thread and on all threads, of the pure-Python reference,
the machine's raw ECDSA P-256 verify rate (`openssl speed -multi`) over the
same cores, the ratios, and the peak RSS of streaming the first two batches
(8192 items) against all N items from a file, each in its own process so the
peaks are comparable.

Goals: all-thread fastpath >= 0.85 x raw OpenSSL verify on the same cores, and
>= 8 x the reference; peak memory flat in N. With `--signers N` every item has
its own signer certificate, so each item costs two signature checks (the CMS
signature and the certificate's) and the ceiling is about 0.5 x raw verify.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import json
import multiprocessing
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from pledgeforge.fastpath import BulkVerifier, Result, default_threads, read_der_stream
from pledgeforge.fastpath.bulk import DEFAULT_BATCH
from pledgeforge.hsm.chain import load_certificates
from pledgeforge.hsm.cms import sign_cms, verify_cms
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, make_ca

# The published vectors are found as the tests find them (beside the checkout,
# or $PLEDGEFORGE_VECTORS).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from vectors import APPC  # noqa: E402

PRIOR = APPC / "vr_00-D0-E5-F2-00-02.der"
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


def _write_range(pki: Pki, first: int, end: int, path: Path) -> None:
    """Voucher-requests first..end-1 as concatenated DER; every 100th is bad, in four ways."""
    prior = base64.b64encode(PRIOR.read_bytes()).decode() if PRIOR.exists() else ""
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with open(path, "wb") as fh:
        for i in range(first, end):
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


_FORKED_PKI: Pki | None = None      # what forked generator processes sign with


def _write_part(job: tuple[int, int, str]) -> str:
    first, end, path = job
    _write_range(_FORKED_PKI, first, end, Path(path))
    return path


def write_batch(n: int, pki: Pki, path: Path, jobs: int) -> Path:
    """n voucher-requests as concatenated DER, signed by `jobs` forked processes
    (building CMS in pure Python is the slow part of the whole benchmark)."""
    global _FORKED_PKI
    _FORKED_PKI = pki
    step = -(-n // jobs)
    parts = [(first, min(n, first + step), f"{path}.part{k}")
             for k, first in enumerate(range(0, n, step))]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        done = pool.map(_write_part, parts)
    with open(path, "wb") as out:
        for part in done:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out)
            Path(part).unlink()
    return path


def write_prefix(path: Path, count: int, out: Path) -> Path:
    """The first `count` items of a concatenated-DER file."""
    with open(path, "rb") as fh:
        length = sum(len(item.data) for _, item in zip(range(count), read_der_stream(fh)))
        fh.seek(0)
        out.write_bytes(fh.read(length))
    return out


def read_items(path: Path) -> list[bytes]:
    with open(path, "rb") as fh:
        return [item.data for item in read_der_stream(fh)]


def fastpath_rate(items: list[bytes], anchors, threads: int) -> tuple[float, dict]:
    verifier = BulkVerifier(anchors, threads=threads)
    verifier.verify_batch(items[:64])                        # warm the libcrypto method caches
    verifier = BulkVerifier(anchors, threads=threads)
    counts: collections.Counter = collections.Counter()
    start = time.perf_counter()
    for first in range(0, len(items), verifier.batch_size):
        results = verifier.verify_batch(items[first:first + verifier.batch_size], first_index=first)
        counts.update(r.code for r in results)
    rate = len(items) / (time.perf_counter() - start)
    return rate, {code.name: counts[code] for code in Result if counts[code]}


def reference_rate(items: list[bytes], anchors) -> float:
    """The foundation's verifier (hsm.cms.verify_cms) alone: the agreement tests run it
    behind a DER-framing check (fastpath.reference), left out here so the ratio is
    against the verifier itself."""
    sample = items[:REFERENCE_SAMPLE]
    start = time.perf_counter()
    for der in sample:
        try:
            verify_cms(der, anchors)
        except Exception:  # noqa: BLE001 - failures are results here
            pass
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


def peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries the parent's
    peak into ru_maxrss across the (v)fork and exec that started this process."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stream_child(path: str, anchors: str, threads: int) -> None:
    verifier = BulkVerifier(load_certificates(Path(anchors).read_bytes()), threads=threads)
    count = sum(1 for _ in verifier.verify(path))
    print(count, peak_rss_kib())


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
        batch = write_batch(args.n, pki, tmp_path / "requests.der", default_threads())
        # Two full batches: past that, streaming memory should no longer depend on N.
        small = write_prefix(batch, min(args.n, 2 * DEFAULT_BATCH), tmp_path / "requests-prefix.der")
        print(f"generated {args.n} voucher-requests ({args.signers} signers, 1 % bad) "
              f"in {time.perf_counter() - started:.1f} s")
        small_items, small_rss = stream_peak_rss(small, anchors_pem, args.threads)
        big_items, big_rss = stream_peak_rss(batch, anchors_pem, args.threads)
        small_mib = small.stat().st_size / 2**20
        input_mib = batch.stat().st_size / 2**20

        items = read_items(batch)
        one, counts = fastpath_rate(items, anchors, 1)
        many, _ = fastpath_rate(items, anchors, args.threads)
        ref = reference_rate(items, anchors)
        raw_one = openssl_verify_rate(1, args.openssl_seconds)
        raw_many = openssl_verify_rate(args.threads, args.openssl_seconds)

    print(f"results: {counts}")
    print(f"fastpath, 1 thread          {one:12,.0f} items/s")
    print(f"fastpath, {args.threads} threads        {many:12,.0f} items/s")
    print(f"pure-Python reference       {ref:12,.0f} items/s   (hsm.cms.verify_cms)")
    print(f"openssl ECDSA P-256, 1 core  {raw_one:11,.0f} verify/s")
    print(f"openssl ECDSA P-256, {args.threads} cores {raw_many:11,.0f} verify/s")
    print(f"fastpath / raw OpenSSL, 1 thread:    {one / raw_one:5.2f}")
    print(f"fastpath / raw OpenSSL, all threads: {many / raw_many:5.2f}   (goal >= 0.85)")
    print(f"fastpath all threads / reference:    {many / ref:5.1f}x  (goal >= 8x)")
    print(f"peak RSS streaming {small_items:>8} items ({small_mib:6.1f} MiB input): "
          f"{small_rss / 1024:7.1f} MiB")
    print(f"peak RSS streaming {big_items:>8} items ({input_mib:6.1f} MiB input): "
          f"{big_rss / 1024:7.1f} MiB   (goal: flat in N)")
    assert sum(counts.values()) == args.n
    assert set(counts) <= {r.name for r in Result}


if __name__ == "__main__":
    main()
