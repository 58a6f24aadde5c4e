"""PostgreSQL for the tests: one throw-away database per use, dropped afterwards.

The server is the one the project's machines run (127.0.0.1:5432, trust auth);
``CERTWRIGHT_TEST_POSTGRES`` points elsewhere. Without a server the tests skip, and fail
under CI (``support.env.require``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator

import psycopg

from support.env import require

PG_ADMIN = os.environ.get("CERTWRIGHT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for the tests (None when it can); asked once per run."""
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_ADMIN} is not reachable: {' '.join(str(exc).split())}"


def pg_url(database: str, user: str | None = None) -> str:
    """The SQLAlchemy URL of ``database`` on the test server (as ``user`` when given)."""
    info = psycopg.conninfo.conninfo_to_dict(PG_ADMIN)
    who = user or info.get("user", "postgres")
    return f"postgresql+psycopg://{who}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{database}"


@contextlib.contextmanager
def postgres_database(prefix: str = "certwright_test") -> Iterator[str]:
    """A new, empty database (its SQLAlchemy URL), dropped on exit."""
    problem = postgres_problem()
    require(problem is None, problem or "")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
