"""Starting, probing and stopping the lab's servers.

Each server runs as a detached `python -m MODULE --config FILE` process on
loopback, in a session of its own (it outlives `lab up` and ignores its
terminal), logging to logs/ROLE.log. It counts as started once it answers its
health check over TLS. The servers a lab runs are the roles in lab.json's
"servers"; what each role runs is its `ServerKind`, so another server (the
signing service, signing_service.py) joins the lab by registering its kind
and being listed there. A kind of an earlier stage is started, and answers,
before the others start (the others open their keys through the signing
service); a kind may also act once it answers, before it is stopped, and add
to what `lab status` shows of it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pledgeforge.errors import PledgeforgeError
# Not from registrar.web, which would import aiohttp into every process that uses a lab.
from pledgeforge.hsm.wellknown import HEALTH_PATH

from .layout import HOST, LabError, LabLayout
from .processes import STOP_TIMEOUT_S, log_tail, server_alive, stop_process

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerKind:
    """What a lab server role runs and how the lab checks that it answers."""

    role: str
    #: the certificate in pki/ that its TLS server certificate chains to
    tls_anchor: str
    module: str = "pledgeforge.registrar.server"
    #: the TLS client identity (tls/NAME.crt and .key) its health check presents; None: none
    #: (the cloud registrar wants a manufacturer-issued one, which another server may refuse)
    probe_identity: str | None = "probe"
    #: servers of an earlier stage are started, and answer, before the next stage starts
    stage: int = 1
    #: called once it answers (or is found running), before the next stage starts
    on_started: Callable[[LabLayout], None] | None = None
    #: called before it is stopped; returns the names of the other processes it stopped
    on_stopping: Callable[[LabLayout, float], list[str]] | None = None
    #: what `lab status` shows of it besides its process
    describe: Callable[[LabLayout], dict] | None = None

    def argv(self, config: Path) -> list[str]:
        return [sys.executable, "-m", self.module, "--config", str(config)]


SERVER_KINDS: dict[str, ServerKind] = {}


def register_server_kind(kind: ServerKind) -> None:
    SERVER_KINDS[kind.role] = kind


for _kind in (ServerKind("masa", "web-ca"), ServerKind("owner", "owner-ca"), ServerKind("cloud", "web-ca")):
    register_server_kind(_kind)

#: the servers every lab runs, in the order they are started and shown
ROLES = ("masa", "owner", "cloud")


@dataclass
class UpReport:
    created: bool = False
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)


def roles(lab: LabLayout) -> list[str]:
    """The lab's servers in the order they start: by stage, within one the standard ones
    first, then any other listed in lab.json."""
    listed = lab.data["servers"]
    ordered = [r for r in ROLES if r in listed] + sorted(r for r in listed if r not in ROLES)
    return sorted(ordered, key=lambda role: _kind(role).stage)


def _kind(role: str) -> ServerKind:
    try:
        return SERVER_KINDS[role]
    except KeyError:
        raise LabError(f"this lab lists a {role} server, which this pledgeforge cannot run "
                       f"(it runs {', '.join(sorted(SERVER_KINDS))})") from None


def alive(lab: LabLayout, role: str) -> bool:
    return server_alive(lab.pid(role), lab.config_path(role), _kind(role).module)


def start(lab: LabLayout, report: UpReport, timeout_s: float = START_TIMEOUT_S) -> None:
    """Start every server that is not running, stage by stage; return once all answer (or stop
    those started, if one does not)."""
    for stage in sorted({_kind(role).stage for role in roles(lab)}):
        members = [role for role in roles(lab) if _kind(role).stage == stage]
        pending: dict[str, subprocess.Popen] = {}
        for role in members:
            if alive(lab, role):
                report.already_running.append(role)
                continue
            pending[role] = _spawn(lab, role)
            lab.data["servers"][role]["pid"] = pending[role].pid
        try:
            _wait_answering(lab, pending, timeout_s)
            for role in members:
                if _kind(role).on_started is not None:
                    _kind(role).on_started(lab)
        except PledgeforgeError:
            for role, proc in pending.items():
                stop_process(proc.pid)
                lab.data["servers"][role]["pid"] = None
            lab.save()
            raise
        report.started += list(pending)
        lab.save()


def _spawn(lab: LabLayout, role: str) -> subprocess.Popen:
    log = open(lab.log_path(role), "ab")
    try:
        # A session of its own: the server outlives `lab up` and ignores its terminal.
        # Its environment already names the lab's SoftHSM, so the server loads
        # the module in-process rather than in a module host.
        return subprocess.Popen(
            _kind(role).argv(lab.config_path(role)),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=lab.dir,
            env=lab.softhsm.env())
    finally:
        log.close()


def _wait_answering(lab: LabLayout, pending: dict[str, subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = dict(pending)
    last: dict[str, str] = {}
    while waiting:
        for role, proc in list(waiting.items()):
            if proc.poll() is not None:
                raise LabError(f"the {role} server exited with status {proc.returncode}; "
                               f"last lines of {lab.log_path(role)}:\n{log_tail(lab.log_path(role))}")
            problem = probe(lab, role)
            if problem is None:
                del waiting[role]
            else:
                last[role] = problem
        if not waiting:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            role = next(iter(waiting))
            raise LabError(f"the {role} server did not answer within {timeout_s:g} s "
                           f"({last.get(role)}); last lines of {lab.log_path(role)}:\n"
                           f"{log_tail(lab.log_path(role))}")
        # Wait on one of the processes: returns at once if it dies.
        try:
            next(iter(waiting.values())).wait(timeout=min(0.1, remaining))
        except subprocess.TimeoutExpired:
            pass


def probe(lab: LabLayout, role: str, timeout: float = 2.0) -> str | None:
    """None when the server answers its health check over TLS; else what went wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    kind = _kind(role)
    context.load_verify_locations(cafile=str(lab.pki(kind.tls_anchor)))
    if kind.probe_identity is not None:
        cert, key = lab.tls_files(kind.probe_identity)
        context.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection(HOST, lab.port(role), context=context, timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return f"health check answered {response.status}"
        if json.loads(body).get("role") != role:
            return f"port {lab.port(role)} is served by something else"
        return None
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    finally:
        conn.close()


def stop(lab: LabLayout, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop the running servers; return which were stopped."""
    stopped = []
    for role in sorted(roles(lab), key=lambda r: -_kind(r).stage):   # what others use goes last
        if _kind(role).on_stopping is not None:
            stopped += _kind(role).on_stopping(lab, timeout_s)
        if alive(lab, role):
            stop_process(lab.pid(role), timeout_s)
            stopped.append(role)
        lab.data["servers"][role]["pid"] = None
    lab.save()
    return stopped


def status(lab: LabLayout) -> dict:
    servers = {}
    for role in roles(lab):
        running = alive(lab, role)
        servers[role] = {
            "url": lab.url(role),
            "ports": lab.data["servers"][role]["ports"],
            "pid": lab.pid(role) if running else None,
            "running": running,
            "answering": running and probe(lab, role) is None,
            "log": str(lab.log_path(role)),
            "config": str(lab.config_path(role)),
        }
        if _kind(role).describe is not None:
            servers[role].update(_kind(role).describe(lab))
    return {"dir": str(lab.dir), "servers": servers, "trust_anchors": lab.data["trust_anchors"],
            "firmware_signing": lab.data.get("firmware_signing")}
