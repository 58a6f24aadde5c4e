"""User profiles in TOML.

Each ``[profile.NAME]`` table defines a profile, optionally starting from a built-in one
(``base = "server"``) and overriding fields. Unknown keys and bad values are refused with
the profile and key at fault; nothing is half-loaded.

Example::

    >>> from certwright.x509.profile_file import parse_profiles
    >>> profiles = parse_profiles('''
    ... [profile.web]
    ... base = "server"
    ... max_lifetime = "30d"
    ... dns = ["web.{zone}"]
    ... ''')
    >>> profiles["web"].dns_patterns
    ('web.{zone}',)
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from certwright.durations import parse_duration
from certwright.errors import InvalidInputError, ProfileError
from certwright.x509.keys import KeyType
from certwright.x509.profiles import (
    BUILTIN_PROFILES,
    ExtendedKeyUsage,
    IdentityRule,
    KeyUsageFlag,
    Profile,
)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _enum_set(kind: type[Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        items = _strings(value)
        try:
            return [kind(v) for v in items]
        except ValueError:
            valid = ", ".join(m.value for m in kind)
            raise TypeError(f"expected values among: {valid}") from None

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _path_length(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError("expected a non-negative integer")
    return value


def _identity(value: Any) -> IdentityRule:
    try:
        return IdentityRule(_text(value))
    except ValueError:
        raise TypeError("expected required, optional or forbidden") from None


def _key_types(value: Any) -> frozenset[KeyType]:
    return frozenset(KeyType.parse(v) for v in _strings(value))


# TOML key -> (Profile field, converter)
_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "description": ("description", _text),
    "ca": ("ca", _bool),
    "path_length": ("path_length", _path_length),
    "key_usage": ("key_usage", lambda v: frozenset(_enum_set(KeyUsageFlag)(v))),
    "extended_key_usage": ("extended_key_usage", lambda v: tuple(_enum_set(ExtendedKeyUsage)(v))),
    "default_lifetime": ("default_lifetime", lambda v: parse_duration(_text(v))),
    "max_lifetime": ("max_lifetime", lambda v: parse_duration(_text(v))),
    "key_types": ("key_types", _key_types),
    "identity": ("identity", _identity),
    "identities": ("identity_patterns", _strings),
    "dns": ("dns_patterns", _strings),
    "allow_wildcard_dns": ("allow_wildcard_dns", _bool),
    "ip_ranges": ("ip_ranges", _strings),
    "emails": ("email_patterns", _strings),
    "roles": ("role_patterns", _strings),
    "name_constraints": ("name_constraints", _bool),
    "ocsp_no_check": ("ocsp_no_check", _bool),
    "crl_urls": ("crl_urls", _strings),
    "ocsp_urls": ("ocsp_urls", _strings),
    "ca_issuer_urls": ("ca_issuer_urls", _strings),
}


def parse_profiles(text: str, *, source: str = "profiles.toml") -> dict[str, Profile]:
    """Parse user profiles; the result holds the built-ins too, overridden by name."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: {exc}") from None
    unknown = set(document) - {"profile"}
    if unknown:
        raise ProfileError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; profiles go in [profile.NAME] tables"
        )
    tables = document.get("profile", {})
    if not isinstance(tables, dict):
        raise ProfileError(f"{source}: 'profile' must be a table of [profile.NAME] tables")
    profiles = dict(BUILTIN_PROFILES)
    for name, table in tables.items():
        profiles[name] = _parse_one(name, table, profiles, source)
    return profiles


def _parse_one(name: str, table: Any, known: Mapping[str, Profile], source: str) -> Profile:
    where = f"{source}: profile {name!r}"
    if not isinstance(table, dict):
        raise ProfileError(f"{where}: must be a table")
    base_name = table.get("base")
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ProfileError(f"{where}: base: expected the name of a profile (a string)")
        if base_name not in known:
            raise ProfileError(f"{where}: base profile {base_name!r} is not defined (above)")
        base = known[base_name]
    elif {"key_usage", "default_lifetime", "max_lifetime"} - set(table):
        raise ProfileError(f"{where}: without 'base' it needs key_usage, default_lifetime and max_lifetime")
    else:
        base = None
    changes: dict[str, Any] = {"name": name}
    for key, value in table.items():
        if key == "base":
            continue
        if key not in _FIELDS:
            raise ProfileError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_FIELDS))})")
        field, convert = _FIELDS[key]
        try:
            changes[field] = convert(value)
        except (TypeError, InvalidInputError) as exc:
            raise ProfileError(f"{where}: {key}: {exc}") from None
    try:
        if base is not None:
            return dataclasses.replace(base, **changes)
        return Profile(**changes)
    except ProfileError as exc:
        raise ProfileError(f"{source}: {exc}") from None
