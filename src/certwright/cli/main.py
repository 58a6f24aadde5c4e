"""The ``certwright`` console script.

This module imports nothing heavy: :func:`main` first lets :mod:`certwright.cli.prefetch`
start opening a CA key (a signing command's scrypt derivation then overlaps the imports),
and only then loads click and the command group (:mod:`certwright.cli.app`).

Example::

    $ certwright sign --ca ca --profile mtls --csr-dir csrs --out-dir certs
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run the command line in ``sys.argv``."""
    from certwright.cli import prefetch

    prefetch.start(sys.argv[1:], os.environ)
    from certwright.cli.app import cli

    cli(prog_name="certwright")
