"""Connections spread evenly over the worker processes of one server.

The workers of :mod:`certwright.server.workers` share each listening socket (inherited
through ``fork``). Left to the kernel, whichever worker wakes first takes every
connection waiting, and ``SO_REUSEPORT`` spreads them by a hash of the addresses: with a
few long-lived keep-alive connections (a gateway, a load generator, agents behind one
proxy) one worker can hold most of them while another idles. Here each worker accepts
only while it holds no more connections than the least-loaded live worker, whose counts
sit in shared memory (:class:`Shares`); a worker that is behind lets the others take the
next one, for at most ``MAX_DEFERRALS`` short pauses, then accepts anyway (a worker busy
in a long request must not leave connections waiting).

Accepted sockets go to the same protocol uvicorn would build (``connect_accepted_socket``
with the server's TLS context), so requests, the TLS extension and graceful shutdown are
uvicorn's as before.

Example::

    shares = Shares(workers=2)               # before fork
    acceptor = BalancedAcceptor(sock, shares, index, create_protocol, ssl=context,
                                connections=server_state.connections)
    acceptor.start()                          # in the worker's loop
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing.sharedctypes
import socket
import ssl
from collections.abc import Callable, Sized
from typing import Any

_log = logging.getLogger("certwright.server")
DEFER_SECONDS = 0.001
MAX_DEFERRALS = 5
PUBLISH_SECONDS = 0.1  # connections close without telling the acceptor: counted again this often
RETIRED = 1 << 30  # the count of a worker that is gone: never the least loaded
ACCEPT_ERROR_PAUSE = 0.1  # out of file descriptors, say: do not spin on a readable socket


class Shares:
    """Each worker's number of open connections, in memory shared across ``fork``."""

    def __init__(self, workers: int) -> None:
        self._counts: Any = multiprocessing.sharedctypes.RawArray(ctypes.c_int, workers)
        for index in range(workers):
            self._counts[index] = RETIRED

    def publish(self, index: int, connections: int) -> None:
        self._counts[index] = connections

    def retire(self, index: int) -> None:
        """The worker at ``index`` is gone (its replacement publishes again)."""
        self._counts[index] = RETIRED

    def fewest(self) -> int:
        return int(min(self._counts))


class BalancedAcceptor:
    """Accepts connections on a shared listening socket for one worker (see the module doc).

    ``connections`` is the server's own set of open connections (uvicorn's
    ``server_state.connections``), read for this worker's count. ``close`` stops
    accepting (uvicorn's shutdown calls it as it would a ``Server``'s).
    """

    def __init__(
        self,
        sock: socket.socket,
        shares: Shares,
        index: int,
        create_protocol: Callable[[], asyncio.Protocol],
        *,
        ssl_context: ssl.SSLContext | None,
        connections: Sized,
    ) -> None:
        self._sock = sock
        self._shares = shares
        self._index = index
        self._create_protocol = create_protocol
        self._ssl = ssl_context
        self._connections = connections
        self._handshaking = 0
        self._deferred = 0
        self._reading = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._publish_periodically()
        self._resume()

    @property
    def load(self) -> int:
        """This worker's connections: open ones and those still in their TLS handshake."""
        return len(self._connections) + self._handshaking

    def close(self) -> None:
        self._closed = True
        self._pause()
        self._shares.retire(self._index)

    async def wait_closed(self) -> None:
        return None

    def _resume(self) -> None:
        if not self._closed and not self._reading and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _publish_periodically(self) -> None:
        if self._closed or self._loop is None:
            return
        self._shares.publish(self._index, self.load)
        self._loop.call_later(PUBLISH_SECONDS, self._publish_periodically)

    def _readable(self) -> None:
        assert self._loop is not None
        load = self.load
        self._shares.publish(self._index, load)
        if load > self._shares.fewest() and self._deferred < MAX_DEFERRALS:
            self._deferred += 1  # a less loaded worker may take it: look again shortly
            self._pause()
            self._loop.call_later(DEFER_SECONDS, self._resume)
            return
        self._deferred = 0
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            _log.error("cannot accept a connection: %s; pausing %s s", exc, ACCEPT_ERROR_PAUSE)
            self._pause()
            self._loop.call_later(ACCEPT_ERROR_PAUSE, self._resume)
            return
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._handshaking += 1
        self._shares.publish(self._index, self.load)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self._create_protocol, conn, ssl=self._ssl)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            # A failed handshake is the client's problem (wrong CA, a port scanner): as
            # uvicorn's own listener, close and go on.
            _log.debug("connection dropped during the TLS handshake: %s", exc)
            conn.close()
        finally:
            self._handshaking -= 1
