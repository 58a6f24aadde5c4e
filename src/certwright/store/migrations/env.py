"""Alembic environment for certwright's inventory.

Run by :func:`certwright.store.migrate.upgrade_engine` with an open connection in
``config.attributes["connection"]``; also usable from Alembic's own CLI with
``-x url=DATABASE_URL`` (online) or ``--sql`` (offline, prints the DDL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from certwright.store.models import Base

# Any constant: two replicas migrating at once queue on it (PostgreSQL only; SQLite's
# BEGIN IMMEDIATE does the same job).
_PG_MIGRATION_LOCK = 0x63657274  # "cert"


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: Alembic's batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database with: alembic -x url=DATABASE_URL ...")
    return url


def _run() -> None:
    if context.is_offline_mode():
        context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as fresh:
        _configure(fresh)
    engine.dispose()


_run()
