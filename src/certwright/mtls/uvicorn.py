"""Serve an ASGI app over mTLS with uvicorn, the client certificate given to the app.

uvicorn (like hypercorn) does not implement the ASGI TLS extension: the app never learns
which certificate the client presented. This module is the small adapter that closes the
gap, with nothing patched:

* :func:`tls_protocol` subclasses a uvicorn protocol class (``H11Protocol``,
  ``HttpToolsProtocol``, the WebSocket ones) so that on ``connection_made`` (called by
  asyncio once the handshake is complete) it reads the peer certificate from the
  connection's ``ssl_object`` and adds ``scope["extensions"]["tls"]`` to every request of
  that connection, as the ASGI TLS extension specifies. uvicorn accepts protocol classes
  for ``Config(http=..., ws=...)``. The subclass also writes each response in one piece
  (status line, headers and body: one TLS record, one ``send``) instead of uvicorn's two.
  It works with h11 and httptools, on asyncio's loop and on uvloop (uvicorn's "auto"
  picks httptools and uvloop when they are installed, as certwright's dependencies are).
* :func:`config` builds a uvicorn ``Config`` using those classes and certwright's reloading
  :func:`~certwright.mtls.context.server_context` (client certificates required, rotated
  files picked up without a restart), and optionally wraps the app in
  :class:`~certwright.mtls.asgi.MTLSMiddleware`.
* :class:`MTLSServer` is uvicorn's ``Server`` bound before it starts (so ``port=0`` works
  and :attr:`MTLSServer.port` tells the port), startable in the background of a running
  loop; :class:`ServerThread` runs one in a thread; :func:`serve` runs one in the foreground
  with uvicorn's graceful shutdown on SIGINT/SIGTERM.

Example::

    from certwright.mtls.context import TLSFiles
    from certwright.mtls.peer import PeerVerifier
    from certwright.mtls import uvicorn as mtls_uvicorn

    files = TLSFiles(Path("cert.pem"), Path("key.pem"), Path("bundle.pem"))
    mtls_uvicorn.serve(
        app, files=files, host="0.0.0.0", port=8443,
        verifier=PeerVerifier(files.bundle), policy=Policy.load("policy.toml"), service="payments",
    )
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

from certwright.mtls.asgi import ASGIApp, MTLSMiddleware, Receive, Scope, Send
from certwright.mtls.context import TLSFiles, server_context
from certwright.mtls.peer import PeerVerifier
from certwright.mtls.server import PolicyLike

# ASGI TLS extension: tls_version is the TLS record-layer version number.
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class _Unset(enum.Enum):
    UNSET = "unset"


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension dict for a connection, or None when it is not TLS.

    ``client_cert_chain`` holds the client's leaf only: Python before 3.13 exposes no
    peer chain. ``client_cert_error`` is None: with a certwright server context an
    unverified certificate fails the handshake and never reaches here (it is set only for a
    context that does not verify at all, ``CERT_NONE``, and the middleware then refuses). ``server_cert`` is
    None (the spec's value when unknown): ``ssl`` does not expose the local certificate.
    """
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    error = None
    if der and ssl_object.context.verify_mode == ssl.CERT_NONE:
        # Not reachable with certwright's contexts; with CERT_NONE the certificate proves nothing.
        error = "the server's TLS context does not verify client certificates (CERT_NONE)"
    return {
        "server_cert": None,
        "client_cert_chain": (ssl.DER_cert_to_PEM_cert(der),) if der else (),
        "client_cert_name": _rfc4514_name(der) if der else None,
        "client_cert_error": error,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": _cipher_ids().get(cipher[0]) if cipher else None,
    }


def _rfc4514_name(der: bytes) -> str | None:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


@functools.cache
def _cipher_ids() -> dict[str, int]:
    # OpenSSL names -> IANA 16-bit suite numbers (the extension wants the number).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL")
    return {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}


class _WithTLS:
    """Adds one connection's TLS extension to the http and websocket scopes it carries."""

    def __init__(self, app: ASGIApp, tls: Mapping[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": dict(self.tls)}
        await self.app(scope, receive, send)


class _CoalescingTransport(asyncio.Transport):
    """A transport whose writes within one turn of the event loop go out as one write.

    uvicorn writes a response's status line and headers, then its body, as two writes:
    over TLS that is two records, two ``send`` calls and two wake-ups of the client for
    every response. Collected and written once at the end of the loop's turn (``call_soon``),
    they are one. Everything else is the wrapped transport's; ``close`` writes what is
    collected first, ``abort`` drops it.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


def tls_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A subclass of the uvicorn protocol ``base`` that provides the ASGI TLS extension.

    Works with every uvicorn protocol that takes its app from ``self.app`` per request
    (h11, httptools, wsproto, websockets). Cached: one class per base. The connection's
    writes within one turn of the event loop go out as one (:class:`_CoalescingTransport`);
    on a plain-TCP connection that is all it does (no TLS, no extension).

    Example::

        from uvicorn.protocols.http.h11_impl import H11Protocol
        uvicorn.Config(app, http=tls_protocol(H11Protocol), ssl_context_factory=...)
    """

    made = _TLS_PROTOCOLS.get(base)
    if made is not None:
        return made

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport) and not isinstance(transport, _CoalescingTransport):
            transport = _CoalescingTransport(transport)  # (a WebSocket upgrade passes it on)
        base.connection_made(self, transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTLS(self.app, tls)

    made = type(
        f"TLS{base.__name__}",
        (base,),
        {"connection_made": connection_made, "__module__": __name__, "__doc__": tls_protocol.__doc__},
    )
    return _TLS_PROTOCOLS.setdefault(base, made)


# One subclass per uvicorn protocol class, so that tls_protocol(H11Protocol) is always the same class.
_TLS_PROTOCOLS: dict[type[asyncio.Protocol], type[asyncio.Protocol]] = {}


def config(
    app: ASGIApp,
    *,
    files: TLSFiles | None = None,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 8443,
    verifier: PeerVerifier | None = None,
    policy: PolicyLike | _Unset | None = _Unset.UNSET,
    service: str | None = None,
    **options: Any,
) -> uvicorn.Config:
    """A loaded uvicorn ``Config`` serving ``app`` over mTLS with the TLS extension.

    Give ``files`` (certwright's reloading server context is built from them) or a ready
    ``ssl_context``. With ``verifier``, the app is wrapped in
    :class:`~certwright.mtls.asgi.MTLSMiddleware` for ``service``, and ``policy`` must then
    be given (``None`` explicitly admits every verified peer). Other ``options`` go to
    ``uvicorn.Config``; ``proxy_headers`` defaults to False, since the peer's address comes
    from the TLS connection, not from headers a client can write.

    Example::

        cfg = config(app, files=files, port=0, verifier=verifier, policy=policy, service="web")
    """
    if (files is None) == (ssl_context is None):
        raise TypeError("give exactly one of files= and ssl_context=")
    context = ssl_context if files is None else server_context(files)
    assert context is not None
    if verifier is not None:
        if isinstance(policy, _Unset) or not service:
            raise TypeError("with verifier=, give service= and policy= (policy=None admits every peer)")
        app = MTLSMiddleware(app, verifier=verifier, policy=policy, service=service)
    elif not isinstance(policy, _Unset) or service is not None:
        raise TypeError("policy= and service= need verifier=")
    options.setdefault("proxy_headers", False)
    options.setdefault("http", tls_protocol(AutoHTTPProtocol))
    if isinstance(AutoWebSocketsProtocol, type):
        options.setdefault("ws", tls_protocol(AutoWebSocketsProtocol))
    else:
        options.setdefault("ws", "none")
    for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "ssl_context_factory"):
        if name in options:
            raise TypeError(f"{name}= is replaced by files= or ssl_context=")
    cfg = uvicorn.Config(app, host=host, port=port, **options)
    cfg.load()
    # Set after load(): load() builds its own context from file paths (or none at all);
    # this way every uvicorn >= 0.30 serves certwright's context, reloading included.
    cfg.ssl = context
    return cfg


class MTLSServer(uvicorn.Server):
    """uvicorn's ``Server``, bound at creation (``port=0`` works) and startable in the background.

    Example::

        server = MTLSServer(config(app, files=files, port=0))
        async with server:                 # start(): returns once it accepts connections
            print(server.url)              # https://127.0.0.1:<bound port>
        # leaving the block: graceful shutdown (stop())
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        if config.ssl is None:
            raise ValueError("the config has no TLS context: build it with certwright.mtls.uvicorn.config")
        self.socket = _bind(config.host, config.port)
        # Kept: the address stays known after shutdown has closed the socket.
        self.address: tuple[str, int] = self.socket.getsockname()[:2]
        self.ready = threading.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        """The bound port (the real one when the config asked for port 0)."""
        return self.address[1]

    @property
    def url(self) -> str:
        host = self.host
        return f"https://[{host}]:{self.port}" if ":" in host else f"https://{host}:{self.port}"

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve on the socket bound at creation (uvicorn's loop, signals and shutdown)."""
        await super().serve(sockets=sockets if sockets is not None else [self.socket])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # uvicorn says where it listens only when it bound the socket itself; say it on
        # uvicorn's logger, which its default logging configuration shows.
        logging.getLogger("uvicorn.error").info("Uvicorn running on %s with mTLS (CTRL+C to quit)", self.url)
        self.ready.set()

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start serving in a task of the running loop; return once connections are accepted."""
        if self._task is not None:
            raise RuntimeError("the server is already started")
        self._task = asyncio.get_running_loop().create_task(self._serve_guarded())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ready.is_set():
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the server stopped before it started")
            if loop.time() > deadline:
                await self.stop()
                raise TimeoutError(f"the server did not start within {timeout} s")
            await asyncio.wait({self._task}, timeout=0.01)

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish the requests in flight, run lifespan shutdown."""
        self.should_exit = True
        if self._task is not None:
            task, self._task = self._task, None
            await task
        else:
            self.socket.close()

    async def _serve_guarded(self) -> None:
        try:
            await self.serve()
        except SystemExit as exc:
            # uvicorn exits the process when the lifespan startup fails: not ours to do.
            raise RuntimeError(f"uvicorn refused to start (exit status {exc.code})") from exc

    async def __aenter__(self) -> MTLSServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class ServerThread:
    """Runs an :class:`MTLSServer` on its own event loop in a thread (tests, sync programs).

    Example::

        with ServerThread(config(app, files=files, port=0)) as running:
            httpx.get(running.url + "/health", verify=client_ctx)
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self.server = MTLSServer(config)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"certwright-uvicorn-{self.port}", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, *, timeout: float = 30.0) -> ServerThread:
        """Start the thread; return once the server accepts connections."""
        self._thread.start()
        if not self.server.ready.wait(timeout) or self.error is not None:
            self.stop(timeout=timeout)
            raise RuntimeError(f"the server did not start: {self.error!r}") from self.error
        return self

    def stop(self, *, timeout: float = 30.0) -> None:
        """Graceful shutdown; waits at most ``timeout`` seconds for the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(timeout)
        else:
            self.server.socket.close()

    def _run(self) -> None:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = self.server.config.get_loop_factory()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self.server.serve())
        except BaseException as exc:  # reported by start(); the thread must not die silently
            self.error = exc
            self.server.ready.set()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    app: ASGIApp,
    *,
    files: TLSFiles | None = None,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 8443,
    verifier: PeerVerifier | None = None,
    policy: PolicyLike | _Unset | None = _Unset.UNSET,
    service: str | None = None,
    **options: Any,
) -> None:
    """Serve ``app`` over mTLS in the foreground until SIGINT/SIGTERM (graceful shutdown).

    Arguments as for :func:`config`.

    Example::

        serve(app, files=files, port=8443, verifier=verifier, policy=policy, service="ledger")
    """
    cfg = config(
        app, files=files, ssl_context=ssl_context, host=host, port=port,
        verifier=verifier, policy=policy, service=service, **options,
    )
    MTLSServer(cfg).run()


def _bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket, so the port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP; without it uvicorn's separate head and body writes
    # wait ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    with contextlib.ExitStack() as undo:
        undo.callback(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        undo.pop_all()
    return sock
