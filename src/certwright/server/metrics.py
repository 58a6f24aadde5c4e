"""Prometheus metrics of one ``certwright serve`` process.

Every collector lives in the :class:`Metrics` object's own ``CollectorRegistry``, never in
prometheus-client's global one: two servers in one process (the tests run several) keep
separate counts, and nothing is registered at import time.

Replicas: each ``serve`` replica counts what it did and exposes it on its own
``/metrics``; Prometheus scrapes every replica and queries add them up
(``sum by (profile, outcome) (rate(certwright_issuance_total[5m]))``). The worker
processes of one replica (:mod:`certwright.server.workers`) share one port, so a scrape
must see all of them: with ``multiprocess_dir`` the values live in prometheus-client's
memory-mapped files there (its multi-process mode) and every worker's ``/metrics`` adds
up all workers, those that exited included (counters never go back). The ``process_*``
collector describes one process, so it is left out in that mode.

Label values are bounded, so a caller cannot grow the number of series: ``kind`` and
``outcome`` must be among the documented values (anything else is a programming error and
raises ``ValueError``); a ``profile`` the server does not know is counted as ``other``;
HTTP requests are labelled by route template (``/crl/{issuer}``), never by raw path.

Example::

    >>> metrics = Metrics(profiles=["mtls", "server"])
    >>> metrics.observe_issuance("enroll", "mtls", "ok", 0.004)
    >>> body, content_type = metrics.render()
    >>> b'certwright_issuance_total{kind="enroll",outcome="ok",profile="mtls"} 1.0' in body
    True
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certwright.revocation.ocsp import OCSPStats

ISSUANCE_KINDS = frozenset({"enroll", "renew", "token"})
OUTCOMES = frozenset({"ok", "refused", "error"})
OTHER = "other"
# Issuance is ~0.1 ms of signing plus a database commit (ms on SQLite, more on a busy
# PostgreSQL); the buckets span a fast local commit up to a stalled database.
ISSUANCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class Metrics:
    """The collectors of one server process, in their own registry.

    ``profiles`` names the profiles the CA knows; when given, any other profile label is
    recorded as ``other``. ``process`` adds the standard ``process_*`` collector (CPU,
    memory, open files) of this process.
    """

    def __init__(
        self,
        *,
        profiles: Iterable[str] | None = None,
        process: bool = True,
        multiprocess_dir: Path | None = None,
    ) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            _use_multiprocess_values(multiprocess_dir)
        self.registry = CollectorRegistry(auto_describe=True)
        # Label sets seen, with their metric children: ``labels()`` takes a lock and checks
        # every value again on each call (~6 us of a request's two observations).
        self._issuance_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._http_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._profiles = frozenset(profiles) if profiles is not None else None
        self.issuance = Counter(
            "certwright_issuance",
            "Token, enrolment and renewal requests handled, by kind, profile and outcome.",
            ("kind", "profile", "outcome"),
            registry=self.registry,
        )
        self.issuance_seconds = Histogram(
            "certwright_issuance_seconds",
            "Time to handle a token, enrolment or renewal request (service call, commit included).",
            ("kind", "profile", "outcome"),
            buckets=ISSUANCE_BUCKETS,
            registry=self.registry,
        )
        self.ocsp_responses = Counter(
            "certwright_ocsp_responses",
            "OCSP responses sent, by status: good, revoked, unknown, or the unsuccessful "
            "responseStatus (malformed_request, unauthorized, try_later, internal_error).",
            ("status",),
            registry=self.registry,
        )
        self.crl_fetches = Counter(
            "certwright_crl_fetches",
            "CRL downloads answered, by result (served, not_found, error).",
            ("result",),
            registry=self.registry,
        )
        self.crl_publications = Counter(
            "certwright_crl_publications",
            "CRLs this process built and signed (each takes a new CRL number from the database).",
            registry=self.registry,
        )
        self.crl_number = Gauge(
            "certwright_crl_number",
            "The number of the CRL this process serves (another replica may serve a higher one).",
            registry=self.registry,
            multiprocess_mode="max",  # workers: the highest any of them serves
        )
        self.http_requests = Counter(
            "certwright_http_requests",
            "HTTP requests answered, by listener (api, public), method, route template and status.",
            ("listener", "method", "route", "status"),
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "certwright_http_request_seconds",
            "Time to answer an HTTP request, by listener and route template.",
            ("listener", "route"),
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._ocsp_cache = _OCSPCacheCollector()
        if multiprocess_dir is None:
            self.registry.register(self._ocsp_cache)
            if process:
                ProcessCollector(registry=self.registry)
        else:
            # The responder's own counters are copied into shared counters (publish()).
            self._ocsp_published = OCSPStats(from_cache=0, signed=0, unsuccessful=0)
            self.ocsp_cache_hits = Counter(
                "certwright_ocsp_cache_hits",
                "OCSP answers served from the pre-signed cache.",
                registry=self.registry,
            )
            self.ocsp_signatures = Counter(
                "certwright_ocsp_signatures",
                "OCSP responses signed (cache misses and nonces).",
                registry=self.registry,
            )

    @property
    def multiprocess(self) -> bool:
        """Whether the values are shared with other worker processes (see the module doc)."""
        return self.multiprocess_dir is not None

    def observe_issuance(self, kind: str, profile: str, outcome: str, seconds: float) -> None:
        """Count one token/enrol/renew request and its latency.

        ``kind`` is ``enroll``, ``renew`` or ``token``; ``outcome`` is ``ok``, ``refused``
        (the request was not allowed: a 4xx problem) or ``error`` (the server failed).
        """
        children = self._issuance_children.get((kind, profile, outcome))
        if children is None:
            if kind not in ISSUANCE_KINDS:
                raise ValueError(f"issuance kind must be one of {sorted(ISSUANCE_KINDS)}, not {kind!r}")
            if outcome not in OUTCOMES:
                raise ValueError(f"issuance outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
            label = self._profile_label(profile)
            children = (
                self.issuance.labels(kind, label, outcome),
                self.issuance_seconds.labels(kind, label, outcome),
            )
            _remember(self._issuance_children, (kind, profile, outcome), children)
        children[0].inc()
        children[1].observe(max(seconds, 0.0))

    def observe_ocsp(self, status: str) -> None:
        """Count one OCSP response: ``good``, ``revoked``, ``unknown``, or the unsuccessful
        responseStatus (``malformed_request``, ``unauthorized``, ``try_later``, ``internal_error``)."""
        self.ocsp_responses.labels(status).inc()

    def observe_crl_fetch(self, result: str) -> None:
        """Count one CRL download by result (``served``, ``not_found``, ``error``)."""
        self.crl_fetches.labels(result).inc()

    def observe_crl_published(self, number: int) -> None:
        """Count one CRL built by this process and remember the number it serves."""
        self.crl_publications.inc()
        self.crl_number.set(number)

    def observe_http(self, listener: str, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request; ``route`` is the route template, or ``other`` for no route."""
        method = method if method in HTTP_METHODS else OTHER  # clients choose methods: bound them
        key = (listener, method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(listener, method, route, str(status)),
                self.http_seconds.labels(listener, route),
            )
            _remember(self._http_children, key, children)
        children[0].inc()
        children[1].observe(max(seconds, 0.0))

    def track_ocsp_cache(self, stats: Callable[[], OCSPStats]) -> None:
        """Expose the OCSP responder's own counters (cache hits, signatures) at scrape time."""
        self._ocsp_cache.source = stats

    def publish(self) -> None:
        """Multi-process mode: add what the OCSP responder counted since the last call to the
        shared counters (a worker does so every few seconds, and before answering a scrape)."""
        source = self._ocsp_cache.source
        if self.multiprocess_dir is None or source is None:
            return
        stats, published = source(), self._ocsp_published
        self.ocsp_cache_hits.inc(max(0, stats.from_cache - published.from_cache))
        self.ocsp_signatures.inc(max(0, stats.signed - published.signed))
        self._ocsp_published = stats

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type): Prometheus text, or OpenMetrics if ``accept`` asks.

        Multi-process mode: the sum over every worker's files.
        """
        registry = self.registry
        if self.multiprocess_dir is not None:
            self.publish()
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        if accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(registry), content_type
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _profile_label(self, profile: str) -> str:
        if self._profiles is not None and profile not in self._profiles:
            return OTHER  # unknown names come from requests: they must not create series
        return profile


def _use_multiprocess_values(directory: Path) -> None:
    """Make new metric values memory-mapped files in ``directory`` (prometheus-client's
    multi-process mode), whether or not prometheus-client was imported before."""
    if not directory.is_dir():
        raise ValueError(f"metrics directory {directory} does not exist")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _OCSPCacheCollector(Collector):
    """Reads :class:`OCSPStats` when scraped, so the responder's hot path pays nothing."""

    def __init__(self) -> None:
        self.source: Callable[[], OCSPStats] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        stats = self.source()
        yield CounterMetricFamily(
            "certwright_ocsp_cache_hits", "OCSP answers served from the pre-signed cache.", stats.from_cache
        )
        yield CounterMetricFamily(
            "certwright_ocsp_signatures", "OCSP responses signed (cache misses and nonces).", stats.signed
        )


class HTTPMetricsMiddleware:
    """ASGI middleware counting each HTTP request by route template and status.

    Starlette and FastAPI routers record the matched route in ``scope["route"]``; requests
    that match none are labelled ``other`` (a scanner's made-up paths create no series).

    Example::

        app = Starlette(routes=..., middleware=[Middleware(HTTPMetricsMiddleware, metrics=m, listener="api")])
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, listener: str) -> None:
        self.app = app
        self.metrics = metrics
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it starts a response

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None)
            self.metrics.observe_http(
                self.listener, scope["method"], route or OTHER, status, time.perf_counter() - started
            )


_CHILDREN_LIMIT = 4096  # label sets remembered per family (routes and statuses are bounded; be safe)


def _remember(cache: dict[Any, Any], key: Any, children: Any) -> None:
    if len(cache) >= _CHILDREN_LIMIT:
        cache.clear()
    cache[key] = children
