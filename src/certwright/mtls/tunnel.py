"""An mTLS tunnel for services that do not speak mTLS themselves (anchor: ghostunnel).

:class:`TunnelServer` accepts TCP on its listen address, makes the TLS handshake itself
(client certificate required), verifies the peer (chain, identity, revocation), decides
with :class:`TunnelAccess` whether it may pass (default deny), and only then opens a plain
TCP connection to the target and copies bytes both ways. :class:`TunnelClient` is the
mirror: plain TCP in, mTLS out, the server's SPIFFE ID checked against ``expect`` before a
byte of the local client is forwarded.

Both use asyncio (one task per connection, thousands at a time), build each new
connection with the current files (rotated certificates, keys, bundles, CRLs and policy
are picked up without a restart), and log every decision on the ``certwright.tunnel``
logger, one plain line each::

    allowed 127.0.0.1:50412 spiffe://example.org/web serial=0x5a3c...: rule "web-to-db" (...)
    denied 127.0.0.1:50414 spiffe://example.org/batch serial=0x1f...: no --allow pattern or role matches

Example::

    access = TunnelAccess.create(allow=["spiffe://example.org/ns/prod/*"])
    server = TunnelServer(
        listen=Address.parse("0.0.0.0:8443"), target=Address.parse("127.0.0.1:5432"),
        files=TLSFiles(cert, key, bundle), access=access,
    )
    asyncio.run(run_until_signalled(server))
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from certwright.access.policy import Decision, Request, Subject
from certwright.errors import CertwrightError, InvalidInputError
from certwright.globs import Glob
from certwright.mtls.client import check_peer_identity
from certwright.mtls.context import ClientTLS, TLSFiles, server_context
from certwright.mtls.crl import RevocationChecker
from certwright.mtls.peer import Peer, PeerRefused, PeerVerifier
from certwright.x509.identity import SpiffeId

log = logging.getLogger("certwright.tunnel")


class TunnelConfigError(InvalidInputError):
    """A tunnel configuration that cannot work (bad address, nobody allowed, ...)."""


# --- addresses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A TCP address ``host:port``; IPv6 literals in brackets (``[::1]:8443``).

    Example::

        >>> Address.parse("[::1]:8443")
        Address(host='::1', port=8443)
        >>> str(Address("::1", 8443))
        '[::1]:8443'
    """

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise TunnelConfigError(f"address {text!r}: expected HOST:PORT (IPv6 as [::1]:PORT)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise TunnelConfigError(f"address {text!r}: {host!r} is not an IPv6 address") from None
        elif ":" in host:
            raise TunnelConfigError(f"address {text!r}: write IPv6 addresses in brackets, [{host}]:PORT")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise TunnelConfigError(f"address {text!r}: port {port_text!r} is not a number in 0-65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _address_of(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(Address(str(sockname[0]), int(sockname[1])))
    return str(sockname)


# --- who may pass ------------------------------------------------------------------------


class PolicyLike(Protocol):
    """A :class:`~certwright.access.policy.Policy` or anything deciding like one (a reloading
    policy file)."""

    def decide(self, subject: Subject, request: Request) -> Decision: ...


@dataclass(frozen=True)
class TunnelAccess:
    """Who may use a tunnel server: allow lists, a policy, or both (then both must allow).

    ``allow``: SPIFFE ID patterns (:mod:`certwright.globs`, ``*`` within one path segment,
    ``**`` across segments); ``allow_roles``: roles from the peer's authorization extension.
    A peer passes the allow lists when it matches at least one entry. ``policy`` is asked
    about ``Request(service)``. Nothing configured is refused: default deny would turn
    every peer away, which is never what an operator meant.

    Example::

        >>> access = TunnelAccess.create(allow=["spiffe://example.org/ns/*/web"])
        >>> access.decide(Subject("spiffe://example.org/ns/prod/web")).allowed
        True
    """

    allow: tuple[Glob, ...] = ()
    allow_roles: frozenset[str] = frozenset()
    policy: PolicyLike | None = None
    service: str | None = None

    @classmethod
    def create(
        cls,
        *,
        allow: Iterable[str] = (),
        allow_roles: Iterable[str] = (),
        policy: PolicyLike | None = None,
        service: str | None = None,
    ) -> TunnelAccess:
        patterns = tuple(allow)
        roles = frozenset(allow_roles)
        for pattern in patterns:
            if not pattern.startswith("spiffe://"):
                raise TunnelConfigError(f"--allow {pattern!r}: a pattern is a SPIFFE ID, spiffe://...")
        if any(not role for role in roles):
            raise TunnelConfigError("--allow-role: a role cannot be empty")
        if not patterns and not roles and policy is None:
            raise TunnelConfigError(
                "nobody is allowed: give --allow, --allow-role or --policy "
                "(the tunnel denies by default, so it would refuse every peer)"
            )
        if policy is not None and not service:
            raise TunnelConfigError("--policy needs --service NAME: the service the policy rules name")
        if policy is None and service:
            raise TunnelConfigError("--service only applies with --policy")
        return cls(tuple(Glob.compile(p, sep="/") for p in patterns), roles, policy, service)

    def decide(self, subject: Subject) -> Decision:
        """Allow or deny ``subject``; never raises."""
        reasons = []
        if self.allow or self.allow_roles:
            matched = self._match_lists(subject)
            if matched is None:
                return Decision(False, "no --allow pattern or --allow-role matches")
            reasons.append(matched)
        if self.policy is not None:
            assert self.service is not None
            try:
                decision = self.policy.decide(subject, Request(self.service))
            except Exception as exc:  # a policy bug must deny, never let a peer through
                log.exception("policy evaluation failed")
                return Decision(False, f"policy evaluation failed: {exc}")
            if not decision.allowed:
                return Decision(False, f"policy: {decision.reason}", decision.rule)
            reasons.append(f"policy: {decision.reason}")
            return Decision(True, "; ".join(reasons), decision.rule)
        return Decision(True, "; ".join(reasons))

    def _match_lists(self, subject: Subject) -> str | None:
        if subject.identity is not None:
            for glob in self.allow:
                if glob.matches(subject.identity):
                    return f"--allow {glob.pattern}"
        for role in subject.roles:
            if role in self.allow_roles:
                return f"--allow-role {role}"
        return None


# --- the tunnels -------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and sizes of a tunnel; ``idle_timeout=None`` never times out.

    ``recheck_interval``: how often the tunnel server checks an open connection's peer
    again (expiry, revocation through the verifier's CRL, the access decision) and cuts the
    connection if it no longer passes; None checks only at the handshake.
    """

    max_connections: int = 1024
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    idle_timeout: float | None = None
    recheck_interval: float | None = 60.0
    shutdown_grace: float = 5.0
    chunk: int = 64 * 1024
    backlog: int = 1024


class Tunnel(abc.ABC):
    """What both tunnels share: listening, a task per connection, the connection limit,
    graceful stop. Subclasses handle one accepted connection in ``_handle``.

    Example::

        await tunnel.start()          # logs "listening on HOST:PORT"; tunnel.port is bound
        ...
        await tunnel.stop(grace=5.0)  # no new connections; open ones get 5 s
    """

    kind = "tunnel"

    def __init__(self, *, listen: Address, target: Address, limits: Limits) -> None:
        self.listen = listen
        self.target = target
        self.limits = limits
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.addresses: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active(self) -> int:
        """Connections being handled right now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Bind and listen; logs ``listening on HOST:PORT`` for every bound socket."""
        self._server = await asyncio.start_server(
            self._accepted,
            self.listen.host,
            self.listen.port,
            backlog=self.limits.backlog,
            reuse_address=True,
        )
        self.addresses = tuple(_address_of(s.getsockname()) for s in self._server.sockets)
        for address in self.addresses:
            log.info("%s listening on %s, forwarding to %s", self.kind, address, self.target)

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening, give open connections ``grace`` seconds to finish, then cut them."""
        grace = self.limits.shutdown_grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        if self._tasks:
            log.info(
                "%s stopping: waiting up to %.1fs for %d connections", self.kind, grace, len(self._tasks)
            )
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("%s stopped", self.kind)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        source = _address_of(writer.get_extra_info("peername"))
        if len(self._tasks) >= self.limits.max_connections:
            log.warning("refused %s: connection limit (%d) reached", source, self.limits.max_connections)
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            await self._handle(reader, writer, source)
        except asyncio.CancelledError:
            log.info("closed %s: tunnel stopping", source)
        except Exception:  # one connection must never take the listener down
            log.exception("error on connection from %s", source)
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    @abc.abstractmethod
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        """Serve one accepted connection (the server and client directions differ here)."""

    async def _open_target(
        self, source: str, who: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self.target.host, self.target.port), self.limits.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("failed %s %s: target %s unreachable: %s", source, who, self.target, exc or "timeout")
            return None


class TunnelServer(Tunnel):
    """mTLS in, plain TCP out: terminates TLS, verifies and authorizes the peer, forwards.

    ``verifier`` defaults to a :class:`PeerVerifier` over ``files.bundle``; pass one with a
    CRL source to refuse revoked peers. The TLS context reloads rotated files by itself.

    Example::

        server = TunnelServer(listen=Address("127.0.0.1", 0), target=Address("127.0.0.1", 8080),
                              files=files, access=TunnelAccess.create(allow_roles=["reader"]))
        await server.start(); ...; await server.stop()
    """

    kind = "tunnel server"

    def __init__(
        self,
        *,
        listen: Address,
        target: Address,
        files: TLSFiles,
        access: TunnelAccess,
        verifier: PeerVerifier | None = None,
        limits: Limits = Limits(),
        context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(listen=listen, target=target, limits=limits)
        self.access = access
        self.verifier = verifier if verifier is not None else PeerVerifier(files.bundle)
        self._context = context if context is not None else server_context(files, reload=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        # TLS is started here, not by start_server(ssl=...): asyncio would drop failed
        # handshakes silently, and every refusal must be logged.
        try:
            await writer.start_tls(self._context, ssl_handshake_timeout=self.limits.handshake_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("denied %s: TLS handshake failed: %s", source, _tls_reason(exc))
            return
        try:
            peer = self.verifier.peer_of(writer.transport)
        except CertwrightError as exc:
            log.warning("denied %s: %s", source, exc)
            return
        who = _describe(peer)
        decision = self.access.decide(peer.subject)
        if not decision.allowed:
            log.warning("denied %s %s: %s", source, who, decision.reason)
            return
        log.info("allowed %s %s: %s", source, who, decision.reason)
        target = await self._open_target(source, who)
        if target is None:
            return
        watch = None
        if self.limits.recheck_interval is not None:
            watch = asyncio.create_task(self._watch(writer, source, who, self.limits.recheck_interval))
        try:
            await _splice(reader, writer, *target, limits=self.limits)
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch(self, writer: asyncio.StreamWriter, source: str, who: str, interval: float) -> None:
        """Check the peer again every ``interval`` s; close the connection once it fails.

        A connection can outlive the certificate that opened it (a long upload, a database
        session): a revocation or an expiry must end it, not only refuse the next one.
        """
        while not writer.is_closing():
            await asyncio.sleep(interval)
            try:
                peer = self.verifier.peer_of(writer.transport)
                decision = self.access.decide(peer.subject)
                reason = None if decision.allowed else decision.reason
            except CertwrightError as exc:
                reason = str(exc)
            if reason is not None:
                log.warning("cut %s %s: %s", source, who, reason)
                writer.close()  # both directions end: _splice sees the client side closed
                return


class TunnelClient(Tunnel):
    """Plain TCP in, mTLS out: connects to ``target`` presenting ``files`` and forwards only
    when the server is ``expect`` (its one SPIFFE URI SAN; the hostname is not checked) and,
    with ``crl``, when the server's certificate is not revoked.

    Example::

        client = TunnelClient(listen=Address("127.0.0.1", 15432), target=Address("db.internal", 8443),
                              files=files, expect="spiffe://example.org/db")
    """

    kind = "tunnel client"

    def __init__(
        self,
        *,
        listen: Address,
        target: Address,
        files: TLSFiles,
        expect: str | SpiffeId,
        limits: Limits = Limits(),
        tls: ClientTLS | None = None,
        server_hostname: str | None = None,
        crl: RevocationChecker | None = None,
    ) -> None:
        super().__init__(listen=listen, target=target, limits=limits)
        self.expect = expect if isinstance(expect, SpiffeId) else SpiffeId.parse(expect)
        self._crl = crl
        self._tls = tls if tls is not None else ClientTLS(files)
        self._server_hostname = server_hostname or target.host

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        what = f"-> {self.target}"
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.target.host,
                    self.target.port,
                    ssl=self._tls.context(),
                    server_hostname=self._server_hostname,
                    ssl_handshake_timeout=self.limits.handshake_timeout,
                ),
                self.limits.connect_timeout + self.limits.handshake_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("failed %s %s: %s", source, what, _tls_reason(exc))
            return
        try:
            server = check_peer_identity(up_writer.transport, self.expect)
            if self._crl is not None:
                self._crl.check(_peer_certificate(up_writer.transport))
        except CertwrightError as exc:
            log.warning("denied %s %s: server refused: %s", source, what, exc)
            up_writer.transport.abort()
            return
        log.info("allowed %s %s: server is %s", source, what, server)
        await _splice(reader, writer, up_reader, up_writer, limits=self.limits)


def _peer_certificate(transport: asyncio.BaseTransport) -> x509.Certificate:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise PeerRefused("the server presented no certificate")
    return x509.load_der_x509_certificate(der)


def _describe(peer: Peer) -> str:
    identity = str(peer.identity) if peer.identity is not None else "(no identity)"
    roles = f" roles={','.join(peer.roles)}" if peer.roles else ""
    return f"{identity} serial={peer.serial:#x}{roles}"


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.library or 'ssl'})" if exc.library else str(exc.reason)
    return str(exc) or type(exc).__name__


# --- copying -----------------------------------------------------------------------------


class _Activity:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()


async def _copy(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, activity: _Activity, limits: Limits
) -> None:
    """Copy until EOF, then half-close ``dst`` (TCP FIN) or, where it is TLS, close it.

    ``drain`` is the backpressure: while ``dst`` does not keep up, ``src`` is not read,
    so memory per connection stays near two chunks and TCP windows push back on the sender.
    """
    loop = asyncio.get_running_loop()
    idle = limits.idle_timeout
    while True:
        if idle is None:
            data = await src.read(limits.chunk)
        else:
            try:
                data = await asyncio.wait_for(src.read(limits.chunk), idle)
            except TimeoutError:
                # Idle means both directions: a long download has a silent upload side.
                if loop.time() - activity.last < idle:
                    continue
                raise
        if not data or dst.is_closing():
            break
        activity.last = loop.time()
        dst.write(data)
        await dst.drain()
    if dst.is_closing():
        return
    if dst.can_write_eof():
        dst.write_eof()
    else:
        # asyncio's TLS transport cannot half-close (no close_notify without closing):
        # the connection ends here, after what was written is flushed.
        dst.close()


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    *,
    limits: Limits,
) -> None:
    """Copy both ways until both directions ended; an error on either side cuts both."""
    activity = _Activity()
    tasks = {
        asyncio.create_task(_copy(a_reader, b_writer, activity, limits)),
        asyncio.create_task(_copy(b_reader, a_writer, activity, limits)),
    }
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if t.exception() is not None]
        if failed:
            for task in pending:
                task.cancel()
            exc = failed[0].exception()
            if not isinstance(exc, OSError | TimeoutError | ssl.SSLError):
                raise exc  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (a_writer, b_writer):
            writer.close()
        for writer in (a_writer, b_writer):
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


# --- running -----------------------------------------------------------------------------


async def run_until_signalled(tunnel: Tunnel, *, stop: asyncio.Event | None = None) -> None:
    """Start ``tunnel`` and run it until SIGTERM or SIGINT (or ``stop`` is set), then stop
    gracefully: the listener closes at once, open connections get ``shutdown_grace``."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform/thread
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        await tunnel.start()
        await stop.wait()
        log.info("%s: stop requested (SIGTERM/SIGINT)", tunnel.kind)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await tunnel.stop()
