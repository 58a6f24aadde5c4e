"""Enrolment tokens in the store (migration 0002), on SQLite and on PostgreSQL.

Single use is the database's: ``redeem_token`` is one conditional UPDATE. The concurrency
tests hold one redemption's transaction open while a second one, in another thread with
its own connection, tries the same token.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives import hashes
from store_helpers import START, Issue, store_cert

from certwright.store import BySerial, CertificateStatus, Store, head_revision, mark_revoked, upgrade
from certwright.store.migrate import HEAD_REVISION, alembic_config, scripts_head
from certwright.store.models import Base, EnrollmentToken
from certwright.store.tokens import (
    add_token,
    find_token,
    get_token,
    lock_certificate,
    purge_expired,
    redeem_token,
)
from certwright.x509.revocation_reason import RevocationReason
from support.postgres import PG_ADMIN

TTL = datetime.timedelta(minutes=15)
SECRET_HASH = hashlib.sha256(b"secret").digest()


def new_token(
    store: Store,
    *,
    token_hash: bytes = SECRET_HASH,
    token_id: str = "t1",
    expires_at: datetime.datetime | None = None,
) -> None:
    with store.write() as session:
        add_token(
            session,
            token_id=token_id,
            token_hash=token_hash,
            identity="spiffe://example.org/ns/web",
            profile="mtls",
            dns=["api.example.org"],
            ips=["10.0.0.7", "fd00::1"],
            roles=["reader"],
            attributes={"team": "payments"},
            lifetime_seconds=3600,
            created_by="admin",
            created_at=START,
            expires_at=expires_at or START + TTL,
        )


def token(store: Store, token_id: str = "t1") -> EnrollmentToken:
    with store.read() as session:
        found = get_token(session, token_id)
    assert found is not None
    return found


def redeem(store: Store, *, at: datetime.datetime = START, by: str = "enrol") -> EnrollmentToken | None:
    with store.write() as session:
        return redeem_token(session, SECRET_HASH, at=at, by=by)


# -- schema -----------------------------------------------------------------------------


def test_migration_0002_creates_the_token_table_as_the_model_says(store: Store) -> None:
    assert head_revision() == HEAD_REVISION == scripts_head() == "0003"
    assert store.revision() == "0003"
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    uniques = {
        tuple(u["column_names"]) for u in sa.inspect(store.engine).get_unique_constraints("enrollment_tokens")
    }
    assert {("token_hash",), ("token_id",)} <= uniques


def test_migration_0002_downgrades_to_0001_and_back(store: Store) -> None:
    new_token(store)
    with store.engine.execution_options(certwright_sqlite_begin="IMMEDIATE").connect() as connection:
        command.downgrade(alembic_config(connection), "0001")
    assert "enrollment_tokens" not in sa.inspect(store.engine).get_table_names()
    assert store.revision() == "0001"
    upgrade(store)
    assert "enrollment_tokens" in sa.inspect(store.engine).get_table_names()
    assert store.revision() == "0003"


def test_a_token_round_trips_every_column(store: Store) -> None:
    new_token(store)
    row = token(store)
    assert (row.identity, row.profile, row.dns, row.ips, row.roles, row.attributes) == (
        "spiffe://example.org/ns/web",
        "mtls",
        ["api.example.org"],
        ["10.0.0.7", "fd00::1"],
        ["reader"],
        {"team": "payments"},
    )
    assert (row.lifetime_seconds, row.created_by, row.created_at, row.expires_at) == (
        3600,
        "admin",
        START,
        START + TTL,
    )
    assert (row.used_at, row.used_by, row.certificate_id) == (None, None, None)


def test_token_hash_and_id_are_unique(store: Store) -> None:
    new_token(store)
    with pytest.raises(sa.exc.IntegrityError):
        new_token(store, token_id="t2")  # same hash
    with pytest.raises(sa.exc.IntegrityError):
        new_token(store, token_hash=b"\x01" * 32)  # same id


@pytest.mark.parametrize(
    "values",
    [
        {"used_at": START},  # used, but by nobody
        {"used_by": "someone"},  # by someone, but never
        {"certificate_id": 1},  # a certificate from an unused token
    ],
)
def test_check_constraints_keep_the_use_columns_consistent(
    store: Store, issue: Issue, values: dict[str, object]
) -> None:
    store_cert(store, issue(identity="spiffe://example.org/ns/web"))
    new_token(store)
    with pytest.raises(sa.exc.IntegrityError), store.write() as session:
        session.execute(sa.update(EnrollmentToken).values(**values))
    assert token(store).used_at is None


# -- redemption -------------------------------------------------------------------------


def test_a_token_redeems_once(store: Store) -> None:
    new_token(store)
    redeemed = redeem(store, at=START + datetime.timedelta(minutes=1), by="first")
    assert redeemed is not None
    assert (redeemed.token_id, redeemed.used_at, redeemed.used_by) == (
        "t1",
        START + datetime.timedelta(minutes=1),
        "first",
    )
    assert redeem(store, at=START + datetime.timedelta(minutes=2), by="second") is None
    row = token(store)
    assert (row.used_at, row.used_by) == (START + datetime.timedelta(minutes=1), "first")


def test_an_expired_token_does_not_redeem(store: Store) -> None:
    new_token(store)
    assert redeem(store, at=START + TTL) is None  # expires_at is the first instant it is dead
    assert token(store).used_at is None
    assert redeem(store, at=START + TTL - datetime.timedelta(seconds=1)) is not None


def test_an_unknown_hash_redeems_nothing(store: Store) -> None:
    new_token(store)
    with store.write() as session:
        assert redeem_token(session, hashlib.sha256(b"guess").digest(), at=START, by="x") is None
        assert find_token(session, hashlib.sha256(b"guess").digest()) is None
        found = find_token(session, SECRET_HASH)
        assert found is not None and found.token_id == "t1"
    assert token(store).used_at is None


def test_a_rolled_back_redemption_leaves_the_token_unused(store: Store) -> None:
    new_token(store)
    with pytest.raises(RuntimeError, match="issuance failed"), store.write() as session:
        assert redeem_token(session, SECRET_HASH, at=START, by="failed") is not None
        raise RuntimeError("issuance failed")
    assert token(store).used_at is None
    assert redeem(store, by="retry") is not None


def lock_waiters(database: str) -> int:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def poll(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("first_commits", [True, False])
def test_a_concurrent_redemption_waits_and_wins_only_if_the_first_rolls_back(
    store: Store, first_commits: bool
) -> None:
    """A holds its redemption open while B tries the same token from another connection.

    PostgreSQL: B's UPDATE waits for A's row lock (seen in pg_stat_activity), then re-checks
    ``used_at IS NULL`` against what A left. SQLite: B waits for the writer lock.
    """
    new_token(store)
    b_started = threading.Event()
    outcome: dict[str, object] = {}

    def second() -> None:
        b_started.set()
        try:
            outcome["B"] = redeem(store, by="B")
        except Exception as exc:  # reported below
            outcome["B"] = exc

    thread = threading.Thread(target=second)
    with (
        pytest.raises(RuntimeError) if not first_commits else contextlib.nullcontext(),
        store.write() as session,
    ):
        assert redeem_token(session, SECRET_HASH, at=START, by="A") is not None
        thread.start()
        assert b_started.wait(30)
        if store.dialect == "postgresql":
            database = store.engine.url.database or ""
            poll(lambda: lock_waiters(database) >= 1, "B to wait on A's row lock")
        if not first_commits:
            raise RuntimeError("A's issuance failed")
    thread.join(60)
    assert not thread.is_alive()
    row = token(store)
    if first_commits:
        assert outcome["B"] is None
        assert row.used_by == "A"
    else:
        assert isinstance(outcome["B"], EnrollmentToken)
        assert row.used_by == "B"


def test_many_racing_redemptions_one_winner(store: Store) -> None:
    new_token(store)
    barrier = threading.Barrier(4)
    results: list[object] = []
    lock = threading.Lock()

    def race(name: str) -> None:
        barrier.wait()
        try:
            got: object = redeem(store, by=name)
        except Exception as exc:  # reported below
            got = exc
        with lock:
            results.append(got)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [r for r in results if isinstance(r, EnrollmentToken)]
    assert len(winners) == 1 and results.count(None) == 3, results
    assert token(store).used_by == winners[0].used_by


# -- the renewal's row lock -------------------------------------------------------------


def test_lock_certificate_finds_by_fingerprint(store: Store, issue: Issue) -> None:
    cert = issue(identity="spiffe://example.org/ns/web")
    row_id = store_cert(store, cert)
    with store.write() as session:
        found = lock_certificate(session, cert.fingerprint(hashes.SHA256()))
        assert found is not None and found.id == row_id
        assert lock_certificate(session, b"\x00" * 32) is None


def test_a_revocation_waits_for_a_renewal_holding_the_certificate(store: Store, issue: Issue) -> None:
    """While a renewal holds the presented certificate's row, revoking it waits (and then applies)."""
    cert = issue(identity="spiffe://example.org/ns/web")
    store_cert(store, cert)
    started = threading.Event()
    outcome: dict[str, object] = {}

    def revoke() -> None:
        started.set()
        try:
            with store.write() as session:
                outcome["changed"] = mark_revoked(
                    session, BySerial(cert.serial_number), reason=RevocationReason.KEY_COMPROMISE, at=START
                )
        except Exception as exc:  # reported below
            outcome["changed"] = exc

    thread = threading.Thread(target=revoke)
    with store.write() as session:
        row = lock_certificate(session, cert.fingerprint(hashes.SHA256()))
        assert row is not None and row.status is CertificateStatus.GOOD
        thread.start()
        assert started.wait(30)
        if store.dialect == "postgresql":
            database = store.engine.url.database or ""
            poll(lambda: lock_waiters(database) >= 1, "the revocation to wait on the renewal's row lock")
        assert "changed" not in outcome  # still waiting: the renewal decides on a status that holds
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(outcome["changed"], list) and len(outcome["changed"]) == 1


# -- purging ----------------------------------------------------------------------------


def test_purge_deletes_only_unredeemed_tokens_expired_before_the_cutoff(store: Store) -> None:
    hour = datetime.timedelta(hours=1)
    # old and unused: goes; old but redeemed: stays (who asked for which certificate);
    # expired after the cutoff, or still live: stay.
    new_token(store, token_id="old", token_hash=b"\x01" * 32, expires_at=START - 48 * hour)
    new_token(store, token_id="used", token_hash=SECRET_HASH, expires_at=START - 47 * hour)
    with store.write() as session:
        assert redeem_token(session, SECRET_HASH, at=START - 48 * hour, by="enrol") is not None
    new_token(store, token_id="recent", token_hash=b"\x02" * 32, expires_at=START - hour)
    new_token(store, token_id="live", token_hash=b"\x03" * 32, expires_at=START + hour)
    cutoff = START - 24 * hour
    with store.write() as session:
        assert purge_expired(session, expired_before=cutoff) == 1
    with store.read() as session:
        left = sorted(session.scalars(sa.select(EnrollmentToken.token_id)))
    assert left == ["live", "recent", "used"]
    with store.write() as session:  # nothing more to purge: a second run is a no-op
        assert purge_expired(session, expired_before=cutoff) == 0
    with store.write() as session:  # a later cutoff takes the next one; the expiry instant is exclusive
        assert purge_expired(session, expired_before=START - hour) == 0
        assert purge_expired(session, expired_before=START) == 1
    with pytest.raises(ValueError, match="naive"), store.write() as session:
        purge_expired(session, expired_before=datetime.datetime(2026, 1, 1))
