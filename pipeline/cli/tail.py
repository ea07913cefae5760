"""``sporeflow tail``: follow a running organism's spores, one JSON line per event.

    sporeflow tail organism.yaml --channel files --event handled --until-idle

It attaches to the run of the file through its control socket (``GET /v1/events``,
``pipeline.service.control``); the filters apply there, on the organism's event bus,
through a bounded :class:`EventStream`: a slow terminal loses the oldest lines
(counted, and reported at the end), never slows the organism. With no run going on it
says so: it never starts one of its own. :class:`Tail` and :func:`follow` print the
events of an organism in this process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from pathlib import Path

import click

from sporeflow.pipeline.cli.control import PROCESS_OPTION, follow_events, not_running, one_process
from sporeflow.pipeline.cli.util import ORGANISM_ARG, fail
from sporeflow.pipeline.observe.events import Event, EventBus, EventStream
from sporeflow.pipeline.service.following import SPORE_EVENT_KINDS, TailFilter, event_line
from sporeflow.steps import SporeType

__all__ = ["SPORE_EVENT_KINDS", "Tail", "TailFilter", "event_line", "follow", "tail"]


async def follow(events: AsyncIterable[Event], write: Callable[[str], None], *,
                 accept: Callable[[Event], bool] | None = None,
                 knowledge: bool = True) -> int:
    """Write one JSON line per accepted event until ``events`` ends; returns how many.

    Ends early, quietly, when the reader goes away (a closed pipe).
    """
    written = 0
    async for event in events:
        if accept is not None and not accept(event):
            continue
        try:
            write(event_line(event, knowledge=knowledge))
        except BrokenPipeError:
            break
        written += 1
    return written


class Tail:
    """``async with Tail(organism.events, accept, write):`` follows until the block ends.

    On exit the events still buffered are written, then ``dropped`` tells how many a
    slow reader lost. ``finished`` completes early if the reader goes away.
    """

    def __init__(self, bus: EventBus, accept: Callable[[Event], bool],
                 write: Callable[[str], None], *, maxsize: int = 10_000,
                 knowledge: bool = True) -> None:
        self._stream: EventStream = bus.stream(maxsize, accept=accept)
        self._write = write
        self._knowledge = knowledge
        self.finished: asyncio.Task[int] | None = None

    @property
    def dropped(self) -> int:
        return self._stream.dropped

    async def __aenter__(self) -> Tail:
        self._stream.open()
        self.finished = asyncio.get_running_loop().create_task(
            follow(self._stream, self._write, knowledge=self._knowledge), name="sporeflow:tail")
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stream.close()
        if self.finished is not None:
            await self.finished


@click.command()
@ORGANISM_ARG
@click.option("--agent", "agents", multiple=True, metavar="AGENT",
              help="Only spores this agent handled, sent or was sent (repeatable).")
@click.option("--channel", "channels", multiple=True, metavar="CHANNEL",
              help="Only spores on this channel (repeatable).")
@click.option("--type", "types", multiple=True, type=click.Choice([t.value for t in SporeType]),
              help="Only spores of this type (repeatable).")
@click.option("--event", "kinds", multiple=True, type=click.Choice(SPORE_EVENT_KINDS),
              help="Only these events (repeatable; default: all).")
@click.option("--no-knowledge", is_flag=True, help="Leave each spore's knowledge out.")
@click.option("--until-idle", is_flag=True,
              help="Stop once nothing is queued or running in the organism.")
@click.option("--buffer", "maxsize", default=10_000, show_default=True,
              type=click.IntRange(min=1),
              help="Events held for a slow reader before the oldest are dropped.")
@PROCESS_OPTION
@click.pass_context
def tail(ctx: click.Context, organism: Path, agents: tuple[str, ...],
         channels: tuple[str, ...], types: tuple[str, ...], kinds: tuple[str, ...],
         no_knowledge: bool, until_idle: bool, maxsize: int, process: str | None) -> None:
    """Follow the running ORGANISM's spores: print their events as JSON lines, filtered.

    Each line has "event" (admitted, handled, failed, expired, dead-lettered), "at",
    "spore_id", "thread_id", "agent" and the spore. It attaches to the run of ORGANISM
    (`sporeflow run`) through its control socket, and follows until Ctrl-C, the run's
    end, or idle with --until-idle. The count of dropped lines goes to stderr.

    Over a broker, with the organism in several processes, it follows one, whose events
    are those of the agents it hosts: --process AGENT|PID|SOCKET, or the one process
    hosting every --agent given; else it refuses, listing them.
    """
    chosen = one_process(ctx, organism, process, about=agents, any_will_do=False,
                         doing="tail follows one (each sees the events of its own agents)")
    if chosen is None:
        fail(ctx, not_running(organism, f"start it with `sporeflow run {organism}` (tail "
                                        f"follows a running organism)"))
    path, followed = chosen
    params = {"agent": agents, "channel": channels, "type": types, "event": kinds,
              "knowledge": "false" if no_knowledge else "true",
              "until_idle": "true" if until_idle else "false", "buffer": str(maxsize)}
    dropped = follow_events(ctx, path, params, click.echo, followed)
    if dropped:
        click.echo(f"tail: {dropped} event(s) dropped: the output could not keep up "
                   f"(raise --buffer, or filter more)", err=True)
