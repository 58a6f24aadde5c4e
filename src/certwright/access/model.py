"""The value types of the access policy: who asks, what is asked, the answer, the error.

They live apart from :mod:`certwright.access.policy` so that the rule compiler can raise
:class:`PolicyError` without importing the policy itself; import them from
:mod:`certwright.access` (or :mod:`certwright.access.policy`, which re-exports them).

Example::

    >>> from certwright.access import Decision, Request, Subject
    >>> Subject("spiffe://example.org/web", ("reader",)).roles
    ('reader',)
    >>> bool(Decision(False, "denied: no rule allows ... (default deny)"))
    False
"""

from __future__ import annotations

from dataclasses import dataclass

from certwright.errors import InvalidInputError


class PolicyError(InvalidInputError):
    """A policy file is malformed; ``line`` is the 1-based line at fault when known."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class Subject:
    """Who asks: the peer's SPIFFE identity (a URI string, or None) and its roles."""

    identity: str | None
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """What is asked: a named service, and optionally an HTTP-style method and a path.

    ``path`` is the *decoded* path without the query (ASGI's ``scope["path"]``); a path
    that is not in canonical form is denied, never resolved (see docs/access.md).
    """

    service: str
    method: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome, always with a reason that can be logged.

    ``rule`` names the rule that decided (``"name (file.toml line N)"``), or None when
    nothing matched (default deny) or the request itself was refused.
    """

    allowed: bool
    reason: str
    rule: str | None = None

    def __bool__(self) -> bool:
        return self.allowed
