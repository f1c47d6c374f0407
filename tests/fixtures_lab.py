"""Lab fixture: a MASA, cloud and owner registrar running in a temp dir, one lab per test module.

Starting a lab (keys, certificates, three server processes) takes a few
seconds, so a module shares one; each test provisions its own pledges in it.
"""

from __future__ import annotations

import pytest

from registrar_standin import running_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    with running_lab(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as lab:
        yield lab
