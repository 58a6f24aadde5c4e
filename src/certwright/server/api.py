"""The CA's JSON API over HTTPS (mTLS where an endpoint needs it), versioned under ``/v1``.

:func:`create_api` builds the app from a :class:`~certwright.server.state.ServerState`;
``certwright serve`` runs it with :mod:`certwright.mtls.uvicorn` on a context that asks
for a client certificate but does not require one (enrolment comes without one). Who may
call what is :mod:`certwright.server.ca_policy`; every error is an RFC 9457 problem
document (:mod:`certwright.server.problems`); the OpenAPI document is ``/openapi.json``.

The endpoints are FastAPI routes (models, validation, the OpenAPI document), except that a
well-formed ``POST /v1/enroll`` or ``POST /v1/renew`` -- the requests that carry the load --
is answered by a direct path in front of FastAPI (:class:`_Direct`: strict hand validation,
one worker-thread hop, about a millisecond less per request); anything it does not accept
word for word goes to the FastAPI route, so refusals are the same documents either way.

=========================  ======  ==========================================================
``POST /v1/tokens``        201     admin: a one-time enrolment token (shown once)
``POST /v1/enroll``        201     token + CSR (PEM) -> certificate, chain (no root), serial
``POST /v1/renew``         201     CSR, over mTLS with the current certificate -> same identity
``POST /v1/revoke``        200     admin: any serial; holder: the certificate it presents
``GET /v1/certificates``   200     admin: ``?limit=&cursor=&identity=&status=`` (keyset pages)
``GET /v1/certificates/S`` 200     admin: one certificate, with its PEM
``GET /v1/bundle``         200     the trust bundle, ``application/pem-certificate-chain``
=========================  ======  ==========================================================

Rules the handlers keep:

* bodies are limited to ``config.max_body`` bytes *before* anything parses them, whether
  sent with ``Content-Length`` or chunked (:class:`BodyLimit`): 413 problem;
* nothing a client writes reaches issuance unless the policy or the token allows it: request
  models refuse unknown fields (no client-chosen profile or lifetime at enrolment), renewal
  takes the identity from the certificate presented on the connection, never from the body;
* a certificate is returned only once its inventory row is committed (the service's
  promise, checked again here: no row, no certificate);
* every token, enrolment and renewal is counted and timed by outcome
  (``Metrics.observe_issuance``), every request by route and status (``observe_http``).

Example::

    app = create_api(state)
    cfg = certwright.mtls.uvicorn.config(app, ssl_context=server_context(files, require_client_cert=False),
                                         port=8443)
    certwright.mtls.uvicorn.MTLSServer(cfg).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from certwright.durations import parse_duration
from certwright.errors import CertwrightError, InvalidCSRError, InvalidInputError
from certwright.mtls.asgi import ASGIApp, Message, Receive, Scope, Send
from certwright.mtls.peer import Peer
from certwright.server.ca_policy import CAAccess, revoke_any_path
from certwright.server.problems import PROBLEM_JSON, Problem, install, logger, problem_for
from certwright.server.state import ServerState
from certwright.service.certificates import ca_key_id
from certwright.service.enrollment import Enrolled, EnrollmentService, PendingCertificate, TokenGrant
from certwright.store import (
    BySerial,
    CertificateFilter,
    CertificateRecord,
    CertificateStatus,
    Cursor,
    WriterBusy,
)
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames
from certwright.x509.revocation_reason import parse_reason

API_VERSION = "1"
PEM_CHAIN = "application/pem-certificate-chain"
MAX_PAGE = 1000
# Past the limit, this much more of a body is read and thrown away before the 413, so a
# client that writes its whole body first still reads the answer (nginx's lingering close).
DRAIN_LIMIT = 1 << 20
_UNKNOWN_PROFILE = "unknown"
# How long enrolments and renewals prepared in the event loop may wait there for SQLite's
# writer turn before they give up (nothing written) and are recorded in the worker thread.
INLINE_WRITER_WAIT = 0.02
# While another writer holds the turn, the loop tries again this often; it serves requests
# in between (they join the waiting batch) instead of blocking on the lock.
WRITER_RETRY = 0.0002

# -- request and response models (the OpenAPI document is generated from them) -------------


class _In(BaseModel):
    # An unexpected field is refused, never ignored: a client must not believe it chose a
    # profile, a lifetime or an identity that the token or the certificate decides.
    model_config = ConfigDict(extra="forbid")


class TokenIn(_In):
    identity: str = Field(max_length=2048, description="SPIFFE ID the token is bound to")
    profile: str = Field("mtls", max_length=64)
    dns: list[str] = Field(default_factory=list, max_length=100)
    ips: list[str] = Field(default_factory=list, max_length=100)
    roles: list[str] = Field(default_factory=list, max_length=100)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=100)
    ttl: str = Field("15m", max_length=32, description="token lifetime, e.g. 15m, 1h")
    lifetime: str | None = Field(None, max_length=32, description="cap on the certificate's lifetime")


class TokenOut(BaseModel):
    token: str
    token_id: str
    expires_at: str


class EnrollIn(_In):
    token: str = Field(max_length=512)
    csr: str = Field(description="PKCS#10 request, PEM")


class RenewIn(_In):
    csr: str = Field(description="PKCS#10 request, PEM (the key may be new)")


class IssuedOut(BaseModel):
    certificate: str
    chain: str
    serial: str
    not_after: str
    identity: str | None


class RevokeIn(_In):
    serial: str = Field(max_length=64, description="hexadecimal")
    reason: str = Field("unspecified", max_length=32, description="RFC 5280 reason name, e.g. keyCompromise")


class RevokeOut(BaseModel):
    serial: str
    status: str
    revoked_at: str | None
    reason: str | None
    # Renewals of this certificate revoked with it (a reason such as keyCompromise reaches
    # them: they were obtained with this certificate's key), serials in hex.
    successors_revoked: list[str] = []


class CertificateOut(BaseModel):
    serial: str
    issuer: str
    subject: str
    identity: str | None
    roles: list[str]
    attributes: dict[str, str]
    names: list[str]
    profile: str | None
    key_type: str
    not_before: str
    not_after: str
    status: str
    revoked_at: str | None
    revocation_reason: str | None
    fingerprint_sha256: str
    requested_by: str
    certificate: str | None = None


class PageOut(BaseModel):
    items: list[CertificateOut]
    next_cursor: str | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {"model": ProblemOut, "content": {PROBLEM_JSON: {}}, "description": "problem document (RFC 9457)"}
        for s in (*statuses, 413, 422)
    }


# -- the app ----------------------------------------------------------------------------------


def create_api(state: ServerState) -> ASGIApp:
    """The API app for ``state`` (routes, problem handlers, body limit, metrics).

    A plain ASGI app: ``POST /v1/enroll`` and ``POST /v1/renew`` with a well-formed JSON
    body are answered by :class:`_Direct` without FastAPI's per-request machinery (they are
    the endpoints that carry the load); everything else, including every malformed enrol or
    renew request, is FastAPI's, so validation errors and the OpenAPI document are the same.

    Example::

        app = create_api(state)
    """
    app = FastAPI(
        title="certwright CA",
        version=API_VERSION,
        description="Enrolment, renewal and revocation of workload certificates (mTLS).",
        docs_url=None,  # the Swagger UI loads scripts from a CDN: not on a CA
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install(app)
    handlers = _Handlers(state)
    handlers.register(app)
    # Outside FastAPI, in this order: every request is counted (HTTPMetrics), no body over the
    # limit reaches a parser (BodyLimit), and enrol/renew take the direct path (_Direct).
    direct = _Direct(app, handlers)
    config = state.config
    return HTTPMetrics(
        BodyLimit(direct, max_body=config.max_body, timeout=config.request_timeout), state=state
    )


@dataclass
class _Outcome:
    profile: str = _UNKNOWN_PROFILE


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.access = CAAccess(verifier=state.verifier, policy=state.policy)
        self.issuer_key_id = ca_key_id(state.ca.intermediate)
        self._chain_cache: tuple[tuple[x509.Certificate, ...], str] | None = None

    def register(self, app: FastAPI) -> None:
        app.post("/v1/tokens", status_code=201, response_model=TokenOut, responses=_problems(400, 401, 403))(
            self.create_token
        )
        app.post("/v1/enroll", status_code=201, response_model=IssuedOut, responses=_problems(400, 403))(
            self.enroll
        )
        app.post("/v1/renew", status_code=201, response_model=IssuedOut, responses=_problems(400, 401, 403))(
            self.renew
        )
        app.post("/v1/revoke", response_model=RevokeOut, responses=_problems(400, 401, 403, 404, 409))(
            self.revoke
        )
        app.get("/v1/certificates", response_model=PageOut, responses=_problems(400, 401, 403))(
            self.list_certificates
        )
        app.get(
            "/v1/certificates/{serial}",
            response_model=CertificateOut,
            responses=_problems(400, 401, 403, 404),
        )(self.get_certificate)
        app.get("/v1/bundle", response_class=Response, responses={200: {"content": {PEM_CHAIN: {}}}})(
            self.bundle
        )

    # -- issuance ----------------------------------------------------------------------------

    def create_token(self, body: TokenIn, request: Request) -> TokenOut:
        """Create a one-time enrolment token (admin). The secret is shown once."""
        with self._observed("token") as outcome:
            peer = self.access.authorize(request.scope)
            outcome.profile = body.profile
            grant = self._grant(body)
            ttl = _duration(body.ttl, "ttl")
            created = self.state.enrollment.create_token(grant, ttl=ttl, actor=_actor(peer))
            return TokenOut(
                token=created.secret, token_id=created.token_id, expires_at=_iso(created.expires_at)
            )

    def enroll(self, body: EnrollIn, request: Request) -> dict[str, Any]:
        """Redeem a token: the CSR's key gets a certificate for the token's identity."""
        with self._observed("enroll") as outcome:
            enrolled = self.state.enrollment.record_one(self.prepare_enroll(body.token, body.csr))
            return self._issued(enrolled, outcome)

    def renew(self, body: RenewIn, request: Request) -> dict[str, Any]:
        """A successor for the certificate presented on this connection (same identity)."""
        with self._observed("renew") as outcome:
            enrolled = self.state.enrollment.record_one(self.prepare_renew(request.scope, body.csr))
            return self._issued(enrolled, outcome)

    # The first halves of enrol and renew, shared by the FastAPI routes above (the requests
    # _Direct hands over; FastAPI runs them in a worker thread) and the direct path, which
    # records what several requests prepared in one transaction (_Recorder).

    def prepare_enroll(self, token: str, csr_pem: str) -> PendingCertificate:
        return self.state.enrollment.prepare_enrollment(token, _parse_csr(csr_pem), actor="api:enroll")

    def prepare_renew(self, scope: Scope, csr_pem: str) -> PendingCertificate:
        peer = self.access.authorize(scope)
        csr = _parse_csr(csr_pem)
        # The identity comes from the verified certificate, never from the request.
        return self.state.enrollment.prepare_renewal(peer.certificate, csr, actor=_actor(peer))

    def _grant(self, body: TokenIn) -> TokenGrant:
        # The service checks the grant against the profile and the trust domain (CA
        # profiles, names and roles the profile refuses): PolicyViolation, 403 with ``field``.
        return TokenGrant(
            identity=SpiffeId.parse(body.identity),
            profile=body.profile,
            sans=SubjectAltNames.create(dns=body.dns, ips=body.ips),
            authorization=Authorization.create(body.roles, body.attributes),
            lifetime=_duration(body.lifetime, "lifetime") if body.lifetime is not None else None,
        )

    def _issued(self, enrolled: Enrolled, outcome: _Outcome) -> dict[str, Any]:
        certificate = enrolled.certificate
        recorded = enrolled.recorded
        if recorded is None:
            # Never hand out a certificate the inventory does not hold (it could not be
            # revoked): the service sets ``recorded`` only after its transaction committed.
            raise RuntimeError(f"issued certificate {certificate.serial_number:x} is not in the inventory")
        outcome.profile = recorded.profile
        return {  # IssuedOut's fields, in its order
            "certificate": _pem(certificate),
            "chain": self._chain_pem(enrolled.chain),
            "serial": format(certificate.serial_number, "x"),
            "not_after": _iso(certificate.not_valid_after_utc),
            "identity": recorded.identity,
        }

    def _chain_pem(self, chain: tuple[x509.Certificate, ...]) -> str:
        # The same chain for every answer until the CA rotates: encoded once per chain.
        cached = self._chain_cache
        if cached is None or cached[0] != chain:
            cached = self._chain_cache = (chain, "".join(_pem(c) for c in chain))
        return cached[1]

    @contextlib.contextmanager
    def _observed(self, kind: str) -> Iterator[_Outcome]:
        outcome = _Outcome()
        start = time.perf_counter()
        try:
            yield outcome
        except Exception as exc:
            verdict = "refused" if problem_for(exc).status < 500 else "error"
            self.state.metrics.observe_issuance(kind, outcome.profile, verdict, time.perf_counter() - start)
            raise
        self.state.metrics.observe_issuance(kind, outcome.profile, "ok", time.perf_counter() - start)

    # -- revocation and the inventory -------------------------------------------------------

    def revoke(self, body: RevokeIn, request: Request) -> RevokeOut:
        """Revoke a certificate: admin any, a holder only the certificate it presents."""
        scope = request.scope
        peer = self.access.authorize(scope)
        serial = _parse_serial(body.serial)
        reason = parse_reason(body.reason)
        any_allowed = self.access.decide(scope, peer, method="POST", path=revoke_any_path(serial)).allowed
        if not any_allowed and serial != peer.serial:
            raise _not_holder(serial)
        record = self.state.certificates.get(serial, issuer_key_id=self.issuer_key_id)
        if record is None:
            raise _unknown(serial)
        if not any_allowed and bytes(record.fingerprint_sha256) != bytes.fromhex(peer.fingerprint):
            raise _not_holder(serial)  # same serial, another certificate (another issuer's?)
        if record.status is CertificateStatus.REVOKED:
            raise _already_revoked(serial)
        revocation = dataclasses.replace(self.state.revocation, actor=_actor(peer))
        try:
            changed = revocation.revoke(BySerial(serial, self.issuer_key_id), reason)
        except CertwrightError as exc:
            if type(exc) is CertwrightError:  # the service's "already revoked": a concurrent request won
                raise _already_revoked(serial) from exc
            raise
        for ref in changed:
            self.state.ocsp.invalidate(ref.serial)  # this replica's cached "good" must go now
        updated = self.state.certificates.get(serial, issuer_key_id=self.issuer_key_id)
        assert updated is not None
        return RevokeOut(
            serial=updated.serial_hex,
            status=updated.status.value,
            revoked_at=_iso(updated.revoked_at) if updated.revoked_at else None,
            reason=updated.revocation_reason.value if updated.revocation_reason else None,
            successors_revoked=[format(ref.serial, "x") for ref in changed if ref.serial != serial],
        )

    def list_certificates(
        self,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        identity: Annotated[
            str | None, Query(max_length=2048, description="SPIFFE ID or glob (* within a segment)")
        ] = None,
        status: Literal["good", "revoked", "on_hold", "expired"] | None = None,
    ) -> PageOut:
        """One page of the inventory (admin), by expiry; pass ``next_cursor`` for the next."""
        self.access.authorize(request.scope)
        where = CertificateFilter(
            status=CertificateStatus(status) if status not in (None, "expired") else None,
            expired=True if status == "expired" else (False if status == "good" else None),
            identity_glob=identity,
        )
        after = Cursor.decode(cursor) if cursor else None
        page = self.state.certificates.list(where, limit=limit, after=after)
        return PageOut(
            items=[_certificate_out(r) for r in page.items],
            next_cursor=page.next_cursor.encode() if page.next_cursor else None,
        )

    def get_certificate(self, serial: str, request: Request) -> CertificateOut:
        """One certificate of the inventory (admin), with its PEM."""
        self.access.authorize(request.scope)
        number = _parse_serial(serial)
        record = self.state.certificates.get(number, issuer_key_id=self.issuer_key_id)
        if record is None:
            record = self.state.certificates.get(number)  # imported or the CA's own: any issuer
        if record is None:
            raise _unknown(number)
        out = _certificate_out(record)
        out.certificate = _pem(x509.load_der_x509_certificate(record.der))
        return out

    def bundle(self) -> Response:
        """The trust bundle relying parties install (the roots; old and new during a rotation)."""
        pem = "".join(_pem(c) for c in self.state.verifier.anchors)
        return Response(pem, media_type=PEM_CHAIN)


# -- ASGI middleware -------------------------------------------------------------------------


class BodyLimit:
    """Refuses request bodies over ``max_body`` bytes with 413, before the app reads them,
    and bodies that take longer than ``timeout`` seconds to arrive with 408.

    The whole body (at most ``max_body`` bytes) is read first and replayed to the app, so
    the count holds for ``Content-Length`` and chunked bodies alike, and no parser ever sees
    a byte past the limit. A declared length over the limit is refused without reading. A
    client trickling its body holds a connection and a task only until the deadline
    (:mod:`certwright.server.slow_clients` bounds the headers).
    """

    def __init__(self, app: ASGIApp, *, max_body: int, timeout: float | None = None) -> None:
        if max_body < 1:
            raise ValueError("max_body must be positive")
        self.app = app
        self.max_body = max_body
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(scope, receive, send)
        except TimeoutError:
            await _send_problem(send, _too_slow(self.timeout))
            return
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The body; None when it was refused (answered here) or the client left."""
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            if declared <= self.max_body + DRAIN_LIMIT:
                await _drain(receive, DRAIN_LIMIT + self.max_body)
            await self._too_large(send)
            return None
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client is gone: nobody to answer
            chunk = bytes(message.get("body", b""))
            total += len(chunk)
            if total > self.max_body:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_LIMIT)
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        problem = Problem(
            413,
            "body-too-large",
            "Request body too large",
            f"the request body is larger than {self.max_body} bytes",
            headers={"Connection": "close"},
        )
        await _send_problem(send, problem)


def _too_slow(timeout: float | None) -> Problem:
    return Problem(
        408,
        "request-timeout",
        "Request timeout",
        f"the request body did not arrive within {timeout:g} seconds",
        headers={"Connection": "close"},
    )


async def _send_problem(send: Send, problem: Problem) -> None:
    response = problem.response()
    await send({"type": "http.response.start", "status": problem.status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class HTTPMetrics:
    """Counts and times every request by route template and status (listener ``api``)."""

    def __init__(self, app: ASGIApp, *, state: ServerState) -> None:
        self.app = app
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = getattr(scope.get("route"), "path", None)
            self.metrics.observe_http(
                "api",
                str(scope.get("method", "")),
                route if isinstance(route, str) else "other",
                status,
                time.perf_counter() - start,
            )


class _Direct:
    """``POST /v1/enroll`` and ``POST /v1/renew`` without FastAPI's per-request work.

    FastAPI spends about a millisecond per request on dependency solving, pydantic
    validation and serialisation, and two thread hops; these two endpoints carry the load,
    so they are answered here: the body is checked by hand, strictly (a JSON object with
    exactly the model's fields, all strings within the models' lengths), the shared core
    runs, and the answer is written as FastAPI would write it.

    Where the core runs: on SQLite, in the event loop itself, as a synchronous worker
    would (a hop to a worker thread and back cost ~0.2 ms of CPU a request; the worker
    processes of :mod:`certwright.server.workers` give the concurrency). Each request is
    prepared at once (the CSR verified, the token or the certificate renewed read, the
    certificate signed); the certificates prepared in one turn of the loop are then
    recorded together, in one write transaction (:class:`_Recorder`), and each request
    is answered once that transaction has committed. On PostgreSQL, whose round trips
    the loop must not wait for, each request is prepared and recorded in a thread of the
    loop's default executor (transactions overlap).

    A request that is not plainly well-formed (another content type, bad JSON, a missing,
    extra or mistyped field, a length over the limit) is handed to the FastAPI app with its
    body, so every refusal is FastAPI's own problem document (400 ``malformed-json``, 422
    ``invalid-request`` with its ``errors``). The routes stay declared in FastAPI: they
    document both endpoints in ``/openapi.json`` and answer what is handed over.
    """

    def __init__(self, app: FastAPI, handlers: _Handlers) -> None:
        self.app = app
        self.handlers = handlers
        self._loop_keeps_connections = False
        self.recorder: _Recorder | None = None  # SQLite only: PostgreSQL runs each request in a thread
        if handlers.state.store.dialect == "sqlite":
            # SQLite has one writer at a time (the store queues this process's writers): one
            # worker thread records what could not be recorded in the loop, in arrival order.
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certwright-api-sqlite")
            self.recorder = _Recorder(handlers.state.enrollment, executor)
        routes = {getattr(r, "path", None): r for r in app.routes}
        # Per path: the route (its template labels the metrics, as Starlette's routing sets
        # it), the body's fields and their length limits, the metrics' kind, and the first
        # half of the core (the second is the recorder's).
        self.endpoints: dict[str, _Endpoint] = {
            "/v1/enroll": _Endpoint(routes["/v1/enroll"], _limits(EnrollIn), "enroll", self._prepare_enroll),
            "/v1/renew": _Endpoint(routes["/v1/renew"], _limits(RenewIn), "renew", self._prepare_renew),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope.get("method") == "POST" and not scope.get("root_path"):
            endpoint = self.endpoints.get(scope.get("path", ""))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client is gone
        fields = _strict_fields(scope, body, endpoint.limits)
        if fields is None:
            await self.app(scope, _replay(body, receive), send)  # FastAPI refuses it, its way
            return
        scope["route"] = endpoint.route
        try:
            document = await self._run(endpoint, scope, fields)
        except Exception as exc:
            problem = problem_for(exc)
            if problem.status >= 500:  # logged as FastAPI's handlers do: a traceback if unexpected
                unexpected = not isinstance(exc, Problem | CertwrightError)
                logger.error("%s %s failed: %s", scope["method"], scope["path"], exc, exc_info=unexpected)
            await _send(send, problem.status, PROBLEM_JSON, problem.body(), problem.headers)
            return
        await _send(send, 201, "application/json", _json(document))

    async def _run(self, endpoint: _Endpoint, scope: Scope, fields: dict[str, str]) -> dict[str, Any]:
        with self.handlers._observed(endpoint.kind) as outcome:
            if self.recorder is not None:
                if not self._loop_keeps_connections:  # the loop's thread: first request
                    self.handlers.state.store.keep_connections_in_this_thread()
                    self._loop_keeps_connections = True
                pending = endpoint.prepare(scope, fields)
                enrolled = await self.recorder.record(pending)
            else:  # PostgreSQL: its statements are round trips the loop must not wait for
                loop = asyncio.get_running_loop()
                enrolled = await loop.run_in_executor(None, self._prepare_and_record, endpoint, scope, fields)
            return self.handlers._issued(enrolled, outcome)

    def _prepare_and_record(self, endpoint: _Endpoint, scope: Scope, fields: dict[str, str]) -> Enrolled:
        # One thread hop for the whole request: recording in a second hop, to gather the
        # requests of one loop turn, cost more CPU than it saved (measured on PostgreSQL).
        return self.handlers.state.enrollment.record_one(endpoint.prepare(scope, fields))

    def _prepare_enroll(self, scope: Scope, fields: dict[str, str]) -> PendingCertificate:
        return self.handlers.prepare_enroll(fields["token"], fields["csr"])

    def _prepare_renew(self, scope: Scope, fields: dict[str, str]) -> PendingCertificate:
        return self.handlers.prepare_renew(scope, fields["csr"])


class _Endpoint(NamedTuple):
    route: Any
    limits: dict[str, int | None]
    kind: str  # the issuance metrics' label
    prepare: Callable[[Scope, dict[str, str]], PendingCertificate]


_Waiting = tuple[PendingCertificate, "asyncio.Future[Enrolled]"]  # a request waiting for its record


class _Recorder:
    """Records the certificates prepared in one turn of the event loop in one transaction.

    Requests whose bodies arrive together are prepared one after the other in the same
    turn; the first schedules a flush for the next turn, which hands them all to
    :meth:`EnrollmentService.record`: one writer turn, one head of the audit chain, one
    commit. Each request then gets its own outcome: its certificate, committed, or the
    refusal of its own item. Under load that spares most of the per-transaction work; a
    lone request is recorded at once.

    The flush only tries the writer turn, never waits for it in the loop: when another
    writer holds it (the other worker processes, a CLI batch, a token being made),
    nothing was written, the batch stays, and the flush tries again every
    ``WRITER_RETRY`` while the loop goes on serving; the requests prepared meanwhile
    join the batch (a group commit that happens only when writers contend). After
    ``INLINE_WRITER_WAIT`` the batch is recorded in the worker thread instead, where
    waiting blocks no one. A request whose client went away is still recorded (it was decided);
    nobody gets its certificate, and it can be revoked like any other. SQLite only:
    on PostgreSQL each request is prepared and recorded in one thread hop (a second hop
    to gather requests cost more than it saved).
    """

    def __init__(self, service: EnrollmentService, executor: ThreadPoolExecutor) -> None:
        self.service = service
        self.executor = executor
        self.waiting: list[_Waiting] = []
        self._busy_since: float | None = None  # loop time the waiting batch first found the turn taken
        self._threads: set[asyncio.Task[None]] = set()  # strong references to running tasks

    def record(self, pending: PendingCertificate) -> asyncio.Future[Enrolled]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Enrolled] = loop.create_future()
        if not self.waiting:
            loop.call_soon(self._flush)
        self.waiting.append((pending, future))
        return future

    def _flush(self) -> None:
        batch, self.waiting = self.waiting, []
        try:
            results: list[Enrolled | Exception] = self.service.record([p for p, _ in batch], writer_wait=0.0)
        except Exception as exc:  # WriterBusy: nothing written; else the database could not be used
            results = [exc] * len(batch)
        busy: list[_Waiting] = []  # nothing of theirs written: they wait for the turn
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, WriterBusy):
                busy.append(entry)
            else:
                _settle(entry[1], result)
        if busy:
            self._wait_for_turn(busy)
        else:
            self._busy_since = None

    def _wait_for_turn(self, batch: list[_Waiting]) -> None:
        """Keep ``batch`` (nothing of it written) and try again shortly, or hand it to the
        worker thread once it has waited ``INLINE_WRITER_WAIT`` in the loop."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since >= INLINE_WRITER_WAIT:
            self._busy_since = None
            self._in_thread(batch)
            return
        if not self.waiting:  # else a flush is already due for the requests that came meanwhile
            loop.call_later(WRITER_RETRY, self._flush)
        self.waiting[:0] = batch  # first in the next transaction: they came first

    def _in_thread(self, batch: list[_Waiting]) -> None:
        task = asyncio.get_running_loop().create_task(self._record_in_thread(batch))
        self._threads.add(task)
        task.add_done_callback(self._threads.discard)

    async def _record_in_thread(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        record = functools.partial(self.service.record, [p for p, _ in batch], writer_wait=None)
        try:
            results = await loop.run_in_executor(self.executor, record)
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future[Enrolled], result: Enrolled | Exception) -> None:
    if future.done():  # cancelled: the request's task is gone
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _limits(model: type[BaseModel]) -> dict[str, int | None]:
    """The model's fields and their ``max_length`` (None: none); every field must be a str."""
    limits: dict[str, int | None] = {}
    for name, info in model.model_fields.items():
        if info.annotation is not str or not info.is_required():
            raise TypeError(f"{model.__name__}.{name}: the direct path handles required str fields only")
        limits[name] = next((m.max_length for m in info.metadata if hasattr(m, "max_length")), None)
    return limits


def _strict_fields(scope: Scope, body: bytes, limits: dict[str, int | None]) -> dict[str, str] | None:
    """The body's fields when it is exactly what the model accepts without a word, else None."""
    if _content_type(scope) != "application/json":
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep: FastAPI's to say
        return None
    if type(data) is not dict or data.keys() != limits.keys():
        return None
    for name, value in data.items():
        if type(value) is not str:
            return None
        limit = limits[name]
        if limit is not None and len(value) > limit:
            return None
        if limit is not None and not value.isascii():
            try:  # a lone surrogate ("\ud800"): pydantic refuses it where a length is checked
                value.encode("utf-8")
            except UnicodeEncodeError:
                return None
    return data


def _content_type(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":  # the first one, as Starlette's Headers.get
            return bytes(value).split(b";", 1)[0].strip().lower().decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (BodyLimit has bounded it), or None when the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what the connection gives (a disconnect)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json(document: Mapping[str, Any]) -> bytes:
    # What FastAPI's JSONResponse writes (Starlette's JSONResponse.render).
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _send(
    send: Send, status: int, media_type: str, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", media_type.encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, limit: int) -> None:
    """Read and discard up to ``limit`` more body bytes (the client may still be writing)."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = bytes(value).strip()
            # The HTTP parser already refused a malformed length; be strict anyway.
            return int(text) if text.isdigit() else None
    return None


# -- helpers ------------------------------------------------------------------------------


def _parse_csr(text: str) -> x509.CertificateSigningRequest:
    data = text.encode("utf-8", "replace")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise InvalidCSRError(
            "csr must be a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)"
        )
    # Parsed only: the signature (RFC 2986 3: proof of possession) is the service's to check,
    # and enroll() and renew() verify it before any database work (here too: 0.1 ms wasted).
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise InvalidCSRError(f"csr is not a valid certificate signing request: {exc}") from None


def _parse_serial(text: str) -> int:
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise InvalidInputError(
            f"serial {text[:64]!r} is not a hexadecimal serial number (at most 20 octets)"
        )
    value = int(cleaned, 16)
    if value <= 0:
        raise InvalidInputError("a serial number is positive (RFC 5280 4.1.2.2)")
    return value


def _duration(text: str, name: str) -> datetime.timedelta:
    try:
        return parse_duration(text)
    except OverflowError:
        raise InvalidInputError(f"{name} {text!r} is too long") from None
    except InvalidInputError as exc:
        raise InvalidInputError(f"{name}: {exc}") from None


def _actor(peer: Peer) -> str:
    return f"api:{peer.identity}" if peer.identity else f"api:sha256:{peer.fingerprint[:16]}"


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _certificate_out(record: CertificateRecord) -> CertificateOut:
    now = datetime.datetime.now(datetime.UTC)
    status = record.status.value
    if record.status is CertificateStatus.GOOD and record.is_expired(now):
        status = "expired"
    return CertificateOut(
        serial=record.serial_hex,
        issuer=record.issuer,
        subject=record.subject,
        identity=record.identity,
        roles=list(record.roles or ()),
        attributes=dict(record.attributes or {}),
        names=_names(record),
        profile=record.profile,
        key_type=record.key_type,
        not_before=_iso(record.not_before),
        not_after=_iso(record.not_after),
        status=status,
        revoked_at=_iso(record.revoked_at) if record.revoked_at else None,
        revocation_reason=record.revocation_reason.value if record.revocation_reason else None,
        fingerprint_sha256=bytes(record.fingerprint_sha256).hex(),
        requested_by=record.requested_by,
    )


def _names(record: CertificateRecord) -> list[str]:
    names: Sequence[Any] = record.names
    return [f"{n.kind.value}:{n.value}" for n in names]


def _unknown(serial: int) -> Problem:
    return Problem(
        404, "certificate-not-found", "Certificate not found", f"no certificate with serial {serial:x}"
    )


def _already_revoked(serial: int) -> Problem:
    return Problem(409, "already-revoked", "Already revoked", f"certificate {serial:x} is already revoked")


def _not_holder(serial: int) -> Problem:
    return Problem(
        403,
        "access-denied",
        "Access denied",
        f"a holder may revoke only the certificate it presents, not {serial:x}",
    )
