"""Durations as operators write them: ``90s``, ``15m``, ``24h``, ``30d``, ``1y``, ``1d12h``.

Example::

    >>> from certwright.durations import parse_duration, format_duration
    >>> parse_duration("1d12h").total_seconds()
    129600.0
    >>> format_duration(parse_duration("36h"))
    '1d12h'
"""

from __future__ import annotations

import datetime
import re

from certwright.errors import InvalidInputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+)([smhdwy])")


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a positive duration made of ``<number><unit>`` parts."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise InvalidInputError(
            f"invalid duration {text!r}: use numbers with units s, m, h, d, w or y (e.g. 24h, 30d)"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(cleaned))
    if seconds <= 0:
        raise InvalidInputError(f"invalid duration {text!r}: it must be positive")
    return datetime.timedelta(seconds=seconds)


def format_duration(delta: datetime.timedelta) -> str:
    """The shortest spelling of ``delta`` in d/h/m/s units."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
