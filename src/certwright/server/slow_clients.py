"""Slow clients may not hold connections: request headers within a deadline.

uvicorn closes a keep-alive connection that sends nothing for ``timeout_keep_alive``, but
any byte resets that timer, and nothing bounds how long a request's headers may take: a
client that opens many connections and sends a header byte every few seconds
("slowloris") would hold them all, each one a slot of ``max_connections``. Here every
connection must complete a request's headers within ``timeout`` seconds of being
accepted, and again of each response finishing; the body then has its own deadline
(:class:`certwright.server.api.BodyLimit`).

Example::

    http = guarded(tls_protocol(AutoHTTPProtocol), timeout=10.0)
    uvicorn.Config(app, http=http, limit_concurrency=1000)
"""

from __future__ import annotations

import asyncio
from typing import Any


def guarded(base: type[asyncio.Protocol], *, timeout: float) -> type[asyncio.Protocol]:
    """A subclass of the uvicorn HTTP protocol ``base`` (h11 or httptools) that closes a
    connection whose next request's headers are not complete ``timeout`` seconds after it
    was accepted or after its last response. Cached per (base, timeout)."""
    if timeout <= 0:
        raise ValueError("the header timeout must be positive")
    made = _GUARDED.get((base, timeout))
    if made is None:
        made = _GUARDED.setdefault((base, timeout), _subclass(base, timeout))
    return made


_GUARDED: dict[tuple[type[asyncio.Protocol], float], type[asyncio.Protocol]] = {}


def _subclass(base: type[asyncio.Protocol], timeout: float) -> type[asyncio.Protocol]:

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        _arm(self, timeout)

    def on_response_complete(self: Any) -> None:
        base.on_response_complete(self)  # type: ignore[attr-defined]
        _arm(self, timeout)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        base.connection_lost(self, exc)

    return type(
        f"Guarded{base.__name__}",
        (base,),
        {
            "connection_made": connection_made,
            "on_response_complete": on_response_complete,
            "connection_lost": connection_lost,
            "__module__": __name__,
            "__doc__": guarded.__doc__,
        },
    )


def _arm(protocol: Any, timeout: float) -> None:
    _disarm(protocol)
    # The request cycle now current: a new one means the next request's headers arrived.
    seen = protocol.cycle
    protocol._certwright_header_timer = protocol.loop.call_later(timeout, _expired, protocol, seen)


def _disarm(protocol: Any) -> None:
    timer = getattr(protocol, "_certwright_header_timer", None)
    if timer is not None:
        timer.cancel()
        protocol._certwright_header_timer = None


def _expired(protocol: Any, seen: object) -> None:
    protocol._certwright_header_timer = None
    if protocol.cycle is seen and not protocol.transport.is_closing():
        protocol.transport.close()  # no request's headers in time: not worth a slot
