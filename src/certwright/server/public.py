"""The plain-HTTP listener of ``certwright serve``: CRL, OCSP, health and metrics.

Plain HTTP where the standards say so: relying parties fetch CRLs and ask OCSP
responders over ``http`` (RFC 5280 4.2.1.13 and RFC 6960 A.1 use it, and fetching a CRL
over TLS would need the revocation status of the TLS server's own certificate). Nothing
here needs a client certificate and nothing here changes the inventory, except that each
CRL publication reserves a CRL number.

| route | answers |
|---|---|
| ``GET /crl/<issuer-key-id-hex>.crl`` | the issuing CA's full CRL, DER, ``application/pkix-crl`` |
| ``POST /ocsp`` | an ``application/ocsp-request`` body (at most 16 KiB) -> ``application/ocsp-response`` |
| ``GET /ocsp/<base64 request>`` | the same, RFC 6960 A.1 / RFC 5019 5 (std or url-safe base64) |
| ``GET /healthz`` | ``{"status": "ok"}`` when the database answers ``SELECT 1``, else a 503 problem |
| ``GET /metrics`` | the Prometheus exposition of this process (:mod:`certwright.server.metrics`) |

The CRL is published through the inventory (:mod:`certwright.server.crl_cache`) and OCSP
is answered by ``state.ocsp`` from its pre-signed cache. Revocations made by other
replicas reach both through a :class:`~certwright.server.revocation_feed.RevocationFeed`:
OCSP answers reflect them within ``revocation_poll`` seconds (1 s), a CRL download sees
them at once. A replica that cannot poll the database fails closed: OCSP ``tryLater``,
CRL 503.

Example::

    app = create_public_app(state)           # state: ServerState, built by server/run.py
    uvicorn.run(app, host="127.0.0.1", port=8080)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import email.utils
import hashlib
import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread
import sqlalchemy as sa
from cryptography.x509 import ocsp
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from certwright.revocation.ocsp import MALFORMED, MAX_REQUEST_SIZE, TRY_LATER, OCSPAnswer
from certwright.server.crl_cache import DEFAULT_CRL_REFRESH, CRLCache
from certwright.server.metrics import HTTPMetricsMiddleware
from certwright.server.problems import Problem, status_problem
from certwright.server.revocation_feed import DEFAULT_INTERVAL, FeedStaleError, RevocationFeed
from certwright.server.state import ServerState

_log = logging.getLogger(__name__)

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
PKIX_CRL = "application/pkix-crl"
DEFAULT_CRL_MAX_AGE = 60  # seconds an HTTP cache may keep a CRL (a revocation republishes at once)
DEFAULT_HEALTH_TIMEOUT = 5.0
_NO_STORE = {"Cache-Control": "no-store"}
_RETRY = {"Retry-After": "5"}


def create_public_app(
    state: ServerState,
    *,
    crl_refresh: datetime.timedelta | None = None,
    crl_validity: datetime.timedelta | None = None,
    crl_max_age: int = DEFAULT_CRL_MAX_AGE,
    revocation_poll: float = DEFAULT_INTERVAL,
    max_ocsp_request: int = MAX_REQUEST_SIZE,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
) -> Starlette:
    """The plain-HTTP app over ``state``; see the module docstring.

    ``crl_validity`` (default ``state.config.crl_validity``) after its thisUpdate is a
    CRL's nextUpdate; a CRL older than ``crl_refresh`` (default: an hour, at most half the
    validity) is published again. ``revocation_poll``: how stale, in seconds, this
    replica's OCSP answers may be about revocations made elsewhere. The app's ``state``
    holds ``revocation_feed`` and ``crl_cache``.
    """
    ocsp_responder = state.ocsp
    validity = crl_validity if crl_validity is not None else state.config.crl_validity
    refresh = crl_refresh if crl_refresh is not None else min(DEFAULT_CRL_REFRESH, validity / 2)

    def on_change(serials: Sequence[int] | None) -> None:
        if serials is None:
            ocsp_responder.invalidate_all()
        else:
            for serial in serials:
                ocsp_responder.invalidate(serial)

    feed = RevocationFeed(state.store, on_change=on_change, interval=revocation_poll)
    crls = CRLCache(
        state.revocation,
        state.ca.require_authority().key,
        feed=feed,
        refresh=refresh,
        validity=validity,
        distribution_point=crl_distribution_point(state.ca.settings.crl_urls, state.revocation.issuer_key_id),
        on_publish=lambda crl: state.metrics.observe_crl_published(crl.number),
    )
    state.metrics.track_ocsp_cache(lambda: ocsp_responder.stats)
    limits = _Limits(crl_max_age, max_ocsp_request, health_timeout)
    endpoints = _Endpoints(state, feed, crls, limits)
    app = Starlette(
        routes=[
            Route("/crl/{issuer}.crl", endpoints.crl, methods=["GET"]),
            Route("/ocsp", endpoints.ocsp_post, methods=["POST"]),
            Route("/ocsp/{request:path}", endpoints.ocsp_get, methods=["GET"]),
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/metrics", endpoints.metrics, methods=["GET"]),
        ],
        middleware=[Middleware(HTTPMetricsMiddleware, metrics=state.metrics, listener="public")],
        exception_handlers={HTTPException: _http_problem, Exception: _internal_problem},
    )
    app.state.revocation_feed = feed
    app.state.crl_cache = crls
    return app


def crl_distribution_point(crl_urls: Sequence[str], issuer_key_id: bytes | None) -> str | None:
    """The CRL's issuingDistributionPoint: the CRL URL the CA writes into its leaves.

    One URL: that one. Several: the one naming this issuer's ``/crl/<key-id>.crl``, else
    none. RFC 5280 5.2.5: with an IDP, relying parties apply the CRL only to certificates
    whose distribution point names it (OpenSSL: "different CRL scope" otherwise), so a
    wrong IDP would hide revocations; no IDP makes the CRL cover every certificate of the
    issuer.
    """
    if len(crl_urls) == 1:
        return crl_urls[0]
    if issuer_key_id is not None:
        ours = [url for url in crl_urls if url.lower().endswith(f"/crl/{issuer_key_id.hex()}.crl")]
        if len(ours) == 1:
            return ours[0]
    return None


def decode_get_request(text: str, *, limit: int = MAX_REQUEST_SIZE) -> bytes | None:
    """The DER of an RFC 6960 A.1 GET request path segment, or None if it is not base64.

    RFC 6960 A.1 asks for the url-encoding of the base64 of the DER; clients differ: some
    send ``+ / =`` raw, some percent-encode them (the server has decoded that once
    already), some encode twice, a few use base64url (RFC 4648 5) or drop the padding, and
    a ``+`` may have become a space on the way.
    """
    if "%" in text:
        text = urllib.parse.unquote(text)  # encoded twice
    text = text.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    if not text or len(text) > 4 * (limit // 3 + 2):
        return None
    stripped = text.rstrip("=")
    text = stripped + "=" * (-len(stripped) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class _Limits:
    crl_max_age: int
    max_ocsp_request: int
    health_timeout: float


class _Endpoints:
    """The handlers, over one server state; each stays a few lines (the work is elsewhere)."""

    def __init__(self, state: ServerState, feed: RevocationFeed, crls: CRLCache, limits: _Limits) -> None:
        self._state = state
        self._feed = feed
        self._crls = crls
        self._limits = limits

    async def crl(self, request: Request) -> Response:
        metrics = self._state.metrics
        if request.path_params["issuer"].lower() != self._crls.key_id_hex:
            metrics.observe_crl_fetch("not_found")
            detail = "this server publishes no CRL for that issuer"
            return Problem(404, "not-found", "Unknown issuer", detail).response()
        try:
            crl = await run_in_threadpool(self._crls.current)
        except Exception:
            _log.exception("cannot publish the CRL")
            metrics.observe_crl_fetch("error")
            detail = "the CRL cannot be published now; retry later"
            return Problem(503, "crl-unavailable", "CRL unavailable", detail, headers=_RETRY).response()
        metrics.observe_crl_fetch("served")
        etag = f'"{crl.number:x}-{hashlib.sha256(crl.der).hexdigest()[:16]}"'
        max_age = min(self._limits.crl_max_age, int(self._crls.seconds_to_refresh()))
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(crl.this_update),
            "Expires": _http_date(crl.next_update),
            "Cache-Control": f"public, max-age={max_age}, no-transform",
        }
        if etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        return Response(crl.der, media_type=PKIX_CRL, headers=headers)

    async def ocsp_post(self, request: Request) -> Response:
        content_type = request.headers.get("content-type")
        if content_type is not None and content_type.split(";")[0].strip().lower() != OCSP_REQUEST:
            detail = f"an OCSP request is sent as {OCSP_REQUEST}"
            return Problem(415, "unsupported-media-type", "Unsupported media type", detail).response()
        try:
            async with asyncio.timeout(self._state.config.request_timeout):
                body = await _read_at_most(request, self._limits.max_ocsp_request)
        except TimeoutError:  # a trickled body holds a connection only this long
            detail = f"the request body did not arrive within {self._state.config.request_timeout:g} seconds"
            return Problem(
                408, "request-timeout", "Request timeout", detail, headers={"Connection": "close"}
            ).response()
        if body is None:
            detail = f"an OCSP request is at most {self._limits.max_ocsp_request} bytes"
            return Problem(413, "body-too-large", "Request too large", detail).response()
        answer = self._answer_now(body)
        if answer is None:
            answer = await run_in_threadpool(self._answer, body)
        return self._ocsp_response(answer)

    async def ocsp_get(self, request: Request) -> Response:
        der = decode_get_request(request.path_params["request"], limit=self._limits.max_ocsp_request)
        if der is None:
            self._state.metrics.observe_ocsp(_status_label(MALFORMED))
            return self._ocsp_response(MALFORMED)
        answer = self._answer_now(der)
        if answer is None:
            answer = await run_in_threadpool(self._answer, der)
        return self._ocsp_response(answer)

    async def healthz(self, request: Request) -> Response:
        try:
            with anyio.fail_after(self._limits.health_timeout):
                await anyio.to_thread.run_sync(self._ping, abandon_on_cancel=True)
        except TimeoutError:
            detail = f"the database did not answer within {self._limits.health_timeout:g} s"
            return Problem(503, "unhealthy", "Unhealthy", detail, headers=_NO_STORE).response()
        except Exception as exc:
            # The reason goes to the log: a public endpoint does not describe the database.
            _log.warning("health check: the database is unreachable: %s", exc)
            detail = "the database is unreachable"
            return Problem(503, "unhealthy", "Unhealthy", detail, headers=_NO_STORE).response()
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    async def metrics(self, request: Request) -> Response:
        body, content_type = self._state.metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type, **_NO_STORE})

    def _answer_now(self, der: bytes) -> OCSPAnswer | None:
        """The answer, if it can be given in the event loop: from the cache (or a refusal),
        while the revocation feed is fresh. None: it needs the inventory or a signature
        (:meth:`_answer`, in a worker thread). Most answers come from here: the hop to a
        worker thread and back was half of a cached answer's CPU (~0.3 ms of ~0.65 here)."""
        if not self._feed.is_fresh():
            return None  # the feed must poll first (or report that it cannot)
        answer = self._state.ocsp.cached_answer(der)
        if answer is not None:
            self._state.metrics.observe_ocsp(_status_label(answer))
        return answer

    def _answer(self, der: bytes) -> OCSPAnswer:
        """Blocking (a cache miss reads the inventory): runs in a worker thread."""
        try:
            self._feed.refresh()
            answer = self._state.ocsp.answer(der)
        except FeedStaleError:
            # Fail closed: cached answers could hide a revocation made since (RFC 6960 2.3).
            answer = TRY_LATER
        self._state.metrics.observe_ocsp(_status_label(answer))
        return answer

    def _ping(self) -> None:
        with self._state.store.read() as session:
            session.execute(sa.text("SELECT 1"))

    @staticmethod
    def _ocsp_response(answer: OCSPAnswer) -> Response:
        headers = _NO_STORE
        if answer.cacheable and answer.this_update is not None and answer.next_update is not None:
            # RFC 5019 6.2: let HTTP caches keep the answer until its nextUpdate.
            now = datetime.datetime.now(datetime.UTC)
            max_age = max(0, int((answer.next_update - now).total_seconds()))
            headers = {
                "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
                "Last-Modified": _http_date(answer.this_update),
                "Expires": _http_date(answer.next_update),
                "ETag": f'"{hashlib.sha1(answer.der, usedforsecurity=False).hexdigest()}"',
            }
        return Response(answer.der, media_type=OCSP_RESPONSE, headers=headers)


async def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return status_problem(exc.status_code, str(exc.detail), headers=exc.headers).response()


async def _internal_problem(request: Request, exc: Exception) -> Response:
    _log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return status_problem(500).response()


async def _read_at_most(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is (or claims to be) longer than ``limit``: never buffered past it."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _status_label(answer: OCSPAnswer) -> str:
    if answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL and answer.cert_status is not None:
        return answer.cert_status.name.lower()
    return answer.response_status.name.lower()


def _http_date(at: datetime.datetime) -> str:
    return email.utils.format_datetime(at.astimezone(datetime.UTC), usegmt=True)


def _etags(header: str | None) -> list[str]:
    if not header:
        return []
    return [tag.strip().removeprefix("W/") for tag in header.split(",")]
