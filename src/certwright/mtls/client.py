"""mTLS clients that check *who* answered: ``ssl`` sockets and ``httpx`` clients.

Workloads are named by their SPIFFE URI, not a hostname, so the client contexts of
:mod:`certwright.mtls.context` leave hostname checking off and these helpers compare the
server's one URI SAN with the identity the caller expects, right after the handshake and
before a single request byte is sent. The chain itself (trust bundle, validity, the
intermediate's name constraints) is verified by OpenSSL during the handshake.

Example::

    files = TLSFiles(Path("web.pem"), Path("web.key"), Path("bundle.pem"))
    with httpx_client(files, expect="spiffe://example.org/payments") as client:
        client.get("https://127.0.0.1:8443/charge")

    sock = connect("127.0.0.1", 8443, files=files, expect="spiffe://example.org/payments")
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import httpcore
import httpx
from cryptography import x509

from certwright.errors import CertwrightError, InvalidIdentityError, InvalidInputError
from certwright.mtls.context import ClientTLS, TLSFiles
from certwright.mtls.peer import PeerRefused
from certwright.verify.identity import identity_of
from certwright.x509.identity import SpiffeId

ContextSource = Callable[[], ssl.SSLContext]
"""Returns the client context to use for the next connection (picks up rotated files)."""

_TLSConnection = ssl.SSLSocket | ssl.SSLObject | asyncio.BaseTransport


class IdentityMismatch(PeerRefused):
    """The server's certificate does not name the identity the client expected."""


def check_peer_identity(conn: _TLSConnection | Any, expect: str | SpiffeId) -> SpiffeId:
    """Return the peer's SPIFFE ID if it is exactly ``expect``; raise :class:`PeerRefused` if not.

    ``conn`` is a handshaken ``ssl.SSLSocket``, ``ssl.SSLObject``, asyncio transport, or the
    low-level ssl object httpcore exposes. Only the URI SAN counts: a certificate with the
    right CN (or DNS name) but another URI is refused, and so is one carrying two URIs
    (SPIFFE X509-SVID 2: exactly one URI SAN, else which one would the peer be?).

    Example::

        check_peer_identity(sock, "spiffe://example.org/payments")
    """
    wanted = expect if isinstance(expect, SpiffeId) else _parse_expect(expect)
    der = _peer_der(conn)
    if der is None:
        raise PeerRefused("the server presented no certificate")
    try:
        certificate = x509.load_der_x509_certificate(der)
        found = identity_of(certificate)
    except (ValueError, CertwrightError) as exc:
        raise PeerRefused(f"the server certificate names no usable identity: {exc}") from None
    if found is None:
        raise IdentityMismatch(f"the server certificate has no URI SAN; expected {wanted}")
    if found != wanted:
        raise IdentityMismatch(f"the server is {found}, not the expected {wanted}")
    return found


def _parse_expect(expect: str) -> SpiffeId:
    try:
        return SpiffeId.parse(expect)
    except InvalidIdentityError as exc:
        raise InvalidIdentityError(f"expected server identity: {exc}") from None


def _peer_der(conn: object) -> bytes | None:
    if isinstance(conn, asyncio.BaseTransport):
        conn = conn.get_extra_info("ssl_object")
    getpeercert = getattr(conn, "getpeercert", None)
    if getpeercert is None:
        raise PeerRefused("the connection is not a TLS connection")
    # Positional: the C-level _ssl._SSLSocket httpcore hands out takes no keyword.
    der = getpeercert(True)
    return der if isinstance(der, bytes) else None


def context_source(
    files: TLSFiles | None = None, *, tls: ClientTLS | ssl.SSLContext | None = None
) -> ContextSource:
    """Client contexts from either ``files`` (reloaded when rotated) or ``tls`` (exactly one)."""
    if (files is None) == (tls is None):
        raise TypeError("give exactly one of files= or tls=")
    if files is not None:
        return ClientTLS(files).context
    if isinstance(tls, ssl.SSLContext):
        fixed = tls
        return lambda: fixed
    assert tls is not None
    return tls.context


def connect(
    host: str,
    port: int,
    *,
    files: TLSFiles | None = None,
    tls: ClientTLS | ssl.SSLContext | None = None,
    expect: str | SpiffeId | None = None,
    timeout: float | None = 10.0,
    server_hostname: str | None = None,
) -> ssl.SSLSocket:
    """Open a TCP connection, make the mTLS handshake, check the server identity.

    ``expect`` is the server's SPIFFE ID; without it only the chain is verified (any
    workload of the trust bundle is accepted: say so on purpose). ``server_hostname`` is
    sent as SNI (default ``host``).

    Example::

        with connect("127.0.0.1", 8443, files=files, expect="spiffe://example.org/db") as s:
            s.sendall(b"ping")
    """
    source = context_source(files, tls=tls)
    wanted = None if expect is None else (expect if isinstance(expect, SpiffeId) else _parse_expect(expect))
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        conn = source().wrap_socket(raw, server_hostname=server_hostname or host)
    except BaseException:
        raw.close()
        raise
    try:
        if wanted is not None:
            check_peer_identity(conn, wanted)
    except BaseException:
        conn.close()
        raise
    return conn


# --- httpx -------------------------------------------------------------------------------
# httpx hands TLS to httpcore, whose network backend is the one public hook that runs
# after the handshake and before the first request byte: start_tls below makes the
# handshake with the current context (rotated files), checks the identity, and only then
# returns the stream to the connection pool.


class _CheckingStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, source: ContextSource, expect: SpiffeId | None) -> None:
        self._inner = inner
        self._source = source
        self._expect = expect

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # The pool's own context is ignored on purpose: the source's is the current one.
        stream = self._inner.start_tls(self._source(), server_hostname, timeout)
        if self._expect is not None:
            try:
                check_peer_identity(stream.get_extra_info("ssl_object"), self._expect)
            except BaseException:
                stream.close()
                raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CheckingBackend(httpcore.NetworkBackend):
    def __init__(self, source: ContextSource, expect: SpiffeId | None) -> None:
        self._inner = httpcore.SyncBackend()
        self._source = source
        self._expect = expect

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CheckingStream(stream, self._source, self._expect)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _CheckingStream(stream, self._source, self._expect)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncCheckingStream(httpcore.AsyncNetworkStream):
    def __init__(
        self, inner: httpcore.AsyncNetworkStream, source: ContextSource, expect: SpiffeId | None
    ) -> None:
        self._inner = inner
        self._source = source
        self._expect = expect

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(self._source(), server_hostname, timeout)
        if self._expect is not None:
            try:
                check_peer_identity(stream.get_extra_info("ssl_object"), self._expect)
            except BaseException:
                await stream.aclose()
                raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncCheckingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, source: ContextSource, expect: SpiffeId | None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._source = source
        self._expect = expect

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncCheckingStream(stream, self._source, self._expect)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _AsyncCheckingStream(stream, self._source, self._expect)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pool_options(limits: httpx.Limits) -> dict[str, Any]:
    return {
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


class MTLSTransport(httpx.HTTPTransport):
    """An httpx transport whose connections present the workload's certificate and check
    the server identity after each handshake (see :func:`httpx_client`)."""

    def __init__(
        self,
        source: ContextSource,
        *,
        expect: SpiffeId | None,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
    ) -> None:
        super().__init__(verify=source(), limits=limits, trust_env=False)
        # HTTPTransport has no network_backend parameter: its pool is rebuilt with ours,
        # keeping httpx's request/response mapping and exception translation.
        self._pool = httpcore.ConnectionPool(
            ssl_context=source(),
            network_backend=_CheckingBackend(source, expect),
            **_pool_options(limits),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _require_https(request)
        return super().handle_request(request)


class AsyncMTLSTransport(httpx.AsyncHTTPTransport):
    """The asyncio/trio twin of :class:`MTLSTransport` (see :func:`async_httpx_client`)."""

    def __init__(
        self,
        source: ContextSource,
        *,
        expect: SpiffeId | None,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
    ) -> None:
        super().__init__(verify=source(), limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=source(),
            network_backend=_AsyncCheckingBackend(source, expect),
            **_pool_options(limits),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _require_https(request)
        return await super().handle_async_request(request)


def _require_https(request: httpx.Request) -> None:
    """The identity and chain checks run in the TLS handshake: a plain-HTTP request would
    skip them and send its body (a token, a CSR) to whoever answers."""
    if request.url.scheme != "https":
        raise InvalidInputError(f"refusing to send a request to {request.url.scheme}://: mTLS needs https://")


def _transport_args(
    files: TLSFiles | None, tls: ClientTLS | ssl.SSLContext | None, expect: str | SpiffeId | None
) -> tuple[ContextSource, SpiffeId | None]:
    source = context_source(files, tls=tls)
    wanted = None if expect is None else (expect if isinstance(expect, SpiffeId) else _parse_expect(expect))
    return source, wanted


def httpx_client(
    files: TLSFiles | None = None,
    *,
    expect: str | SpiffeId | None,
    tls: ClientTLS | ssl.SSLContext | None = None,
    limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
    **kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` speaking mTLS with ``files`` and checking the server is ``expect``.

    The identity is checked after every TLS handshake, before any request byte is sent; a
    mismatch raises :class:`IdentityMismatch` from the request. ``expect=None`` must be
    passed explicitly and accepts any server the bundle trusts. Rotated files are used by
    new connections. Other keyword arguments go to ``httpx.Client`` (``base_url``,
    ``timeout``, ``headers`` ...); ``verify``, ``cert``, ``transport`` and ``proxy`` are
    refused: this client owns its TLS.

    Example::

        with httpx_client(files, expect="spiffe://example.org/ledger") as client:
            client.post("https://ledger.internal:8443/entries", json={...})
    """
    _refuse_tls_kwargs(kwargs)
    source, wanted = _transport_args(files, tls, expect)
    return httpx.Client(transport=MTLSTransport(source, expect=wanted, limits=limits), **kwargs)


def async_httpx_client(
    files: TLSFiles | None = None,
    *,
    expect: str | SpiffeId | None,
    tls: ClientTLS | ssl.SSLContext | None = None,
    limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
    **kwargs: Any,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` twin of :func:`httpx_client`.

    Example::

        async with async_httpx_client(files, expect="spiffe://example.org/ledger") as client:
            await client.get("https://127.0.0.1:8443/health")
    """
    _refuse_tls_kwargs(kwargs)
    source, wanted = _transport_args(files, tls, expect)
    transport = AsyncMTLSTransport(source, expect=wanted, limits=limits)
    return httpx.AsyncClient(transport=transport, **kwargs)


def _refuse_tls_kwargs(kwargs: dict[str, Any]) -> None:
    for name in ("verify", "cert", "transport", "mounts", "proxy", "trust_env"):
        if name in kwargs:
            raise TypeError(f"httpx_client sets up TLS itself: {name}= is not accepted")
