"""Several boards at once: a rack of consoles provisioned in parallel.

Each board gets a thread of its own: a board's time goes mostly to its
serial line and its key store, so boards wait side by side, and the station
only signs in between (the CA's token serialises its own calls). The results
come back in the order of the ports; `on_done` hears of each board as it
finishes (for one JSON line per board as it happens), `progress(port, step,
done, total)` of each step (for a progress bar per board).
"""

from __future__ import annotations

import glob
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from pledgeforge.errors import UsageError

from .provisioner import BoardResult, Station

_GLOB_CHARS = set("*?[")


def expand_ports(ports: Iterable[str]) -> list[str]:
    """The ports to provision: URLs and paths as given, globs expanded (sorted), duplicates
    dropped; a glob matching nothing is an error."""
    out: list[str] = []
    for port in ports:
        if "://" not in port and _GLOB_CHARS & set(port):
            matches = sorted(glob.glob(port))
            if not matches:
                raise UsageError(f"--port {port} matches no console")
            out += matches
        else:
            out.append(port)
    return list(dict.fromkeys(out))


def provision_rack(station: Station, ports: list[str], *,
                   progress: Callable[[str, str, int, int], None] | None = None,
                   on_done: Callable[[BoardResult], None] | None = None) -> list[BoardResult]:
    """Provision every board in `ports` at once."""
    report = progress or (lambda port, step, done, total: None)

    def one(port: str) -> BoardResult:
        result = station.provision(port, lambda step, done, total: report(port, step, done, total))
        if on_done is not None:
            on_done(result)
        return result

    if len(ports) == 1:
        return [one(ports[0])]
    with ThreadPoolExecutor(max_workers=len(ports), thread_name_prefix="station") as pool:
        return list(pool.map(one, ports))


__all__ = ["expand_ports", "provision_rack"]
