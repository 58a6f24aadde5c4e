"""When to renew and how long to wait after a failure: the renewal arithmetic, in one place.

A certificate is renewed once ``renew_at`` of its lifetime has passed (two thirds by
default, as step-ca and cert-manager do), moved earlier by a jitter of up to ``jitter`` of
the lifetime so a fleet issued at the same moment does not come back at the same moment.
The jitter only ever moves the renewal *earlier*: the deadline is the operator's promise.

The lifetime counts from when the agent obtained the certificate, not from its notBefore:
CAs back-date notBefore (certwright by a minute) for clock skew, which on a 20-second
certificate would put the two-thirds point before the certificate even arrived.

Example::

    >>> import datetime
    >>> t0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    >>> policy = RenewalPolicy(renew_at=0.5, jitter=0.0)
    >>> policy.renewal_time(t0, t0 + datetime.timedelta(hours=24), u=0.3).hour
    12
    >>> policy.retry_delay(3, seconds_left=3600.0, u=1.0)  # the third failure in a row
    4.0
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from certwright.errors import InvalidInputError

DEFAULT_RENEW_AT = 2 / 3
DEFAULT_JITTER = 0.1


@dataclass(frozen=True)
class RenewalPolicy:
    """``renew_at`` in [0, 1): fraction of the lifetime after which to renew (0 renews at once).

    ``jitter`` in [0, 1]: at most this fraction of the lifetime earlier. ``backoff_initial`` and
    ``backoff_max`` (seconds) bound the exponential backoff after failures; ``fresh_key``:
    a new key at each renewal (the default; False keeps the current key).
    """

    renew_at: float = DEFAULT_RENEW_AT
    jitter: float = DEFAULT_JITTER
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    fresh_key: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.renew_at < 1.0:
            raise InvalidInputError(f"renew_at must be in [0, 1): {self.renew_at} would renew after expiry")
        if not 0.0 <= self.jitter <= 1.0:
            raise InvalidInputError(f"jitter must be in [0, 1], not {self.jitter}")
        if not 0.0 < self.backoff_initial <= self.backoff_max:
            raise InvalidInputError("backoff_initial must be positive and at most backoff_max")

    def renewal_time(
        self, start: datetime.datetime, not_after: datetime.datetime, *, u: float
    ) -> datetime.datetime:
        """When a certificate valid from ``start`` to ``not_after`` is due; ``u`` in [0, 1)
        picks the jitter (see :func:`jitter_fraction`). Never before ``start``, never after
        the ``renew_at`` point."""
        lifetime = not_after - start
        if lifetime <= datetime.timedelta(0):
            return start
        fraction = max(0.0, self.renew_at - self.jitter * u)
        return start + lifetime * fraction

    def retry_delay(self, attempt: int, *, seconds_left: float, u: float) -> float:
        """Seconds to wait after ``attempt`` consecutive failures (1 = the first failure).

        Exponential from ``backoff_initial``, capped by ``backoff_max`` and by a quarter of
        the time the current certificate has left, so an agent whose CA comes back still
        tries several times before expiry. ``u`` in [0, 1] spreads retries over the upper
        half of the delay ("equal jitter") so a fleet does not retry in step after an outage.
        """
        delay = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, attempt - 1))
        if seconds_left > 0:
            delay = min(delay, max(self.backoff_initial, seconds_left / 4.0))
        return delay / 2.0 + delay / 2.0 * u


def jitter_fraction(fingerprint: bytes) -> float:
    """A number in [0, 1) derived from a certificate's fingerprint.

    Stable across restarts and ``--once`` runs (no state to keep), different for every
    certificate of a fleet (each has its own key and serial).
    """
    digest = hashlib.sha256(b"certwright-agent-jitter" + fingerprint).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
