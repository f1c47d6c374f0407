"""The signing service's HTTP API: mutual TLS, policy, replay, rates, audit, signing.

    GET  /keys/NAME                       the key: public key, certificate, chain, and
                                          the operations this client may use now
    POST /keys/NAME/OPERATION             one item (operations: policy.OPERATIONS)
    POST /keys/NAME/OPERATION/batch       {"id", "timestamp", "items": [item, ...]}

A request body is a JSON object with the request's `id` and `timestamp`
(admission.py) and, for a single item, the item's members (operations.py).
A single item is answered with 200 and a JSON object (`cms`, `certificate`
+ `chain`, or `signature`, with the `delegation` and `audit` record that
cover it), or with its refusal: the status and the reason as text. A batch
is answered with 200 and {"results": [...]}, one object per item in order,
each with its own `status` and either its answer or its `reason`.

Every response carries a trace header naming the node, the delegation(s)
and delegator(s) that covered it, and its audit record(s) (after OPES, RFC
3835/3897):

    Signer-Trace: node=signer-1; delegation=masa-vouchers; delegator="MASA operator"; audit=signer-1/42

In order, with their statuses: the TLS handshake (a client certificate that
chains to no configured client CA ends it with alert unknown_ca, audited
with the peer's address); no client certificate 401; a certificate of no
configured client 403; unknown key or operation 404; unreadable body 400;
timestamp outside the window 403; an id used before: its first answer (409
when the body differs); the client's bucket empty 429 + Retry-After; then
per item: unreadable or invalid 400, not covered by a delegation 403, the
key store failing 503. Every one of these writes an audit record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import ssl
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from pledgeforge.hsm.errors import KeyStoreError, VoucherError
from pledgeforge.hsm.voucher import parse_date, parse_json
from pledgeforge.hsm.x509 import to_pem
from pledgeforge.registrar.config import ConfigError
from pledgeforge.registrar.rate_limit import too_many
from pledgeforge.registrar.tls import server_context
from pledgeforge.registrar.web import (ENDPOINT_KEY, HEALTH_PATH, ROLE_KEY, Refusal, health,
                                       peer_certificate, refusal_middleware,
                                       text_response)

from .admission import (Admission, StoredAnswer, admit_job, answer_job, prune_job,
                        release_unanswered_job, timestamp_problem)
from .audit import AuditChain, AuditEntry
from .config import SignerConfig, load_policy
from .operations import Invalid, Prepared, object_digest, prepare, sign_all
from .policy import OPERATIONS, Client, Delegation, Denied, Policy, grant_among, subject_text
from .store import StateWorker, open_store
from .tls_accept import AlertingContext, peer_text, refusal_reason
from .workers import ServedKey, open_key

log = logging.getLogger("pledgeforge.keyserver")

TRACE_HEADER = "Signer-Trace"
#: a batch of 1000 voucher-requests, each with the pledge's request inside, is a few MB
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: how often (in answered requests) replay entries older than two windows are dropped
PRUNE_EVERY = 1000
#: audit status of a connection refused during the TLS handshake (nginx's "SSL certificate error")
TLS_REFUSED = 495


@dataclass(frozen=True)
class Caller:
    """Who is on the other end: address, certificate subject, configured client (if any)."""

    peer: str
    identity: str
    client: Client | None


@dataclass
class _Item:
    """One item on its way through a request."""

    prepared: Prepared | None = None
    delegation: Delegation | None = None
    work_index: int | None = None
    status: int = 200
    reason: str = ""
    result: Any = None


class SigningService:
    def __init__(self, config: SignerConfig):
        self.config = config
        self.node = config.node
        self.policy: Policy = config.policy
        self._policy_stamp = self._stamp()
        self.chain = AuditChain(self.node)
        self.state = StateWorker(open_store(config.database_url), on_rollback=self.chain.reload)
        self.keys: dict[str, ServedKey] = {}
        try:
            for name, settings in config.keys.items():
                self.keys[name] = open_key(settings, config.workers_per_token)
        except BaseException:
            self.close_keys()
            raise
        self._in_flight: dict[tuple[str, str], asyncio.Future] = {}
        self._answered = 0

    # ------------------------------------------------------------------ lifecycle

    def ssl_context(self) -> ssl.SSLContext:
        # Optional, so that a client without a certificate gets a 401 with a reason;
        # a certificate from an unknown issuer still ends the handshake (tls_accept.py).
        server = self.config.server
        return server_context(server.tls_cert, server.tls_key, client_auth="optional",
                              client_cas=self.config.client_cas, context_class=AlertingContext)

    async def start(self) -> None:
        self.state.start()
        await self.state.run(self.chain.reload)
        await self.state.run(release_unanswered_job(self.node), durable=False)
        await self.state.run(prune_job(self._replay_horizon()), durable=False)
        log.info("signing service %s: audit head %s/%d %s; keys %s", self.node, self.node,
                 self.chain.head.seq, self.chain.head.hash, ", ".join(self.keys))

    async def close(self) -> None:
        await self.state.close()
        log.info("signing service %s stopped; audit head %s/%d %s", self.node, self.node,
                 self.chain.head.seq, self.chain.head.hash)
        self.close_keys()

    def close_keys(self) -> None:
        for key in self.keys.values():
            key.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[refusal_middleware], client_max_size=MAX_REQUEST_BYTES)
        app[ROLE_KEY] = "signer"
        app[ENDPOINT_KEY] = {self.config.server.port: "main"}
        app.router.add_get(HEALTH_PATH, health)
        app.router.add_get("/keys/{key}", self.describe)
        app.router.add_post("/keys/{key}/{operation}", self.sign_one)
        app.router.add_post("/keys/{key}/{operation}/batch", self.sign_batch)
        return app

    # ------------------------------------------------------------------ policy

    def _stamp(self):
        try:
            st = os.stat(self.config.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload_policy(self, why: str) -> bool:
        """Read clients and delegations again; on any mistake keep serving the old policy."""
        self._policy_stamp = self._stamp()
        try:
            policy = load_policy(self.config.path, self.config.keys)
        except ConfigError as exc:
            log.error("policy not reloaded (%s), the previous one stays: %s", why, exc)
            return False
        self.policy = policy
        log.info("policy reloaded (%s): %d client(s), %d delegation(s)", why, len(policy.clients),
                 len(policy.delegations))
        return True

    def _current_policy(self) -> Policy:
        if self._stamp() != self._policy_stamp:
            self.reload_policy("the configuration file changed")
        return self.policy

    # ------------------------------------------------------------------ audit

    async def audit(self, entries: list[AuditEntry]) -> list[int]:
        return await self.state.run(lambda conn: self.chain.append(conn, entries))

    def on_tls_refused(self, peer: str, exc: BaseException) -> None:
        entry = AuditEntry(peer=peer, operation="connect", status=TLS_REFUSED, outcome="refused",
                           reason=refusal_reason(exc))
        log.info("TLS handshake with %s refused: %s", peer, entry.reason)
        asyncio.get_running_loop().create_task(self.audit([entry]))

    def _trace(self, seqs: list[int], delegations: list[Delegation] = ()) -> str:
        names = sorted({d.name for d in delegations})
        delegators = sorted({d.delegator for d in delegations})
        if not seqs:
            audit = "-"
        elif len(seqs) == 1 or seqs == list(range(seqs[0], seqs[-1] + 1)):
            audit = f"{self.node}/{seqs[0]}" + (f"-{seqs[-1]}" if len(seqs) > 1 else "")
        else:
            audit = ",".join(f"{self.node}/{s}" for s in seqs)
        quoted = ",".join('"' + _header_text(d).replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for d in delegators)
        return (f"node={self.node}; delegation={','.join(names) or '-'}; "
                f"delegator={quoted or '-'}; audit={audit}")

    # ------------------------------------------------------------------ who is asking

    def _caller(self, request: web.Request, policy: Policy) -> Caller:
        peer = peer_text(request.transport.get_extra_info("peername") if request.transport else None)
        cert = peer_certificate(request)
        if cert is None:
            return Caller(peer, "", None)
        return Caller(peer, subject_text(cert.subject), policy.client_for(cert))

    @staticmethod
    def _require_client(caller: Caller) -> Client:
        if not caller.identity:
            raise Refusal(401, "present a TLS client certificate issued by one of this service's "
                               "client CAs")
        if caller.client is None:
            raise Refusal(403, f"the client certificate {caller.identity} is no configured client, "
                               "so it holds no delegation")
        return caller.client

    def _key(self, name: str) -> ServedKey:
        key = self.keys.get(name)
        if key is None:
            raise Refusal(404, f"this service holds no key {name!r}")
        return key

    # ------------------------------------------------------------------ handlers

    async def describe(self, request: web.Request) -> web.Response:
        policy = self._current_policy()
        caller = self._caller(request, policy)
        name = request.match_info["key"]
        entry = AuditEntry(peer=caller.peer, identity=caller.identity,
                           client=caller.client.name if caller.client else "", operation="describe",
                           key=name, status=200, outcome="answered")
        try:
            client = self._require_client(caller)
            key = self._key(name)
            mine = policy.delegations_of(client, name)
            if not mine:
                raise Refusal(403, f"client {client.name} has no delegation for key {name}")
            now = _now()
            current = [d for d in mine if d.not_before <= now < d.not_after]
            body = {
                "key": name,
                "algorithm": key.signer.algorithm.value,
                "public_key": key.signer.public_key_pem().decode(),
                "certificate": to_pem(key.cert).decode(),
                "chain": [to_pem(c).decode() for c in key.chain],
                "operations": sorted({op for d in current for op in d.operations}),
                "delegations": [{"name": d.name, "delegator": d.delegator,
                                 "operations": list(d.operations),
                                 "not_before": _iso(d.not_before), "not_after": _iso(d.not_after)}
                                for d in mine],
            }
        except Refusal as refusal:
            return await self._refused(entry, refusal)
        seqs = await self.audit([entry])
        return web.json_response(body, headers={TRACE_HEADER: self._trace(seqs, current)})

    async def sign_one(self, request: web.Request) -> web.Response:
        return await self._serve(request, batch=False)

    async def sign_batch(self, request: web.Request) -> web.Response:
        return await self._serve(request, batch=True)

    async def _refused(self, entry: AuditEntry, refusal: Refusal) -> web.Response:
        seqs = await self.audit([replace(entry, status=refusal.status, outcome="refused",
                                         reason=refusal.message)])
        return text_response(refusal.status, refusal.message,
                             {**refusal.headers, TRACE_HEADER: self._trace(seqs)})

    async def _serve(self, request: web.Request, batch: bool) -> web.Response:
        policy = self._current_policy()
        caller = self._caller(request, policy)
        operation = request.match_info["operation"]
        entry = AuditEntry(peer=caller.peer, identity=caller.identity,
                           client=caller.client.name if caller.client else "",
                           operation=operation + (" batch" if batch else ""),
                           key=request.match_info["key"], status=0, outcome="")
        try:
            if operation not in OPERATIONS:
                raise Refusal(404, f"no operation {operation!r}; operations: {', '.join(OPERATIONS)}")
            client = self._require_client(caller)
            key = self._key(entry.key)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Refusal(413, f"the request is larger than {MAX_REQUEST_BYTES} bytes: "
                                   "split the batch") from None
            body, request_id, sent = _read_request(raw)
            entry = replace(entry, request_id=request_id)
            problem = timestamp_problem(sent, _now(), self.config.window_s)
            if problem:
                raise Refusal(403, problem)
            items = self._items(body, batch)
            admission = await self.state.run(admit_job(
                client, request_id, _content_digest(body), len(items), self.node), durable=False)
            if admission.seen:
                return await self._repeat(entry, client, request_id, admission)
            if admission.wait_s > 0:
                raise too_many(f"client {client.name}", admission.wait_s)
        except Refusal as refusal:
            return await self._refused(entry, refusal)
        return await self._sign_reserved(entry, policy, client, key, operation, request_id, items,
                                         batch)

    def _items(self, body: dict, batch: bool) -> list:
        if not batch:
            return [body]
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise Refusal(400, "a batch request needs 'items': a non-empty list")
        if len(items) > self.config.max_batch:
            raise Refusal(413, f"a batch holds at most {self.config.max_batch} items, "
                               f"not {len(items)}: split it")
        return items

    async def _repeat(self, entry: AuditEntry, client: Client, request_id: str,
                      admission: Admission) -> web.Response:
        try:
            if not admission.same_body:
                raise Refusal(409, f"request id {request_id!r} was used for another request; "
                                   "give every request an id of its own")
            answer = admission.answer
            if answer is None:
                pending = self._in_flight.get((client.name, request_id))
                if pending is None:
                    raise Refusal(409, f"a request with id {request_id!r} is being served "
                                       "elsewhere; retry it in a moment")
                answer = await asyncio.shield(pending)
                if answer is None:
                    raise Refusal(409, f"the first request with id {request_id!r} failed; "
                                       "send it again")
        except Refusal as refusal:
            return await self._refused(entry, refusal)
        await self.audit([replace(entry, status=answer.status, outcome="repeated",
                                  reason="the first request's answer, sent again; nothing signed")])
        return web.Response(status=answer.status, body=answer.body,
                            headers={**answer.headers, "Content-Type": answer.content_type})

    async def _sign_reserved(self, entry: AuditEntry, policy: Policy, client: Client,
                             key: ServedKey, operation: str, request_id: str, items: list,
                             batch: bool) -> web.Response:
        in_flight = (client.name, request_id)
        pending = asyncio.get_running_loop().create_future()
        self._in_flight[in_flight] = pending
        answer: StoredAnswer | None = None
        try:
            states, work = self._prepare_items(policy, client, key, operation, items)
            results = await sign_all(key, work)
            entries = [self._settle(entry, state, results, batch, i) for i, state in enumerate(states)]
            keep = batch or states[0].status < 500   # nothing was signed for a failed single item
            answer = await self.state.run(self._answer_job(client, request_id, entries, states,
                                                           batch, keep))
            return web.Response(status=answer.status, body=answer.body,
                                headers={**answer.headers, "Content-Type": answer.content_type})
        except BaseException:
            # Nothing may stay reserved for an id whose request did not get an answer.
            await asyncio.shield(self.state.run(answer_job(client.name, request_id, None), durable=False))
            raise
        finally:
            del self._in_flight[in_flight]
            if not pending.done():
                pending.set_result(answer)
            self._answered += 1
            if self._answered % PRUNE_EVERY == 0:
                asyncio.get_running_loop().create_task(
                    self.state.run(prune_job(self._replay_horizon()), durable=False))

    def _prepare_items(self, policy: Policy, client: Client, key: ServedKey, operation: str,
                       items: list) -> tuple[list[_Item], list]:
        now = _now()
        try:
            candidates: list[Delegation] | Denied = policy.candidates(client, key.name, operation)
        except Denied as exc:
            candidates = exc   # every item that reads is refused with it
        states, work = [], []
        for item in items:
            state = _Item()
            try:
                state.prepared = prepare(operation, item, key, now, self.config.window_s)
                if isinstance(candidates, Denied):
                    raise candidates
                state.delegation = grant_among(candidates, state.prepared.scope, now)
                work.append(state.prepared.build(state.delegation))
                state.work_index = len(work) - 1
            except Invalid as exc:
                state.status, state.reason = 400, str(exc)
            except Denied as exc:
                state.status, state.reason = 403, str(exc)
            states.append(state)
        return states, work

    def _settle(self, entry: AuditEntry, state: _Item, results: list, batch: bool,
                index: int) -> AuditEntry:
        """The item's outcome from its signing result; its audit entry."""
        delegation = state.delegation
        if state.work_index is not None:
            result = results[state.work_index]
            if isinstance(result, Denied):
                state.status, state.reason = 403, str(result)
            elif isinstance(result, KeyStoreError):
                log.error("key %s failed: %s", entry.key, result)
                state.status, state.reason = 503, f"the key store failed: {result}"
            elif isinstance(result, Exception):
                log.error("building an item for %s failed", entry.key, exc_info=result)
                state.status, state.reason = 500, "internal error; see the service log"
            else:
                state.result = result
        prepared = state.prepared
        item_entry = AuditEntry(
            peer=entry.peer, operation=entry.operation, status=state.status, outcome="signed",
            identity=entry.identity, client=entry.client, key=entry.key,
            delegator=delegation.delegator if delegation else "",
            delegation=delegation.name if delegation else "",
            subject=prepared.subject if prepared else "",
            request_id=f"{entry.request_id}#{index}" if batch else entry.request_id)
        if state.status != 200:
            item_entry.outcome, item_entry.reason = "refused", state.reason
        else:
            item_entry.digest = object_digest(prepared.audited_bytes(state.result))
        return item_entry

    def _answer_job(self, client: Client, request_id: str, entries: list[AuditEntry],
                    states: list[_Item], batch: bool, keep: bool):
        """Audit the items and store the answer, in one transaction: an answer exists only
        once its audit records do, and a retry finds exactly what was sent."""

        def job(conn) -> StoredAnswer:
            seqs = self.chain.append(conn, entries)
            delegations = [s.delegation for s in states if s.delegation is not None]
            headers = {TRACE_HEADER: self._trace(seqs, delegations)}
            results = []
            for state, seq in zip(states, seqs):
                audit = f"{self.node}/{seq}"
                if state.status == 200:
                    results.append({"status": 200, **state.prepared.answer(state.result),
                                    "delegation": state.delegation.name, "audit": audit})
                else:
                    results.append({"status": state.status, "reason": state.reason, "audit": audit})
            if batch:
                answer = StoredAnswer(200, "application/json", _json(results=results), headers)
            elif states[0].status == 200:
                answer = StoredAnswer(200, "application/json", _json(**results[0]), headers)
            else:
                answer = StoredAnswer(states[0].status, "text/plain; charset=utf-8",
                                      (states[0].reason + "\n").encode(), headers)
            answer_job(client.name, request_id, answer if keep else None)(conn)
            return answer

        return job

    def _replay_horizon(self) -> dt.datetime:
        return _now() - dt.timedelta(seconds=2 * self.config.window_s)


# --------------------------------------------------------------------------- small pieces

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(**members) -> bytes:
    return json.dumps(members, separators=(",", ":")).encode()


def _content_digest(body: dict) -> str:
    """What makes two requests with one id the same request: everything but the timestamp
    (a retry may carry a fresh one), in one canonical JSON form."""
    content = {name: value for name, value in body.items() if name != "timestamp"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _header_text(text: str) -> str:
    """Configuration text fit for a header value: printable ASCII only."""
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


def _read_request(raw: bytes) -> tuple[dict, str, dt.datetime]:
    """The body, its id and its timestamp; Refusal(400) naming what is wrong."""
    if not raw:
        raise Refusal(400, "the request has no body: send a JSON object with id and timestamp")
    try:
        body = parse_json(raw, "the request body")
    except VoucherError as exc:
        raise Refusal(400, str(exc)) from None
    if not isinstance(body, dict):
        raise Refusal(400, "the request body must be a JSON object")
    request_id = body.get("id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= 200 or not request_id.isprintable():
        raise Refusal(400, "the request needs 'id': a string of 1 to 200 printable characters, "
                           "new for every request (a retry reuses it)")
    try:
        sent = parse_date(body.get("timestamp"), "timestamp")
    except VoucherError as exc:
        raise Refusal(400, f"the request needs 'timestamp' (RFC 3339): {exc}") from None
    return body, request_id, sent
