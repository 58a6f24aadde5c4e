"""The CRL a replica serves: published through the inventory, kept, and published again when due.

Each publication goes through :meth:`RevocationService.publish_crl`, which reserves the
CRL number in the database: replicas sharing one PostgreSQL never reuse a number, and
each replica's numbers only increase (RFC 5280 5.2.3). A replica publishes again when its
CRL is older than ``refresh``, or when the :class:`RevocationFeed` (polled on every CRL
download) reports a revocation or an unrevocation made by any process since the last
publication; between those it serves the same bytes. Another replica may meanwhile serve
a CRL with a higher number: both are valid until their nextUpdate, and each replica's
next publication goes past every number handed out so far.

Example::

    >>> crls = CRLCache(revocations, authority.key, feed=feed)   # doctest: +SKIP
    >>> crls.current().number                                     # doctest: +SKIP
    1
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from certwright.errors import InvalidInputError
from certwright.server.revocation_feed import RevocationFeed
from certwright.service.revocation import PublishedCRL, RevocationService
from certwright.x509.keys import SigningKey

DEFAULT_CRL_REFRESH = datetime.timedelta(hours=1)
DEFAULT_CRL_VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class _Published:
    crl: PublishedCRL
    generation: int  # the feed's generation read before the CRL's entries were
    at: float  # monotonic time of publication


class CRLCache:
    """The current CRL of one issuing CA; see the module docstring.

    ``distribution_point`` becomes the CRL's issuingDistributionPoint: it must be the URL
    the CA writes into its leaves, or None. ``on_publish`` is told of each new CRL
    (metrics).
    """

    def __init__(
        self,
        revocation: RevocationService,
        key: SigningKey,
        *,
        feed: RevocationFeed,
        refresh: datetime.timedelta = DEFAULT_CRL_REFRESH,
        validity: datetime.timedelta = DEFAULT_CRL_VALIDITY,
        distribution_point: str | None = None,
        on_publish: Callable[[PublishedCRL], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not datetime.timedelta(0) < refresh < validity:
            # A CRL must be replaced before its nextUpdate, or relying parties refuse it.
            raise InvalidInputError(
                f"the CRL refresh ({refresh}) must be positive and shorter than its validity ({validity})"
            )
        key_id = revocation.issuer_key_id
        if key_id is None:
            raise InvalidInputError("a CRL cache needs a revocation service bound to its issuing CA")
        self.key_id_hex = key_id.hex()
        self._revocation = revocation
        self._key = key
        self._feed = feed
        self._refresh = refresh.total_seconds()
        self._validity = validity
        self._distribution_point = distribution_point
        self._on_publish = on_publish
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._published: _Published | None = None

    @property
    def refresh(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self._refresh)

    def current(self) -> PublishedCRL:
        """The CRL to serve, publishing a new one when due (blocking: run it in a thread).

        Raises :class:`~certwright.server.revocation_feed.FeedStaleError` when the inventory
        cannot be polled, and the store's errors when publishing fails.
        """
        generation = self._feed.refresh(force=True)
        published = self._published
        if published is not None and self._fresh(published, generation):
            return published.crl
        with self._lock:  # one publication at a time: each costs a CRL number and a signature
            published = self._published
            if published is not None and self._fresh(published, generation):
                return published.crl
            crl = self._revocation.publish_crl(
                self._key, validity=self._validity, distribution_point=self._distribution_point
            )
            self._published = _Published(crl, generation, self._monotonic())
        if self._on_publish is not None:
            self._on_publish(crl)
        return crl

    def seconds_to_refresh(self) -> float:
        """Seconds until the current CRL is due for replacement by age (0 when none)."""
        published = self._published
        if published is None:
            return 0.0
        return max(0.0, self._refresh - (self._monotonic() - published.at))

    def _fresh(self, published: _Published, generation: int) -> bool:
        # >=: a thread that polled earlier may find a CRL published after a later poll.
        return published.generation >= generation and self._monotonic() - published.at < self._refresh
