"""From a parsed TOML document to compiled rules, refusing anything doubtful with its line.

The format (docs/access.md has the full reference)::

    version = 1

    [[rule]]
    name = "web-reads-payments"
    services = ["payments"]
    identities = ["spiffe://example.org/ns/prod/web"]
    roles = ["reader"]
    methods = ["GET", "HEAD"]
    paths = ["/v1/payments/**"]

Unknown keys are errors (a typo such as ``method =`` must not silently allow every method),
empty lists are errors (say "any" by leaving the key out), and every value is validated
before any rule is returned: a policy is applied whole or not at all.

Example::

    >>> from certwright.access.locate import locate
    >>> from certwright.access.schema import compile_rules
    >>> import tomllib
    >>> text = 'version = 1\\n[[rule]]\\nname = "a"\\nservices = ["*"]\\nroles = ["admin"]\\n'
    >>> [r.label for r in compile_rules(tomllib.loads(text), locate(text), source="p.toml")]
    ['a (p.toml line 2)']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from certwright.access.locate import Locations, TableLocation
from certwright.access.model import PolicyError
from certwright.access.rules import Effect, Rule
from certwright.errors import InvalidIdentityError
from certwright.globs import Glob
from certwright.x509.authz import MAX_ROLE_LENGTH
from certwright.x509.identity import SCHEME, SpiffeId

VERSION = 1
TOP_KEYS = ("version", "rule")
RULE_KEYS = ("name", "description", "effect", "services", "identities", "roles", "methods", "paths")

ALL_SERVICES = "*"
# RFC 9110 section 9 and RFC 5789 (PATCH): the methods a policy may name. Anything else is
# far more likely a typo ("GTE") than a method the service implements.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The role syntax of the authorization extension (x509/authz.py), checked segment by segment.
_ROLE_SEGMENT = re.compile(r"[A-Za-z0-9._:-]+")
# Path patterns: printable ASCII except what a decoded path never holds or we refuse there.
_PATH_CHARS = re.compile(r"[!$&'()*+,\-.0-9:=@A-Z_a-z~/]+")

T = TypeVar("T")


class _Invalid(Exception):
    """A bad value, raised by the converters below; turned into a PolicyError with a line."""

    def __init__(self, message: str, *, item: int | None = None) -> None:
        super().__init__(message)
        self.item = item


def compile_rules(document: dict[str, Any], where: Locations, *, source: str) -> tuple[Rule, ...]:
    """Validate ``document`` (from ``tomllib``) and compile its rules, in file order."""
    for key in document:
        if key not in TOP_KEYS:
            raise PolicyError(
                f"unknown top-level key {key!r}: a policy holds `version = 1` and [[rule]] tables",
                source=source,
                line=where.top_line(key),
            )
    _check_version(document, where, source)
    tables = document.get("rule", [])
    if not isinstance(tables, list) or where.rule_as_value:
        raise PolicyError(
            "write each rule as a [[rule]] table", source=source, line=where.top_line("rule")
        )
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    for index, table in enumerate(tables):
        location = where.rule(index)
        rule = _compile_rule(table, location, source=source, number=index + 1)
        if rule.name in seen:
            raise PolicyError(
                f"rule name {rule.name!r} is used twice (first {seen[rule.name].label}); "
                "decisions name their rule, so names must be unique",
                source=source,
                line=location.key_line("name") if location else None,
            )
        seen[rule.name] = rule
        rules.append(rule)
    return tuple(rules)


def _check_version(document: dict[str, Any], where: Locations, source: str) -> None:
    if "version" not in document:
        # Required so that an empty or truncated file is refused rather than read as "deny all".
        raise PolicyError(f"missing `version = {VERSION}` (the policy format version)", source=source, line=1)
    version = document["version"]
    if type(version) is not int or version != VERSION:
        raise PolicyError(
            f"version {version!r} is not supported: this certwright reads version {VERSION}",
            source=source,
            line=where.top_line("version"),
        )


def _compile_rule(table: Any, location: TableLocation | None, *, source: str, number: int) -> Rule:
    header = location.line if location else None

    def fail(message: str, key: str | None = None, item: int | None = None) -> PolicyError:
        line = header
        if location is not None and key is not None:
            line = location.key_line(key) if item is None else location.item_line(key, item)
        return PolicyError(message, source=source, line=line)

    if not isinstance(table, dict):
        raise fail(f"rule {number} is not a table")
    for key in table:
        if key not in RULE_KEYS:
            raise fail(f"unknown key {key!r} in a rule (known keys: {', '.join(RULE_KEYS)})", key)
    if "name" not in table:
        raise fail(f"rule {number} has no name: decisions name the rule that made them")

    label = f"rule {number}"

    def get(key: str, convert: Callable[[Any], T], default: T) -> T:
        if key not in table:
            return default
        try:
            return convert(table[key])
        except _Invalid as exc:
            raise fail(f"{label}, {key}: {exc}", key, exc.item) from None

    name = get("name", _rule_name, "?")
    label = f"rule {name!r}"
    if "services" not in table:
        raise fail(f"rule {name!r} has no services: name the services it covers (or \"*\" for all)")
    if "identities" not in table and "roles" not in table:
        raise fail(f"rule {name!r} names neither identities nor roles: say whom it applies to")
    return Rule(
        name=name,
        effect=get("effect", _effect, Effect.ALLOW),
        services=get("services", _services, None),
        identities=get("identities", _identity_patterns, ()),
        roles=get("roles", _role_patterns, ()),
        methods=get("methods", _methods, None),
        paths=get("paths", _path_patterns, None),
        description=get("description", _text, ""),
        source=source,
        line=header,
    )


# -- converters: raise _Invalid (with the index of the bad item of a list) --------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return value


def _rule_name(value: Any) -> str:
    name = _text(value)
    if not _NAME.fullmatch(name):
        raise _Invalid(
            f"{name!r} is not a rule name: 1-64 letters, digits, '.', '_', ':', '-', starting "
            "with a letter or digit"
        )
    return name


def _effect(value: Any) -> Effect:
    try:
        return Effect(_text(value))
    except ValueError:
        raise _Invalid(f"{value!r}: expected \"allow\" or \"deny\"") from None


def _strings(value: Any, check: Callable[[str], T]) -> list[T]:
    if not isinstance(value, list):
        raise _Invalid("expected a list of strings")
    if not value:
        raise _Invalid("the list is empty; leave the key out to mean \"any\"")
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"item {index + 1} is not a string", item=index)
        try:
            out.append(check(item))
        except _Invalid as exc:
            raise _Invalid(str(exc), item=index) from None
    return out


def _service(name: str) -> str:
    if name != ALL_SERVICES and not _SERVICE.fullmatch(name):
        raise _Invalid(
            f"{name!r} is not a service name (letters, digits, '.', '_', '-'), nor \"*\" for all services"
        )
    return name


def _services(value: Any) -> frozenset[str] | None:
    names = _strings(value, _service)
    if ALL_SERVICES in names:
        if len(names) > 1:
            raise _Invalid('"*" means every service: list nothing else with it', item=names.index("*"))
        return None
    return frozenset(names)


def _methods(value: Any) -> frozenset[str]:
    def method(text: str) -> str:
        upper = text.upper()
        if upper not in KNOWN_METHODS:
            raise _Invalid(f"{text!r} is not an HTTP method ({', '.join(sorted(KNOWN_METHODS))})")
        return upper

    return frozenset(_strings(value, method))


def _check_double_star(pattern: str, segments: list[str]) -> None:
    for segment in segments:
        if "**" in segment and segment != "**":
            raise _Invalid(f"{pattern!r}: '**' must be a whole segment (write '*' within a segment)")


def _identity_pattern(pattern: str) -> Glob:
    if not pattern.startswith(SCHEME):
        raise _Invalid(f"{pattern!r} is not a SPIFFE ID pattern: it must start with {SCHEME}")
    trust_domain, slash, path = pattern[len(SCHEME) :].partition("/")
    if "*" in trust_domain:
        # A glob over trust domains would trust every federated domain: name it.
        raise _Invalid(f"{pattern!r}: the trust domain cannot be a pattern; write it out")
    segments = path.split("/") if slash else []
    _check_double_star(pattern, segments)
    # Check the literal parts with the SPIFFE ID rules: each '*' stands for one character.
    sample = SCHEME + trust_domain + "".join("/" + s.replace("*", "x") for s in segments)
    try:
        SpiffeId.parse(sample)
    except InvalidIdentityError as exc:
        raise _Invalid(f"{pattern!r} is not a valid SPIFFE ID pattern: {_after_quote(str(exc))}") from None
    return Glob.compile(pattern, sep="/")


def _after_quote(message: str) -> str:
    """SpiffeId's messages start with the sample URI quoted; keep only the rule it broke."""
    head, sep, tail = message.partition("': ")
    return tail if sep and head.startswith("'") else message


def _identity_patterns(value: Any) -> tuple[Glob, ...]:
    return tuple(_strings(value, _identity_pattern))


def _role_pattern(pattern: str) -> Glob:
    segments = pattern.split("/")
    _check_double_star(pattern, segments)
    literal = [s.replace("*", "x") for s in segments]
    if (
        len(pattern) > MAX_ROLE_LENGTH
        or not all(_ROLE_SEGMENT.fullmatch(s) for s in literal)
        or not literal[0][0].isalnum()
    ):
        raise _Invalid(
            f"{pattern!r} is not a role pattern: up to {MAX_ROLE_LENGTH} letters, digits and "
            "'.', '_', ':', '-', starting with a letter or digit, '/' between non-empty segments; "
            "'*' within a segment, '**' for whole segments"
        )
    return Glob.compile(pattern, sep="/")


def _role_patterns(value: Any) -> tuple[Glob, ...]:
    return tuple(_strings(value, _role_pattern))


def _path_pattern(pattern: str) -> Glob:
    if not pattern.startswith("/"):
        raise _Invalid(f"{pattern!r}: a path pattern starts with '/'")
    if not _PATH_CHARS.fullmatch(pattern):
        bad = next(c for c in pattern if not _PATH_CHARS.fullmatch(c))
        raise _Invalid(
            f"{pattern!r} contains {bad!r}: patterns match decoded paths without query; "
            "'%', '?', '#', ';', '\\', spaces and non-ASCII are refused"
        )
    segments = pattern[1:].split("/")
    _check_double_star(pattern, segments)
    for index, segment in enumerate(segments):
        if segment == "" and index != len(segments) - 1:
            raise _Invalid(f"{pattern!r} has an empty segment ('//')")
        if segment in (".", ".."):
            raise _Invalid(f"{pattern!r} has a {segment!r} segment; paths are never resolved")
    return Glob.compile(pattern, sep="/")


def _path_patterns(value: Any) -> tuple[Glob, ...]:
    return tuple(_strings(value, _path_pattern))
