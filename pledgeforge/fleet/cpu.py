"""CPU seconds of processes, read from /proc: the fleet's own, its key stores', the lab's servers'.

A fleet measures what each side spends on an enrollment: the fleet process
(TLS, CMS, the pledge machine; `time.process_time` covers all its threads), its
children (the PKCS#11 module host, the swtpm processes: the pledges' hardware),
and each of the lab's server processes (utime + stime of /proc/PID/stat, which
includes the SoftHSM module they load in-process). A reading is taken before and
after the timed phase; the difference divided by the enrollments is the figure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text.rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds `pid` has used so far; None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the name: state (3), ppid (4), ... utime (14), stime (15), counted from 1.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds used so far: this process, its children (by PID), and named processes."""

    own: float
    children: dict[int, float]
    named: dict[str, float | None]


def read_cpu(named_pids: dict[str, int | None]) -> CpuReading:
    """A reading now. The named processes are not counted among the children, which they are
    when this process started them (a lab brought up in process)."""
    named_set = set(named_pids.values())
    kids = {pid: cpu for pid in children(os.getpid())
            if pid not in named_set and (cpu := process_cpu_seconds(pid)) is not None}
    named = {name: process_cpu_seconds(pid) if pid else None for name, pid in named_pids.items()}
    return CpuReading(time.process_time(), kids, named)


def cpu_used(before: CpuReading, after: CpuReading) -> dict[str, float | None]:
    """CPU seconds between two readings: "fleet" (this process), "fleet_key_stores" (children
    alive at both readings, the named ones aside), and each named process (None when it was
    not readable)."""
    used: dict[str, float | None] = {
        "fleet": after.own - before.own,
        "fleet_key_stores": sum(after.children[pid] - cpu for pid, cpu in before.children.items()
                                if pid in after.children),
    }
    for name, start in before.named.items():
        end = after.named.get(name)
        used[name] = None if start is None or end is None else end - start
    return used


__all__ = ["process_cpu_seconds", "children", "CpuReading", "read_cpu", "cpu_used"]
