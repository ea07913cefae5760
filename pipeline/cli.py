"""The ``sporeflow`` command: thin: parse, load, build, run.

It catches only :class:`SporeflowError` and prints ``TypeName: message`` with
exit code 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sporeflow.config import ORGANISM_SCHEMA, ConfigError, SporeflowError, check_organism
from sporeflow.pipeline.logs import configure_logging
from sporeflow.pipeline.organism import Organism
from sporeflow.pipeline.summary import render_summary
from sporeflow.steps import Spore

__all__ = ["main"]

T = TypeVar("T")
ORGANISM_ARG = click.argument(
    "organism", required=False, default="organism.yaml",
    type=click.Path(dir_okay=False, path_type=Path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """sporeflow: agents are plain handlers; the wiring is organism.yaml."""
    ctx.obj = {"debug": debug}


def _fail(ctx: click.Context, exc: BaseException) -> None:
    if ctx.obj.get("debug"):
        raise exc
    if isinstance(exc, ConfigError):
        click.echo(f"ConfigError: {exc}", err=True)
    else:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
    ctx.exit(1)


def _guarded(ctx: click.Context, work: Callable[[], T]) -> T:
    try:
        return work()
    except SporeflowError as exc:
        _fail(ctx, exc)
        raise AssertionError("unreachable") from exc


@cli.command()
@ORGANISM_ARG
@click.option("--until-idle", is_flag=True, help="Exit 0 once nothing is queued or running.")
@click.option("--drain-timeout", default=30.0, show_default=True,
              help="Seconds to finish in-flight work on stop.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="WARNING", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")
@click.pass_context
def run(ctx: click.Context, organism: Path, until_idle: bool, drain_timeout: float,
        log_format: str, log_level: str, quiet: bool) -> None:
    """Run ORGANISM (default ./organism.yaml) until Ctrl-C, SIGTERM, or idle."""
    configure_logging(log_format, log_level)
    org = _guarded(ctx, lambda: Organism.from_file(organism))
    try:
        code = asyncio.run(_run(org, until_idle=until_idle, drain_timeout=drain_timeout))
    except SporeflowError as exc:
        _fail(ctx, exc)
    ctx.exit(code)


async def _run(org: Organism, *, until_idle: bool, drain_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            # Second Ctrl-C: the user does not want to wait for the drain.
            click.echo("interrupted twice: exiting without draining", err=True)
            os._exit(130)
        click.echo("stopping: finishing in-flight work (Ctrl-C again to exit now)", err=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    started = time.perf_counter()
    await org.start()
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if until_idle:
        waiters.append(asyncio.ensure_future(org.idle()))
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # surfaces a crashed organism
    finally:
        for waiter in waiters:
            waiter.cancel()
        unfinished = await org.stop(drain_timeout=drain_timeout)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    click.echo(render_summary(org.stats(), time.perf_counter() - started), err=True)
    if unfinished:
        click.echo(f"{unfinished} spore(s) could not finish and were dead-lettered "
                   f"as 'shutdown'", err=True)
    return 0


@cli.command()
@click.argument("organism", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def check(ctx: click.Context, organism: Path) -> None:
    """Validate ORGANISM; print every problem with its line and column."""
    spec, warnings = _guarded(ctx, lambda: check_organism(organism))
    for warning in warnings:
        click.echo(str(warning), err=True)
    channels = [c for c in spec.channels if c not in ("main", "dead-letter")]
    click.echo(f"{organism}: ok: organism {spec.name!r}, {len(spec.agents)} agents, "
               f"{len(channels)} channels, {len(warnings)} warnings")


@cli.command()
@click.argument("organism", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "to_agent", required=True, help="The agent to send to.")
@click.option("--request", "as_request", is_flag=True,
              help="Send a request and print its response.")
@click.option("--timeout", default=30.0, show_default=True)
@click.argument("knowledge")
@click.pass_context
def send(ctx: click.Context, organism: Path, to_agent: str, as_request: bool, timeout: float,
         knowledge: str) -> None:
    """Run ORGANISM, send KNOWLEDGE (JSON) to an agent, print what comes back as JSON lines."""
    try:
        payload = json.loads(knowledge)
    except ValueError as exc:
        click.echo(f"SporeError: KNOWLEDGE is not JSON: {exc}; quote it like '{{\"a\": 1}}'",
                   err=True)
        ctx.exit(1)
    configure_logging("text", "WARNING")
    org = _guarded(ctx, lambda: Organism.from_file(organism))
    try:
        asyncio.run(_send(org, to_agent, payload, as_request=as_request, timeout=timeout))
    except SporeflowError as exc:
        _fail(ctx, exc)


async def _send(org: Organism, to_agent: str, payload: Any, *, as_request: bool,
                timeout: float) -> None:
    def show(spore: Spore) -> None:
        if spore.to_agent == "cli":
            click.echo(spore.to_json())

    async with org.running():
        org.on_outside(show)
        if as_request:
            response = await org.request(to_agent, payload, sender="cli", timeout=timeout)
            click.echo(response.to_json())
        else:
            await org.send(to_agent, payload, sender="cli")
        await asyncio.wait_for(org.idle(), timeout)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of organism files (for editors)."""
    click.echo(json.dumps(ORGANISM_SCHEMA, indent=2))


def main() -> None:
    """The console script."""
    logging.captureWarnings(True)
    cli(prog_name="sporeflow")


if __name__ == "__main__":  # pragma: no cover
    main()
