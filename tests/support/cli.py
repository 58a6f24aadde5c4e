"""Running the certwright CLI in tests, and looking at what it writes.

Two ways to run the CLI: :func:`run_cli` calls the click command in-process through
``CliRunner`` (fast; used by most tests), :func:`run_exe` runs the real ``certwright``
console script installed next to ``sys.executable`` as a subprocess (used by a few
end-to-end tests that check exit codes and stderr as a shell script would see them).

CAs cost two scrypt key encryptions to create and one decryption per signing command,
so test modules create theirs once, with module-scoped fixtures built on :func:`make_ca`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from certwright.cli.app import cli as certwright_cli
from support.env import require

PASSPHRASE = "integration test passphrase"
PASSPHRASE_ENV = "CERTWRIGHT_CA_PASSPHRASE"
TRUST_DOMAIN = "example.org"
ZONE = "svc.example.org"
DEFAULT_OID = "1.3.6.1.4.1.32473.1.1"
KEY_TYPES = ("ec-p256", "ec-p384", "ed25519", "rsa-2048")


@dataclass(frozen=True)
class Outcome:
    """What a CLI run returned: exit code, standard output, standard error."""

    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown by pytest when an assertion on an Outcome fails
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args: str | Path, passphrase: str | None = PASSPHRASE) -> Outcome:
    """Run ``certwright ARGS`` in-process; ``passphrase=None`` unsets the CA passphrase.

    Exceptions other than SystemExit propagate: an unexpected traceback is a bug, never
    something to mistake for exit code 1.
    """
    result = CliRunner().invoke(
        certwright_cli,
        [str(a) for a in args],
        env={PASSPHRASE_ENV: passphrase},
        prog_name="certwright",
        catch_exceptions=False,
    )
    return Outcome(result.exit_code, result.stdout, result.stderr)


def certwright_exe() -> Path:
    """The ``certwright`` console script of the Python running the tests."""
    exe = Path(sys.executable).parent / "certwright"
    require(exe.is_file(), f"the certwright console script is not installed next to {sys.executable}")
    return exe


def run_exe(*args: str | Path, passphrase: str | None = PASSPHRASE, cwd: Path | None = None) -> Outcome:
    """Run the real ``certwright`` program as a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    if passphrase is not None:
        env[PASSPHRASE_ENV] = passphrase
    proc = subprocess.run(
        [str(certwright_exe()), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def make_ca(
    directory: Path,
    *,
    key_type: str = "ec-p256",
    trust_domain: str = TRUST_DOMAIN,
    zones: tuple[str, ...] = (ZONE,),
    extension_oid: str | None = None,
) -> Path:
    """``certwright ca init`` into ``directory`` (asserting success); returns the directory."""
    args: list[str | Path] = [
        "ca",
        "init",
        "--dir",
        directory,
        "--name",
        f"Test {key_type}",
        "--trust-domain",
        trust_domain,
        "--key-type",
        key_type,
    ]
    for zone in zones:
        args += ["--dns-zone", zone]
    if extension_oid is not None:
        args += ["--extension-oid", extension_oid]
    outcome = run_cli(*args)
    assert outcome.code == 0, outcome
    return directory


def tree(directory: Path) -> set[str]:
    """Every path under ``directory``, relative to it (hidden staging files included)."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
