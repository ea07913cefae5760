"""An agent's dedupe window (``agents.X.dedupe``): a spore whose id the agent handled
within the window is dropped, its handler not run again.

Delivery is at-least-once: a broker gives a dead process's unacked deliveries to another,
a journal replays what a crash left unfinished, and what their handlers produce then
comes again with the same ids (``steps.ids``). The lane of an agent with ``dedupe``
looks each spore's id up as its run starts (so its handler never runs on a copy):

- An id counts once its handler returned: a spore whose handling failed is not noted,
  so a copy of it, or its dead letter replayed, runs again. A copy queued behind the
  first is dropped when its turn comes; one that starts while the first still runs
  (``concurrency`` over 1) is not a copy yet.
- A dropped copy is counted (``deduplicated``) and handed to ``on_dropped``, which
  settles it without a dead letter: it is no error (a broker's delivery is acked, a
  journal's row finished).
- Memory is bounded: the ids of the last ``window`` seconds, at most ``DEDUPE_MAX_IDS``,
  kept as 64-bit hashes (:class:`~sporeflow.steps.seen.SeenWindow`); past the cap the
  oldest are forgotten early, so a copy of one may run again, as without dedupe.
- The clock is the organism's (``now``); the ids live in this process only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sporeflow.steps.lanes import AgentLane
from sporeflow.steps.seen import SeenWindow
from sporeflow.steps.spore import Spore

__all__ = ["DEDUPE_MAX_IDS", "Dedupe", "DedupingLane"]

DEDUPE_MAX_IDS = 100_000  # per agent: about 16 MB at most


class Dedupe:
    """The ids one agent handled lately, and the copies it dropped."""

    __slots__ = ("_now", "_seen", "dropped")

    def __init__(self, window: float, now: Callable[[], datetime], *,
                 cap: int = DEDUPE_MAX_IDS) -> None:
        self._seen = SeenWindow(window, cap)
        self._now = now
        self.dropped = 0

    @property
    def window(self) -> float:
        return self._seen.window

    @window.setter
    def window(self, seconds: float) -> None:
        self._seen.window = seconds

    def is_copy(self, spore: Spore) -> bool:
        """Whether ``spore``'s id was handled within the window."""
        seen = self._seen
        seen.forget(self._now().timestamp())
        return hash(spore.id) in seen

    def handled(self, spore: Spore) -> None:
        self._seen.add(hash(spore.id), self._now().timestamp())


class DedupingLane(AgentLane):
    """An :class:`AgentLane` that drops a copy of a spore it handled within the window."""

    inline = False  # each spore goes through _run, where it is looked up

    def __init__(self, *args: Any, dedupe: Dedupe, on_dropped: Callable[[Spore], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dedupe = dedupe
        self._on_dropped = on_dropped
        done = self._on_done

        def on_done(spore: Spore, replies: list[Spore], seconds: float) -> None:
            dedupe.handled(spore)
            done(spore, replies, seconds)

        self._on_done = on_done

    @property
    def deduplicated(self) -> int:  # type: ignore[override]
        return self.dedupe.dropped

    async def _run(self, spore: Spore, attempt: int) -> None:
        dedupe = self.dedupe
        if dedupe.is_copy(spore):
            dedupe.dropped += 1
            self._on_dropped(spore)
            return
        await super()._run(spore, attempt)
