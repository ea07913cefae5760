"""Why a spore became a dead letter: one closed vocabulary, and the one mapping from an
exception to its reason.

Every stage, the ledger, the journal and the broker use :class:`Reason`; a
``StrEnum`` compares equal to its text, so ``letter.reason == "expired"`` holds and
JSON, SQLite and AMQP headers carry the plain text.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import StrEnum

__all__ = ["SENDERS_MISTAKES", "Reason", "UnknownReason", "did_you_mean", "reason_named",
           "reason_of"]


class Reason(StrEnum):
    INVALID = "invalid"
    LIMIT_EXCEEDED = "limit exceeded"
    SCHEMA = "schema"
    EXPIRED = "expired"
    BUDGET = "budget"
    BAD_SIGNATURE = "bad signature"
    UNKNOWN_AGENT = "unknown agent"
    UNKNOWN_CHANNEL = "unknown channel"
    NO_SUBSCRIBERS = "no subscribers"
    NOT_A_PEER = "not a peer"
    WRONG_QUEUE = "wrong queue"
    UNEXPECTED_RESPONSE = "unexpected response"
    LATE_RESPONSE = "late response"
    HANDLER_FAILED = "handler failed"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    BROKER_ERROR = "broker error"
    POISON = "poison"  # the process died handling it max_crashes times (with a journal)
    REPLAYED = "replayed"  # a signature outside the window, or seen before within it
    NO_KEY = "no key"  # a keyed agent's key is missing from the spore, or not a scalar
    KEY_LIMIT = "key limit"  # a keyed agent holds max_keys keys; this one is new


# Refusals that say the sender made a mistake (not that time, a budget or a delivery ran
# out): a refused send of one of our agents is told as a WARNING naming it, and its dead
# letter names the sender, who never had it (a replay sends it again as it was sent).
SENDERS_MISTAKES = frozenset({Reason.INVALID, Reason.LIMIT_EXCEEDED, Reason.SCHEMA,
                              Reason.UNKNOWN_AGENT, Reason.UNKNOWN_CHANNEL,
                              Reason.NO_SUBSCRIBERS, Reason.NOT_A_PEER})


def reason_of(error: BaseException | None) -> Reason:
    """The dead-letter reason of a refusal: the error's own ``reason`` (a class or an
    instance attribute), else ``invalid``."""
    reason = getattr(error, "reason", None)
    try:
        return Reason(reason) if isinstance(reason, str) else Reason.INVALID
    except ValueError:
        return Reason.INVALID


_LONGEST_WORD = 256  # characters: names are at most 128


def did_you_mean(word: object, choices: Iterable[str], *, within: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``; ``within``
    prefixes the suggestion (``within.x``) where the word is part of a dotted path."""
    if not isinstance(word, str) or len(word) > _LONGEST_WORD:
        return ""  # far longer than any name: matching it would only take time
    # The word itself is no suggestion (a channel named right, refused for another reason).
    match = difflib.get_close_matches(word, [c for c in choices if c != word], n=1)
    if not match:
        return ""
    return f" (did you mean {f'{within}.{match[0]}' if within else match[0]!r}?)"


class UnknownReason(ValueError):
    """A filter names no dead-letter reason (it would match nothing, silently)."""


def reason_named(text: str) -> Reason:
    """The reason ``text`` names, written as shown (``handler failed``) or with ``-`` or
    ``_`` for its spaces, in any case."""
    name = " ".join(text.replace("-", " ").replace("_", " ").lower().split())
    try:
        return Reason(name)
    except ValueError:
        raise UnknownReason(
            f"no dead-letter reason {text!r}{did_you_mean(name, map(str, Reason))}; the "
            f"reasons are {', '.join(repr(str(reason)) for reason in Reason)}") from None
