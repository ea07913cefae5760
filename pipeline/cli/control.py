"""The commands that reach a running organism through its control socket
(``pipeline.service``): ``stats`` and ``reload`` here; ``send``, ``tail`` and ``dlq`` call
:func:`attached` and the helpers below.

    sporeflow stats  ORGANISM        its organism.stats(), as JSON
    sporeflow reload ORGANISM        reload it, and say what the reload did

Over a broker an organism may run in several processes (``run --agents``), a control
socket each (``service.processes``). What reads or changes the whole organism acts on
every one: ``reload`` reloads each and says what each did, ``stats`` prints each one's
view under the agents it hosts. What needs one process (``send``, ``tail``) chooses it:
``--process AGENT|PID|SOCKET``, else the one hosting the agent it is about, else (a
send, which goes through the broker from any of them) the first; ``tail`` refuses to
guess. With one process running, all of this is as it always was.

None of them ever starts a second copy of a running organism: with none running, ``send``
says so (``--start`` runs a one-off one, without its boot spores), ``tail``, ``stats`` and
``reload`` say so, and ``dlq`` reads the journal or broker as it always did.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from sporeflow.config import SporeflowError
from sporeflow.pipeline.cli.letters import echo_kept_by_this_run
from sporeflow.pipeline.cli.util import (
    EXIT_OUT_OF_TIME,
    ORGANISM_ARG,
    fail,
    guarded,
    mask_with,
    run_to_end,
)
from sporeflow.pipeline.observe.logs import configure_logging
from sporeflow.pipeline.organism import Organism
from sporeflow.pipeline.service import operations
from sporeflow.pipeline.service.address import ControlAddress, ControlError, NotRunning, claim
from sporeflow.pipeline.service.client import ControlClient, Reply, running_sockets
from sporeflow.pipeline.service.processes import Process, choose, running_processes
from sporeflow.steps import Spore

__all__ = ["PROCESS_OPTION", "attached", "call", "follow_events", "not_running", "one_process",
           "reload", "require_attached", "send_outcome", "send_started", "stats"]

PROCESS_OPTION = click.option(
    "--process", metavar="AGENT|PID|SOCKET",
    help="Over a broker, where the organism runs in several processes (run --agents): "
         "the process hosting AGENT, or with that pid or control socket.")


def attached(organism: Path) -> Path | None:
    """The control socket of a run of ``organism`` that answers, or None: the first one,
    for what any process of the organism answers alike (``dlq`` over a broker)."""
    return next(iter(running_sockets(organism)), None)


def require_attached(ctx: click.Context, organism: Path, hint: str = "") -> Path:
    """The running organism's socket; with none running, say so and exit 1."""
    path = attached(organism)
    if path is None:
        fail(ctx, not_running(organism, f"start it with `sporeflow run {organism}`{hint}"))
    return path


def processes(ctx: click.Context, organism: Path) -> list[Process]:
    """Every running process of ``organism``, described (``GET /v1/process``)."""
    return guarded(ctx, lambda: run_to_end(running_processes(organism)))


def one_process(ctx: click.Context, organism: Path, name: str | None, *,
                about: Sequence[str] = (), any_will_do: bool, doing: str,
                ) -> tuple[Path, Process | None] | None:
    """The socket a command that needs one process reaches (``service.processes.choose``),
    and the process when several run (None: the only one, reached as it always was);
    None when none runs. A refusal (named none, or several and the choice matters) is a
    one-line error listing the processes, exit 1."""
    sockets = running_sockets(organism)
    if not sockets:
        return None
    if len(sockets) == 1 and name is None:
        return sockets[0], None
    running = processes(ctx, organism)
    chosen = guarded(ctx, lambda: choose(running, name, about=about, any_will_do=any_will_do,
                                         doing=doing, organism=str(organism)))
    return chosen.socket, chosen if len(running) > 1 else None


def not_running(organism: Path, advice: str) -> NotRunning:
    """Why no run of ``organism`` answers: no such file here, or none started."""
    if not organism.exists():
        return NotRunning(f"no organism file {organism} in {Path.cwd()}: give the organism "
                          f"file's path as the first argument")
    return NotRunning(f"no organism running for {organism}; {advice}")


def call(ctx: click.Context, path: Path, method: str, route: str,
         body: Mapping[str, Any] | None = None,
         params: Mapping[str, str | Sequence[str]] | None = None) -> Reply:
    """One call to the running organism; a lost connection is a one-line error."""
    async def go() -> Reply:
        async with ControlClient(path) as client:
            if method == "POST":
                return await client.post(route, body or {})
            return await client.get(route, params)

    return guarded(ctx, lambda: run_to_end(go()))


def refused(ctx: click.Context, answer: Any) -> NoReturn:
    """Print an error the endpoint answered, ``Name: message``, and exit 1."""
    if isinstance(answer, dict) and "message" in answer:
        click.echo(f"{answer.get('error', 'ControlError')}: {answer['message']}", err=True)
    else:
        click.echo(f"ControlError: {answer}", err=True)
    ctx.exit(1)


# -- stats and reload --------------------------------------------------------------------


@click.command()
@ORGANISM_ARG
@PROCESS_OPTION
@click.pass_context
def stats(ctx: click.Context, organism: Path, process: str | None) -> None:
    """Print the running ORGANISM's statistics (organism.stats()) as JSON.

    Over a broker, with the organism in several processes: {"organism", "processes":
    [...]}, each process's own view under "stats", labelled by its pid, socket and the
    agents it hosts (its figures for the others' agents are its idle copies: 0);
    --process prints one process's alone."""
    sockets = running_sockets(organism)
    if not sockets:
        fail(ctx, not_running(organism, f"start it with `sporeflow run {organism}`"))
    if len(sockets) == 1 or process is not None:
        chosen = one_process(ctx, organism, process, any_will_do=True, doing="")
        assert chosen is not None  # it answered just now; else `call` says it is gone
        click.echo(json.dumps(_stats_of(ctx, chosen[0]), indent=2, ensure_ascii=False))
        return
    views = [{**running.to_dict(), "stats": _stats_of(ctx, running.socket)}
             for running in processes(ctx, organism)]
    name = next((view["stats"].get("organism") for view in views), None)
    click.echo(json.dumps({"organism": name, "processes": views}, indent=2,
                          ensure_ascii=False))


def _stats_of(ctx: click.Context, path: Path) -> Any:
    status, answer = call(ctx, path, "GET", "stats")
    if status != 200:
        refused(ctx, answer)
    return answer


@click.command()
@ORGANISM_ARG
@click.pass_context
def reload(ctx: click.Context, organism: Path) -> None:
    """Reload the running ORGANISM from its file: what changed is applied agent by agent;
    a file with problems is refused, and the organism runs on unchanged (exit 1).

    Over a broker, with the organism in several processes, each one reloads, and what
    each did is one line naming it and the agents it hosts (a process reports changes
    only to those); exit 1 if any refused."""
    sockets = running_sockets(organism)
    if not sockets:
        fail(ctx, not_running(organism, f"start it with `sporeflow run {organism}`"))
    if len(sockets) == 1:
        status, answer = call(ctx, sockets[0], "POST", "reload")
        if status not in (200, 422) or "summary" not in answer:
            refused(ctx, answer)
        _reloaded("reload: ", status, answer)
        ctx.exit(0 if status == 200 else 1)
    failed = False
    for running in processes(ctx, organism):
        status, answer = call(ctx, running.socket, "POST", "reload")
        if status in (200, 422) and isinstance(answer, dict) and "summary" in answer:
            _reloaded(f"reload: {running.label}: ", status, answer)
        else:  # said, and the others reload all the same
            message = answer.get("message") if isinstance(answer, dict) else answer
            click.echo(f"reload: {running.label}: ControlError: {message}", err=True)
        failed = failed or status != 200
    ctx.exit(1 if failed else 0)


def _reloaded(head: str, status: int, answer: dict[str, Any]) -> None:
    click.echo(f"{head}{answer['summary']}")
    for line in (*answer.get("errors", ()), *answer.get("warnings", ())):
        click.echo(f"  {line}", err=status != 200)


# -- send ----------------------------------------------------------------------------------


def send_outcome(ctx: click.Context, status: int, answer: Any, *, timeout: float) -> None:
    """Print what became of a spore sent: its id (or a request's response) on stdout; a
    dead letter's reason on stderr, and exit 1 then."""
    if not isinstance(answer, dict) or "status" not in answer:
        refused(ctx, answer)
    spore_id, fate = answer.get("id"), answer["status"]
    if "response" in answer:
        click.echo(json.dumps(answer["response"], ensure_ascii=False))
    elif spore_id is not None:
        click.echo(spore_id)
    if fate == "pending":  # not a failure (it may yet be handled), nor done: say which
        click.echo(f"spore {spore_id}: not handled within {timeout:g}s; it is still queued "
                   f"or running", err=True)
        ctx.exit(EXIT_OUT_OF_TIME)
    elif fate == "sent":  # not silence: what becomes of it is told elsewhere
        click.echo(f"spore {spore_id}: sent over the broker; its recipient runs in another "
                   f"process, which keeps its dead letter if it has one (`sporeflow dlq "
                   f"list`)", err=True)
    if 200 <= status < 300:
        return
    if answer.get("traceback") and (ctx.obj or {}).get("debug"):
        click.echo(answer["traceback"].rstrip(), err=True)
    if fate in ("dead-lettered", "refused"):
        what = (f"dead letter (agent {answer['agent']!r})" if answer.get("agent")
                else "dead letter" if fate == "dead-lettered" else "refused")
        click.echo(f"{what}: {answer.get('reason')}: {_shortened(answer.get('error'))}",
                   err=True)
    else:
        click.echo(f"{fate}: {answer.get('error') or answer.get('message')}", err=True)
    ctx.exit(1)


_SHOWN_ERROR = 1000  # characters of a dead letter's error printed; `dlq show` has it all


def _shortened(error: object) -> str:
    """A dead letter's error for one line of a terminal: a handler's may be megabytes."""
    text = str(error)
    if len(text) <= _SHOWN_ERROR:
        return text
    return (f"{text[:_SHOWN_ERROR]}... ({len(text) - _SHOWN_ERROR:,} more characters: "
            f"`sporeflow dlq show ID` prints it whole)")


def send_started(ctx: click.Context, organism: Path, body: Mapping[str, Any],
                 timeout: float) -> None:
    """``send --start``: run ORGANISM here without its boot spores, send, wait until it
    is idle, stop. It holds the file's control address meanwhile: a `sporeflow run` of
    the file started now is refused, as this one is while that one runs."""
    configure_logging("text", "WARNING")
    org = guarded(ctx, lambda: Organism.from_file(organism))
    mask_with(ctx, org.masker)
    address = ControlAddress.of(organism, org.spec.name)
    held = guarded(ctx, lambda: claim(address, organism))
    outcome: operations.SendOutcome | None = None
    try:
        outcome = run_to_end(_send_once(org, body, timeout))
    except SporeflowError as exc:
        fail(ctx, exc)
    finally:
        held.release()
        # Its dead letters end with it, as a run's do; send_outcome tells its own spore's.
        echo_kept_by_this_run(org, told=None if outcome is None else outcome.spore_id)
    send_outcome(ctx, operations.refusal_status(outcome), outcome.to_dict(), timeout=timeout)


async def _send_once(org: Organism, body: Mapping[str, Any],
                     timeout: float) -> operations.SendOutcome:
    sender = body.get("sender", "cli")

    def show(spore: Spore) -> None:  # what comes back to the command line
        if spore.to_agent == sender:
            click.echo(org.masker.mask(spore.to_json()))

    await org.start(boot=False)  # a one-off run: its boot spores are the real run's
    try:
        org.on_outside(show)
        outcome = await operations.send_spore(
            org, body["knowledge"], to=body.get("to"), channel=body.get("channel"),
            sender=sender, request=body.get("request", False), timeout=timeout,
            extra=operations.send_options(body))
        try:
            async with asyncio.timeout(timeout):
                await org.idle()
        except TimeoutError:
            pass  # the stop dead-letters what is left as 'shutdown', and says so
    finally:
        await org.stop()
    return outcome


# -- tail ----------------------------------------------------------------------------------


def follow_events(ctx: click.Context, path: Path, params: Mapping[str, str | Sequence[str]],
                  write: Callable[[str], None], process: Process | None = None) -> int:
    """Print the running organism's events as they come, until Ctrl-C or the stream ends
    (the organism stopped, or was idle with ``until_idle``); returns the events dropped
    because the output could not keep up. ``process``: the one followed, of several."""
    what = "the organism" if process is None else f"the organism's {process.label}"
    try:
        return run_to_end(_follow(path, params, write, what))
    except ControlError as exc:
        fail(ctx, exc)


async def _follow(path: Path, params: Mapping[str, str | Sequence[str]],
                  write: Callable[[str], None], what: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    dropped = 0

    async def lines() -> None:
        nonlocal dropped
        async with ControlClient(path) as client:
            async for line in client.lines("events", params, attached=lambda: click.echo(
                    f"tail: following {what} at {path} (Ctrl-C to stop)", err=True)):
                if line.startswith('{"event": "dropped"'):
                    dropped = json.loads(line)["count"]
                    continue
                try:
                    write(line)
                except BrokenPipeError:  # the reader went away: stop quietly
                    return

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    following = asyncio.ensure_future(lines())
    waiting = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([following, waiting], return_when=asyncio.FIRST_COMPLETED)
        if following.done():
            following.result()  # a refusal or a lost endpoint: say so
    finally:
        for task in (following, waiting):
            task.cancel()
        await asyncio.gather(following, waiting, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return dropped
