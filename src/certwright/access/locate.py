"""Where things are in a policy file: the lines of ``[[rule]]`` headers, keys and array items.

``tomllib`` reports lines for syntax errors only; the policy's semantic errors (an unknown
key, a bad identity pattern, a duplicate rule name) must name their line too. This module
re-reads text that ``tomllib`` has already accepted and records where each top-level key,
each ``[[rule]]`` table, each key of a rule and each item of a multi-line array starts.
Because the text is known to be valid TOML, a small scanner that understands strings
(all four kinds), comments, arrays and inline tables is enough: what looks like a key inside
a multi-line string or array is never mistaken for one.

Example::

    >>> from certwright.access.locate import locate
    >>> where = locate('version = 1\\n\\n[[rule]]\\nname = "a"\\npaths = [\\n  "/x",\\n  "/y",\\n]\\n')
    >>> where.rules[0].line, where.rules[0].keys["name"].line, where.rules[0].keys["paths"].items
    (3, 4, [6, 7])
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

RULE_TABLE = "rule"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}
_BASIC_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_ML_BASIC_STOP = re.compile(r'\\[\s\S]|"""')
_ML_LITERAL_STOP = re.compile("'''")
# Characters that end a scalar (number, boolean, date-time) in valid TOML.
_SCALAR_END = frozenset(",]}\n#\r")


@dataclass
class KeyLocation:
    """The line of a key, and of each item when its value is an array."""

    line: int
    items: list[int] = field(default_factory=list)

    def item_line(self, index: int) -> int:
        return self.items[index] if index < len(self.items) else self.line


@dataclass
class TableLocation:
    """One ``[[rule]]`` table: its header line and the first line of each of its keys."""

    line: int
    keys: dict[str, KeyLocation] = field(default_factory=dict)

    def key_line(self, key: str) -> int:
        found = self.keys.get(key)
        return found.line if found else self.line

    def item_line(self, key: str, index: int) -> int:
        found = self.keys.get(key)
        return found.item_line(index) if found else self.line


@dataclass
class Locations:
    """Where the top-level keys and the ``[[rule]]`` tables of a policy start."""

    top: dict[str, KeyLocation] = field(default_factory=dict)
    rules: list[TableLocation] = field(default_factory=list)
    # True when `rule` is written as `rule = [...]` rather than as [[rule]] tables.
    rule_as_value: bool = False

    def top_line(self, key: str) -> int | None:
        found = self.top.get(key)
        return found.line if found else None

    def rule(self, index: int) -> TableLocation | None:
        return self.rules[index] if index < len(self.rules) else None


def locate(text: str) -> Locations:
    """Scan TOML text that ``tomllib`` accepted; unknown places are simply left out.

    Never raises: should the scanner meet something it does not expect, the locations
    found so far are returned and errors fall back to the nearest known line.
    """
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError, RecursionError):
        scanner.scan()
    return scanner.found


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.table: tuple[str, ...] = ()
        self.found = Locations()

    # -- characters ---------------------------------------------------------------------
    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def advance(self, count: int = 1) -> None:
        end = min(self.pos + count, len(self.text))
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_blanks(self) -> None:
        while self.peek() in (" ", "\t") and not self.at_end():
            self.advance()

    def skip_comment(self) -> None:
        if self.peek() == "#":
            end = self.text.find("\n", self.pos)
            self.advance((len(self.text) if end < 0 else end) - self.pos)

    def skip_space(self) -> None:
        """Blanks, newlines and comments (between array items, between statements)."""
        while not self.at_end():
            char = self.peek()
            if char in (" ", "\t", "\r", "\n"):
                self.advance()
            elif char == "#":
                self.skip_comment()
            else:
                return

    # -- statements ---------------------------------------------------------------------
    def scan(self) -> None:
        while True:
            self.skip_space()
            if self.at_end():
                return
            if self.peek() == "[":
                self.header()
            else:
                self.key_value()

    def header(self) -> None:
        line = self.line
        array = self.peek(1) == "["
        self.advance(2 if array else 1)
        path = self.key()
        self.skip_blanks()
        self.advance(2 if array else 1)
        self.table = path
        if array and path == (RULE_TABLE,):
            self.found.rules.append(TableLocation(line))
        elif path and path[0] == RULE_TABLE and len(path) > 1 and self.found.rules:
            # [rule.x] / [[rule.x]] after a [[rule]]: a sub-table of the last rule.
            self.found.rules[-1].keys.setdefault(path[1], KeyLocation(line))
        elif path:
            self.found.top.setdefault(path[0], KeyLocation(line))

    def key_value(self) -> None:
        line = self.line
        path = self.key()
        self.skip_blanks()
        self.advance()  # '='
        self.skip_blanks()
        location = KeyLocation(line)
        self.value(location.items)
        if not path:
            return
        if self.table == ():
            self.found.top.setdefault(path[0], location)
            if path[0] == RULE_TABLE:
                self.found.rule_as_value = True
        elif self.table == (RULE_TABLE,) and self.found.rules:
            self.found.rules[-1].keys.setdefault(path[0], location)

    def key(self) -> tuple[str, ...]:
        """A dotted key; quoted parts unescaped."""
        parts: list[str] = []
        while True:
            self.skip_blanks()
            char = self.peek()
            if char in ('"', "'"):
                start = self.pos
                self.string()
                raw = self.text[start + 1 : self.pos - 1]
                parts.append(_unescape(raw) if char == '"' else raw)
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise ValueError("not a key")
                parts.append(match.group())
                self.advance(match.end() - self.pos)
            self.skip_blanks()
            if self.peek() != ".":
                return tuple(parts)
            self.advance()

    # -- values -------------------------------------------------------------------------
    def value(self, items: list[int] | None = None) -> None:
        """Skip one value; for an array, note the line where each item starts in ``items``."""
        char = self.peek()
        if char in ('"', "'"):
            self.string()
        elif char == "[":
            self.array(items)
        elif char == "{":
            self.inline_table()
        else:
            while not self.at_end() and self.peek() not in _SCALAR_END:
                self.advance()

    def array(self, items: list[int] | None) -> None:
        self.advance()  # '['
        while True:
            self.skip_space()
            if self.peek() == "]" or self.at_end():
                self.advance()
                return
            if items is not None:
                items.append(self.line)
            self.value()
            self.skip_space()
            if self.peek() == ",":
                self.advance()

    def inline_table(self) -> None:
        self.advance()  # '{'
        while True:
            self.skip_blanks()
            if self.peek() == "}" or self.at_end():
                self.advance()
                return
            self.key()
            self.skip_blanks()
            self.advance()  # '='
            self.skip_blanks()
            self.value()
            self.skip_blanks()
            if self.peek() == ",":
                self.advance()

    def string(self) -> None:
        quote = self.peek()
        if self.text.startswith(quote * 3, self.pos):
            self.multiline_string(quote)
        elif quote == '"':
            match = _BASIC_STRING.match(self.text, self.pos)
            self.advance_to(match.end() if match else len(self.text))
        else:
            end = self.text.find("'", self.pos + 1)
            self.advance_to(len(self.text) if end < 0 else end + 1)

    def multiline_string(self, quote: str) -> None:
        stop = _ML_BASIC_STOP if quote == '"' else _ML_LITERAL_STOP
        index = self.pos + 3
        while True:
            match = stop.search(self.text, index)
            if match is None:
                self.advance_to(len(self.text))
                return
            index = match.end()
            if match.group() == quote * 3:
                break
            # else an escape (or a line-ending backslash): skip it, it cannot close the string
        # Up to two quotes may sit right before the closing delimiter (TOML 1.0).
        for _ in range(2):
            if self.text.startswith(quote, index):
                index += 1
        self.advance_to(index)

    def advance_to(self, index: int) -> None:
        self.advance(index - self.pos)


def _unescape(raw: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1) or match.group(2)
        if code:
            return chr(int(code, 16))
        return _SIMPLE_ESCAPES.get(match.group(3), match.group(0))

    return _ESCAPE.sub(one, raw)
