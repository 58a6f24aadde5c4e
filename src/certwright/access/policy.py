"""Access policy: who (identity, roles) may reach what (service, method, path).

INTERFACE STUB written by the lead; the owner of this module fills it in. Signatures of
the public names below are fixed: other modules (ASGI middleware, tunnel, CLI) code
against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    """What is asked: a named service, and optionally an HTTP-style method and a path."""

    service: str
    method: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome, always with a reason that can be logged.

    ``rule`` names the rule that decided (``"name (file.toml line N)"``), or None when
    nothing matched (default deny).
    """

    allowed: bool
    reason: str
    rule: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Policy:
    """A compiled, immutable policy. ``decide`` is pure and cheap (cached per subject)."""

    source: str = "<policy>"
    rules: tuple[object, ...] = field(default=())

    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>") -> Policy:
        """Parse and compile TOML text; raise :class:`PolicyError` naming the line at fault."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and parse a policy file (``PolicyError`` if unreadable or malformed)."""
        raise NotImplementedError

    def decide(self, subject: Subject, request: Request) -> Decision:
        """Allow or deny ``request`` for ``subject``; never raises for any input."""
        raise NotImplementedError
