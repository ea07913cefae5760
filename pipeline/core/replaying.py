"""How dead letters are replayed, by every path: ``sporeflow dlq replay`` on a journal or
a broker's dead-letter queue, and the control endpoint of a running organism.

One rule for all of them: each letter is replayed or refused on its own. A letter that
may never be replayed (:func:`never_replayed`), that the organism's rules refuse (a
``screen``: :func:`organism_rules` for a replay the organism delivers later), or whose
way back fails (no key here to sign it, a broker that refused it, a spore with no JSON
form, a spore that the running organism refuses) stays where it was, told as one
:class:`Refusal` (its number, why, what to do); the letters after it are replayed all the
same. A :class:`ReplayBook` keeps what came of each::

    book = ReplayBook(screen=...)
    for stored, spore in book.judged(letters):
        with book.delivering(stored) as attempt:
            ...  # deliver ``spore``: any exception refuses this letter only
        if attempt.done:
            ...  # e.g. take it off the dead-letter queue
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sporeflow.config import Limits
from sporeflow.config.model import DEAD_LETTER_CHANNEL, SYSTEM_SENDER
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import (
    URL_PASSWORDS,
    DeadLetter,
    Masker,
    StoredDeadLetter,
)
from sporeflow.steps import (
    RoutingTable,
    Spore,
    SporeType,
    check_spore,
    permission_error,
    unroutable,
)

__all__ = ["Attempt", "Refusal", "ReplayBook", "Screen", "never_replayed", "organism_rules",
           "replay_refusals"]

Screen = Callable[[StoredDeadLetter, Spore], "str | Exception | None"]
"""Why the organism's rules refuse to replay ``spore`` (the letter's replayable form), or
None; it may raise instead."""

# A spore refused for its signature was never shown to come from its sender: a replay
# would sign it with this organism's key, laundering a forgery, a change or a replay.
_UNPROVEN = frozenset({Reason.BAD_SIGNATURE, Reason.REPLAYED})
_MAX_NAMED = 80  # a spore id longer than this (a changed row's) is not quoted in a hint


def never_replayed(letter: DeadLetter) -> str | None:
    """Why ``letter`` may never be replayed, whoever asks and wherever it is kept."""
    if letter.reason in _UNPROVEN:
        return (f"it failed its signature check ({letter.reason}): a replay would sign it "
                f"as this organism's own")
    # A response goes only to the request that awaits it: once its letter is written,
    # none does (whatever its reason: late, a budget, a stop). Found by a new user.
    if getattr(letter.spore, "spore_type", None) is SporeType.RESPONSE:
        return ("it is a response nobody awaits (its request timed out, failed, or was "
                "never made here): delivered again, it is a dead letter again; purge it")
    spore = letter.spore
    if (getattr(spore, "channel", None) == DEAD_LETTER_CHANNEL
            and getattr(spore, "from_agent", None) == SYSTEM_SENDER):
        # Only the organism sends its notices (Ingress.screen refuses them from anyone
        # else, a replay included): found by an attacker.
        return ("it is the organism's notice of another dead letter (that letter is the "
                "one to replay), and notices come from the organism alone: purge it")
    if letter.reason == Reason.INVALID:  # found by a new user: a source's bad line, replayed
        return ("it was refused as invalid: what it keeps is no spore to deliver (a stand-in "
                "for a source's bad input, or a spore the chain refuses again); fix it where "
                "it came from, and purge it")
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A letter not replayed: its number where it is kept, why, and what to do."""

    number: int
    spore_id: str
    why: str
    todo: str

    def __str__(self) -> str:
        return f"dead letter {self.number} (spore {self.spore_id}): {self.why}; {self.todo}"


@dataclass(slots=True)
class Attempt:
    """One letter's delivery in :meth:`ReplayBook.delivering`: ``done`` once it went."""

    done: bool = False


@dataclass(slots=True)
class ReplayBook:
    """What one replay did, letter by letter (see the module's docstring)."""

    screen: Screen | None = None
    masker: Masker = URL_PASSWORDS
    replayed: list[StoredDeadLetter] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def judged(self, letters: Iterable[StoredDeadLetter]
               ) -> Iterator[tuple[StoredDeadLetter, Spore]]:
        """Each letter that may be replayed, with the spore to deliver; the others are
        refused (:meth:`refuse`) as they come."""
        for stored in letters:
            try:
                never = never_replayed(stored.letter)
                if never is not None:
                    self.refuse(stored, never, forever=True)
                    continue
                spore = stored.replayable()
                why = self.screen(stored, spore) if self.screen is not None else None
            except Exception as exc:  # a letter anyone may have written: refuse it alone
                self.refuse(stored, exc)
                continue
            if why is not None:
                self.refuse(stored, why)
                continue
            yield stored, spore

    @contextmanager
    def delivering(self, stored: StoredDeadLetter) -> Iterator[Attempt]:
        """Deliver one letter in the ``with`` body: it is replayed when the body ends, and
        refused, the others going on, when the body raises."""
        attempt = Attempt()
        try:
            yield attempt
        except Exception as exc:  # that letter's failure, not the replay's
            self.refuse(stored, exc)
        else:
            attempt.done = True
            self.replayed.append(stored)

    def refuse(self, stored: StoredDeadLetter, why: str | BaseException, *,
               forever: bool = False, todo: str | None = None) -> None:
        """Keep ``stored`` where it is, told as a :class:`Refusal`: ``forever`` when no
        replay can ever deliver it; ``todo`` replaces the usual way on."""
        text = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
        spore_id = stored.letter.spore.id
        shown = spore_id if isinstance(spore_id, str) else repr(spore_id)
        named = (f"--id {shown}" if isinstance(spore_id, str) and shown.isprintable()
                 and " " not in shown and 0 < len(shown) <= _MAX_NAMED
                 else f"--id {stored.number}")
        if todo is None:
            todo = (f"it stays a dead letter: `dlq purge {named}` removes it" if forever else
                    f"it stays a dead letter: once that is fixed, `dlq replay {named}` "
                    f"again, or `dlq purge {named}` to drop it")
        self.refused.append(Refusal(stored.number, shown[:_MAX_NAMED],
                                    self.masker.mask(text), todo))


def organism_rules(table: RoutingTable, outside: Container[str], *,
                   limits: Limits | None = None) -> Screen:
    """The organism's rules applied to a letter before a replay it will deliver later (a
    journal's, the broker's), whose letters anyone who could write there may have
    written: with ``limits``, validate's check of every spore (``check_spore``: its
    size, hops and fields, as the running organism's ingress checks a replay), route's
    permission rule (``permission_error``), and route's rule of where a
    spore may go (``unroutable``: an agent or channel the organism still has, not one
    taken out of the file since; a broadcast's delivery only to a subscriber of its
    channel, ``unsubscribed_error``), heard at replay rather than as
    another dead letter at the next run (or the same one again). A broadcast's delivery
    is allowed as it was."""

    def screen(stored: StoredDeadLetter, spore: Spore) -> str | Exception | None:
        if limits is not None:
            check_spore(spore, limits)  # raises: the letter is refused with its error
        return (None if spore.spore_type is SporeType.RESPONSE
                else unroutable(table, spore, outside=outside)) or (
            permission_error(table, spore, outside=outside) if table.guarded else None)

    return screen


def replay_refusals(letters: Iterable[StoredDeadLetter], table: RoutingTable | None,
                    outside: Container[str]) -> tuple[list[StoredDeadLetter], list[str]]:
    """The letters that may be replayed, and why the others may not: :func:`never_replayed`
    and, with ``table``, :func:`organism_rules` (the judging of a :class:`ReplayBook`)."""
    book = ReplayBook(screen=organism_rules(table, outside) if table is not None else None)
    allowed = [stored for stored, _ in book.judged(letters)]
    return allowed, [str(refusal) for refusal in book.refused]

