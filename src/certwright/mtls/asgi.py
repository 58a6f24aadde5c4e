"""ASGI middleware: the verified peer on every request, and the access policy enforced.

:class:`MTLSMiddleware` is pure ASGI (it works with Starlette, FastAPI and any ASGI 3
app). For each ``http`` and ``websocket`` scope it reads the client certificate from the
ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``: PEM strings, leaf
first), turns it into a :class:`~certwright.mtls.peer.Peer` with the verifier (cached per
certificate), asks the policy about ``(service, method, path)`` and then either calls the
app with the peer and decision on the request, or answers itself without calling it.

What the app sees: ``request.state.peer`` and ``request.state.access_decision`` (Starlette,
FastAPI), and the same objects under ``scope["certwright.peer"]`` and
``scope["certwright.decision"]`` for plain ASGI code; :func:`peer_of` reads them.

Refusals are RFC 9457 problem documents (``application/problem+json``):

=======  ============================================  ==========================================
status   type                                          when
=======  ============================================  ==========================================
403      ``urn:certwright:problem:access-denied``      the policy denies the request
403      ``urn:certwright:problem:peer-refused``       the certificate is refused (revoked, no
                                                       identity, outside the trust domain ...)
403      ``urn:certwright:problem:no-client-certificate``  the connection carries no certificate
400      ``urn:certwright:problem:ambiguous-path``     the path could be read two ways (below)
500      ``urn:certwright:problem:tls-unavailable``    the server gives no ASGI TLS extension
=======  ============================================  ==========================================

A missing or refused certificate is 403, not 401: 401 belongs to HTTP authentication schemes
and obliges a ``WWW-Authenticate`` challenge (RFC 9110 section 15.5.2), while a TLS client
certificate is not an HTTP scheme and cannot be retried inside the same connection.

The policy decides on ``scope["path"]``: the percent-decoded path the app routes on
(Starlette matches routes against it, never against ``raw_path``). Paths that a proxy, a
file handler or a second decoding step could read differently are refused with 400 before
any decision (``strict_paths=True``, the default), by the rules of
:func:`certwright.access.paths.path_problem` applied to the decoded path and to ``raw_path``:
dot segments (``/a/../b``, also sent as ``%2e%2e`` or ``%252e%252e``), empty segments
(``//``), an encoded ``/`` or ``\\`` (``%2F``, ``%5C``), backslashes, ``;`` and control
characters. (The policy denies such paths too; this answers them with 400 even without one.)

Example::

    from starlette.applications import Starlette
    from certwright.access.policy import Policy
    from certwright.mtls.asgi import MTLSMiddleware
    from certwright.mtls.peer import PeerVerifier

    app = MTLSMiddleware(
        Starlette(routes=...),
        verifier=PeerVerifier(Path("bundle.pem")),
        policy=Policy.load("policy.toml"),
        service="payments",
    )
    # serve it with certwright.mtls.uvicorn.serve(app, files=..., port=8443)
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from certwright.access.paths import path_problem
from certwright.access.policy import Decision
from certwright.mtls.peer import Peer, PeerRefused, PeerVerifier
from certwright.mtls.server import ACCESS_LOGGER, AccessGate, PolicyLike

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PEER_KEY = "certwright.peer"
DECISION_KEY = "certwright.decision"

PROBLEM_ACCESS_DENIED = "urn:certwright:problem:access-denied"
PROBLEM_PEER_REFUSED = "urn:certwright:problem:peer-refused"
PROBLEM_NO_CERTIFICATE = "urn:certwright:problem:no-client-certificate"
PROBLEM_AMBIGUOUS_PATH = "urn:certwright:problem:ambiguous-path"
PROBLEM_TLS_UNAVAILABLE = "urn:certwright:problem:tls-unavailable"

logger = logging.getLogger(ACCESS_LOGGER)


class _Refusal(Exception):
    """Internal: the request is answered with a problem document instead of the app."""

    def __init__(self, status: int, type_: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type_
        self.title = title
        self.detail = detail


class MTLSMiddleware:
    """Puts the verified :class:`Peer` on each request and enforces the access policy.

    ``policy``: a :class:`~certwright.access.policy.Policy`, a reloading
    ``PolicySource``, or ``None`` (given explicitly) to admit every verified peer and let
    the app authorize with ``request.state.peer``. ``service`` is the service name the
    policy rules refer to. ``strict_paths`` refuses ambiguous paths (see the module doc).
    ``reverify_chain`` verifies the presented chain against the verifier's bundle on every
    request instead of trusting the server's handshake: for ASGI servers whose TLS settings
    certwright does not control (with :mod:`certwright.mtls.uvicorn` the handshake already
    verified it). Lifespan and other scopes pass through untouched.

    Example::

        app = MTLSMiddleware(app, verifier=verifier, policy=policy, service="ledger")
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: PeerVerifier,
        policy: PolicyLike | None,
        service: str,
        strict_paths: bool = True,
        reverify_chain: bool = False,
        websocket_method: str = "GET",
        logger: logging.Logger | None = None,
    ) -> None:
        self.app = app
        self.gate = AccessGate(verifier=verifier, policy=policy, service=service, logger=logger)
        self.strict_paths = strict_paths
        self.reverify_chain = reverify_chain
        # A WebSocket handshake is an HTTP GET (RFC 6455 section 4.1): the policy sees it as one.
        self.websocket_method = websocket_method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            peer, decision = self._admit(scope)
        except _Refusal as refusal:
            await _answer(scope, receive, send, refusal)
            return
        inner = dict(scope)
        inner["state"] = {**(scope.get("state") or {}), "peer": peer, "access_decision": decision}
        inner[PEER_KEY] = peer
        inner[DECISION_KEY] = decision
        await self.app(inner, receive, send)

    def _admit(self, scope: Scope) -> tuple[Peer, Decision]:
        method = str(scope.get("method", "")) if scope["type"] == "http" else self.websocket_method
        path = str(scope.get("path", ""))
        where: dict[str, Any] = {"method": method, "path": path, "client": _client(scope)}
        gate = self.gate
        tls = (scope.get("extensions") or {}).get("tls")
        if not isinstance(tls, Mapping):
            # Fail closed: without the extension nobody can tell who the peer is.
            gate.logger.error(
                "service %s: the ASGI server provides no TLS extension (scope['extensions']['tls']); "
                "every request is refused. Serve the app with certwright.mtls.uvicorn, or a server "
                "that implements the ASGI TLS extension, over TLS with client certificates",
                gate.service,
            )
            gate.refused("server misconfigured: no ASGI TLS extension", **where)
            raise _Refusal(
                500, PROBLEM_TLS_UNAVAILABLE, "TLS information unavailable",
                "The server does not pass the TLS connection details to the application.",
            )
        peer = self._authenticate(tls, where)
        if self.strict_paths:
            problem = ambiguous_path(scope)
            if problem is not None:
                identity = str(peer.identity) if peer.identity else None
                gate.log(
                    Decision(False, f"ambiguous path: {problem}"),
                    identity=identity, fingerprint=peer.fingerprint, **where,
                )
                raise _Refusal(400, PROBLEM_AMBIGUOUS_PATH, "Ambiguous path", problem)
        decision = gate.decide(peer, **where)
        if not decision.allowed:
            raise _Refusal(403, PROBLEM_ACCESS_DENIED, "Access denied", decision.reason)
        return peer, decision

    def _authenticate(self, tls: Mapping[str, Any], where: dict[str, Any]) -> Peer:
        """The verified peer of the TLS extension's client certificate, or a logged refusal."""
        gate = self.gate
        chain = list(tls.get("client_cert_chain") or ())
        if not chain:
            gate.refused("no client certificate", **where)
            raise _Refusal(
                403, PROBLEM_NO_CERTIFICATE, "Client certificate required",
                "This service requires a TLS client certificate.",
            )
        try:
            ders = [_der(pem) for pem in chain]
        except ValueError as exc:
            gate.refused(f"unreadable client certificate: {exc}", **where)
            raise _Refusal(
                403, PROBLEM_PEER_REFUSED, "Peer refused", "unreadable client certificate"
            ) from exc
        error = tls.get("client_cert_error")
        if error:
            # The server let an unverified certificate through: never admit it (ASGI TLS spec).
            reason = f"the server could not verify the client certificate: {error}"
            gate.refused(reason, der=ders[0], **where)
            raise _Refusal(403, PROBLEM_PEER_REFUSED, "Peer refused", reason)
        try:
            return gate.peer_from_chain(ders) if self.reverify_chain else gate.peer(ders[0])
        except PeerRefused as exc:
            gate.refused(f"peer refused: {exc.reason}", der=ders[0], **where)
            raise _Refusal(403, PROBLEM_PEER_REFUSED, "Peer refused", exc.reason) from exc


def ambiguous_path(scope: Mapping[str, Any]) -> str | None:
    """Why the request path could be read two ways, or None when it is unambiguous.

    The policy and the app both see the decoded ``scope["path"]``; the checks of
    :func:`certwright.access.paths.path_problem` run on it and on ``raw_path`` as sent, so
    that a second reader (a proxy resolving dot segments, a handler decoding once more, a
    router reading ``raw_path``, a Windows path) cannot reach what the policy never saw.
    """
    path = scope.get("path")
    if not isinstance(path, str):
        return "the request has no path"
    problem = path_problem(path)
    if problem is not None:
        return f"the path {problem}"
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        # latin-1 maps every byte to one character: nothing in raw_path is hidden from the check.
        problem = path_problem(raw.decode("latin-1"))
        if problem is not None:
            return f"the path as sent {problem}"
    return None


def peer_of(request: object) -> Peer:
    """The verified peer of a request (a Starlette/FastAPI ``Request``, or an ASGI scope).

    Raises ``LookupError`` when the request did not pass through :class:`MTLSMiddleware`,
    so a misconfigured app fails instead of running without an identity.

    Example (FastAPI)::

        @app.get("/whoami")
        def whoami(peer: Peer = Depends(peer_of)) -> dict[str, str]:
            return {"identity": str(peer.identity)}
    """
    scope = request if isinstance(request, Mapping) else getattr(request, "scope", None)
    peer = scope.get(PEER_KEY) if isinstance(scope, Mapping) else None
    if not isinstance(peer, Peer):
        raise LookupError("no certwright peer on this request: is the app wrapped in MTLSMiddleware?")
    return peer


@functools.lru_cache(maxsize=1024)
def _der(pem: str) -> bytes:
    # Cached: a keep-alive connection presents the same PEM string on every request.
    return ssl.PEM_cert_to_DER_cert(pem)


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    if isinstance(client, list | tuple) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return None


async def _answer(scope: Scope, receive: Receive, send: Send, refusal: _Refusal) -> None:
    body = json.dumps(
        {"type": refusal.type, "title": refusal.title, "status": refusal.status, "detail": refusal.detail}
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    # WebSocket: wait for the handshake request, then refuse it before accepting.
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # 1008: policy violation (RFC 6455 section 7.4.1); servers answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.title})
