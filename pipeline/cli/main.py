"""The ``sporeflow`` command: thin: parse, load, build, run.

It catches only :class:`SporeflowError` and prints ``TypeName: message`` with
exit code 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from sporeflow.config import (
    Limits,
    SporeflowError,
    check_organism,
)
from sporeflow.config.units import written_duration
from sporeflow.config.words import plural
from sporeflow.pipeline.agents.state import check_writable, read_snapshot, write_snapshot
from sporeflow.pipeline.broker.backend import resolve_backend_url
from sporeflow.pipeline.cli.broker import broker_declare, broker_delete, broker_permissions
from sporeflow.pipeline.cli.control import (
    PROCESS_OPTION,
    call,
    not_running,
    one_process,
    reload,
    send_outcome,
    send_started,
    stats,
)
from sporeflow.pipeline.cli.dlq import dlq
from sporeflow.pipeline.cli.graph import graph
from sporeflow.pipeline.cli.init import init
from sporeflow.pipeline.cli.keygen import keygen
from sporeflow.pipeline.cli.letters import echo_kept_by_this_run, left_behind
from sporeflow.pipeline.cli.schemas import schema
from sporeflow.pipeline.cli.sendargs import knowledge_names_a_file, send_arguments, xml_knowledge
from sporeflow.pipeline.cli.tail import tail
from sporeflow.pipeline.cli.trace import trace
from sporeflow.pipeline.cli.util import (
    DURATION,
    EXIT_OUT_OF_TIME,
    ORGANISM_ARG,
    Unreadable,
    fail,
    forget_terminal,
    guarded,
    knowledge_of,
    mask_with,
    run_to_end,
)
from sporeflow.pipeline.observe.live import LiveView
from sporeflow.pipeline.observe.logs import configure_logging, log_events
from sporeflow.pipeline.observe.prometheus import MetricsServer
from sporeflow.pipeline.observe.stopping import StopCondition, parse_condition, wait_until
from sporeflow.pipeline.observe.summary import render_summary
from sporeflow.pipeline.observe.tracing import ensure_tracer_provider
from sporeflow.pipeline.organism import Organism
from sporeflow.pipeline.reload.watch import ReloadTriggers, require_watchfiles
from sporeflow.pipeline.service.server import ControlServer
from sporeflow.steps.spore import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN

__all__ = ["main"]

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sporeflow", prog_name="sporeflow")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """sporeflow: agents are plain handlers; the wiring is organism.yaml."""
    ctx.obj = {"debug": debug}


def _parsed(parse: Callable[[str], T], value: str | None, option: str) -> T | None:
    """An option's value through ``parse``; a ValueError becomes a usage error."""
    try:
        return parse(value) if value is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None


@cli.command()
@ORGANISM_ARG
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Record unfinished spores and dead letters in this SQLite FILE, replayed "
                   "at the next start (overrides organism.journal).")
@click.option("--until-idle", is_flag=True,
              help="Exit 0 once the sources that end (a file, stdin, a timer with count) "
                   "have ended and nothing is queued or running (124 if --max-duration "
                   "came first).")
@click.option("--drain-timeout", type=DURATION, default="30s", show_default=True,
              help="How long a stop may take (finishing in-flight work), e.g. 30s.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (needs sporeflow[metrics]).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint listens on.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Load agent state from FILE at start (if it exists); save it there on a "
                   "graceful stop.")
@click.option("--until", metavar="EXPRESSION",
              help="Stop once this holds over the stats, e.g. 'totals.handled >= 1000'.")
@click.option("--max-duration", type=DURATION, help="Stop after this long, e.g. 30s or 5m; "
              "exit 124 if --until-idle or --until did not hold by then.")
@click.option("--watch", "--reload", "watch", is_flag=True, help="Reload when the organism "
              "file or its handler "
              "modules change (needs sporeflow[watch]); SIGHUP reloads too.")
@click.option("--trace", is_flag=True, help="OpenTelemetry span per handler call (needs "
              "sporeflow[tracing]); to stderr unless a tracer provider is configured.")
@click.option("--backend", metavar="URL", help="memory, or an amqp:// / amqps:// URL (${NAME} "
              "reads the environment); overrides organism.backend.")
@click.option("--agents", metavar="A,B", help="Host only these agents in this process; the "
              "others run in other processes on the same broker.")
@click.option("--reboot", is_flag=True, help="Send the boot spores again: over a broker "
              "they are sent once per deployment, with a journal once per journal.")
@click.option("--no-control", is_flag=True, help="Serve no control endpoint: `sporeflow "
              "send/tail/stats/reload/dlq` cannot reach this run, nor refuse a second run.")
@click.option("--control-http", type=click.IntRange(0, 65535), metavar="PORT",
              help="Also serve the control endpoint over HTTP on 127.0.0.1:PORT (0: any free "
                   "port), with a token: $SPOREFLOW_CONTROL_TOKEN, else a new one, printed.")
@click.option("--dashboard", is_flag=True, help="Serve the web dashboard over the control "
              "endpoint's HTTP (port 8787 unless --control-http says).")
@click.pass_context
def run(ctx: click.Context, organism: Path, until_idle: bool, drain_timeout: float,
        log_format: str, log_level: str, quiet: bool, metrics_port: int | None,
        metrics_host: str, state_file: Path | None, until: str | None, journal: Path | None,
        max_duration: float | None, trace: bool, watch: bool, backend: str | None = None,
        agents: str | None = None, reboot: bool = False, no_control: bool = False,
        control_http: int | None = None, dashboard: bool = False) -> None:
    """Run ORGANISM (default ./organism.yaml) until Ctrl-C, SIGTERM, or idle.

    On a terminal it shows a live per-agent table (unless --quiet); the final
    summary is always printed on exit. It serves a control endpoint on a Unix socket
    (see README, "Reaching a running organism"); a second run of the file is refused.
    SIGHUP reloads, as `sporeflow reload` does, unless stdin is a terminal: then it
    means the terminal went away, and the run stops as on SIGTERM.
    """
    if no_control and (dashboard or control_http is not None):
        raise click.UsageError("--no-control turns the control endpoint off: not with "
                               "--control-http or --dashboard", ctx=ctx)
    configure_logging(log_format, log_level)
    if watch:
        guarded(ctx, require_watchfiles)
    flush_spans = guarded(ctx, ensure_tracer_provider) if trace else None
    hosted = None if agents is None else [a.strip() for a in agents.split(",") if a.strip()]
    if hosted == []:  # (a process of Python's may host none: a client that only sends)
        raise click.BadParameter("it names no agent: give the agents this process hosts "
                                 "(A,B), or leave it out to host them all", ctx=ctx,
                                 param_hint="--agents")
    if backend is not None:  # said of --backend, not of the file's organism.backend
        guarded(ctx, lambda: resolve_backend_url(backend, origin="--backend"))
    org = guarded(ctx, lambda: Organism.from_file(organism, tracing=trace, journal=journal,
                                                  backend=backend, hosted=hosted))
    mask_with(ctx, org.masker)
    log_events(org.events)  # each event as a DEBUG line, only with --log-level debug
    observers = partial(_observers, live=not quiet and sys.stderr.isatty(), quiet=quiet,
                        metrics_port=metrics_port, metrics_host=metrics_host)
    condition = _parsed(parse_condition, until, "--until")
    control = None if no_control else partial(
        ControlServer, organism_file=organism, hosted=hosted, http_port=control_http,
        dashboard=dashboard, echo=partial(click.echo, err=True),
        quiet=quiet or not sys.stderr.isatty(),
        replicas=(backend or org.spec.backend) != "memory")  # a broker's processes: replicas
    try:
        if state_file is not None and (snapshot := read_snapshot(state_file)) is not None:
            org.load_state(snapshot)
        if state_file is not None:  # now, not once the run built the state to save
            check_writable(state_file)
        code = run_to_end(_run(org, until_idle=until_idle, drain_timeout=drain_timeout,
                                observers=observers, until=condition, max_duration=max_duration,
                                watch=watch, reboot=reboot, control=control))
        if state_file is not None:  # only after a graceful stop: a crash raised above
            write_snapshot(state_file, org.save_state())
    except SporeflowError as exc:
        fail(ctx, exc)
    finally:
        if flush_spans is not None:
            flush_spans()
    ctx.exit(code)


async def _observers(org: Organism, *, live: bool, quiet: bool, metrics_port: int | None,
                     metrics_host: str) -> contextlib.AsyncExitStack:
    """Enter what watches the run: the metrics endpoint, the live view."""
    async with contextlib.AsyncExitStack() as stack:
        if metrics_port is not None:
            server = await stack.enter_async_context(
                MetricsServer(org, port=metrics_port, host=metrics_host))
            if not quiet:
                click.echo(f"metrics: http://{metrics_host}:{server.port}/metrics", err=True)
        if live:
            try:
                view = LiveView(org)
            except SporeflowError as exc:  # rich is an extra: run on without the view
                click.echo(f"no live view: {exc}", err=True)
            else:
                await stack.enter_async_context(view)
        return stack.pop_all()


async def _until_idle(org: Organism) -> None:
    """The declared sources that end by themselves first: idle before they sent is no end."""
    await org.sources.ended()
    await org.idle()


async def _started(org: Organism, stop: asyncio.Event, *, reboot: bool) -> bool:
    """Start ``org``; False if ``stop`` was set while it still waited for its broker: that
    start is cancelled (stopping the organism is the caller's). Past the broker, a start
    is let finish (a boot is recorded), and the run stops at once after."""
    starting = asyncio.ensure_future(org.start(reboot=reboot))
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
        broker = org.stats()["broker"] if not starting.done() else None
        if broker is not None and broker["connection"]["state"] == "connecting":
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return False
        await starting
        return True
    finally:
        signalled.cancel()
        if not starting.done():  # cancelled itself
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)


async def _run(org: Organism, *, until_idle: bool, drain_timeout: float,
               observers: Callable[[Organism], Awaitable[contextlib.AsyncExitStack]]
               | None = None, until: StopCondition | None = None,
               max_duration: float | None = None, watch: bool = False,
               reboot: bool = False,
               control: Callable[..., contextlib.AbstractAsyncContextManager[Any]]
               | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0
    stopped_by: list[signal.Signals] = []  # the signal that stopped it, if one did
    # SIGHUP from a terminal: it was closed, stop (not reload and run on, orphaned); from a
    # service manager (no terminal): reload, as `sporeflow reload` does.
    on_terminal = sys.stdin is not None and sys.stdin.isatty()
    hangup = getattr(signal, "SIGHUP", None) if on_terminal else None
    stopping = (signal.SIGINT, signal.SIGTERM, *((hangup,) if hangup is not None else ()))

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        stopped_by.append(sig)
        if signals > 1:
            # Second Ctrl-C: the user does not want to wait for the drain.
            click.echo(f"interrupted twice: exiting without draining; {left_behind(org)}",
                       err=True)
            os._exit(128 + sig)  # 130 for Ctrl-C, 143 for SIGTERM: as a shell reports them
        # file=sys.stderr, not err=True: click would write past the live view's redirection.
        click.echo("stopping: finishing in-flight work (Ctrl-C again to exit now)",
                   file=sys.stderr)
        stop.set()

    def on_hangup() -> None:
        stopped_by.append(signal.Signals.SIGHUP)
        stop.set()
        forget_terminal()  # writing to a closed terminal fails: the state file is still saved

    for sig in stopping:
        if sig == hangup:
            loop.add_signal_handler(sig, on_hangup)
        else:
            loop.add_signal_handler(sig, on_signal, sig)
    started = time.perf_counter()
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    goals: list[asyncio.Future[Any]] = []  # --until-idle, --until: what the run is for
    out_of_time = False  # --max-duration ended the run before its goal held
    goal = " or ".join([*(["it was idle"] if until_idle else []),  # what the run is for
                        *([f"{until.text!r} held"] if until is not None else [])])
    # Observers outlive the drain (the live view shows it) and close before the summary.
    watching = contextlib.AsyncExitStack()
    reloads = ReloadTriggers(org, watch=watch, echo=partial(click.echo, err=True),
                             hangup=hangup is None)
    # The control endpoint first: it refuses a second run of the file before anything
    # starts, and it closes after the drain (health answers meanwhile).
    serving = contextlib.AsyncExitStack()
    try:
        if control is not None:
            await serving.enter_async_context(control(org, on_reload=reloads.report))
        reloads.listen()  # a SIGHUP while it starts reloads once it runs, never ends it
        # A signal while it waits for its broker (up to give_up_after) stops it too.
        if await _started(org, stop, reboot=reboot):
            reloads.start()  # SIGHUP (and --watch) reload the organism
            if org.journal is not None:  # a journal that fails stops the run (journal.failstop)
                waiters.append(asyncio.ensure_future(org.journal.failed()))
            waiters.append(asyncio.ensure_future(org.failing.wait()))  # a broker given up on
            if observers is not None:
                watching = await observers(org)
            if until_idle:
                goals.append(asyncio.ensure_future(_until_idle(org)))
            if until is not None:
                try:
                    until(org.stats())  # a name the stats lack fails now, not mid-run
                except ValueError as exc:
                    drain_timeout = 0  # nothing ran for long: stop at once, then say why
                    raise click.BadParameter(str(exc), param_hint="'--until'") from None
                goals.append(asyncio.ensure_future(wait_until(org.stats, until)))
            waiters += goals
            if max_duration is not None:
                waiters.append(timer := asyncio.ensure_future(asyncio.sleep(max_duration)))
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # surfaces a crashed organism
            if done & set(goals):  # the goal held: the batch is done, whatever comes now
                stopped_by.clear()  # (a signal with it, or during the drain)
                goal = ""
            elif max_duration is not None and timer in done:
                out_of_time = bool(goal)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await reloads.aclose()
        if org.journal is not None and org.journal.failure is not None:
            drain_timeout = 0  # fail stop: nothing more runs that could not be recorded
        unfinished = await org.stop(drain_timeout=drain_timeout)
        for sig in stopping:
            loop.remove_signal_handler(sig)
        await serving.aclose()
        await watching.aclose()
    click.echo(render_summary(org.stats(), time.perf_counter() - started), err=True)
    echo_kept_by_this_run(org)
    if org.journal is not None and org.journal.failure is not None:
        raise org.journal.failure  # its cause, and what the next start will do: exit 1
    if org.failure is not None:
        raise org.failure  # exit 1: a supervisor starts the process again
    if unfinished and org.journal is not None:
        click.echo(f"{unfinished} spore(s) could not finish; they stay in the journal "
                   f"{org.journal.path} and are replayed at the next start", err=True)
    elif unfinished and org.brokered:  # what it held goes back to its queues, unacked
        kept = org.stats()["totals"]["unfinished_kept"]
        click.echo(f"{unfinished} spore(s) could not finish: {kept} went back to the broker "
                   f"for the next consumer, {unfinished - kept} were dead-lettered as "
                   f"'shutdown'", err=True)
    elif unfinished:
        click.echo(f"{unfinished} spore(s) could not finish and were dead-lettered "
                   f"as 'shutdown'", err=True)
    failed = {name: source["error"] for name, source in org.stats()["sources"].items()
              if source["state"] == "failed"}
    if until_idle and failed:  # a batch that did not read all its input failed (exit 1)
        for name, error in failed.items():
            click.echo(f"source {name!r} failed: {error}", err=True)
        return 1
    if out_of_time:  # not done in time is no success, as `timeout` says: exit 124
        click.echo(f"stopped by --max-duration {written_duration(max_duration or 0)} before "
                   f"{goal}: the batch did not finish", err=True)
        return EXIT_OUT_OF_TIME
    if goal and stopped_by:  # nor did one a signal ended first: as a shell says it
        click.echo(f"stopped by {stopped_by[0].name} before {goal}: the batch did not "
                   f"finish", err=True)
        return 128 + stopped_by[0]
    return 0


@cli.command()
@ORGANISM_ARG
@click.pass_context
def check(ctx: click.Context, organism: Path) -> None:
    """Validate ORGANISM (default ./organism.yaml); print every problem with its line and
    column."""
    spec, warnings = guarded(ctx, lambda: check_organism(organism, signs=False))
    for warning in warnings:
        click.echo(str(warning), err=True)
    channels = [c for c in spec.channels if c not in ("main", "dead-letter")]
    click.echo(f"{organism}: ok: organism {spec.name!r}, {plural(len(spec.agents), 'agent')}, "
               f"{plural(len(channels), 'channel')}, {plural(len(warnings), 'warning')}")


@cli.command()
@click.argument("organism", required=False)  # a string: it may turn out to be the KNOWLEDGE
@click.option("--to", "to_agent", help="The agent to send to.")
@click.option("--channel", help="Broadcast on this channel (with --to: the spore's channel).")
@click.option("--request", "as_request", is_flag=True,
              help="Send a request and print its response.")
@click.option("--timeout", default="30s", show_default=True, type=DURATION,
              help="How long to wait for the spore to be handled (or for the response to a "
                   "request), e.g. 5s; exit 124 if it is still pending then.")
@click.option("--priority", type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX),
              help=f"The spore's priority, {PRIORITY_MIN} to {PRIORITY_MAX} (higher first; "
                   f"default {PRIORITY_DEFAULT}).")
@click.option("--expires-in", type=DURATION, help="Past this (e.g. 30s) the spore is an "
              "'expired' dead letter, never handled (a request expires with --timeout).")
@click.option("--start", is_flag=True, help="With no run of ORGANISM going on, run one here "
              "without its boot spores: send, wait until idle, stop.")
@click.option("--xml", "xml_payload", metavar="ELEMENT",
              help="Send an XML payload element instead of KNOWLEDGE: its tag becomes the "
                   "kind (metadata), its attributes and children the knowledge.")
@PROCESS_OPTION
@click.argument("knowledge", required=False)
@click.pass_context
def send(ctx: click.Context, organism: str | None, to_agent: str | None, as_request: bool,
         timeout: float, knowledge: str | None, xml_payload: str | None,
         channel: str | None = None, start: bool = False, process: str | None = None,
         priority: int | None = None, expires_in: float | None = None) -> None:
    """Send KNOWLEDGE (JSON) or --xml ELEMENT to an agent (or a channel) of the running
    ORGANISM (default ./organism.yaml); print the spore's id once it is handled, or a
    request's response. A single argument is the KNOWLEDGE, unless --xml is given or it
    names a file (or ends in .yaml or .yml): then it is the ORGANISM. KNOWLEDGE may be -
    (read from standard input) or @FILE (read from FILE).

    It reaches the run of ORGANISM (`sporeflow run`) through its control socket. A spore
    dead-lettered (unknown agent, schema, not a peer...) prints the reason and exits 1.
    With no run going on it says so, and --start runs a one-off organism here instead,
    without its boot spores, printing what comes back to the command line.

    Over a broker, with the organism in several processes, any of them sends (through
    the broker); it is the one hosting the --to agent, which waits for its fate, unless
    --process AGENT|PID|SOCKET names another.
    """
    arguments = send_arguments(organism, knowledge, xml=xml_payload is not None)
    file, knowledge = arguments.organism, arguments.knowledge
    ctx.params["organism"] = file  # what a one-line error speaks of
    if timeout <= 0:
        raise click.BadParameter("must be more than 0, e.g. 5s", param_hint="'--timeout'")
    if (knowledge is None) == (xml_payload is None):
        if knowledge is None:
            arguments.refuse_no_organism(knowledge_missing=True)
        raise click.UsageError("give KNOWLEDGE (JSON) or --xml ELEMENT, exactly one")
    if to_agent is None and channel is None:
        raise click.UsageError("say where the spore goes: --to AGENT, or --channel CHANNEL")
    if as_request and to_agent is None:
        raise click.UsageError("--request goes to one agent: give --to AGENT (a channel "
                               "may have many subscribers, and a request one answer)")
    extra: dict[str, Any] = {}
    if xml_payload is not None:
        payload, extra = guarded(ctx, lambda: xml_knowledge(xml_payload, as_request,
                                                             Limits()))
    else:
        try:
            payload = knowledge_of(knowledge or "")
        except Unreadable as exc:
            click.echo(f"SporeError: {exc}", err=True)
            ctx.exit(1)
        except ValueError as exc:
            hint = ("fix the JSON in the file" if (knowledge or "").startswith("@") else
                    f"quote it like '{{\"a\": 1}}', or give - (standard input) or @FILE"
                    f"{knowledge_names_a_file(knowledge or '')}")
            click.echo(f"SporeError: KNOWLEDGE is not JSON: {exc}; {hint}", err=True)
            ctx.exit(1)
    # Over a broker, in several processes: any one sends through the broker; the one
    # hosting the recipient also sees its fate (handled, or its dead letter).
    chosen = one_process(ctx, file, process, about=[to_agent] if to_agent else [],
                         any_will_do=True, doing="")
    path = chosen[0] if chosen is not None else None
    if path is None:  # no run of it answers: was it an organism file at all?
        arguments.refuse_no_organism()
    if path is None and (not start or process is not None):
        fail(ctx, not_running(file, f"start it with `sporeflow run {file}`, or pass "
                                    f"--start to run one now without its boot spores"))
    body = {"to": to_agent, "channel": channel, "knowledge": payload, "request": as_request,
            "timeout": timeout, "priority": priority, "expires_in": expires_in, **extra}
    if path is None:
        send_started(ctx, file, body, timeout)
        return
    status, answer = call(ctx, path, "POST", "send", body)
    send_outcome(ctx, status, answer, timeout=timeout)


cli.add_command(graph)
cli.add_command(schema)
cli.add_command(init)
cli.add_command(dlq)
cli.add_command(tail)
cli.add_command(trace)
cli.add_command(stats)
cli.add_command(reload)
cli.add_command(keygen)
cli.add_command(broker_permissions)
cli.add_command(broker_declare)
cli.add_command(broker_delete)


def main() -> None:
    """The console script."""
    cli(prog_name="sporeflow")
