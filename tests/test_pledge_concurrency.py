"""32 `pledge bootstrap` processes at once, every key on the lab's one `pledges` SoftHSM token.

Each process generates its IDevID key, logs in, signs and generates its LDevID key on the
same file-backed token while the others do the same (hsm/store_lock.py keeps them apart;
benchmarks/softhsm_shared_token.py shows what happens without it). All of them must enroll,
and the owner registrar must have every enrollstatus.
"""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from clirunner import PLEDGEFORGE, openssl

pytestmark = pytest.mark.slow

PLEDGES = 32


def test_32_concurrent_bootstraps_on_one_token_all_enroll(lab):
    tag = secrets.token_hex(2).upper()
    serials = [f"CC-{tag}-{i:02d}" for i in range(PLEDGES)]
    # Generous per-request timeouts: 32 pledges share two cores here, and a timeout would be a
    # retry (or a restart), not the failure this test looks for.
    procs = [subprocess.Popen([PLEDGEFORGE, "pledge", "bootstrap", "--lab", str(lab.dir), "--serial", serial,
                               "--keystore", "pkcs11", "--timeout", "60", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for serial in serials]
    outcomes = []
    for serial, proc in zip(serials, procs):
        out, err = proc.communicate(timeout=1800)
        outcomes.append((serial, proc.returncode, out, err))
    failed = [f"{serial}: exit {code}: {(out.decode().splitlines() or [''])[-1][:300]} {err.decode()[-300:]}"
              for serial, code, out, err in outcomes if code != 0]
    assert not failed, "\n".join(failed)

    summaries = [json.loads(out.decode().splitlines()[-1]) for _, _, out, _ in outcomes]
    assert all(s["state"] == "enrolled" for s in summaries)
    for summary in summaries:
        verify = openssl("verify", "-CAfile", lab.pki("owner-ca"), summary["ldevid"])
        assert verify.returncode == 0, verify.stdout + verify.stderr
    # The owner registrar heard every pledge's enrollstatus about its LDevID.
    store = lab.owner_store()
    for serial in serials:
        assert [i.state for i in store.ldevids(serial)] == ["confirmed"], serial
    # Every key is on the one token, each pledge's IDevID and LDevID halves.
    listing = subprocess.run(
        ["pkcs11-tool", "--module", lab.softhsm.module_path, "--token-label", "pledges", "--login",
         "--pin", lab.pin_file("pledges").read_text().strip(), "--list-objects"],
        env=lab.softhsm.env(), capture_output=True, text=True, timeout=120, check=True).stdout
    labels = [line.split(":", 1)[1].strip() for line in listing.splitlines() if line.strip().startswith("label:")]
    for serial in serials:
        assert labels.count(f"idevid-{serial}") == 2 and labels.count(f"ldevid-{serial}-a") == 2, serial
