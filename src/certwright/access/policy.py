"""Access policy: who (identity, roles) may reach what (service, method, path).

A policy is a TOML file of rules, compiled once into an immutable :class:`Policy`. Nothing
is allowed unless an allow rule covers it, and deny rules win over allow rules. Every
:class:`Decision` carries its reason (the rule and its line, or why nothing matched), and
``decide`` never raises: whatever it is given, the worst outcome is a denial that says why.
The format and its exact semantics: docs/access.md.

Example::

    >>> from certwright.access import Policy, Request, Subject
    >>> policy = Policy.parse('''
    ... version = 1
    ... [[rule]]
    ... name = "web-reads-payments"
    ... services = ["payments"]
    ... identities = ["spiffe://example.org/ns/*/web"]
    ... methods = ["GET"]
    ... paths = ["/v1/payments/**"]
    ... ''', source="policy.toml")
    >>> web = Subject("spiffe://example.org/ns/prod/web")
    >>> policy.decide(web, Request("payments", "GET", "/v1/payments/42")).reason
    "allowed by rule 'web-reads-payments' (policy.toml line 3)"
    >>> policy.decide(web, Request("payments", "GET", "/v1/payments/../admin")).allowed
    False
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from certwright.access.locate import locate
from certwright.access.model import Decision, PolicyError, Request, Subject
from certwright.access.paths import path_problem
from certwright.access.rules import Effect, Rule
from certwright.access.schema import compile_rules
from certwright.errors import InvalidIdentityError
from certwright.x509.identity import SpiffeId

__all__ = ["Decision", "Policy", "PolicyError", "Request", "Subject"]

DEFAULT_CACHE_SIZE = 8192
# A policy is a few kilobytes; a megabyte is a mistake (or an attack on the parser).
MAX_POLICY_BYTES = 1 << 20
_SHOW_LIMIT = 160
_CACHED_PATH_LIMIT = 512

# RFC 9110 section 5.6.2: a method is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column \d+\)$")

# What a subject check yields: the deny and the allow rules that apply to it, or why it
# cannot be decided on.
_Applicable = tuple[tuple[Rule, ...], tuple[Rule, ...]] | str


@dataclass(frozen=True)
class Policy:
    """A compiled, immutable policy. ``decide`` is pure and cheap (cached per subject).

    ``Policy()`` (no rules) denies everything. Decisions are cached in a bounded LRU per
    (subject, request), and the rules that apply to a subject per subject, so a peer's
    second request costs a dictionary lookup; :meth:`evaluate` decides without caches.
    """

    source: str = "<policy>"
    rules: tuple[Rule, ...] = field(default=())
    cache_size: int = field(default=DEFAULT_CACHE_SIZE, kw_only=True, compare=False, repr=False)
    _denies: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _allows: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _applicable: Callable[[str | None, tuple[str, ...]], _Applicable] = field(
        init=False, repr=False, compare=False
    )
    _cached: Callable[[Subject, Request], Decision] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not all(isinstance(r, Rule) for r in self.rules):
            raise TypeError("Policy.rules holds compiled rules: build a policy with Policy.parse or load")
        # Deny rules apart: they win over allow rules wherever they stand in the file.
        object.__setattr__(self, "_denies", tuple(r for r in self.rules if r.effect is Effect.DENY))
        object.__setattr__(self, "_allows", tuple(r for r in self.rules if r.effect is Effect.ALLOW))
        applicable = functools.lru_cache(maxsize=max(self.cache_size // 4, 16))(self._applicable_rules)
        object.__setattr__(self, "_applicable", applicable)
        cached = functools.lru_cache(maxsize=self.cache_size)(
            lambda subject, request: self._judge(subject, request, applicable)
        )
        object.__setattr__(self, "_cached", cached)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>", cache_size: int = DEFAULT_CACHE_SIZE) -> Policy:
        """Parse and compile TOML text; raise :class:`PolicyError` naming the line at fault."""
        if not isinstance(text, str):
            raise TypeError("Policy.parse takes the text of a policy (str)")
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError(f"the policy is larger than {MAX_POLICY_BYTES} bytes", source=source)
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message, line = _toml_error(str(exc), text)
            raise PolicyError(f"not valid TOML: {message}", source=source, line=line) from None
        except RecursionError:
            raise PolicyError("not valid TOML: values nested too deeply", source=source) from None
        rules = compile_rules(document, locate(text), source=source)
        return cls(source=source, rules=rules, cache_size=cache_size)

    @classmethod
    def load(cls, path: str | Path, *, cache_size: int = DEFAULT_CACHE_SIZE) -> Policy:
        """Read and parse a policy file (``PolicyError`` if unreadable or malformed)."""
        source = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read the policy: {exc.strerror or exc}", source=source) from None
        return cls.parse(decode_policy(data, source=source), source=source, cache_size=cache_size)

    # -- deciding -------------------------------------------------------------------------
    def decide(self, subject: Subject, request: Request) -> Decision:
        """Allow or deny ``request`` for ``subject``; never raises for any input."""
        try:
            path = getattr(request, "path", None)
            if isinstance(path, str) and len(path) > _CACHED_PATH_LIMIT:
                # Not worth a cache slot, and 8192 slots of 8 KiB paths would be 64 MiB.
                return self._judge(subject, request, self._applicable)
            return self._cached(subject, request)
        except TypeError:
            # Unhashable parts (roles given as a list): decide without the cache.
            return self.evaluate(subject, request)
        except Exception as exc:  # fail closed: a decision must never escape as an exception
            return _internal_error(exc)

    def evaluate(self, subject: Subject, request: Request) -> Decision:
        """Decide without any cache: the cost of a first request from a new peer."""
        try:
            return self._judge(subject, request, self._applicable_rules)
        except Exception as exc:  # fail closed, as in decide
            return _internal_error(exc)

    def cache_info(self) -> dict[str, int]:
        """Sizes of the caches, for metrics: decisions and subjects held now."""
        decisions = getattr(self._cached, "cache_info", None)
        subjects = getattr(self._applicable, "cache_info", None)
        return {
            "decisions": decisions().currsize if decisions else 0,
            "subjects": subjects().currsize if subjects else 0,
        }

    def rules_for(self, subject: Subject) -> tuple[Rule, ...]:
        """The rules (deny rules first) whose identities and roles match ``subject``."""
        found = self._applicable_rules(subject.identity, tuple(subject.roles))
        return () if isinstance(found, str) else found[0] + found[1]

    def _applicable_rules(self, identity: str | None, roles: tuple[str, ...]) -> _Applicable:
        if identity is not None:
            if not isinstance(identity, str):
                return "the identity is not a string"
            try:
                SpiffeId.parse(identity)
            except InvalidIdentityError:
                # Patterns assume valid IDs: '*' must not get to match '..' or an empty segment.
                return f"the identity {_show(identity)} is not a valid SPIFFE ID"
        if not all(isinstance(role, str) for role in roles):
            return "a role is not a string"
        return (
            tuple(r for r in self._denies if r.applies_to(identity, roles)),
            tuple(r for r in self._allows if r.applies_to(identity, roles)),
        )

    def _judge(
        self,
        subject: Subject,
        request: Request,
        applicable: Callable[[str | None, tuple[str, ...]], _Applicable],
    ) -> Decision:
        if not isinstance(subject, Subject) or not isinstance(request, Request):
            return Decision(False, "denied: not a Subject and a Request")
        if not isinstance(subject.roles, tuple | list):
            return Decision(False, "denied: the subject's roles are not a sequence of strings")
        problem, method = _request_problem(request)
        if problem:
            return Decision(False, f"denied: {problem}")
        found = applicable(subject.identity, tuple(subject.roles))
        if isinstance(found, str):
            return Decision(False, f"denied: {found}")
        denies, allows = found
        service, path = request.service, request.path
        for rule in denies:
            if rule.covers(service, method, path, unknown=True):
                return rule.decision
        for rule in allows:
            if rule.covers(service, method, path):
                return rule.decision
        who, what = _who(subject), _what(request, method)
        return Decision(False, f"denied: no rule allows {who} to {what} (default deny)")


def decode_policy(data: bytes, *, source: str) -> str:
    """UTF-8 policy bytes to text; a bad byte is reported with its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError("not UTF-8 text", source=source, line=line) from None


def _toml_error(message: str, text: str) -> tuple[str, int | None]:
    match = _TOML_WHERE.search(message)
    if match:
        return message[: match.start()], int(match.group(1))
    if message.endswith("(at end of document)"):
        return message.removesuffix(" (at end of document)"), text.rstrip().count("\n") + 1
    return message, None


def _request_problem(request: Request) -> tuple[str | None, str | None]:
    """(why the request cannot be decided on, or None; the method in canonical case)."""
    if not isinstance(request.service, str) or not request.service:
        return "the request names no service", None
    method = request.method
    if method is not None:
        if not isinstance(method, str) or not _TOKEN.fullmatch(method):
            return f"the method {_show(method)} is not an HTTP method token", None
        # Methods are case-sensitive (RFC 9110 9.1), but a deny rule for DELETE must not be
        # dodged with "delete" on a server that accepts both: compare in upper case.
        method = method.upper()
    path = request.path
    if path is not None:
        if not isinstance(path, str):
            return "the path is not a string", None
        problem = path_problem(path)
        if problem:
            return f"the path {_show(path)} {problem} (paths are matched as sent, never resolved)", None
    return None, method


def _who(subject: Subject) -> str:
    who = subject.identity if subject.identity is not None else "a peer without identity"
    if subject.roles:
        who += " (roles: " + ", ".join(_show(r, quote=False) for r in subject.roles) + ")"
    return who


def _what(request: Request, method: str | None) -> str:
    parts = [p for p in (method, request.path) if p is not None]
    service = _show(request.service, quote=False)
    return f"{' '.join(_show(p, quote=False) for p in parts)} on {service}" if parts else f"reach {service}"


def _show(value: object, *, quote: bool = True) -> str:
    """Untrusted text made safe for one log line: controls escaped, length capped."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 3] + "..."
    return f"'{text}'" if quote else text


def _internal_error(exc: Exception) -> Decision:
    return Decision(False, f"denied: the request could not be evaluated ({type(exc).__name__})")
