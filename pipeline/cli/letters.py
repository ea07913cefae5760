"""How dead letters are printed: a line each (``sporeflow dlq list``), and those a run
kept in memory only, at its end; and what a run's exit without a drain leaves."""

from __future__ import annotations

from collections.abc import Callable

import click

from sporeflow.config.words import plural
from sporeflow.pipeline.core.deadletters import StoredDeadLetter
from sporeflow.pipeline.organism import Organism

__all__ = ["echo_kept_by_this_run", "left_behind", "letter_lines"]

_ERROR_WIDTH = 80
_SHOWN = 20  # a run's letters printed at its end, at most
_WIDE = 300


def letter_lines(mask: Callable[[str], str], letters: list[StoredDeadLetter],
                 width: int = _ERROR_WIDTH) -> list[str]:
    """One line per letter, each column as wide as its longest value in this listing."""
    number = max((len(str(stored.number)) for stored in letters), default=0)
    agent = max((len(_safe(stored.letter.agent or "-")) for stored in letters), default=0)
    reason = max((len(_safe(stored.letter.reason)) for stored in letters), default=0)
    return [_line(mask, stored, number, agent, reason, width) for stored in letters]


def _line(mask: Callable[[str], str], stored: StoredDeadLetter, number: int, agent: int,
          reason: int, width: int) -> str:
    letter = stored.letter
    # Masked before it is cut short: a secret cut in two would no longer match.
    error = _safe(mask(letter.error).splitlines()[0]) if letter.error else ""
    if len(error) > width:
        error = error[:width - 3] + "..."
    return (f"{stored.number:>{number}}  {letter.at:%Y-%m-%d %H:%M:%S}  "
            f"{_safe(letter.agent or '-'):<{agent}}  {_safe(letter.reason):<{reason}}  "
            f"{error}  [spore {_safe(str(letter.spore.id))}]")


def _safe(text: str) -> str:
    """``text`` as a terminal shows it as written: a letter from the broker is anyone's,
    and a control character or a right-to-left mark in it would move or hide what the
    line says; each unprintable one is written as its escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def echo_kept_by_this_run(org: Organism, told: str | None = None) -> None:
    """At the end of a run with no journal and no broker, print its dead letters: the
    log said "the dead letter has the details", and they go with this process. ``told``:
    the id of a spore whose letter the caller prints itself (``send --start``'s own)."""
    if org.journal is not None or org.brokered:
        return  # kept there: `sporeflow dlq list` reads them
    letters = [stored for stored in org.dead_letters.numbered()
               if told is None or stored.letter.spore.id != told]
    if not letters:
        return
    click.echo(f"{plural(len(letters), 'dead letter')}, kept by this run only (a journal "
               f"keeps them: --journal FILE):", err=True)
    for line in letter_lines(org.masker.mask, letters[:_SHOWN], width=_WIDE):  # in full, once
        click.echo(f"  {line}", err=True)
    if len(letters) > _SHOWN:
        click.echo(f"  ... and {len(letters) - _SHOWN:,} more", err=True)


def left_behind(org: Organism) -> str:
    """What an exit without a drain leaves, where it goes: never lost unsaid."""
    if org.journal is not None:
        return (f"what was unfinished stays in the journal {org.journal.path} and is "
                f"replayed at the next start")
    if org.brokered:
        return "the deliveries not yet acked go back to their queues, for the next consumer"
    held = org.stats()["totals"]["held"]
    return (f"{held:,} spore{'' if held == 1 else 's'} held in memory "
            f"{'is' if held == 1 else 'are'} lost (queued or in flight; a journal keeps "
            f"them: --journal FILE)")
