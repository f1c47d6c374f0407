"""Pledge processes on one SoftHSM2 token at once: what fails, and what each remedy costs.

    .venv/bin/python benchmarks/softhsm_shared_token.py --processes 32 --rounds 2

Each worker is a process that does what a pledge does to its key store:
load the module (C_Initialize reads every token), log in, generate a P-256
key pair, sign five digests, delete the key. `--processes` workers start at
once, on one token of one SoftHSM2 instance (file object store), `--rounds`
times per remedy, interleaved:

- unlocked: python-pkcs11 straight onto the module, as the backend did before
  it took the store lock (and as any tool does);
- retry: the same, each step retried on CKR_GENERAL_ERROR or a token that
  cannot be read (re-initialising the module to find the token again), at
  most 8 times with a backoff of 10 ms doubling to 640 ms;
- store lock: through pledgeforge's key store (hsm/store_lock.py: every call
  into the module holds an exclusive flock on the token directory's lock file);
- token per pledge: unlocked, but each worker first creates a token of its
  own with softhsm2-util (what a token per pledge costs at provisioning).

It prints, per remedy, the failed workers and the wall time of a round as a
ratio of the store lock's. Goal: the store lock loses no worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

PIN, SO_PIN = "1234", "123456"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
RETRIES = 8
REMEDIES = ("unlocked", "retry", "store lock", "token per pledge")


def _raw_worker(token: str, label: str, retry: bool) -> None:
    """One pledge's key operations straight on the module (SOFTHSM2_CONF is in our environment)."""
    import pkcs11
    import pkcs11.exceptions as p11err
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    pause = threading.Event()

    def step(what, call, before_retry=lambda: None):
        for attempt in range(RETRIES if retry else 1):
            try:
                return call()
            except (p11err.GeneralError, p11err.TokenNotRecognised, p11err.NoSuchToken) as exc:
                if attempt == (RETRIES if retry else 1) - 1:
                    raise RuntimeError(f"{what}: {type(exc).__name__}") from None
                pause.wait(0.01 * 2 ** min(attempt, 6))
                before_retry()

    lib = step("C_Initialize", lambda: pkcs11.lib(MODULE))
    # SoftHSM2 lists tokens at C_Initialize and leaves out one it could not read
    # then: only a new C_Initialize finds it again.
    tok = step("find token", lambda: lib.get_token(token_label=token), lib.reinitialize)
    session = step("login", lambda: tok.open(user_pin=PIN, rw=True))
    template = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: label.encode()}
    step("generate", lambda: session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
    ).generate_keypair(store=True, public_template=template,
                       private_template={**template, Attribute.SENSITIVE: True, Attribute.SIGN: True}))
    key = step("find key", lambda: session.get_key(ObjectClass.PRIVATE_KEY, label=label))
    for _ in range(5):
        step("sign", lambda: key.sign(bytes(32), mechanism=Mechanism.ECDSA))
    for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        step("delete", lambda: session.get_key(cls, label=label).destroy())


def _locked_worker(uri: str) -> None:
    from pledgeforge.hsm import keystore

    signer = keystore.generate_key(uri, "ec-p256")
    for _ in range(5):
        signer.sign_digest(bytes(32))
    keystore.delete_key(uri)


def worker(args) -> int:
    try:
        if args.remedy == "store lock":
            _locked_worker(args.uri)
        else:
            if args.remedy == "token per pledge":
                subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", args.label,
                                "--so-pin", SO_PIN, "--pin", PIN], check=True, capture_output=True,
                               timeout=120)
            _raw_worker(args.label if args.remedy == "token per pledge" else args.token, args.label,
                        args.remedy == "retry")
    except Exception as exc:  # reported to the parent, which counts it
        print(json.dumps({"failed": f"{type(exc).__name__}: {exc}"[:120]}))
        return 1
    print(json.dumps({"failed": None}))
    return 0


def round_of(remedy: str, n: int, hsm, uri, token: str, round_no: int) -> tuple[float, list[str]]:
    env = hsm.env()
    start = time.perf_counter()
    procs = []
    for i in range(n):
        label = f"w{round_no}-{remedy.replace(' ', '')}-{i}"
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", remedy, "--label", label, "--token", token,
             "--uri", str(uri.with_object(label))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        lines = out.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"failed": (err.strip().splitlines() or ["crash"])[-1]}
        if result["failed"]:
            failures.append(result["failed"])
    return time.perf_counter() - start, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=32, help="workers started at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per remedy, interleaved")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--remedy", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.remedy = args.worker
        return worker(args)

    from pledgeforge.hsm.softhsm import SoftHsm

    with tempfile.TemporaryDirectory(prefix="pledgeforge-bench-") as tmp:
        hsm = SoftHsm(Path(tmp) / "softhsm").ensure()
        for label in ("vendor", "owner", "pledges"):  # a lab's instance holds several tokens
            hsm.ensure_token(label, PIN, SO_PIN)
        pin_file = Path(tmp) / "pin"
        pin_file.write_text(PIN + "\n")
        uri = hsm.token_uri("pledges", pin_file=pin_file)
        times: dict[str, list[float]] = {r: [] for r in REMEDIES}
        failures: dict[str, list[str]] = {r: [] for r in REMEDIES}
        for round_no in range(args.rounds):
            for remedy in REMEDIES:
                elapsed, failed = round_of(remedy, args.processes, hsm, uri, "pledges", round_no)
                times[remedy].append(elapsed)
                failures[remedy] += failed
    base = min(times["store lock"])
    print(f"SoftHSM2 file store, {args.processes} processes at once on one token, "
          f"{args.rounds} round(s) each (best round's time)")
    for remedy in REMEDIES:
        total = args.processes * args.rounds
        best = min(times[remedy])
        print(f"  {remedy:<17} {len(failures[remedy]):>3}/{total} workers failed   "
              f"{best:6.1f} s   {best / base:.2f} x store lock")
        for reason, count in Counter(failures[remedy]).most_common(3):
            print(f"      {count} x {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
