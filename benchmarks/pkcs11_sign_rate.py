"""What a module host costs: SoftHSM2 ECDSA P-256 signatures per second, in-process and hosted.

    .venv/bin/python benchmarks/pkcs11_sign_rate.py --n 5000 --rounds 3

A key whose URI carries `x-module-env=SOFTHSM2_CONF=...` is signed with in
this process when the process environment already says the same, and in a
module host (a child process with that environment, one round trip per
signature) otherwise. This script makes a SoftHSM2 instance and a P-256 key,
then measures in fresh processes, one after the other so they do not share
the cores:

- in-process: sign_digest with the module loaded in the measuring process;
- hosted: the same key from a process whose environment lacks SOFTHSM2_CONF;
- the async form of each (sign_digest_async from an event loop, as the
  servers sign), with `--concurrency` signatures in flight.

The four measurements are repeated `--rounds` times, interleaved, and the
best rate of each is kept, so that other work on the machine skews the
ratios less. It prints signatures per second and each rate as a ratio of
the in-process one. Goal: hosted sync >= 0.4 x in-process sync (the host
adds a socket round trip and two process wake-ups to a ~100 us signature;
on a busy machine the wake-ups dominate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pledgeforge.hsm import keystore
from pledgeforge.hsm.softhsm import SoftHsm

PIN = "1234"


def measure(uri: str, n: int, mode: str, concurrency: int) -> dict:
    """Run in a child: sign n digests, report signatures per second and where the module ran."""
    signer = keystore.open_signer(uri)
    where = "in-process" if signer.in_process else "hosted"
    digest = bytes(range(32))
    signer.sign_digest(digest)  # warm: session, key handle, host started
    if mode == "sync":
        start = time.perf_counter()
        for _ in range(n):
            signer.sign_digest(digest)
        elapsed = time.perf_counter() - start
    else:
        async def run() -> float:
            semaphore = asyncio.Semaphore(concurrency)

            async def one():
                async with semaphore:
                    await signer.sign_digest_async(digest)

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            return time.perf_counter() - start

        elapsed = asyncio.run(run())
    return {"where": where, "mode": mode, "per_s": n / elapsed}


def _child(uri: str, n: int, mode: str, concurrency: int, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", uri, "--n", str(n), "--mode", mode,
                          "--concurrency", str(concurrency)],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="signatures per measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="async signatures in flight")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best counts")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.mode, args.concurrency)))
        return 0

    with tempfile.TemporaryDirectory(prefix="pledgeforge-bench-") as tmp:
        hsm = SoftHsm(Path(tmp) / "softhsm").ensure()
        hsm.ensure_token("bench", PIN, "123456")
        pin_file = Path(tmp) / "pin"
        pin_file.write_text(PIN + "\n")
        uri = hsm.token_uri("bench", pin_file=pin_file).with_object("p256")
        keystore.generate_key(uri, "ec-p256")
        envs = {"in-process": hsm.env(),
                "hosted": {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}}
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):
            for mode in ("sync", "async"):
                for where, env in envs.items():
                    result = _child(str(uri), args.n, mode, args.concurrency, env)
                    if result["where"] != where:
                        raise SystemExit(f"the {where} measurement ran {result['where']}")
                    best[(where, mode)] = max(best.get((where, mode), 0.0), result["per_s"])
    base = best[("in-process", "sync")]
    print(f"SoftHSM2 ECDSA P-256, {args.n} signatures each, best of {args.rounds} "
          f"(async: {args.concurrency} in flight)")
    for (where, mode), per_s in best.items():
        print(f"  {where:<11} {mode:<6} {per_s:>8.0f} signatures/s   {per_s / base:.2f} x in-process sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
