"""Schema migrations (Alembic), run from Python: no ``alembic.ini`` needed.

The migration scripts ship inside the package (``certwright/store/migrations``) and are
found through the package (``certwright.store:migrations``), not the working directory,
so an installed wheel migrates its database the same way a checkout does. One set of
migrations serves SQLite and PostgreSQL.

Developers write a new revision with Alembic's CLI and the ini file beside the scripts::

    alembic -c src/certwright/store/migrations/alembic.ini -x url=sqlite:///dev.db \\
        revision --autogenerate -m "what changes"

(docs/store.md says how to make the result portable).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine

if TYPE_CHECKING:
    from certwright.store.session import Store

SCRIPT_LOCATION = "certwright.store:migrations"
# Alembic's ``context`` and ``op`` are module-level proxies: two threads of one process
# migrating at once would run each other's scripts on each other's connections.
_ALEMBIC = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations (optionally bound to a connection)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this certwright's schema is at."""
    head = _scripts().get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the packaged migrations (else the database is newer)."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database (None when it was never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision``, in one transaction.

    Concurrent upgrades (two replicas starting at once) are serialised: PostgreSQL by an
    advisory lock taken in ``env.py``, SQLite by ``BEGIN IMMEDIATE``. The second finds the
    work done and changes nothing.
    """
    immediate = engine.execution_options(certwright_sqlite_begin="IMMEDIATE")
    with _ALEMBIC, immediate.connect() as connection:
        command.upgrade(alembic_config(connection), revision)


def upgrade(store: Store, revision: str = "head") -> None:
    """Migrate the store's database to ``revision`` (default: this certwright's head)."""
    with store.translate_errors():
        upgrade_engine(store.engine, revision)
