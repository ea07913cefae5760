"""How ``sporeflow dlq`` acts on a running organism, through its control socket: its
letters read a page at a time, a replay or purge made there, and the same letters taken
out of the journal it keeps too (else they would come back at its next start).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from sporeflow.config import SporeError
from sporeflow.pipeline.cli.control import attached, call, refused
from sporeflow.pipeline.cli.util import masked
from sporeflow.pipeline.core.deadletters import DeadLetter, LetterChoice, StoredDeadLetter
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.steps import Spore
from sporeflow.steps.spore import Unreadable

__all__ = ["asked", "forget_in_journal", "in_process", "in_running", "replay_in_running"]


def in_running(ctx: click.Context, organism: Path, explicit: bool, choice: LetterChoice,
               ) -> tuple[Path, list[StoredDeadLetter], str | None] | None:
    """The running organism's socket and its letters ``choice`` matches, when ``dlq`` acts
    on it: no source was named, a run of the file answers, and it keeps them (over a broker
    the dead-letter queue holds every process's: it is read as before; an organism in
    several processes runs over a broker, so any one of them answers this alike).
    Last: the journal that keeps them too, if one does."""
    path = None if explicit else attached(organism)
    if path is None:
        return None
    letters: list[StoredDeadLetter] = []
    after: int | None = 0
    while after is not None:  # the endpoint answers a page at a time
        status, answer = call(ctx, path, "GET", "dead-letters", params={
            "agent": choice.agents, "reason": choice.reasons, "id": choice.ids,
            "after": str(after)})
        if status != 200:
            refused(ctx, answer)
        if answer.get("brokered"):
            return None
        letters += (_stored(data) for data in answer["letters"])
        after = answer.get("next")
    return path, letters, answer.get("journal")


_JOURNAL_LAG_S, _JOURNAL_LOOK_S = 2.0, 0.02  # how long, how often: a letter reaching it


def forget_in_journal(journal: str | None, letters: list[StoredDeadLetter]) -> None:
    """The running organism replayed or purged ``letters``; its ``journal`` keeps them
    too (numbered its own way): take the same ones out there, or they would come back."""
    if journal is None or not letters:
        return
    wanted = {(s.letter.spore.id, s.letter.agent, s.letter.at) for s in letters}
    ids = tuple({key[0] for key in wanted})
    # The journal's writer commits a letter a moment after the process made it: one made
    # just now may not be there yet, so look again for a while before purging.
    give_up = time.monotonic() + _JOURNAL_LAG_S
    with JournalFile(journal) as file:
        while True:
            kept = [s for s in file.dead_letters(ids=ids)
                    if (s.letter.spore.id, s.letter.agent, s.letter.at) in wanted]
            if len(kept) >= len(wanted) or time.monotonic() >= give_up:
                break
            time.sleep(_JOURNAL_LOOK_S)
        file.purge(kept)


def in_process(path: Path) -> str:
    return f"the running organism (control socket {path})"


def _stored(data: dict[str, Any]) -> StoredDeadLetter:
    """A dead letter as the control endpoint answers it (``operations.letter_dict``)."""
    return StoredDeadLetter(int(data["number"]), DeadLetter(
        _spore(data["spore"]), data["reason"], data["error"], data.get("agent"),
        int(data.get("attempts", 0)), data.get("traceback"),
        datetime.fromisoformat(data["at"])))


def _spore(form: dict[str, Any]) -> Spore:
    """A letter's spore as the endpoint wrote it (``spore_form``): one that has no JSON
    form comes as its id and a text of it, shown as such."""
    try:
        return Spore.from_dict(form)
    except SporeError as exc:
        return Unreadable.of(exc, id=str(form.get("id")), data=json.dumps(form))


def replay_in_running(ctx: click.Context, path: Path, choice: LetterChoice) -> set[int]:
    """Replay in the running organism; the numbers of the letters it replayed."""
    status, answer = call(ctx, path, "POST", "dead-letters/replay", asked(choice))
    if status != 200:
        refused(ctx, answer)
    for problem in answer["problems"]:
        click.echo(masked(ctx, f"not replayed: {problem}"), err=True)
    click.echo(f"{answer['replayed']} dead letter(s) replayed in the running organism "
               f"(control socket {path})", err=True)
    return set(answer["numbers"])


def asked(choice: LetterChoice) -> dict[str, Any]:
    """``choice`` as the control endpoint's replay and purge take it."""
    return {"agents": list(choice.agents), "reasons": list(choice.reasons),
            "ids": list(choice.ids), "all": not choice}
