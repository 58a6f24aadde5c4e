"""certwright.durations: durations as operators write them."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certwright.durations import format_duration, parse_duration
from certwright.errors import InvalidInputError

td = datetime.timedelta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", td(seconds=90)),
        ("15m", td(minutes=15)),
        ("24h", td(hours=24)),
        ("30d", td(days=30)),
        ("2w", td(days=14)),
        ("1y", td(days=365)),
        ("1d12h", td(hours=36)),
        (" 1D 12H ", td(hours=36)),
        ("1h0m", td(hours=1)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "invalid duration '': use numbers with units"),
        ("30", "invalid duration '30'"),
        ("1.5h", "invalid duration '1.5h'"),
        ("-1d", "invalid duration '-1d'"),
        ("1x", "invalid duration '1x'"),
        ("d", "invalid duration 'd'"),
        ("1d twelve", "invalid duration"),
        ("0s", "invalid duration '0s': it must be positive"),
        ("0d0h", "it must be positive"),
    ],
)
def test_parse_duration_refuses(text, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (td(hours=36), "1d12h"),
        (td(days=30), "30d"),
        (td(seconds=61), "1m1s"),
        (td(0), "0s"),
        (td(seconds=-5), "0s"),
        (td(days=365), "365d"),
    ],
)
def test_format_duration(delta, text):
    assert format_duration(delta) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=100 * 365 * 86400))
def test_format_then_parse_round_trips(seconds):
    delta = td(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta
