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

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

# The head revision is a constant beside the schema's other SQLAlchemy-free values.
from certwright.store.values import HEAD_REVISION as HEAD_REVISION

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from certwright.store.session import Store

SCRIPT_LOCATION = "certwright.store:migrations"
# Alembic's ``context`` and ``op`` are module-level proxies: two threads of one process
# migrating at once would run each other's scripts on each other's connections.
_ALEMBIC = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged migrations (optionally bound to a connection)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this certwright's schema is at."""
    return HEAD_REVISION


def scripts_head() -> str:
    """The head revision according to the packaged migration scripts (imports Alembic)."""
    head = _scripts().get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the packaged migrations (else the database is newer)."""
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database (None when it was never migrated).

    Read directly from ``alembic_version`` (what Alembic's MigrationContext reads), without
    importing Alembic.
    """
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:  # branches: certwright's migrations are linear, so this is not ours
        return ",".join(sorted(versions))
    return versions[0] if versions else None


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision``, in one transaction.

    Concurrent upgrades (two replicas starting at once) are serialised: PostgreSQL by an
    advisory lock taken in ``env.py``, SQLite by ``BEGIN IMMEDIATE``. The second finds the
    work done and changes nothing.
    """
    from alembic import command

    immediate = engine.execution_options(certwright_sqlite_begin="IMMEDIATE")
    with _ALEMBIC, immediate.connect() as connection:
        command.upgrade(alembic_config(connection), revision)


def upgrade(store: Store, revision: str = "head") -> None:
    """Migrate the store's database to ``revision`` (default: this certwright's head)."""
    with store.translate_errors():
        upgrade_engine(store.engine, revision)
