"""``sporeflow broker-permissions`` and ``broker-declare``: a RabbitMQ user per process.

``broker-permissions`` prints the rabbitmqctl commands that make a user for one
process (its agents) or a client, with the least permissions it needs
(``pipeline.broker.permissions``). Such a user may declare nothing but its reply
queues, so ``broker-declare``, run once as an administrator, declares the
organism's exchanges, queues and bindings.
"""

from __future__ import annotations

from pathlib import Path

import click

from sporeflow.config import BrokerError, SporeflowError, load_organism
from sporeflow.pipeline.broker.backend import Backend, Topology
from sporeflow.pipeline.broker.factory import open_backend
from sporeflow.pipeline.broker.leftovers import Leftovers
from sporeflow.pipeline.broker.permissions import (
    DEFAULT_PASSWORD_ENV,
    permissions,
    shell_script,
)
from sporeflow.pipeline.cli.util import ORGANISM_ARG, guarded, run_to_end

__all__ = ["broker_declare", "broker_permissions"]


@click.command("broker-permissions")
@ORGANISM_ARG
@click.option("--agents", metavar="A,B", help="The agents the process hosts, as for "
              "`sporeflow run --agents` (default: all of them).")
@click.option("--client", is_flag=True, help="A client: hosts no agent, sends to the "
              "organism's agents and awaits responses.")
@click.option("--user", metavar="NAME", help="The broker user (default: the organism's "
              "name and the agents', e.g. shop-reader-counter).")
@click.option("--vhost", default="/", show_default=True, help="The RabbitMQ virtual host.")
@click.option("--password-env", default=DEFAULT_PASSWORD_ENV, show_default=True,
              metavar="NAME", help="The environment variable the script reads the user's "
                                   "password from when it runs.")
@click.pass_context
def broker_permissions(ctx: click.Context, organism: Path, agents: str | None, client: bool,
                       user: str | None, vhost: str, password_env: str) -> None:
    """Print, as a shell script of rabbitmqctl commands, a RabbitMQ user for one process of
    ORGANISM: it may consume only its agents' queues, bind nothing but its reply queue,
    and publish only to the agents and channels its agents may address. No password is
    printed: the script reads it from the environment."""
    if client and agents is not None:
        raise click.UsageError("give --agents or --client, not both")
    hosted = [] if client else (None if agents is None else
                                [a.strip() for a in agents.split(",") if a.strip()])
    spec = guarded(ctx, lambda: load_organism(organism, signs=False))  # signs nothing
    script = guarded(ctx, lambda: shell_script(
        permissions(spec, hosted, user=user, vhost=vhost), organism=str(organism),
        password_env=password_env))
    click.echo(script, nl=False)


@click.command("broker-declare")
@ORGANISM_ARG
@click.option("--backend", metavar="URL", help="An amqp:// or amqps:// URL of a user allowed "
              "to declare them (${NAME} reads the environment); default: organism.backend.")
@click.pass_context
def broker_declare(ctx: click.Context, organism: Path, backend: str | None) -> None:
    """Declare ORGANISM's exchanges, agent queues, bindings and dead-letter queue on
    RabbitMQ, then exit: run it once as an administrator when the processes log in as
    users from broker-permissions, which may not declare them (and again after agents or
    subscriptions change). Bindings an earlier declaration made that the file no longer
    has are taken away, each named; a queue of an agent no longer in the file is unbound,
    and deleted if empty, else kept (named, with the command that deletes it)."""
    spec = guarded(ctx, lambda: load_organism(organism, signs=False))  # signs nothing
    topology = Topology.of(spec)
    declared, leftovers = guarded(ctx, lambda: run_to_end(
        _declare(backend or spec.backend, topology)))
    queues = ", ".join([*(topology.queue(a) for a in topology.subscriptions),
                        topology.dead_letter_queue])
    click.echo(f"declared on {declared}: exchanges {topology.exchange}, "
               f"{topology.dead_letter_exchange}; queues {queues}")
    for line in leftovers.lines():
        click.echo(line)


async def _declare(url: str, topology: Topology) -> tuple[str, Leftovers]:
    """Open ``url`` as a process would, insisting that it declares: the broker's address
    and what the declaration took away."""
    backend = open_backend(url)
    if backend is None:
        raise BrokerError("broker-declare needs a broker: give --backend amqp://... or set "
                          "organism.backend")
    async with backend:
        await backend.open(topology)
        if not getattr(backend, "declared", True):
            user = getattr(backend, "user", "?")
            raise BrokerError(f"user {user!r} at {backend.address} may not declare the "
                              f"topology of {topology.exchange!r}; use a user with configure "
                              f"permission on the vhost (an administrator)")
    return backend.address, backend.leftovers


@click.command("broker-delete")
@ORGANISM_ARG
@click.option("--backend", metavar="URL", help="An amqp:// or amqps:// URL of a user allowed "
              "to delete them (${NAME} reads the environment); default: organism.backend.")
@click.option("--yes", is_flag=True, help="Delete them; without it, say what would go.")
@click.pass_context
def broker_delete(ctx: click.Context, organism: Path, backend: str | None, yes: bool) -> None:
    """Delete ORGANISM's exchanges and queues from RabbitMQ, the spores waiting in its
    agents' queues and the letters of its dead-letter queue with them, and its boot and
    declaration records: a deployment taken away for good. Refused while a process
    consumes one of its queues; without --yes, it only says what it would delete."""
    spec = guarded(ctx, lambda: load_organism(organism, signs=False))  # signs nothing
    topology = Topology.of(spec)
    url = backend or spec.backend
    # The queues the record kept for agents removed since go too (found by an audit).
    queues, unasked = sorted(topology.declared()), ""
    try:
        queues = run_to_end(_broker(url).deployment_queues(topology))
    except SporeflowError as exc:
        unasked = f" (and the queues its record kept, which the broker could not tell: {exc})"
    what = (f"exchanges {topology.exchange}, {topology.dead_letter_exchange}; queues "
            f"{', '.join([*queues, topology.dead_letter_queue])}{unasked}; the records of "
            f"its declarations, boots and signing ({topology.record_queue}, "
            f"{topology.signing_marker} and the like)")
    if not yes:
        click.echo(f"would delete {what}, and every spore and dead letter in them; pass "
                   f"--yes to delete", err=True)
        ctx.exit(1)
    address = guarded(ctx, lambda: run_to_end(_delete(url, topology)))
    # RabbitMQ deletes what is not there without a word: said so (found by a new user).
    click.echo(f"deleted from {address}, those that were there: {what}")


def _broker(url: str) -> Backend:
    backend = open_backend(url)
    if backend is None:
        raise BrokerError("broker-delete needs a broker: give --backend amqp://... or set "
                          "organism.backend")
    return backend


async def _delete(url: str, topology: Topology) -> str:
    backend = _broker(url)
    await backend.destroy(topology, unused_only=True)
    return backend.address
