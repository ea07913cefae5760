"""``sporeflow keygen AGENT``: an Ed25519 key pair for one agent's signatures."""

from __future__ import annotations

import base64
import re

import click

from sporeflow.config.signing_keys import SIGNING_EXTRA_HINT


@click.command()
@click.argument("agent")
@click.option("--env", "env_name", default=None, metavar="NAME",
              help="the variable the private key goes in (default <AGENT>_SIGNING_KEY)")
def keygen(agent: str, env_name: str | None) -> None:
    """Make an Ed25519 key pair for AGENT: the public half goes in organism.yaml, the
    private half in the environment of the process that hosts AGENT, and nowhere else."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise click.ClickException(f"keygen needs the cryptography package: "
                                   f"{SIGNING_EXTRA_HINT}") from None
    private = ed25519.Ed25519PrivateKey.generate()
    env_name = env_name or re.sub(r"\W", "_", agent.upper()) + "_SIGNING_KEY"
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    secret = base64.b64encode(private.private_bytes_raw()).decode()
    click.echo(f"# organism.yaml, in every process:\n"
               f"organism:\n  signing:\n    agents:\n      {agent}:\n"
               f"        public_key: {public}\n        private_key_env: {env_name}\n")
    click.echo(f"# only where {agent} is hosted (keep it out of files and logs):")
    click.echo(f"export {env_name}={secret}")
