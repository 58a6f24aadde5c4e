"""Request paths: refused unless canonical, never resolved.

The policy matches the path the service will act on. Resolving ``..`` here and allowing
``/v1/payments/../admin`` as ``/admin`` would decide about a different path than the one the
application routes (Starlette, for one, does not resolve dot segments); matching it as given
would let ``/v1/payments/*`` reach ``/admin`` in any server that does. So every form that
servers disagree about is denied with a reason instead: dot segments (also percent-encoded),
empty segments, backslashes, encoded separators, ``;`` path parameters (Tomcat reads
``..;`` as ``..``) and control characters.

Example::

    >>> from certwright.access.paths import path_problem
    >>> path_problem("/v1/payments/42") is None
    True
    >>> path_problem("/v1/payments/../admin")
    "has a '..' segment"
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

MAX_PATH_LENGTH = 8192
# Percent-decoding is repeated up to this many times: "%252e%252e" is ".." to a server
# that decodes twice.
_DECODE_ROUNDS = 3


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be decided on, or None when it is canonical."""
    if not path:
        return "is empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"is longer than {MAX_PATH_LENGTH} characters"
    if not path.startswith("/"):
        return "does not start with '/'"
    # Cc: C0/C1 controls (CR/LF would forge log lines); Cs: lone surrogates.
    if not path.isprintable() and any(unicodedata.category(c) in ("Cc", "Cs") for c in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash (some servers read it as '/')"
    if ";" in path:
        return "contains ';' (path parameters: servers strip them differently, '..;' is '..' to Tomcat)"
    segments = path[1:].split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "" and index != last:
            return "has an empty segment ('//')"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
        if "%" in segment:
            problem = _encoded_problem(segment)
            if problem:
                return problem
    return None


def _encoded_problem(segment: str) -> str | None:
    decoded = segment
    for _ in range(_DECODE_ROUNDS):
        decoded, previous = unquote(decoded), decoded
        if decoded in (".", ".."):
            return f"has a percent-encoded {decoded!r} segment"
        if "/" in decoded or "\\" in decoded:
            return "has a percent-encoded separator ('%2F' or '%5C')"
        if decoded == previous:
            break
    return None
