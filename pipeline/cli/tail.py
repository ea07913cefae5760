"""``sporeflow tail``: run an organism and follow its spores, one JSON line per event.

    sporeflow tail organism.yaml --channel files --event handled --until-idle

Built on the organism's event bus, through a bounded :class:`EventStream`: a slow
terminal loses the oldest lines (counted, and reported at the end), never slows
the organism. :func:`follow` prints any async iterable of events, so a brokered
tail (events read from a running organism's exchange) plugs in there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sporeflow.config import SporeflowError, did_you_mean
from sporeflow.pipeline.cli.util import (
    DURATION,
    ORGANISM_ARG,
    fail,
    guarded,
    mask_with,
    run_to_end,
)
from sporeflow.pipeline.observe.events import (
    Event,
    EventBus,
    EventStream,
    SporeAdmitted,
    SporeDeadLettered,
    SporeEvent,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)
from sporeflow.pipeline.observe.logs import configure_logging
from sporeflow.pipeline.organism import Organism
from sporeflow.steps import SporeType

__all__ = ["SPORE_EVENT_KINDS", "Tail", "TailFilter", "follow", "tail"]

SPORE_EVENT_KINDS = tuple(kind.kind for kind in (
    SporeAdmitted, SporeHandled, SporeFailed, SporeExpired, SporeDeadLettered))


@dataclass(frozen=True, slots=True)
class TailFilter:
    """Which spore events to show; an empty set lets everything of its kind through.

    An event concerns an agent when the agent handled or failed it, sent it, or it
    is addressed to that agent.
    """

    agents: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *, agents: Iterable[str] = (), channels: Iterable[str] = (),
           types: Iterable[str] = (), kinds: Iterable[str] = ()) -> TailFilter:
        return cls(frozenset(agents), frozenset(channels), frozenset(types), frozenset(kinds))

    def __call__(self, event: Event) -> bool:
        if not isinstance(event, SporeEvent):
            return False
        spore = event.spore
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.channels and spore.channel not in self.channels:
            return False
        if self.types and spore.spore_type.value not in self.types:
            return False
        return not self.agents or not self.agents.isdisjoint(
            (event.agent, spore.from_agent, spore.to_agent))


def event_line(event: Event, *, knowledge: bool = True) -> str:
    """The JSON line ``tail`` prints for ``event``."""
    fields = event.to_dict()
    if not knowledge and isinstance(fields.get("spore"), dict):
        fields["spore"] = {k: v for k, v in fields["spore"].items() if k != "knowledge"}
    return json.dumps(fields, default=str, ensure_ascii=False)


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
@click.option("--until-idle", is_flag=True, help="Stop once nothing is queued or running.")
@click.option("--drain-timeout", type=DURATION, default="30s", show_default=True,
              help="How long a stop may take (finishing in-flight work), e.g. 30s.")
@click.option("--buffer", "maxsize", default=10_000, show_default=True,
              type=click.IntRange(min=1),
              help="Events held for a slow reader before the oldest are dropped.")
@click.pass_context
def tail(ctx: click.Context, organism: Path, agents: tuple[str, ...],
         channels: tuple[str, ...], types: tuple[str, ...], kinds: tuple[str, ...],
         no_knowledge: bool, until_idle: bool, drain_timeout: float, maxsize: int) -> None:
    """Run ORGANISM and print its spores' events as JSON lines, filtered.

    Each line has "event" (admitted, handled, failed, expired, dead-lettered), "at",
    "spore_id", "thread_id", "agent" and the spore. Runs until Ctrl-C, or idle with
    --until-idle. Logs and the count of dropped lines go to stderr.
    """
    configure_logging("text", "WARNING")
    org = guarded(ctx, lambda: Organism.from_file(organism))
    mask_with(ctx, org.masker)
    _check_names("--agent", agents, org.spec.agents, "agent", org.spec.name)
    _check_names("--channel", channels, org.spec.channels, "channel", org.spec.name)
    accept = TailFilter.of(agents=agents, channels=channels, types=types, kinds=kinds)
    try:
        dropped = run_to_end(_tail(org, accept, until_idle=until_idle,
                                    drain_timeout=drain_timeout, maxsize=maxsize,
                                    knowledge=not no_knowledge))
    except SporeflowError as exc:
        fail(ctx, exc)
    if dropped:
        click.echo(f"tail: {dropped} event(s) dropped: the output could not keep up "
                   f"(raise --buffer, or filter more)", err=True)


def _check_names(option: str, given: Iterable[str], known: Iterable[str], what: str,
                 organism: str) -> None:
    names = sorted(known)
    for name in given:
        if name not in names:
            hint = did_you_mean(name, names) or f"; there are: {', '.join(names)}"
            raise click.BadParameter(f"no {what} {name!r} in organism {organism!r}{hint}",
                                     param_hint=f"'{option}'")


async def _tail(org: Organism, accept: TailFilter, *, until_idle: bool, drain_timeout: float,
                maxsize: int, knowledge: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # second Ctrl-C: do not wait for the drain
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        # Follow before starting: the boot spores are events too.
        # Masked as every output: a spore or an error may quote the organism's secrets.
        async with Tail(org.events, accept, lambda line: click.echo(org.masker.mask(line)),
                        maxsize=maxsize, knowledge=knowledge) as following:
            await org.start()
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
            if until_idle:
                waiters.append(asyncio.ensure_future(org.idle()))
            assert following.finished is not None
            try:
                done, _ = await asyncio.wait([*waiters, following.finished],
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # surfaces a crashed organism
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await org.stop(drain_timeout=drain_timeout)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return following.dropped
