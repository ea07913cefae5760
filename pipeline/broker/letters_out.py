"""The dead letters a process makes of spores that are no delivery of the broker's, put
in the broker's dead-letter queue too: an outside send this process refused (the
recipient's schema, a channel nobody hears), a handler's reply or send refused here, a
response that came back too late. Over a broker, ``sporeflow dlq`` reads that queue,
which holds every process's letters: kept only in the memory of the process that made
them, these were invisible to it and gone with the process.

Each is signed as it would have been published (with signing): a replay signs only a
letter whose signature proves its sender, since anyone who may dead-letter may write one.
A delivery's own letter is not put there again: the broker dead-letters the delivery
itself as it settles it (``settling``), and the bridge says so (``with_delivery``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from sporeflow.config import BrokerError, SporeError
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.broker.backend import Backend
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.steps import Spore

__all__ = ["LettersOut"]


class LettersOut:
    """Sends this process's dead letters to the broker's dead-letter queue, but those of
    deliveries (dead-lettered with the delivery) and those a stop makes (``shutdown``:
    the broker may be gone by then; the run tells them itself)."""

    def __init__(self, backend: Backend, spawn: Callable[[Coroutine[Any, Any, None]], None],
                 logger: logging.Logger, counts: dict[str, int],
                 sign: Callable[[Spore, str | None], Spore]) -> None:
        self.backend = backend
        self._sign = sign
        self._spawn = spawn
        self.logger = logger
        self.counts = counts
        counts.setdefault("letters_out", 0)
        self._with_delivery: set[int] = set()  # marks of spores the broker dead-letters

    def with_delivery(self, key: int) -> None:
        """The letter about to be recorded for the spore of mark ``key`` is a delivery's:
        the broker dead-letters the delivery itself."""
        self._with_delivery.add(key)

    def recorded(self, letter: DeadLetter, key: int) -> None:
        """``letter`` (its spore marked ``key``, or 0) was recorded in this process."""
        if key in self._with_delivery:
            self._with_delivery.discard(key)
            return
        if letter.reason != Reason.SHUTDOWN:
            self._spawn(self._put(letter))

    async def _put(self, letter: DeadLetter) -> None:
        try:
            spore = self._sign(letter.spore, None)
        except SporeError:  # no key here for its sender: put as it is, replayed only if
            spore = letter.spore  # it carries a good signature of its own
        try:
            await self.backend.dead_letter_spore(
                spore, reason=str(letter.reason), error=letter.error,
                agent=letter.agent, attempts=letter.attempts)
            self.counts["letters_out"] += 1
        except (BrokerError, ValueError) as exc:  # kept here all the same, logged when made
            self.logger.warning("could not put dead letter of spore %s in the broker's "
                                "dead-letter queue (it is kept in this process): %s",
                                letter.spore.id, exc)
