"""Dead letters: every spore the organism could not deliver or handle, with why.

Also where a failure becomes text (:func:`error_text`, :meth:`DeadLetter.of`): the
organism's :class:`Masker` runs over it there, before the journal stores it, the
broker publishes it (dead-letter headers, failure responses) or a command prints it.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from sporeflow.config import Limits, SporeflowError, redact_text
from sporeflow.config.reasons import SENDERS_MISTAKES, did_you_mean, reason_named
from sporeflow.config.words import message_of, shown
from sporeflow.steps import Spore, json_size_bound, redelivery
from sporeflow.steps.sizebound import spore_weight

__all__ = ["URL_PASSWORDS", "DeadLetter", "DeadLetterStore", "LetterChoice", "Masker",
           "NoSuchDeadLetter", "StoredDeadLetter", "UnknownAgent", "error_text", "letter_number",
           "no_such_letters", "spore_form"]


class Masker(Protocol):
    """Hides secrets in a text (an organism's is a :class:`SecretFilter` of its secrets)."""

    def mask(self, text: str) -> str: ...


class _UrlPasswords:
    def mask(self, text: str) -> str:
        return redact_text(text)


URL_PASSWORDS: Masker = _UrlPasswords()
"""The masker where no organism's is at hand: URL passwords only."""


def error_text(error: BaseException, masker: Masker = URL_PASSWORDS) -> str:
    """``Type: message`` of a failure, masked: how every failure is written."""
    return masker.mask(f"{type(error).__name__}: {message_of(error)}")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    spore: Spore
    reason: str
    error: str
    agent: str | None = None
    attempts: int = 0
    traceback: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(cls, spore: Spore, reason: str, error: BaseException | None, *,
           agent: str | None = None, attempts: int = 0, trace_it: bool = True,
           masker: Masker = URL_PASSWORDS) -> DeadLetter:
        """``trace_it``: keep the error's traceback (a handler's failure); a refusal by
        the chain keeps none, its frames would be sporeflow's own checks. The error and
        its traceback are masked with ``masker``."""
        text = error_text(error, masker) if error is not None else reason
        trace = None
        if trace_it and error is not None and error.__traceback__ is not None:
            trace = masker.mask("".join(traceback.format_exception(error)))
        return cls(spore, reason, text, agent, attempts, trace)

    def names_its_sender(self) -> bool:
        """``agent`` is the one that sent the spore, refused for its mistake: it never had
        the spore (elsewhere ``agent`` is the one whose delivery failed)."""
        return self.reason in SENDERS_MISTAKES and self.agent == self.spore.from_agent

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "error": self.error, "agent": self.agent,
                "attempts": self.attempts, "at": self.at.isoformat(),
                "traceback": self.traceback, "spore": spore_form(self.spore)}


_MAX_SHOWN = 10_000  # characters of a spore that has no JSON form, as text
# A letter's spore is written whole up to this many bytes as JSON: a spore refused for its
# size may stand for any size of JSON (one object referred to many times), and is text.
_MAX_WRITTEN = 16 << 20
_DEEPEST_WRITTEN = 256


def spore_form(spore: Spore) -> dict[str, Any]:
    """The JSON form of a dead letter's spore, as it is stored, sent and shown: its own
    (``Spore.to_dict``) when that is JSON of at most ``_MAX_WRITTEN`` bytes, else its id
    and a bounded text of its fields (``config.words.shown``).

    A spore is dead-lettered for being malformed: knowledge that is not JSON, refers to
    itself, is nested past any limit or is larger than any, or (read from a changed
    journal row) a field of the wrong type. None of these may make a listing or the
    journal fail, or write more than a bound."""
    size = json_size_bound(spore, _DEEPEST_WRITTEN, _MAX_WRITTEN)
    try:
        if size is None or size > _MAX_WRITTEN:
            raise ValueError("no JSON form, or too large a one")
        form = spore.to_dict()
        json.dumps(form, allow_nan=False)
    except Exception:  # hostile or broken content: shown, never raised
        found = {f.name: getattr(spore, f.name, None) for f in fields(Spore)}
        return {"id": spore.id[:_MAX_SHOWN] if isinstance(spore.id, str) else
                shown(spore.id, _MAX_SHOWN), "not_json": shown(found, _MAX_SHOWN)}
    return form


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter kept outside the process (a journal, the broker's dead-letter queue),
    with its number there (what ``--id`` takes)."""

    number: int
    letter: DeadLetter

    def replayable(self) -> Spore:
        """The spore to deliver again: a broadcast goes back to the agent that failed on it
        only; it loses its expiry, whatever its reason (replaying it asks for it to be
        handled now: one that expired while it waited as a letter was dead again at once)."""
        letter = self.letter
        spore = letter.spore
        if letter.agent is not None and not letter.names_its_sender():
            spore = redelivery(spore, letter.agent)
        if spore.expires_at is not None:
            spore = replace(spore, expires_at=None)
        return spore


@dataclass(frozen=True, slots=True)
class LetterChoice:
    """The dead letters ``sporeflow dlq`` acts on: those matching every filter given (none
    given: all). ``ids`` match a letter's number or its spore's id."""

    agents: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    # The agent of every letter this choice was asked about (``matches``): an ``agents``
    # filter may name one the organism no longer has (see ``require``).
    seen: set[str] = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        """A reason that names none raises :class:`UnknownReason`: it would match nothing."""
        object.__setattr__(self, "reasons", tuple(map(reason_named, self.reasons)))

    def __bool__(self) -> bool:
        return bool(self.agents or self.reasons or self.ids)

    def matches(self, number: int, spore_id: str, agent: str | None, reason: str,
                addressee: Callable[[], object] = lambda: None) -> bool:
        """Whether the letter is chosen. An ``agents`` filter takes a letter no agent was
        involved in (``agent`` None: refused or expired on its way) by its spore's
        ``addressee()`` (its ``to_agent``, read only then)."""
        chosen = not self.agents or agent in self.agents
        if agent is not None:
            self.seen.add(agent)
        elif not chosen and (to := addressee()) in self.agents:
            self.seen.add(str(to))  # in agents, so a str: known to require
            chosen = True
        return (chosen
                and (not self.reasons or reason in self.reasons)
                and (not self.ids or any(_names(ident, number, spore_id)
                                         for ident in self.ids)))

    def picks(self, stored: StoredDeadLetter) -> bool:
        """:meth:`matches` for a letter read whole."""
        letter = stored.letter
        return self.matches(stored.number, letter.spore.id, letter.agent, letter.reason,
                            partial(getattr, letter.spore, "to_agent", None))

    def unmatched(self, letters: Iterable[StoredDeadLetter]) -> tuple[str, ...]:
        """The ``ids`` that name none of ``letters`` (those this choice found): a letter
        asked for by name that is not there, which a replay or purge must not pass over
        as if it had been done."""
        letters = list(letters)
        return tuple(ident for ident in self.ids if not any(
            _names(ident, stored.number, stored.letter.spore.id) for stored in letters))


    def require(self, letters: Iterable[StoredDeadLetter], agents: Iterable[str] | None,
                where: str, listing: str, *, named: bool = True) -> None:
        """Raise for what this choice names that ``letters`` (those it found) lack: an
        ``agents`` filter naming neither one of the organism's ``agents`` nor the agent of
        a letter kept there (``seen``: one an older file had), :class:`UnknownAgent`, a
        misspelt name that would only say "0 letters"; with ``named``, an ``--id`` that
        names no letter (:class:`NoSuchDeadLetter`). ``listing``: how to list the letters
        at ``where``."""
        letters = list(letters)
        if agents is not None:
            kept = (stored.letter.agent for stored in letters)
            known = sorted({*agents, *self.seen, *(agent for agent in kept if agent)})
            for agent in self.agents:
                if agent not in known:
                    raise UnknownAgent(f"{where}: no agent {agent!r}, nor a dead letter of "
                                       f"one{did_you_mean(agent, known)}")
        missing = self.unmatched(letters) if named else ()
        if missing:
            raise no_such_letters(self, missing, where, listing)


class UnknownAgent(SporeflowError):
    """A dead-letter filter names no agent of the organism and no letter's agent."""


def _names(ident: str, number: int, spore_id: object) -> bool:
    return ident == spore_id or letter_number(ident) == number


class NoSuchDeadLetter(SporeflowError):
    """A dead letter named by its number or its spore's id is not (or no longer) kept."""


def no_such_letters(choice: LetterChoice, missing: Iterable[str], where: str,
                    listing: str) -> NoSuchDeadLetter:
    """The error for ``--id`` values (``missing``) that name no dead letter at ``where``;
    ``listing`` is how to list the letters kept there now."""
    named = ", ".join(f"{ident!r:.80}" for ident in missing)
    among = (" among those of the --agent and --reason given"
             if choice.agents or choice.reasons else "")
    return NoSuchDeadLetter(
        f"{where}: no dead letter {named}{among}: no letter has that number or spore id. "
        f"It does not exist, or no longer does: replayed, purged, or dropped by the "
        f"journal's retention (a broker's letters are numbered by their place in the "
        f"queue: removing one renumbers those after it; a spore id never changes). "
        f"{listing} lists the letters kept now")


def letter_number(text: str) -> int | None:
    """The dead-letter number ``text`` names (a decimal of ASCII digits), else None: a
    client's text, which ``str.isdigit`` alone would pass for '²' or 5,000 nines."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


_DEFAULTS = Limits()


class DeadLetterStore:
    """The most recent dead letters, at most ``capacity`` of them and ``max_bytes`` of
    them (each weighed as JSON, with its error texts; the newest is kept whatever it
    weighs); older ones are evicted and counted. Letters come from input: by count
    alone, ten thousand refused spores of a megabyte each would be ten gigabytes.

    Each letter gets a number when it is added (1, 2, ...; never reused), what ``dlq``
    and the control endpoint name it by; a replay takes letters out by number.
    """

    def __init__(self, capacity: int, *, max_bytes: int | None = None,
                 limits: Limits = _DEFAULTS) -> None:
        self._letters: deque[StoredDeadLetter] = deque()
        self._weights: dict[int, int] = {}  # by number
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.limits = limits  # how deep a letter is walked, what one not JSON weighs
        self.bytes = 0  # what the letters kept weigh
        self.by_reason: Counter[str] = Counter()
        self.total = 0
        self.evicted = 0

    @classmethod
    def within(cls, limits: Limits) -> DeadLetterStore:
        """The store of an organism of ``limits``: ``max_dead_letters`` and
        ``max_dead_letter_bytes``."""
        return cls(limits.max_dead_letters, max_bytes=limits.max_dead_letter_bytes,
                   limits=limits)

    def add(self, letter: DeadLetter) -> None:
        self.total += 1
        self._keep([StoredDeadLetter(self.total, letter)])
        self.by_reason[letter.reason] += 1
        self._evict()

    def _keep(self, letters: Iterable[StoredDeadLetter]) -> None:
        for stored in letters:
            weight = self._weigh(stored.letter) if self.max_bytes is not None else 0
            self._weights[stored.number] = weight
            self.bytes += weight
            self._letters.append(stored)

    def _weigh(self, letter: DeadLetter) -> int:
        assert self.max_bytes is not None
        return (spore_weight(letter.spore, self.limits, self.max_bytes) + len(letter.error)
                + len(letter.traceback or ""))

    def _evict(self) -> None:
        letters = self._letters
        while len(letters) > self.capacity or (
                self.max_bytes is not None and self.bytes > self.max_bytes and len(letters) > 1):
            self._drop(letters.popleft())
            self.evicted += 1

    def _drop(self, stored: StoredDeadLetter) -> None:
        self.bytes -= self._weights.pop(stored.number)

    def numbered(self, choice: LetterChoice | None = None) -> list[StoredDeadLetter]:
        """The letters kept, oldest first, with their numbers; those ``choice`` matches."""
        if not choice:
            return list(self._letters)
        return [stored for stored in self._letters if choice.picks(stored)]

    def take(self, numbers: Iterable[int]) -> list[StoredDeadLetter]:
        """Remove the letters with these numbers (those still kept) and return them."""
        wanted = set(numbers)
        taken = [stored for stored in self._letters if stored.number in wanted]
        if taken:
            kept = [stored for stored in self._letters if stored.number not in wanted]
            self._letters.clear()
            self._letters.extend(kept)
            for stored in taken:
                self._drop(stored)
        return taken

    def restore(self, letters: Iterable[StoredDeadLetter]) -> None:
        """Put taken letters back in their places (a replay that was refused); past the
        bounds, the oldest are evicted."""
        self._keep(letters)
        merged = sorted(self._letters, key=lambda stored: stored.number)
        self._letters.clear()
        self._letters.extend(merged)
        self._evict()

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter([stored.letter for stored in self._letters])
