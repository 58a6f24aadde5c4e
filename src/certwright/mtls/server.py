"""mTLS for plain asyncio servers, and the access gate the ASGI middleware shares.

:class:`AccessGate` is the one place where a peer certificate and a request become a
logged :class:`~certwright.access.policy.Decision`: the verifier turns the certificate into a
:class:`~certwright.mtls.peer.Peer` (or refuses it), the policy decides, and every outcome
is logged on ``certwright.mtls.access`` with the identity, service, method, path and the
rule or reason.

:func:`start_server` is :func:`asyncio.start_server` with certwright's server context: the
handshake requires a client certificate, the peer is verified and authorized for the
service before the handler runs, and refused connections are closed with a logged reason.

Example::

    async def echo(reader, writer, peer):
        writer.write(f"hello {peer.identity}\\n".encode())
        await writer.drain()

    server = await start_server(
        echo, "127.0.0.1", 7000, files=TLSFiles(cert, key, bundle),
        verifier=PeerVerifier(bundle), policy=Policy.load("policy.toml"), service="echo",
    )
    async with server:
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from certwright.access.policy import Decision, Request, Subject
from certwright.errors import CertwrightError
from certwright.mtls.context import TLSFiles, server_context
from certwright.mtls.peer import Peer, PeerRefused, PeerVerifier

ACCESS_LOGGER = "certwright.mtls.access"

#: What the handler of :func:`start_server` receives for each authorized connection.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Peer], Awaitable[None]]


@runtime_checkable
class Decides(Protocol):
    """Anything that decides: a :class:`~certwright.access.policy.Policy` or a reloading source."""

    def decide(self, subject: Subject, request: Request) -> Decision: ...


@runtime_checkable
class HasCurrentPolicy(Protocol):
    """A reloading policy source exposing only ``current()`` (the policy in force)."""

    def current(self) -> Decides: ...


PolicyLike = Decides | HasCurrentPolicy

#: The decision recorded when a gate has no policy (``policy=None``, chosen explicitly).
NO_POLICY_REASON = "no access policy configured: every verified peer is admitted"


class AccessGate:
    """Peer verification plus access decisions for one named service, every outcome logged.

    ``policy=None`` admits every peer the verifier accepts (authentication only; the
    application authorizes by itself); it must be passed explicitly, and a warning says so.

    Example::

        gate = AccessGate(verifier=PeerVerifier(bundle), policy=policy, service="payments")
        peer = gate.peer(der)                      # PeerRefused if the certificate is refused
        decision = gate.decide(peer, method="GET", path="/v1/items/1")
    """

    def __init__(
        self,
        *,
        verifier: PeerVerifier,
        policy: PolicyLike | None,
        service: str,
        logger: logging.Logger | None = None,
    ) -> None:
        if not service:
            raise ValueError("service must name the service the policy rules refer to")
        if policy is not None and not isinstance(policy, Decides | HasCurrentPolicy):
            raise TypeError(f"policy must be a Policy, a PolicySource or None, not {type(policy).__name__}")
        self.verifier = verifier
        self.policy = policy
        self.service = service
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        if policy is None:
            self.logger.warning("service %s: %s", service, NO_POLICY_REASON)

    def peer(self, der: bytes) -> Peer:
        """The verified peer for a DER certificate (cached by the verifier), or ``PeerRefused``."""
        try:
            return self.verifier.peer_from_der(der)
        except PeerRefused:
            raise
        except CertwrightError as exc:
            # Anything the verifier rejects for a reason of its own is a refusal too: fail closed.
            raise PeerRefused(str(exc)) from exc

    def peer_from_chain(self, chain: list[bytes]) -> Peer:
        """The peer for a DER chain (leaf first) that no handshake of ours verified: the
        verifier checks it against its bundle first (every call), then as :meth:`peer`."""
        try:
            return self.verifier.peer_from_chain(chain)
        except PeerRefused:
            raise
        except CertwrightError as exc:
            raise PeerRefused(str(exc)) from exc

    def decide(
        self,
        peer: Peer,
        *,
        method: str | None = None,
        path: str | None = None,
        client: str | None = None,
    ) -> Decision:
        """Decide ``(service, method, path)`` for ``peer`` and log the outcome."""
        request = Request(self.service, method, path)
        decision = self._decide(peer.subject, request)
        self.log(
            decision,
            identity=str(peer.identity) if peer.identity else None,
            method=method,
            path=path,
            client=client,
            fingerprint=peer.fingerprint,
        )
        return decision

    def _decide(self, subject: Subject, request: Request) -> Decision:
        policy = self.policy
        if policy is None:
            return Decision(True, NO_POLICY_REASON)
        if isinstance(policy, Decides):
            return policy.decide(subject, request)
        return policy.current().decide(subject, request)

    def log(
        self,
        decision: Decision,
        *,
        identity: str | None,
        method: str | None = None,
        path: str | None = None,
        client: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Log one outcome (allowed at INFO, refused at WARNING) with its fields in ``extra``."""
        fields: dict[str, Any] = {
            "identity": identity,
            "service": self.service,
            "method": method,
            "path": path,
            "allowed": decision.allowed,
            "rule": decision.rule,
            "reason": decision.reason,
            "client": client,
            "fingerprint": fingerprint,
        }
        self.logger.log(
            logging.INFO if decision.allowed else logging.WARNING,
            "%s identity=%s service=%s method=%s path=%s client=%s rule=%s reason=%s",
            "allow" if decision.allowed else "deny",
            _printable(identity or "-"),
            self.service,
            _printable(method or "-"),
            _printable(path or "-"),
            client or "-",
            _printable(decision.rule or "-"),
            _printable(decision.reason),
            extra={"certwright_access": fields},
        )

    def refused(
        self,
        reason: str,
        *,
        der: bytes | None = None,
        method: str | None = None,
        path: str | None = None,
        client: str | None = None,
    ) -> Decision:
        """Log and return the denial for a peer that was refused before any policy ran."""
        decision = Decision(False, reason)
        fingerprint = hashlib.sha256(der).hexdigest() if der else None
        self.log(decision, identity=None, method=method, path=path, client=client, fingerprint=fingerprint)
        return decision


class PeerServer:
    """A running :func:`start_server` server: the asyncio server plus its connection tasks.

    ``close()`` stops accepting; ``wait_closed(timeout)`` waits for the handlers still
    running and cancels them once ``timeout`` has passed (graceful shutdown).
    """

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self.server.sockets) if self.server else ()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        return str(self.sockets[0].getsockname()[0])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_closed(self, timeout: float | None = 10.0) -> None:
        """Wait for running handlers (at most ``timeout`` seconds, then cancel them)."""
        if self.server is not None:
            await self.server.wait_closed()
        pending = {t for t in self.tasks if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    async def serve_forever(self) -> None:
        assert self.server is not None
        await self.server.serve_forever()

    async def __aenter__(self) -> PeerServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    verifier: PeerVerifier,
    policy: PolicyLike | None,
    service: str,
    files: TLSFiles | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ssl_handshake_timeout: float = 10.0,
    logger: logging.Logger | None = None,
    **kwargs: Any,
) -> PeerServer:
    """Start an mTLS TCP server calling ``handler(reader, writer, peer)`` for authorized peers.

    Give ``files`` (certwright's reloading :func:`~certwright.mtls.context.server_context`
    is built from them) or a ready ``ssl_context``. Each connection's peer is verified with
    ``verifier`` and decided by ``policy`` for ``Request(service)``; refused peers are
    closed without reaching the handler, with the reason logged on ``certwright.mtls.access``.
    The writer is closed when the handler returns. Extra ``kwargs`` go to
    :func:`asyncio.start_server` (``backlog``, ``reuse_port`` ...).
    """
    if (files is None) == (ssl_context is None):
        raise TypeError("give exactly one of files= and ssl_context=")
    context = ssl_context if files is None else server_context(files)
    gate = AccessGate(verifier=verifier, policy=policy, service=service, logger=logger)
    running = PeerServer()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            running.tasks.add(task)
            task.add_done_callback(running.tasks.discard)
        try:
            peer = _admit(gate, writer)
            if peer is not None:
                await handler(reader, writer, peer)
        except Exception:
            gate.logger.exception("service %s: the connection handler failed", service)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    running.server = await asyncio.start_server(
        on_connection, host, port, ssl=context, ssl_handshake_timeout=ssl_handshake_timeout, **kwargs
    )
    return running


def _admit(gate: AccessGate, writer: asyncio.StreamWriter) -> Peer | None:
    """The authorized peer of a new connection, or None (refusal logged)."""
    client = _address(writer.get_extra_info("peername"))
    ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        # Only reachable with a context that does not require client certificates.
        gate.refused("no client certificate", client=client)
        return None
    try:
        peer = gate.peer(der)
    except PeerRefused as exc:
        gate.refused(f"peer refused: {exc.reason}", der=der, client=client)
        return None
    return peer if gate.decide(peer, client=client) else None


def _printable(text: str) -> str:
    """Untrusted text for one log line: a decoded path may hold "\\n" and forge a record."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _address(peername: object) -> str | None:
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return None
