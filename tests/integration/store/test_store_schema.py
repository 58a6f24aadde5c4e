"""Opening the inventory: migrations, schema checks, connection settings, clear errors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from certwright.errors import CertwrightError
from certwright.store import SchemaOutOfDateError, Store, StoreError, head_revision, open_store, upgrade
from certwright.store.migrate import alembic_config
from certwright.store.models import Base

TABLES = {
    "certificates",
    "certificate_names",
    "crl_state",
    "audit_events",
    "audit_head",
    "enrollment_tokens",
    "alembic_version",
}


def table_names(store: Store) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


def test_migrations_create_exactly_the_models(store: Store) -> None:
    assert store.revision() == head_revision()
    assert table_names(store) == TABLES
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrations_create_the_partial_indexes(store: Store) -> None:
    indexes = {ix["name"]: ix for ix in sa.inspect(store.engine).get_indexes("certificates")}
    assert {
        "ix_certificates_identity",
        "ix_certificates_public_key_id",
        "ix_certificates_not_after_id",
        "ix_certificates_live_not_after",
        "ix_certificates_revoked_issuer_serial",
    } <= set(indexes)
    # Partial, on both databases: the live index leaves revoked rows out.
    with store.engine.connect() as connection:
        if store.dialect == "sqlite":
            sql = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_certificates_live_not_after'"
            ).scalar_one()
        else:
            sql = connection.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_certificates_live_not_after'"
            ).scalar_one()
    assert "WHERE" in sql.upper() and "revoked" in sql


def test_upgrade_twice_changes_nothing(store: Store) -> None:
    upgrade(store)
    assert store.revision() == head_revision()


def test_downgrade_to_base_and_back(store: Store) -> None:
    with store.engine.execution_options(certwright_sqlite_begin="IMMEDIATE").connect() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert table_names(store) == {"alembic_version"}
    assert store.revision() is None
    upgrade(store)
    assert table_names(store) == TABLES


def test_open_refuses_a_database_without_schema(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        Path(database_url.removeprefix("sqlite:///")).touch()
    with pytest.raises(SchemaOutOfDateError, match="certwright db upgrade"):
        open_store(database_url)
    with open_store(database_url, upgrade=True) as store:
        assert store.revision() == head_revision()
    with open_store(database_url) as store:  # now it opens without upgrading
        assert store.revision() == head_revision()


def test_open_refuses_a_newer_database(store: Store, database_url: str) -> None:
    with store.write() as session:
        session.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaOutOfDateError, match="does not know: it is newer"):
        open_store(database_url)
    with pytest.raises(StoreError):  # and upgrading cannot fix it
        open_store(database_url, upgrade=True)


def test_two_first_starts_at_once_both_succeed(database_url: str) -> None:
    """Two replicas starting on an empty database: one migrates, the other waits and finds it done."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def start() -> None:
        try:
            barrier.wait()
            open_store(database_url, upgrade=True).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with open_store(database_url) as store:
        assert store.revision() == head_revision()
        with store.read() as session:
            assert session.execute(sa.text("SELECT seq FROM audit_head")).scalars().all() == [0]


def test_sqlite_connections_get_wal_busy_timeout_foreign_keys_and_normal_sync(tmp_path: Path) -> None:
    with open_store(tmp_path / "inventory.db", upgrade=True) as store, store.engine.connect() as connection:
        pragma = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
        }
    assert pragma == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1, "synchronous": 1}


def test_a_plain_path_is_a_sqlite_file(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "inventory.db"), upgrade=True) as store:
        assert store.dialect == "sqlite"
        assert store.url == f"sqlite:///{tmp_path / 'inventory.db'}"
    assert (tmp_path / "inventory.db").is_file()


def test_a_missing_sqlite_file_is_not_created_without_upgrade(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no inventory database at .*certwright db upgrade"):
        open_store(tmp_path / "typo.db")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere" / "inventory.db", upgrade=True)


def test_a_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "inventory.db").write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StoreError, match=r"inventory database sqlite:///.*inventory\.db"):
        open_store(tmp_path / "inventory.db")


def test_postgresql_down_is_a_clear_error_without_the_password() -> None:
    # Port 9 (discard) on loopback: nothing listens there on the project machines.
    with pytest.raises(StoreError) as caught:
        open_store("postgresql+psycopg://certwright:s3cret-pw@127.0.0.1:9/inventory")
    message = str(caught.value)
    assert "postgresql+psycopg://certwright:***@127.0.0.1:9/inventory" in message
    assert "s3cret-pw" not in message
    assert "refused" in message.lower() or "failed" in message.lower()
    assert isinstance(caught.value, CertwrightError)


def test_a_missing_postgresql_database_is_a_clear_error(postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/certwright_no_such_database"
    with pytest.raises(StoreError, match=r"certwright_no_such_database.*does not exist"):
        open_store(missing, upgrade=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:hunter2@localhost/ca", "unsupported database URL mysql://root:\\*\\*\\*@localhost/ca"),
        ("postgresql://u:hunter2@host:notaport/db", "invalid database URL postgresql://u:\\*\\*\\*@host"),
    ],
)
def test_a_bad_url_is_a_clear_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


def test_postgres_urls_use_the_psycopg_driver(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with open_store(plain, upgrade=True) as store:
        assert store.engine.dialect.driver == "psycopg"


def test_losing_the_postgresql_database_mid_run_is_a_store_error(
    postgres_url: str, postgres_admin: str
) -> None:
    """The server drops the database under an open pool: the next transaction fails clearly."""
    with open_store(postgres_url, upgrade=True) as store:
        name = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        with pytest.raises(StoreError, match=f"inventory database .*{name}"), store.write() as session:
            session.execute(sa.text("SELECT 1"))


def test_a_locked_sqlite_database_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the write lock past the busy timeout: StoreError, not a traceback."""
    monkeypatch.setattr("certwright.store.session.SQLITE_BUSY_TIMEOUT_MS", 200)
    with open_store(tmp_path / "inventory.db", upgrade=True) as store:
        holder = sqlite3.connect(tmp_path / "inventory.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="database is locked"), store.write() as session:
                session.execute(sa.text("SELECT 1"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()


def test_the_written_down_head_is_the_head_of_the_packaged_migrations() -> None:
    from certwright.store.migrate import HEAD_REVISION, scripts_head

    assert scripts_head() == HEAD_REVISION
