"""Segment-aware glob patterns for identities, DNS names and roles.

``*`` inside a segment matches any run of characters *within* that segment; a segment that
is exactly ``**`` matches one or more whole segments. Nothing else is special. A ``*`` never
crosses a separator, so ``spiffe://td/ns/*`` does not match ``spiffe://td/ns/a/b``: a policy
that allows one namespace must not leak into the ones nested below it.

Example::

    >>> from certwright.globs import Glob
    >>> Glob.compile("spiffe://example.org/ns/*", sep="/").matches("spiffe://example.org/ns/web")
    True
    >>> Glob.compile("spiffe://example.org/ns/*", sep="/").matches("spiffe://example.org/ns/a/b")
    False
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Glob:
    pattern: str
    sep: str
    regex: re.Pattern[str]
    case_sensitive: bool

    @classmethod
    def compile(cls, pattern: str, *, sep: str, case_sensitive: bool = True) -> Glob:
        """Compile ``pattern`` (cached: policies and profiles reuse a few patterns)."""
        return _compile(pattern, sep, case_sensitive)

    @classmethod
    def _build(cls, pattern: str, sep: str, case_sensitive: bool) -> Glob:
        not_sep = f"[^{re.escape(sep)}]"
        parts = []
        for segment in pattern.split(sep):
            if segment == "**":
                parts.append(f"{not_sep}+(?:{re.escape(sep)}{not_sep}+)*")
            else:
                parts.append(f"{not_sep}*".join(re.escape(p) for p in segment.split("*")))
        flags = 0 if case_sensitive else re.IGNORECASE
        return cls(pattern, sep, re.compile(re.escape(sep).join(parts), flags), case_sensitive)

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None

    def __str__(self) -> str:
        return self.pattern


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str, sep: str, case_sensitive: bool) -> Glob:
    return Glob._build(pattern, sep, case_sensitive)


def alternation(globs: tuple[Glob, ...]) -> re.Pattern[str] | None:
    """One regex whose ``fullmatch`` is true when any of ``globs`` matches (None: no globs).

    One C call instead of a Python loop over the patterns: profiles and access rules test
    every name of every request against their patterns.
    """
    if not globs:
        return None
    if len(globs) == 1:
        return globs[0].regex
    return re.compile("|".join(f"(?{'' if g.case_sensitive else 'i'}:{g.regex.pattern})" for g in globs))
