"""One compiled policy rule: who it applies to, what it covers, and whether it allows or denies.

A rule applies to a subject when its identity patterns (if any) match the subject's
identity *and* its role patterns (if any) match one of the subject's roles; a rule must
have at least one of the two. It covers a request when the service is listed (or the rule
says ``"*"``), and, where the rule lists methods or paths, the request's method and path
are among them.

Example::

    >>> from certwright.access.rules import Effect, Rule
    >>> from certwright.globs import Glob
    >>> rule = Rule(name="r", effect=Effect.ALLOW, services=frozenset({"payments"}),
    ...             identities=(Glob.compile("spiffe://example.org/web", sep="/"),))
    >>> rule.applies_to("spiffe://example.org/web", ()), rule.covers("payments", "GET", "/x")
    (True, True)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from certwright.access.model import Decision
from certwright.globs import Glob, alternation


class Effect(enum.Enum):
    """What a matching rule does. Deny rules win over allow rules, whatever their order."""

    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True)
class Rule:
    """A compiled rule. ``services``/``methods``/``paths`` of None mean "any"."""

    name: str
    effect: Effect
    services: frozenset[str] | None
    identities: tuple[Glob, ...] = ()
    roles: tuple[Glob, ...] = ()
    methods: frozenset[str] | None = None
    paths: tuple[Glob, ...] | None = None
    description: str = ""
    source: str = "<policy>"
    line: int | None = None
    _identity_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _role_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _path_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    # The decision this rule makes, built once: decisions are immutable and shared.
    decision: Decision = field(init=False, repr=False, compare=False)

    @property
    def where(self) -> str:
        """``source line N`` (or just the source when the line is unknown)."""
        return f"{self.source} line {self.line}" if self.line is not None else self.source

    @property
    def label(self) -> str:
        """``name (source line N)``: how decisions and logs refer to this rule."""
        return f"{self.name} ({self.where})"

    def __post_init__(self) -> None:
        # One alternation per rule rather than one regex per pattern: a cold decision
        # tries every rule, and this halves what each costs.
        object.__setattr__(self, "_identity_regex", alternation(self.identities))
        object.__setattr__(self, "_role_regex", alternation(self.roles))
        # paths=() (only possible when built by hand) matches no path: fail closed.
        paths = None if self.paths is None else alternation(self.paths) or re.compile(r"(?!)")
        object.__setattr__(self, "_path_regex", paths)
        allowed = self.effect is Effect.ALLOW
        verb = "allowed" if allowed else "denied"
        decision = Decision(allowed, f"{verb} by rule {self.name!r} ({self.where})", self.label)
        object.__setattr__(self, "decision", decision)

    def applies_to(self, identity: str | None, roles: Sequence[str]) -> bool:
        """Whether the rule is about this subject (identity and roles already validated)."""
        identity_regex = self._identity_regex
        if identity_regex is not None and (identity is None or identity_regex.fullmatch(identity) is None):
            return False
        role_regex = self._role_regex
        return role_regex is None or any(role_regex.fullmatch(role) for role in roles)

    def covers(self, service: str, method: str | None, path: str | None, *, unknown: bool = False) -> bool:
        """Whether the request falls under the rule.

        ``unknown`` says what a constraint on a method or path the request does not state
        (a TCP tunnel knows neither) yields: False for allow rules (nothing is allowed
        that the rule did not name), True for deny rules (a deny of ``DELETE /admin``
        also refuses a connection that cannot tell what it will carry: fail closed).
        """
        if self.services is not None and service not in self.services:
            return False
        if self.methods is not None:
            if method is None:
                if not unknown:
                    return False
            elif method not in self.methods:
                return False
        if self._path_regex is None:
            return True
        if path is None:
            return unknown
        return self._path_regex.fullmatch(path) is not None
