"""Pieces shared by the CLI commands: errors to exit codes, passphrases, output."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from certwright.errors import CertwrightError
from certwright.x509.keys import KeyType

# Exit codes scripts can rely on (the CLI contract of issue 2).
EXIT_OK = 0
EXIT_REFUSED = 1  # refused or invalid input; the message on stderr says what is wrong
EXIT_USAGE = 2  # click's own code for usage errors

PASSPHRASE_ENV = "CERTWRIGHT_CA_PASSPHRASE"  # noqa: S105 - a variable name, not a secret

F = TypeVar("F", bound=Callable[..., Any])


def say(message: str, *, style: str | None = None, label: str | None = None) -> None:
    """A line for the person at the terminal, on stderr, the label styled (plain when piped).

    click rather than rich: rich costs ~30 ms to import, which batch runs feel, and click's
    styling never reinterprets brackets in ``message`` as markup.
    """
    prefix = click.style(label, fg=style, bold=True) + " " if label else ""
    click.echo(prefix + message, err=True)


class Refused(CertwrightError):
    """Raised by CLI code for a refusal detected at the edge (maps to exit code 1)."""


class CertwrightGroup(click.Group):
    """A click group that turns certwright errors into a message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CertwrightError as exc:
            fail(str(exc))
        except FileExistsError as exc:
            fail(f"{exc} (use --force to replace it)")
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            fail(f"cannot access{where}: {exc.strerror or exc}")


def fail(message: str) -> None:
    say(message, style="red", label="error:")
    sys.exit(EXIT_REFUSED)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def read_passphrase(
    passphrase_file: Path | None, *, env: str = PASSPHRASE_ENV, what: str = "CA", confirm: bool = False
) -> bytes:
    """The passphrase from ``--passphrase-file``, the environment, or a prompt on a terminal."""
    if passphrase_file is not None:
        try:
            data = passphrase_file.read_bytes()
        except OSError as exc:
            raise Refused(f"cannot read passphrase file {passphrase_file}: {exc.strerror}") from None
        value = data.rstrip(b"\r\n")
        if not value:
            raise Refused(f"passphrase file {passphrase_file} is empty")
        return value
    from_env = os.environ.get(env)
    if from_env:
        return from_env.encode()
    if sys.stdin.isatty():
        typed: str = click.prompt(
            f"{what} passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
        return typed.encode()
    raise Refused(f"the {what} key is encrypted: give --passphrase-file F or set {env}")


def passphrase_option(f: F) -> F:
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"File holding the CA passphrase (default: ${PASSPHRASE_ENV}).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def parse_attributes(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Refused(f"attribute {pair!r}: expected KEY=VALUE")
        if key in out:
            raise Refused(f"attribute {key!r} given twice")
        out[key] = value
    return out


def _parse_key_type(ctx: click.Context, param: click.Parameter, value: str) -> KeyType:
    # KeyType.parse raises InvalidKeyError: an unknown key type is refused input (exit 1,
    # the message lists the valid names), not a usage error.
    return KeyType.parse(value)


def key_type_option(*flags: str) -> Callable[[F], F]:
    names = ", ".join(t.value for t in KeyType)
    return click.option(
        *flags,
        "key_type",
        default=KeyType.EC_P256.value,
        show_default=True,
        callback=_parse_key_type,
        help=f"Key type: {names}.",
    )


def actor() -> str:
    """Who asked, as the audit log and the inventory record it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def configure_logging(level: str = "info") -> None:
    """Plain lines on stderr for the ``certwright`` loggers of a long-running command.

    ``serve`` (own certificates renewed, tokens purged, workers restarted) and ``tunnel``
    (decisions, reloads). Without a handler Python would print their warnings bare and drop
    the rest. ``level`` is a logging level name (uvicorn's ``trace`` counts as debug).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("certwright")
    root.handlers[:] = [handler]
    number = logging.getLevelName("DEBUG" if level.lower() == "trace" else level.upper())
    root.setLevel(number if isinstance(number, int) else logging.INFO)
    root.propagate = False
