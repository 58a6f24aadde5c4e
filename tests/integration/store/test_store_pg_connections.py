"""PostgreSQL connections lost under the pool: what the request path's statements do.

The pool pings a connection before handing it out only when it has been idle for
``PING_AFTER_IDLE`` seconds (not at every checkout), and the request path runs its
statements on the psycopg connection itself (``bulk._run``). Each backend is
killed for real with ``pg_terminate_backend``: a stale idle connection must be replaced
without a failed request; one that was used a moment ago fails one statement, with a
``StoreError``, writes nothing, and the next request gets a fresh connection.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest
import sqlalchemy as sa

from certwright.store import Store, StoreError
from certwright.store import session as session_module
from certwright.store.bulk import Prepared
from certwright.store.models import EnrollmentToken
from support.postgres import PG_ADMIN

# PostgreSQL only: the conftest's ``store`` on its PostgreSQL backend.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

_TOKENS = EnrollmentToken.__table__
_COUNT = Prepared(sa.select(sa.func.count()).select_from(_TOKENS), columns=[sa.func.count()])
_BY_HASH = Prepared(
    sa.select(_TOKENS.c.token_id).where(
        _TOKENS.c.token_hash == sa.bindparam("h", type_=_TOKENS.c.token_hash.type)
    ),
    columns=[_TOKENS.c.token_id],
)


def _terminate_backends(store: Store) -> int:
    """Kill every backend of the store's database (what a restart or a proxy timeout does)."""
    database = store.engine.url.database
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        query = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        rows = admin.execute(query, (database,)).fetchall()
    return len(rows)


def _count(store: Store) -> int:
    with store.statement_connection() as connection:
        ((count,),) = _COUNT.rows(connection)
    return int(count)


def _backend_pid(store: Store) -> int:
    with store.statement_connection() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_an_idle_connection_killed_behind_the_pool_is_replaced_without_a_failed_request(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _count(store) == 0
    before = _backend_pid(store)
    assert _terminate_backends(store) >= 1
    monkeypatch.setattr(session_module, "PING_AFTER_IDLE", 0.0)  # every checkout counts as idle
    assert _count(store) == 0  # the ping found it dead; the pool connected again
    assert _backend_pid(store) != before


def test_a_connection_killed_just_after_use_fails_one_request_and_writes_nothing(store: Store) -> None:
    """Within the idle window there is no ping: the statement meets the dead connection,
    the caller gets a StoreError (a 503 at the API), nothing is written, and the next
    request runs on a new connection."""
    assert _count(store) == 0
    _backend_pid(store)  # used a moment ago: no ping at the next checkout
    assert _terminate_backends(store) >= 1
    secret_hash = hashlib.sha256(b"lost").digest()
    with (
        pytest.raises(StoreError, match=r"terminat|closed|connection"),
        store.write_connection() as connection,
    ):
        _BY_HASH.rows(connection, {"h": secret_hash})
    assert _count(store) == 0
    with store.write_connection() as connection:
        assert _BY_HASH.rows(connection, {"h": secret_hash}) == []
    assert _count(store) == 0
