"""The renewal arithmetic: when a certificate is due, how long to back off."""

from __future__ import annotations

import datetime

import pytest

from certwright.agent.policy import RenewalPolicy, jitter_fraction
from certwright.errors import InvalidInputError

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def test_default_renews_at_two_thirds() -> None:
    policy = RenewalPolicy(jitter=0.0)
    assert policy.renewal_time(T0, T0 + DAY, u=0.5) == T0 + datetime.timedelta(hours=16)


@pytest.mark.parametrize("u", [0.0, 0.25, 0.5, 0.999])
def test_jitter_only_moves_renewal_earlier(u: float) -> None:
    policy = RenewalPolicy(renew_at=0.66, jitter=0.1)
    due = policy.renewal_time(T0, T0 + DAY, u=u)
    assert T0 + DAY * 0.56 <= due <= T0 + DAY * 0.66


def test_renew_at_zero_is_due_at_once_even_with_jitter() -> None:
    policy = RenewalPolicy(renew_at=0.0, jitter=0.5)
    assert policy.renewal_time(T0, T0 + DAY, u=0.9) == T0


@pytest.mark.parametrize("renew_at", [-0.1, 1.0, 1.5])
def test_renew_at_outside_zero_one_is_refused(renew_at: float) -> None:
    with pytest.raises(InvalidInputError):
        RenewalPolicy(renew_at=renew_at)


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RenewalPolicy(backoff_initial=1.0, backoff_max=10.0)
    delays = [policy.retry_delay(n, seconds_left=1e9, u=1.0) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_never_exceeds_a_quarter_of_the_time_left() -> None:
    policy = RenewalPolicy(backoff_initial=1.0, backoff_max=300.0)
    assert policy.retry_delay(10, seconds_left=20.0, u=1.0) == 5.0
    # ...but at least the initial delay, so an agent near expiry does not hammer the CA.
    assert policy.retry_delay(10, seconds_left=0.5, u=1.0) == 1.0


def test_backoff_jitter_spreads_over_the_upper_half() -> None:
    policy = RenewalPolicy(backoff_initial=1.0, backoff_max=300.0)
    assert policy.retry_delay(4, seconds_left=1e9, u=0.0) == 4.0
    assert policy.retry_delay(4, seconds_left=1e9, u=1.0) == 8.0


def test_jitter_fraction_is_stable_and_spread() -> None:
    values = [jitter_fraction(bytes([i]) * 32) for i in range(200)]
    assert values[7] == jitter_fraction(bytes([7]) * 32)
    assert all(0.0 <= v < 1.0 for v in values)
    assert min(values) < 0.1 and max(values) > 0.9  # a fleet is spread over the window
