"""Time, injected: every component that needs "now" takes a :class:`Clock`.

Example::

    >>> import datetime
    >>> from certwright.clock import FixedClock
    >>> FixedClock(datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)).now().year
    2030
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime.datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real clock, in whole seconds (certificates carry no fractions)."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass
class FixedClock:
    """A clock that says what it is told; for tests and reproducible tools."""

    current: datetime.datetime

    def __post_init__(self) -> None:
        if self.current.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")

    def now(self) -> datetime.datetime:
        return self.current

    def advance(self, delta: datetime.timedelta) -> None:
        self.current += delta
