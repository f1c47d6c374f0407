"""Lab fixture: a MASA, cloud and owner registrar running in a temp dir, one lab per test
process (each pytest-xdist worker has its own).

Starting a lab (keys, certificates, three server processes) costs about two
CPU-seconds, so the modules a worker runs share one. That holds because every
test provisions pledges of its own (fresh serial numbers) and puts back what it
changes for everyone (the cloud's overload switch, a stopped server) before it
ends; a module that needs a lab in another shape starts its own.
"""

from __future__ import annotations

import pytest

from registrar_standin import running_lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab")) as lab:
        yield lab
