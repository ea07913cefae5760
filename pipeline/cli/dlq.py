"""``sporeflow dlq``: the dead letters kept in an organism's journal or on its broker.

    sporeflow dlq list    ORGANISM [--agent A] [--reason R] [--id ID] [--json]
    sporeflow dlq show    ORGANISM [filters]
    sporeflow dlq replay  ORGANISM (filters | --all) [--run]
    sporeflow dlq purge   ORGANISM (filters | --all)

Where they are: while the organism runs in one process (``sporeflow run``), in that process:
``list``, ``show`` and ``replay`` reach it through its control socket (unless ``--journal``,
``--backend`` or ``--from`` say otherwise), and a replay is delivered by it at once. Else,
on an amqp organism (or with ``--backend URL``), the broker's dead-letter queue
(``pipeline.broker.dead_letter_queue``); in one process, the journal (``organism.journal``
in its file, or ``--journal FILE`` here); ``--from`` says which when an organism has both.
Both give the same letters to the same filters (``LetterChoice``) and the same printing
below. ``replay`` moves the chosen ones back among the journal's unfinished spores (the next
``sporeflow run`` delivers them; ``--run`` does it now, until idle), or publishes them to
the organism's exchange, taking them off the dead-letter queue once the broker has confirmed
them. Each letter is replayed or refused on its own (``core.replaying``, the rule of every
replay): a refused one stays, told on one line ``not replayed: dead letter N (spore ID):
why; what to do``, the others are replayed, and the exit status is 1. An ``--id`` naming no
letter there fails ``show``, ``replay`` and ``purge`` (``NoSuchDeadLetter``) at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from sporeflow.config import (
    BrokerError,
    OrganismSpec,
    SecretFilter,
    SporeflowError,
    load_organism,
    redact_url,
    secrets_of,
)
from sporeflow.config.reasons import UnknownReason
from sporeflow.pipeline.broker.backend import Topology, resolve_backend_url
from sporeflow.pipeline.broker.factory import open_backend
from sporeflow.pipeline.cli.control import call, refused
from sporeflow.pipeline.cli.dlq_running import (
    asked,
    forget_in_journal,
    in_process,
    in_running,
    replay_in_running,
)
from sporeflow.pipeline.cli.letters import letter_lines
from sporeflow.pipeline.cli.util import (
    DURATION,
    fail,
    guarded,
    mask_with,
    masked,
    organism_argument,
    run_to_end,
)
from sporeflow.pipeline.core.deadletters import (
    LetterChoice,
    StoredDeadLetter,
    spore_form,
)
from sporeflow.pipeline.core.ingress import OUTSIDE_SENDERS
from sporeflow.pipeline.core.replaying import ReplayBook, Screen, organism_rules
from sporeflow.pipeline.core.wiring import routing_table
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError
from sporeflow.pipeline.observe.logs import configure_logging
from sporeflow.pipeline.observe.summary import render_summary
from sporeflow.pipeline.organism import Organism

__all__ = ["dlq"]

F = TypeVar("F", bound=Callable[..., Any])
Action = Literal["read", "replay", "purge"]


def _filters(command: F) -> F:
    """The organism argument and the options that choose dead letters."""
    for option in reversed([
        organism_argument(callback=_no_number),
        click.option("--journal", "journal", type=click.Path(dir_okay=False, path_type=Path),
                     help="The journal file (default: the organism file's journal)."),
        click.option("--backend", metavar="URL",
                     help="The broker whose dead-letter queue to read, e.g. an "
                          "administrator's amqp:// URL (${NAME} reads the environment; "
                          "default: organism.backend)."),
        click.option("--from", "origin", type=click.Choice(["journal", "broker"]),
                     help="Read the journal or the broker (default: the broker of an amqp "
                          "organism, else the journal)."),
        click.option("--agent", "agents", multiple=True, metavar="AGENT",
                     help="Only dead letters of this agent (repeatable)."),
        click.option("--reason", "reasons", multiple=True, metavar="REASON",
                     help="Only dead letters with this reason, e.g. 'handler failed' or "
                          "handler-failed."),
        click.option("--id", "ids", multiple=True, metavar="ID",
                     help="A dead letter's number or its spore's id (repeatable)."),
    ]):
        command = option(command)
    return command


def _no_number(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """The organism file, which a letter's number is not (`dlq show 1` for `--id 1`)."""
    if value.name.isdigit() and not value.exists():
        raise click.BadParameter(f"{value} is no organism file; to choose dead letter "
                                 f"{value.name}, write --id {value.name}")
    return value


@dataclass(frozen=True, slots=True)
class _Source:
    """Where the dead letters are: a journal file, or a broker's dead-letter queue."""

    where: str
    journal: Path | None = None
    spec: OrganismSpec | None = None  # with a broker; with a journal, when it loads
    url: str = ""  # the broker's, resolved
    note: str = ""  # said after a list: the other place the organism keeps letters
    listing: str = ""  # the command that lists the letters kept here


@dataclass(slots=True)
class _Outcome:
    letters: list[StoredDeadLetter]
    done: int = 0  # replayed or purged
    problems: list[str] = field(default_factory=list)  # letters left in place, and why


def _source(ctx: click.Context, organism: Path, journal: Path | None, backend: str | None,
            origin: str | None, *, signs: bool = False) -> _Source:
    """Where to read: ``--journal``, ``--backend`` or ``--from`` say; else the broker of
    an amqp organism, the journal of one in memory (loaded with its keys if it ``signs``).
    The organism's secrets are masked in what is printed from now on."""
    listing = _listing(organism, journal, backend, origin)
    if journal is not None:
        if backend is not None or origin == "broker":
            raise click.UsageError("--journal reads a journal file: not with --backend or "
                                   "--from broker", ctx=ctx)
        loaded = None
        with contextlib.suppress(SporeflowError):  # no organism: URL passwords only
            loaded = load_organism(organism, signs=signs)
            _mask_secrets_of(ctx, loaded)
        return _Source(str(journal), journal=journal, spec=loaded, listing=listing)
    if backend is not None and origin == "journal":
        raise click.UsageError("--backend names a broker: not with --from journal", ctx=ctx)
    spec = guarded(ctx, lambda: load_organism(organism, signs=signs))
    url = backend or spec.backend
    _mask_secrets_of(ctx, dataclasses.replace(spec, backend=url))
    if origin == "journal" or (origin is None and url == "memory"):
        if spec.journal is None:
            fail(ctx, JournalError(
                f"{organism}: organism {spec.name!r} has no journal, and in one process dead "
                f"letters are only persisted with one: add `journal: FILE` under `organism:` "
                f"in the file, or pass --journal FILE" + ("; or, if it ran over a broker (`run "
                "--backend URL`), pass the same --backend URL" if origin is None else "")))
        return _Source(str(spec.journal), journal=spec.journal, spec=spec, listing=listing)
    resolved = guarded(ctx, lambda: resolve_backend_url(url))
    if guarded(ctx, lambda: open_backend(resolved)) is None:  # checks the URL and aio-pika
        fail(ctx, BrokerError(
            f"{organism}: organism {spec.name!r} runs in one process (backend: memory), so "
            f"its dead letters are in its journal, if any (--from journal); pass --backend "
            f"URL to read a broker's"))
    note = (f" (organism {spec.name!r} keeps a journal too: --from journal lists its own)"
            if spec.journal is not None and origin is None else "")
    return _Source(f"{Topology.of(spec).dead_letter_queue} at {redact_url(resolved)}",
                   spec=spec, url=resolved, note=note, listing=listing)


def _listing(organism: Path, journal: Path | None, backend: str | None,
             origin: str | None) -> str:
    """The ``dlq list`` that reads where this command reads."""
    return "`sporeflow dlq list " + " ".join(
        [str(organism)] + ([f"--journal {journal}"] if journal is not None else [])
        + (["--backend URL"] if backend is not None else [])
        + ([f"--from {origin}"] if origin is not None else [])) + "`"


def _mask_secrets_of(ctx: click.Context, spec: OrganismSpec) -> None:
    mask_with(ctx, SecretFilter(secrets_of(spec)))


def _apply(ctx: click.Context, source: _Source, choice: LetterChoice,
           action: Action, *, named: bool = True) -> _Outcome:
    """Read the letters ``choice`` matches at ``source``, and replay or purge them.

    ``named``: an ``--id`` that names no letter there is an error, before anything is
    done (a listing is a filter: it lists none)."""
    path = source.journal
    if path is None:
        return guarded(ctx, lambda: run_to_end(_on_broker(source, choice, action, named)))

    def on_journal() -> _Outcome:
        with JournalFile(path) as journal:
            journal.refuse_if_running(action)  # reading it is no change
            letters = journal.dead_letters(choice=choice)
            choice.require(letters, _agents_of(source), source.where, source.listing,
                           named=named)
            if action == "purge":
                return _Outcome(letters, journal.purge(letters))
            if action == "read":
                return _Outcome(letters)
            ours = source.spec is not None and journal.organism() in (None, source.spec.name)
            book = ReplayBook(screen=_screen(source.spec if ours else None))  # its writer's
            moved = journal.replay(letters, book)
            return _Outcome(letters, moved, [str(refusal) for refusal in book.refused])

    return guarded(ctx, on_journal)


async def _on_broker(source: _Source, choice: LetterChoice, action: Action,
                     named: bool) -> _Outcome:
    # Imported here: it needs aio-pika, which `_source` has checked is installed.
    from sporeflow.pipeline.broker.dead_letter_queue import DeadLetterQueue

    assert source.spec is not None
    topology = Topology.of(source.spec)
    async with DeadLetterQueue(source.url, topology) as queue:
        letters = await queue.read(choice)
        choice.require(letters, _agents_of(source), source.where, source.listing,
                       named=named)
        if action == "purge":
            return _Outcome(letters, await queue.purge(letters))
        backend = open_backend(source.url) if action == "replay" and letters else None
        if backend is None:
            return _Outcome(letters)
        book = ReplayBook(screen=_screen(source.spec))
        async with backend:
            await backend.open(topology)
            await queue.replay(letters, backend, source.spec.signing, book)
        return _Outcome(letters, len(book.replayed), [str(r) for r in book.refused])


def _agents_of(source: _Source) -> Collection[str] | None:
    return None if source.spec is None else source.spec.agents


def _screen(spec: OrganismSpec | None) -> Screen | None:
    """The organism's rules a letter must pass to be replayed: said now, not found again."""
    # Without its organism (a journal named alone) the run checks the permissions, but a
    # letter that may never be replayed is refused now all the same (``ReplayBook``).
    return (organism_rules(routing_table(spec), OUTSIDE_SENDERS, limits=spec.limits)
            if spec is not None else None)


def _choice(ctx: click.Context, agents: tuple[str, ...], reasons: tuple[str, ...],
            ids: tuple[str, ...], everything: bool | None = None) -> LetterChoice:
    """The filters given; replay and purge (``everything`` not None) need one, or --all."""
    try:
        choice = LetterChoice(agents, reasons, ids)
    except UnknownReason as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="--reason") from None
    if everything is False and not choice:
        raise click.UsageError("choose dead letters with --agent, --reason or --id, or pass "
                               "--all for every one", ctx=ctx)
    return choice


def _as_json(stored: StoredDeadLetter) -> str:
    return json.dumps({"number": stored.number, **stored.letter.to_dict()}, ensure_ascii=False)


@click.group()
def dlq() -> None:
    """Dead letters kept in an organism's journal or its broker's dead-letter queue: list,
    show, replay, purge."""


@dlq.command(name="list")
@_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(ctx: click.Context, organism: Path, journal: Path | None, backend: str | None,
          origin: str | None, agents: tuple[str, ...], reasons: tuple[str, ...],
          ids: tuple[str, ...], as_json: bool) -> None:
    """One line per dead letter: number, time, agent, reason, error."""
    choice = _choice(ctx, agents, reasons, ids)
    running = in_running(ctx, organism, bool(journal or backend or origin), choice)
    if running is not None:
        letters, where = running[1], in_process(running[0])
    else:
        source = _source(ctx, organism, journal, backend, origin)
        letters = _apply(ctx, source, choice, "read", named=False).letters
        where = f"{source.where}{source.note}"
    for line in ([masked(ctx, _as_json(stored)) for stored in letters] if as_json
                 else letter_lines(partial(masked, ctx), letters)):
        click.echo(line)
    if not as_json:
        click.echo(masked(ctx, f"{len(letters)} dead letter(s) in {where}"), err=True)


@dlq.command()
@_filters
@click.pass_context
def show(ctx: click.Context, organism: Path, journal: Path | None, backend: str | None,
         origin: str | None, agents: tuple[str, ...], reasons: tuple[str, ...],
         ids: tuple[str, ...]) -> None:
    """Each chosen dead letter whole: its error, traceback and spore."""
    choice = _choice(ctx, agents, reasons, ids)
    running = in_running(ctx, organism, bool(journal or backend or origin), choice)
    if running is not None:
        letters = running[1]
        guarded(ctx, lambda: choice.require(letters, None, in_process(running[0]),
                                            _listing(organism, None, None, None)))
    else:
        letters = _apply(ctx, _source(ctx, organism, journal, backend, origin), choice,
                         "read").letters
    for stored in letters:
        letter = stored.letter
        text = (f"dead letter {stored.number}\n"
                f"  spore:    {letter.spore.id}\n"
                f"  at:       {letter.at.isoformat()}\n"
                f"  agent:    {letter.agent or '-'}\n"
                f"  reason:   {letter.reason}\n"
                f"  attempts: {letter.attempts}\n"
                f"  error:    {letter.error}\n")
        if letter.traceback:
            text += "traceback:\n" + letter.traceback.rstrip() + "\n"
        text += "spore:\n" + json.dumps(spore_form(letter.spore), indent=2,
                                        ensure_ascii=False) + "\n"
        click.echo(masked(ctx, text))


@dlq.command()
@_filters
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@click.option("--run", "run_now", is_flag=True,
              help="From a journal: then run the organism until idle, so that they are "
                   "delivered now.")
@click.option("--drain-timeout", type=DURATION, default="30s", show_default=True,
              help="With --run: how long a stop may take, e.g. 30s.")
@click.pass_context
def replay(ctx: click.Context, organism: Path, journal: Path | None, backend: str | None,
           origin: str | None, agents: tuple[str, ...], reasons: tuple[str, ...],
           ids: tuple[str, ...], everything: bool, run_now: bool,
           drain_timeout: float) -> None:
    """Deliver the chosen dead letters again (a broadcast only to the agent that failed on
    it; an expired spore without its expiry).

    From a journal, they move back among its unfinished spores: the next `sporeflow run`
    delivers them, --run now. On a broker, each is published to the organism's exchange
    (signed, when the organism signs) and leaves the dead-letter queue once the broker
    has confirmed it: the organism's running processes deliver them.
    """
    choice = _choice(ctx, agents, reasons, ids, everything)
    running = in_running(ctx, organism, bool(journal or backend or origin), choice)
    if running is not None:  # the running organism delivers them now (--run or not)
        replayed = replay_in_running(ctx, running[0], choice)
        # Its journal keeps them too: replayed, not to be again.
        forget_in_journal(running[2], [s for s in running[1] if s.number in replayed])
        if len(replayed) < len(running[1]):
            ctx.exit(1)  # some stay dead letters: said above
        return
    source = _source(ctx, organism, journal, backend, origin, signs=True)
    if run_now and source.journal is None:
        raise click.UsageError("--run delivers what a journal replays; on a broker the "
                               "organism's running processes deliver them", ctx=ctx)
    outcome = _apply(ctx, source, choice, "replay")
    for problem in outcome.problems:
        click.echo(masked(ctx, f"not replayed: {problem}"), err=True)
    if source.journal is None:
        exchange = Topology.of(source.spec).exchange if source.spec is not None else "?"
        click.echo(masked(ctx, f"{outcome.done} dead letter(s) published again to exchange "
                               f"{exchange} at {redact_url(source.url)}"), err=True)
        if outcome.problems:
            ctx.exit(1)
        return
    path = source.journal
    click.echo(f"{outcome.done} dead letter(s) moved back to the pending spores of {path}",
               err=True)
    if run_now and outcome.done:
        configure_logging("text", "WARNING")
        org = guarded(ctx, lambda: Organism(load_organism(organism), journal=path))
        mask_with(ctx, org.masker)
        started = time.perf_counter()
        try:
            run_to_end(_run_until_idle(org, drain_timeout))
        except SporeflowError as exc:
            fail(ctx, exc)
        click.echo(render_summary(org.stats(), time.perf_counter() - started), err=True)
    if outcome.problems:  # those stay dead letters
        ctx.exit(1)


async def _run_until_idle(org: Organism, drain_timeout: float) -> None:
    async with org.running(drain_timeout=drain_timeout):
        await org.idle()


@dlq.command()
@_filters
@click.option("--all", "everything", is_flag=True, help="Purge every dead letter.")
@click.pass_context
def purge(ctx: click.Context, organism: Path, journal: Path | None, backend: str | None,
          origin: str | None, agents: tuple[str, ...], reasons: tuple[str, ...],
          ids: tuple[str, ...], everything: bool) -> None:
    """Delete the chosen dead letters for good (from the journal, the broker, or the
    running organism that keeps them)."""
    choice = _choice(ctx, agents, reasons, ids, everything)
    running = in_running(ctx, organism, bool(journal or backend or origin), choice)
    if running is not None:  # by the numbers `list` showed, in the process and its journal
        status, answer = call(ctx, running[0], "POST", "dead-letters/purge", asked(choice))
        if status != 200:
            refused(ctx, answer)
        gone = set(answer["numbers"])
        forget_in_journal(running[2], [s for s in running[1] if s.number in gone])
        also = " and its journal" if running[2] is not None else ""
        click.echo(f"{answer['purged']} dead letter(s) purged in "
                   f"{in_process(running[0])}{also}", err=True)
        return
    source = _source(ctx, organism, journal, backend, origin)
    purged = _apply(ctx, source, choice, "purge").done
    click.echo(masked(ctx, f"{purged} dead letter(s) purged from {source.where}"), err=True)
