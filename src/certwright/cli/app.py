"""The ``certwright`` command group (the entry point is :mod:`certwright.cli.main`).

Subcommands are imported when they run: ``sign --csr-dir`` should not pay for pyOpenSSL
and the verifier at start-up, and batch runs are measured against ``openssl ca``.
"""

from __future__ import annotations

import importlib

import click

from certwright import __version__
from certwright.cli.common import CertwrightGroup

# name -> "module:attribute" of the click command
COMMANDS = {
    "ca": "certwright.cli.ca_cmds:ca",
    "key": "certwright.cli.cert_cmds:key",
    "csr": "certwright.cli.cert_cmds:csr",
    "issue": "certwright.cli.cert_cmds:issue",
    "sign": "certwright.cli.cert_cmds:sign",
    "pkcs12": "certwright.cli.cert_cmds:pkcs12",
    "inspect": "certwright.cli.inspect_cmds:inspect_cmd",
    "verify": "certwright.cli.inspect_cmds:verify",
    "quickstart": "certwright.cli.quickstart:quickstart",
    "list": "certwright.cli.inventory_cmds:list_cmd",
    "show": "certwright.cli.inventory_cmds:show_cmd",
    "expiring": "certwright.cli.inventory_cmds:expiring_cmd",
    "revoke": "certwright.cli.inventory_cmds:revoke_cmd",
    "unrevoke": "certwright.cli.inventory_cmds:unrevoke_cmd",
    "crl": "certwright.cli.inventory_cmds:crl_cmd",
    "ocsp": "certwright.cli.inventory_cmds:ocsp_cmd",
    "import": "certwright.cli.inventory_cmds:import_cmd",
    "audit": "certwright.cli.inventory_cmds:audit",
    "db": "certwright.cli.inventory_cmds:db",
    "access": "certwright.cli.access_cmds:access",
    "tunnel": "certwright.cli.tunnel_cmds:tunnel",
    "serve": "certwright.cli.serve_cmds:serve",
    "token": "certwright.cli.token_cmds:token",
    "enroll": "certwright.cli.enroll_cmds:enroll",
    "agent": "certwright.cli.agent_cmds:agent",
}


class LazyGroup(CertwrightGroup):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="certwright")
def cli() -> None:
    """certwright: craft CAs and certificates for service-to-service mTLS.

    Exit codes: 0 success, 1 refused or invalid input (reason on stderr), 2 usage error.
    """
