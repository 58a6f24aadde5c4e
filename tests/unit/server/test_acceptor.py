"""The balanced acceptor: workers sharing a listening socket take turns by connection count.

Two acceptors on one loop stand for two worker processes (the counts live in the same
shared array the workers use); real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import functools
import socket

import pytest

from certwright.server.acceptor import RETIRED, BalancedAcceptor, Shares


class _Held(asyncio.Protocol):
    """A server-side connection that stays open, counted in ``into``."""

    def __init__(self, into: set[asyncio.Protocol]) -> None:
        self.into = into

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.into.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.into.discard(self)


def test_shares_start_retired_and_report_the_fewest() -> None:
    shares = Shares(3)
    assert shares.fewest() == RETIRED
    shares.publish(0, 4)
    shares.publish(2, 1)
    assert shares.fewest() == 1
    shares.retire(2)
    assert shares.fewest() == 4


async def _connect_many(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        clients.append(client)
        await asyncio.sleep(0.005)  # let the loop see each one: they arrive one by one
    return clients


@pytest.mark.parametrize("count", [8, 9])
def test_keep_alive_connections_are_spread_evenly(count: int) -> None:
    async def main() -> tuple[int, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        shares = Shares(2)
        held: list[set[asyncio.Protocol]] = [set(), set()]
        # Each worker has its own descriptor of the one listening socket (as after fork).
        socks = [listener, listener.dup()]
        acceptors = [
            BalancedAcceptor(
                socks[i], shares, i, functools.partial(_Held, held[i]), ssl_context=None, connections=held[i]
            )
            for i in range(2)
        ]
        for acceptor in acceptors:
            acceptor.start()
        clients = await _connect_many(listener.getsockname()[1], count)
        deadline = asyncio.get_running_loop().time() + 10
        while len(held[0]) + len(held[1]) < count:
            assert asyncio.get_running_loop().time() < deadline, "connections were not accepted"
            await asyncio.sleep(0.01)
        sizes = len(held[0]), len(held[1])
        for acceptor in acceptors:
            acceptor.close()
        for client in clients:
            client.close()
        for sock in socks:
            sock.close()
        return sizes

    first, second = asyncio.run(main())
    assert first + second == count
    assert abs(first - second) <= 1, (first, second)


def test_a_busy_worker_does_not_leave_a_connection_waiting() -> None:
    """The least-loaded worker is not accepting (its loop is busy, or it is gone without
    being retired yet): the other accepts after a few short pauses anyway."""

    async def main() -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        shares = Shares(2)
        shares.publish(1, 0)  # worker 1 claims to be idle but never accepts
        held: set[asyncio.Protocol] = set()
        acceptor = BalancedAcceptor(
            listener, shares, 0, lambda: _Held(held), ssl_context=None, connections=held
        )
        acceptor.start()
        clients = await _connect_many(listener.getsockname()[1], 3)
        deadline = asyncio.get_running_loop().time() + 10
        while len(held) < 3:
            assert asyncio.get_running_loop().time() < deadline, "a connection was left waiting"
            await asyncio.sleep(0.01)
        acceptor.close()
        assert shares.fewest() == 0  # closing retired worker 0's count; worker 1's stays
        for client in clients:
            client.close()
        listener.close()
        return len(held)

    assert asyncio.run(main()) == 3
