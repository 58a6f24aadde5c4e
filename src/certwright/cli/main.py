"""The ``certwright`` command line."""

from __future__ import annotations

import click

from certwright import __version__
from certwright.cli.ca_cmds import ca
from certwright.cli.cert_cmds import csr, issue, key, pkcs12, sign
from certwright.cli.common import CertwrightGroup
from certwright.cli.inspect_cmds import inspect_cmd, verify
from certwright.cli.quickstart import quickstart


@click.group(cls=CertwrightGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="certwright")
def cli() -> None:
    """certwright: craft CAs and certificates for service-to-service mTLS.

    Exit codes: 0 success, 1 refused or invalid input (reason on stderr), 2 usage error.
    """


for command in (ca, key, csr, issue, sign, pkcs12, inspect_cmd, verify, quickstart):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="certwright")
