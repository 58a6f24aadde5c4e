"""What one replica learns of revocations made by any process sharing the inventory.

Replicas share the database, not memory: the OCSP responder's pre-signed answers and the
CRL a replica serves are per process. A revocation made through replica A (or by
``certwright revoke`` on the same database) must reach replica B's caches too.

:class:`RevocationFeed` follows the audit log for that. Every status change is audited in
the transaction that makes it (``RevocationService`` appends one ``revoked`` or
``unrevoked`` event per certificate, subject = the serial in hex), and sequence numbers
are assigned under the audit head's row lock, so they commit in order: once a poll has
seen the head at N, no event numbered N or less can appear later. A poll reads the head
(one row) and the revocation events after the last one seen: two indexed queries whatever
the size of the inventory. Each changed serial is handed to ``on_change`` (the server
drops its cached OCSP answers); past ``max_serials`` in one poll, ``on_change(None)`` asks
to drop everything. :attr:`RevocationFeed.generation` counts the polls that found changes,
so the CRL cache knows when to publish again.

Polls are lazy: :meth:`RevocationFeed.refresh` polls when the last poll is older than
``interval`` (the bound on how long another replica's revocation can go unseen), and
``refresh(force=True)`` always polls (a CRL download, rare and expensive anyway). When a
poll fails, the feed is *stale*: ``refresh`` raises :class:`FeedStaleError` until a poll
succeeds, retrying at most once an ``interval``, so callers fail closed (OCSP ``tryLater``,
CRL 503) instead of vouching for statuses they can no longer check.

Example::

    >>> feed = RevocationFeed(store, on_change=lambda serials: print(serials))  # doctest: +SKIP
    >>> feed.refresh()   # polls at most once a second                          # doctest: +SKIP
    0
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from certwright.errors import CertwrightError
from certwright.store import AuditEvent, AuditKind, Store, audit_head

_log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0  # seconds a revocation made elsewhere may go unseen by this replica
MAX_SERIALS = 10_000  # past this many changes in one poll, drop every cached answer at once
_KINDS = (AuditKind.REVOKED, AuditKind.UNREVOKED)


class FeedStaleError(CertwrightError):
    """The inventory could not be polled: cached statuses may be out of date."""


class RevocationFeed:
    """Follows revocations in the shared inventory; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        on_change: Callable[[Sequence[int] | None], None],
        interval: float = DEFAULT_INTERVAL,
        max_serials: int = MAX_SERIALS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or max_serials <= 0:
            raise ValueError("interval and max_serials must be positive")
        self._store = store
        self._on_change = on_change
        self._interval = interval
        self._max_serials = max_serials
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._seen: int | None = None  # the audit sequence number read last; None before the first poll
        self._polled_at = float("-inf")  # monotonic time of the last successful poll
        self._tried_at = float("-inf")  # ... of the last attempt, successful or not
        self._generation = 0

    @property
    def generation(self) -> int:
        """Bumped by every poll that found a revocation or unrevocation."""
        return self._generation

    @property
    def interval(self) -> float:
        return self._interval

    def is_fresh(self) -> bool:
        """Whether the last poll is recent enough that :meth:`refresh` would not poll (no lock)."""
        return self._monotonic() - self._polled_at < self._interval

    def refresh(self, *, force: bool = False) -> int:
        """Poll the inventory if due (or ``force``); return :attr:`generation`.

        Raises :class:`FeedStaleError` when the last poll is older than ``interval`` and
        no poll succeeds now.
        """
        if not force and self.is_fresh():
            return self._generation  # fresh enough: the hot path takes no lock
        with self._lock:
            now = self._monotonic()
            if not force and now - self._polled_at < self._interval:
                return self._generation  # another thread polled while this one waited
            if not force and now - self._tried_at < self._interval:
                # The last attempt failed less than an interval ago: fail fast, don't
                # queue every request behind a database that is down.
                raise FeedStaleError("the inventory could not be reached to check for revocations")
            self._tried_at = now
            try:
                self._poll()
            except Exception as exc:
                _log.warning("revocation feed: cannot poll the inventory: %s", exc)
                raise FeedStaleError(f"cannot poll the inventory for revocations: {exc}") from exc
            self._polled_at = now
            return self._generation

    def _poll(self) -> None:
        with self._store.read() as session:
            head, _ = audit_head(session)
            if self._seen is None:
                # Start-up: the caches are empty, so nothing before now can be in them.
                self._seen = head
                return
            if head == self._seen:
                return
            rows = session.execute(
                sa.select(AuditEvent.subject)
                .where(AuditEvent.seq > self._seen, AuditEvent.seq <= head, AuditEvent.kind.in_(_KINDS))
                .order_by(AuditEvent.seq)
                .limit(self._max_serials + 1)
            ).all()
        self._seen = head
        if not rows:
            return
        serials = [_serial(subject) for (subject,) in rows]
        self._generation += 1
        if len(rows) > self._max_serials or None in serials:
            self._on_change(None)  # too many, or a subject that names no serial: drop everything
        else:
            self._on_change([serial for serial in serials if serial is not None])


def _serial(subject: str | None) -> int | None:
    try:
        return int(subject, 16) if subject else None
    except ValueError:
        return None
