"""``sporeflow dlq``: the dead letters kept in an organism's journal.

    sporeflow dlq list    ORGANISM [--agent A] [--reason R] [--id ID] [--json]
    sporeflow dlq show    ORGANISM [filters]
    sporeflow dlq replay  ORGANISM (filters | --all) [--run]
    sporeflow dlq purge   ORGANISM (filters | --all)

Dead letters are persisted only when the organism has a journal
(``organism.journal`` in its file, or ``--journal FILE`` here). ``replay``
moves the chosen ones back among the journal's unfinished spores: the next
``sporeflow run`` delivers them (``--run`` does it now, until idle).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sporeflow.config import OrganismSpec, SecretFilter, SporeflowError, load_organism, secrets_of
from sporeflow.pipeline.cli.util import (
    DURATION,
    ORGANISM_ARG,
    fail,
    guarded,
    mask_with,
    masked,
    run_to_end,
)
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError, StoredDeadLetter
from sporeflow.pipeline.observe.logs import configure_logging
from sporeflow.pipeline.observe.summary import render_summary
from sporeflow.pipeline.organism import Organism

__all__ = ["dlq"]

F = TypeVar("F", bound=Callable[..., Any])
_ERROR_WIDTH = 80


def _filters(command: F) -> F:
    """The organism argument and the options that choose dead letters."""
    for option in reversed([
        ORGANISM_ARG,
        click.option("--journal", "journal", type=click.Path(dir_okay=False, path_type=Path),
                     help="The journal file (default: the organism file's journal)."),
        click.option("--agent", "agents", multiple=True, metavar="AGENT",
                     help="Only dead letters of this agent (repeatable)."),
        click.option("--reason", "reasons", multiple=True, metavar="REASON",
                     help="Only dead letters with this reason, e.g. 'handler failed'."),
        click.option("--id", "ids", multiple=True, metavar="ID",
                     help="A dead letter's number or its spore's id (repeatable)."),
    ]):
        command = option(command)
    return command


def _journal_of(ctx: click.Context, organism: Path, journal: Path | None) -> Path:
    """The journal's path; the organism's secrets are masked in what is printed from now
    on (a journal written by an older sporeflow may hold them unmasked)."""
    if journal is not None:
        with contextlib.suppress(SporeflowError):  # no organism: URL passwords only
            _mask_secrets_of(ctx, load_organism(organism))
        return journal
    spec = guarded(ctx, lambda: load_organism(organism))
    _mask_secrets_of(ctx, spec)
    if spec.journal is None:
        fail(ctx, JournalError(
            f"{organism}: organism {spec.name!r} has no journal, and dead letters are only "
            f"persisted with one: add `journal: FILE` under `organism:` in the file, or pass "
            f"--journal FILE"))
    return spec.journal


def _mask_secrets_of(ctx: click.Context, spec: OrganismSpec) -> None:
    mask_with(ctx, SecretFilter(secrets_of(spec)))


def _chosen(ctx: click.Context, path: Path, agents: tuple[str, ...], reasons: tuple[str, ...],
            ids: tuple[str, ...]) -> list[StoredDeadLetter]:
    def read() -> list[StoredDeadLetter]:
        with JournalFile(path) as journal:
            return journal.dead_letters(agents=agents, reasons=reasons, ids=ids)

    return guarded(ctx, read)


def _on_chosen(ctx: click.Context, organism: Path, journal: Path | None,
               agents: tuple[str, ...], reasons: tuple[str, ...], ids: tuple[str, ...],
               everything: bool, act: Callable[[JournalFile, list[StoredDeadLetter]], int],
               ) -> tuple[Path, int]:
    """Apply ``act`` (replay, purge) to the dead letters the filters choose; return the
    journal's path and how many it acted on."""
    _require_choice(ctx, everything, agents, reasons, ids)
    path = _journal_of(ctx, organism, journal)
    letters = _chosen(ctx, path, agents, reasons, ids)

    def apply() -> int:
        with JournalFile(path) as journal_file:
            return act(journal_file, letters)

    return path, guarded(ctx, apply)


def _require_choice(ctx: click.Context, everything: bool, *filters: tuple[str, ...]) -> None:
    if not everything and not any(filters):
        raise click.UsageError("choose dead letters with --agent, --reason or --id, or pass "
                               "--all for every one", ctx=ctx)


def _summary_line(ctx: click.Context, stored: StoredDeadLetter) -> str:
    letter = stored.letter
    # Masked before it is cut short: a secret cut in two would no longer match.
    error = masked(ctx, letter.error).splitlines()[0] if letter.error else ""
    if len(error) > _ERROR_WIDTH:
        error = error[:_ERROR_WIDTH - 3] + "..."
    return (f"{stored.number:>6}  {letter.at:%Y-%m-%d %H:%M:%S}  {letter.agent or '-':<16}  "
            f"{letter.reason:<16}  {error}  [spore {letter.spore.id}]")


def _as_json(stored: StoredDeadLetter) -> str:
    return json.dumps({"number": stored.number, **stored.letter.to_dict()}, ensure_ascii=False)


@click.group()
def dlq() -> None:
    """Dead letters kept in an organism's journal: list, show, replay, purge."""


@dlq.command(name="list")
@_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(ctx: click.Context, organism: Path, journal: Path | None, agents: tuple[str, ...],
          reasons: tuple[str, ...], ids: tuple[str, ...], as_json: bool) -> None:
    """One line per dead letter: number, time, agent, reason, error."""
    path = _journal_of(ctx, organism, journal)
    letters = _chosen(ctx, path, agents, reasons, ids)
    for stored in letters:
        click.echo(masked(ctx, _as_json(stored)) if as_json else _summary_line(ctx, stored))
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s) in {path}", err=True)


@dlq.command()
@_filters
@click.pass_context
def show(ctx: click.Context, organism: Path, journal: Path | None, agents: tuple[str, ...],
         reasons: tuple[str, ...], ids: tuple[str, ...]) -> None:
    """Each chosen dead letter whole: its error, traceback and spore."""
    path = _journal_of(ctx, organism, journal)
    for stored in _chosen(ctx, path, agents, reasons, ids):
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
        text += "spore:\n" + json.dumps(letter.spore.to_dict(), indent=2,
                                        ensure_ascii=False) + "\n"
        click.echo(masked(ctx, text))


@dlq.command()
@_filters
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@click.option("--run", "run_now", is_flag=True,
              help="Then run the organism until idle, so that they are delivered now.")
@click.option("--drain-timeout", type=DURATION, default="30s", show_default=True,
              help="With --run: how long a stop may take, e.g. 30s.")
@click.pass_context
def replay(ctx: click.Context, organism: Path, journal: Path | None, agents: tuple[str, ...],
           reasons: tuple[str, ...], ids: tuple[str, ...], everything: bool, run_now: bool,
           drain_timeout: float) -> None:
    """Move the chosen dead letters back among the journal's unfinished spores.

    The next `sporeflow run` delivers them (a broadcast only to the agent that
    failed on it); --run delivers them now.
    """
    path, moved = _on_chosen(ctx, organism, journal, agents, reasons, ids, everything,
                             JournalFile.replay)
    click.echo(f"{moved} dead letter(s) moved back to the pending spores of {path}", err=True)
    if run_now and moved:
        configure_logging("text", "WARNING")
        org = guarded(ctx, lambda: Organism(load_organism(organism), journal=path))
        mask_with(ctx, org.masker)
        started = time.perf_counter()
        try:
            run_to_end(_run_until_idle(org, drain_timeout))
        except SporeflowError as exc:
            fail(ctx, exc)
        click.echo(render_summary(org.stats(), time.perf_counter() - started), err=True)


async def _run_until_idle(org: Organism, drain_timeout: float) -> None:
    async with org.running(drain_timeout=drain_timeout):
        await org.idle()


@dlq.command()
@_filters
@click.option("--all", "everything", is_flag=True, help="Purge every dead letter.")
@click.pass_context
def purge(ctx: click.Context, organism: Path, journal: Path | None, agents: tuple[str, ...],
          reasons: tuple[str, ...], ids: tuple[str, ...], everything: bool) -> None:
    """Delete the chosen dead letters from the journal for good."""
    path, purged = _on_chosen(ctx, organism, journal, agents, reasons, ids, everything,
                              JournalFile.purge)
    click.echo(f"{purged} dead letter(s) purged from {path}", err=True)
