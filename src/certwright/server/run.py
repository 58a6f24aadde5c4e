"""Run ``certwright serve``: the HTTPS API and the plain-HTTP listener in one process, one loop.

* HTTPS (``listen``): :func:`certwright.server.api.create_api`, served by uvicorn through
  :mod:`certwright.mtls.uvicorn` (its ``config`` and ``tls_protocol`` adapter hand the
  client certificate to the app). The client certificate is *optional* at the handshake:
  a workload enrolling has none yet; the endpoints that need one refuse without it.
* plain HTTP (``http_listen``): :func:`certwright.server.public.create_public_app` (CRL,
  OCSP, ``/healthz``, ``/metrics``), where the standards want plain HTTP (RFC 5280 4.2.1.13,
  RFC 6960 A.1: a relying party must not need TLS to learn about revocation).

Both sockets are bound before anything else (:func:`bind`), so ``port=0`` works and the
real ports go into the URLs. SIGTERM or SIGINT stops both: no new connections, requests in
flight finish (at most ``shutdown_timeout`` seconds), then the process exits 0; a second
signal stops at once. uvicorn's own signal capture is off: with two servers in one loop
each would install its handler over the other's, so this module owns the signals.

Example::

    sockets = bind(config.listen), bind(config.http_listen)
    prepared = bootstrap.prepare(config.with_bound(...), passphrase, hooks)
    run(prepared, sockets, on_ready=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from certwright.clock import Clock, SystemClock
from certwright.errors import VerificationError
from certwright.mtls import uvicorn as mtls_uvicorn
from certwright.mtls.context import server_context
from certwright.mtls.peer import PeerVerifier
from certwright.mtls.policy_source import PolicySource
from certwright.revocation.ocsp import OCSPResponder
from certwright.revocation.responder import responder_needs_rotation
from certwright.server.acceptor import BalancedAcceptor, Shares
from certwright.server.bootstrap import Prepared, renew_due
from certwright.server.config import Address, format_address
from certwright.server.slow_clients import guarded
from certwright.server.state import ServerState
from certwright.service import CertificateService, RevocationService, StoreStatusSource
from certwright.service.certificates import ca_key_id
from certwright.service.enrollment import EnrollmentService
from certwright.store import CertificateStatus as StoredStatus
from certwright.store import Store
from certwright.store.tokens import certificate_status
from certwright.store.values import serial_to_bytes

_log = logging.getLogger("certwright.server")
ACTOR = "certwright-serve"
METRICS_PUBLISH_SECONDS = 5.0


def bind(address: Address) -> socket.socket:
    """A TCP socket bound to ``address`` (not yet listening): the port is known at once.

    IPPROTO_TCP rather than 0, as in :mod:`certwright.mtls.uvicorn`: asyncio sets
    TCP_NODELAY on accepted connections only when the listening socket says it is TCP.
    Raises ``OSError`` (address in use, permission denied) for the caller to report.
    """
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


class InventoryRevocation:
    """Revocation of client certificates read from the inventory (the verifier's ``crl``).

    The CA's own clients are checked against the database, not a CRL file: a revocation
    is refused on the next request, whichever replica recorded it. A certificate the
    inventory does not know (not issued by this CA's intermediate) is refused too.
    """

    def __init__(self, store: Store, issuer: x509.Certificate) -> None:
        self._store = store
        self._key_id = ca_key_id(issuer)

    def check(self, certificate: x509.Certificate) -> None:
        try:
            aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except x509.ExtensionNotFound:
            aki = None
        if aki is None or aki.key_identifier != self._key_id:
            raise VerificationError("the certificate was not issued by this CA's issuing certificate")
        serial = certificate.serial_number
        serial_to_bytes(serial)  # an unstorable serial is refused (InvalidInputError), not looked up
        # Every mTLS request of the API runs this: a prepared statement on a plain
        # connection (a sixth of StoreStatusSource.lookup's ORM session).
        with self._store.statement_connection() as connection:
            status = certificate_status(connection, serial, self._key_id)
        if status is None:
            raise VerificationError(f"certificate {serial:x} is not in the inventory")
        if status is not StoredStatus.GOOD:  # revoked or on hold
            raise VerificationError(f"certificate {serial:x} is revoked")


def preload() -> None:
    """Import what :func:`build_state` and :func:`listeners` import lazily, ahead of a fork:
    the workers then share those modules' memory and start without importing them each."""
    import certwright.server.api
    import certwright.server.metrics
    import certwright.server.public  # noqa: F401


def build_state(
    prepared: Prepared, *, clock: Clock | None = None, metrics_dir: Path | None = None
) -> ServerState:
    """The shared state of both apps, from a prepared data directory.

    ``metrics_dir``: the directory the worker processes of one server share their metrics
    through (:mod:`certwright.server.workers`); None for a single process.
    """
    from certwright.server.metrics import Metrics  # prometheus-client: only the server needs it

    clock = clock or SystemClock()
    ca, store, config = prepared.ca, prepared.store, prepared.config
    authority = ca.require_authority()
    oid = ca.settings.extension_oid
    responder_cert, responder_key = prepared.responder
    return ServerState(
        config=config,
        ca=ca,
        store=store,
        certificates=CertificateService(
            store=store, authority=authority, extension_oid=oid, clock=clock, actor=ACTOR
        ),
        revocation=RevocationService(store=store, issuer=ca.intermediate, clock=clock, actor=ACTOR),
        enrollment=EnrollmentService(
            store=store, authority=authority, profiles=ca.profiles, extension_oid=oid, clock=clock
        ),
        ocsp=OCSPResponder(
            issuer=ca.intermediate,
            responder=responder_cert,
            responder_key=responder_key,
            source=StoreStatusSource(store, ca_key_id(ca.intermediate)),
            clock=clock,
            validity=config.ocsp_validity,
            refresh_before=config.ocsp_refresh_before,
        ),
        verifier=PeerVerifier(
            prepared.bundle,
            crl=InventoryRevocation(store, ca.intermediate),
            trust_domain=ca.settings.trust_domain,
            extension_oid=oid,
            clock=clock,
        ),
        policy=PolicySource(prepared.policy),
        metrics=Metrics(profiles=ca.profiles, multiprocess_dir=metrics_dir),
    )


@dataclass(frozen=True)
class Balance:
    """A worker's place among the workers sharing a listening socket (``shares`` per socket)."""

    index: int
    shares: tuple[Shares, ...]


class Listener(uvicorn.Server):
    """One uvicorn server on a socket bound beforehand; signals are left to :func:`run`.

    With ``shares`` (a worker process), the socket is listening and shared with the other
    workers: a :class:`~certwright.server.acceptor.BalancedAcceptor` takes this worker's
    share of its connections instead of uvicorn's own listener.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sock: socket.socket,
        *,
        scheme: str,
        what: str,
        shares: tuple[Shares, int] | None = None,
    ) -> None:
        super().__init__(config)
        self.socket = sock
        self.address = bound_address(sock)
        self.scheme = scheme
        self.what = what
        self.ready = asyncio.Event()
        self.shares = shares

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_address(self.address)}"

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # run() installs one handler for both listeners

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.shares is None:
            await super().startup(sockets=sockets)
        else:
            await super().startup(sockets=[])  # the app's lifespan, and no listener of its own
            if self.started:
                self._start_acceptor(*self.shares)
        if self.started:
            self.ready.set()

    def _start_acceptor(self, shares: Shares, index: int) -> None:
        config = self.config

        def create_protocol() -> asyncio.Protocol:  # what uvicorn's own listener builds
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return protocol

        acceptor = BalancedAcceptor(
            self.socket,
            shares,
            index,
            create_protocol,
            ssl_context=config.ssl,
            connections=self.server_state.connections,
        )
        acceptor.start()
        self.servers.append(acceptor)  # type: ignore[arg-type]  # shutdown() closes it

    async def serve_bound(self) -> None:
        try:
            await self.serve(sockets=[self.socket])
        except SystemExit as exc:
            # uvicorn exits the process when an app's lifespan startup fails: report instead.
            raise RuntimeError(f"the {self.what} listener failed to start (uvicorn exit {exc.code})") from exc
        finally:
            self.ready.set()  # wake start-up waiters whatever happened


def listeners(
    state: ServerState,
    prepared: Prepared,
    sockets: Sequence[socket.socket],
    balance: Balance | None = None,
) -> list[Listener]:
    """The HTTPS API and plain-HTTP listeners over ``state``, on the two bound sockets
    (with ``balance``: listening sockets shared with other workers)."""
    from certwright.server.api import create_api
    from certwright.server.public import create_public_app

    config = prepared.config
    common: dict[str, Any] = {
        "access_log": config.access_log,
        "log_level": config.log_level,
        "timeout_graceful_shutdown": config.shutdown_timeout,
        "server_header": False,
        "limit_concurrency": config.max_connections,  # beyond: uvicorn answers 503
        # Request headers within request_timeout of accepting, and of each response.
        "http": guarded(mtls_uvicorn.tls_protocol(AutoHTTPProtocol), timeout=config.request_timeout),
    }
    api_socket, public_socket = sockets
    api_config = mtls_uvicorn.config(
        create_api(state),
        ssl_context=server_context(prepared.tls, require_client_cert=False),
        host=bound_address(api_socket)[0],
        port=bound_address(api_socket)[1],
        **common,
    )
    public_app = create_public_app(state, crl_validity=config.crl_validity)
    public_config = uvicorn.Config(
        public_app,
        host=bound_address(public_socket)[0],
        port=bound_address(public_socket)[1],
        proxy_headers=False,  # the peer's address is the connection's, never a header's
        # Without TLS the adapter (in common["http"]) adds no extension; it still writes
        # each response at once.
        **common,
    )
    public_config.load()
    shares: list[tuple[Shares, int] | None] = [None, None]
    if balance is not None:  # one share table per socket, in the sockets' order
        shares = [(table, balance.index) for table in balance.shares]
    return [
        Listener(api_config, api_socket, scheme="https", what="API", shares=shares[0]),
        Listener(public_config, public_socket, scheme="http", what="public", shares=shares[1]),
    ]


def run(
    prepared: Prepared,
    sockets: Sequence[socket.socket],
    *,
    on_ready: Callable[[list[Listener]], None] | None = None,
    clock: Clock | None = None,
    renew_own: bool = True,
    metrics_dir: Path | None = None,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    force_signals: Sequence[int] | None = None,
    balance: Balance | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``on_ready`` is called once both listeners accept.

    ``renew_own``: whether this process renews the server's own certificates when due
    (one worker of several does; every worker follows the OCSP responder's rotation).
    ``signals``: those that stop it gracefully (a worker leaves SIGINT to its supervisor);
    ``force_signals``: those that stop it at once (None: any second signal).
    ``balance``: a worker's place among those sharing the (listening) sockets.
    Raises when a listener cannot start or stops on its own (the caller exits non-zero).
    """
    clock = clock or SystemClock()
    state = build_state(prepared, clock=clock, metrics_dir=metrics_dir)
    servers = listeners(state, prepared, sockets, balance)
    factory = servers[0].config.get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:

        def maintain() -> Coroutine[Any, Any, None]:
            return _maintain(prepared, state, clock, renew_own=renew_own)

        runner.run(_serve(servers, on_ready, maintain, signals=signals, force_signals=force_signals))


async def _maintain(prepared: Prepared, state: ServerState, clock: Clock, *, renew_own: bool) -> None:
    """Keep the server's own certificates fresh while it runs (renewed at two thirds).

    The process that renews them also deletes expired enrolment tokens never redeemed,
    ``token_retention`` after their expiry.

    The server certificate's files are rewritten and the TLS context loads them for new
    handshakes by itself; the OCSP responder is handed its new pair (:meth:`OCSPResponder.rotate`).
    Worker processes also publish their OCSP cache counters to the shared metrics here.
    """
    interval = prepared.config.renew_check.total_seconds()
    publisher = None
    if state.metrics.multiprocess:
        publisher = asyncio.get_running_loop().create_task(_publish_metrics(state), name="certwright-metrics")
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                issued = await asyncio.to_thread(renew_due, prepared, clock=clock) if renew_own else []
                if await asyncio.to_thread(rotate_responder_if_due, prepared, state.ocsp, clock):
                    issued.append("ocsp-responder")
            except Exception:  # a database hiccup must not stop the server: try again next time
                _log.exception("cannot renew the server's own certificates; trying again in %s s", interval)
                continue
            if issued:
                _log.info("issued anew: %s", ", ".join(issued))
            if renew_own:  # one process of the server is enough
                await _purge_tokens(state, prepared.config.token_retention)
    finally:
        if publisher is not None:
            publisher.cancel()


async def _purge_tokens(state: ServerState, retention: datetime.timedelta) -> None:
    """Delete tokens never redeemed once ``retention`` has passed since they expired."""
    try:
        purged = await asyncio.to_thread(
            state.enrollment.purge_expired_tokens, older_than=retention, actor=ACTOR
        )
    except Exception:  # a database hiccup must not stop the server: try again next time
        _log.exception("cannot purge expired enrolment tokens; trying again later")
        return
    if purged:
        _log.info("purged %d enrolment tokens that expired more than %s ago", purged, retention)


async def _publish_metrics(state: ServerState) -> None:
    # Counters kept in the responder's memory reach the shared files every few seconds,
    # whichever worker a scrape lands on (that one publishes its own at scrape time).
    while True:
        await asyncio.sleep(METRICS_PUBLISH_SECONDS)
        state.metrics.publish()


def rotate_responder_if_due(prepared: Prepared, ocsp: OCSPResponder, clock: Clock) -> bool:
    """Issue (and record) a new OCSP responder pair when the current one is due, and make
    ``ocsp`` sign with it. Returns whether it rotated."""
    current = prepared.responder[0]
    if prepared.load_responder is None or not responder_needs_rotation(current, clock.now()):
        return False
    certificate, key = prepared.load_responder()
    if certificate.fingerprint(hashes.SHA256()) == current.fingerprint(hashes.SHA256()):
        return False  # another replica sharing the directory was first, or not due by its rule
    ocsp.rotate(certificate, key)
    prepared.responder = (certificate, key)
    return True


async def _serve(
    servers: list[Listener],
    on_ready: Callable[[list[Listener]], None] | None,
    maintain: Callable[[], Coroutine[Any, Any, None]] | None = None,
    *,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    force_signals: Sequence[int] | None = None,
) -> None:
    """``signals`` stop gracefully; with ``force_signals`` None, a second one stops at once,
    else only those do (a worker: its supervisor and systemd may both send SIGTERM)."""
    loop = asyncio.get_running_loop()
    stopping: list[int] = []

    def stop(signum: int) -> None:
        forced = signum in force_signals if force_signals is not None else bool(stopping)
        if forced:  # do not wait for the requests in flight
            _log.warning("signal %d: stopping now", signum)
            for server in servers:
                server.force_exit = True
        stopping.append(signum)
        for server in servers:
            server.should_exit = True

    for signum in (*signals, *(force_signals or ())):
        loop.add_signal_handler(signum, stop, signum)
    tasks = [loop.create_task(s.serve_bound(), name=f"certwright-{s.what}") for s in servers]
    maintenance: asyncio.Task[None] | None = None
    try:
        ready = [loop.create_task(s.ready.wait()) for s in servers]
        await asyncio.wait(ready)
        if all(s.started for s in servers) and not any(t.done() for t in tasks):
            if on_ready is not None:
                on_ready(servers)
            if maintain is not None:
                maintenance = loop.create_task(maintain(), name="certwright-maintenance")
            # Start-up objects (apps, contexts, the CA) live as long as the process: keep the
            # collector from walking them again and again (and pages shared after a fork).
            gc.collect()
            gc.freeze()
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:  # one stopped (a signal, or a failure): stop the other too
            server.should_exit = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if maintenance is not None:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
        for signum in (*signals, *(force_signals or ())):
            loop.remove_signal_handler(signum)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if not stopping:
        raise RuntimeError("a listener stopped on its own; see the log above")
