"""What a running organism keeps for ``sporeflow trace``: :class:`TraceWindow`, a ledger
hook holding the steps (``core.lineage.TraceStep``) of the last settlements.

The window is bounded like everything kept from input: the last ``TRACE_WINDOW`` steps
(one per settled delivery), the oldest forgotten first; a step keeps a spore's ids and
names, never its knowledge. It is attached only where it is read: by the control
endpoint of ``sporeflow run`` (an organism embedded without it pays nothing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.lineage import (
    TraceStep,
    ended_step,
    handled_step,
    letter_step,
)
from sporeflow.steps import Spore

__all__ = ["TRACE_WINDOW", "TraceWindow"]

TRACE_WINDOW = 10_000  # steps: some 5 MB at most, with ids of a few dozen characters


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TraceWindow(LedgerHook):
    """The steps of the last ``cap`` settlements, oldest first."""

    def __init__(self, *, cap: int = TRACE_WINDOW,
                 now: Callable[[], datetime] = _utc_now) -> None:
        self.steps: deque[TraceStep] = deque(maxlen=cap)
        self.now = now

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        self.steps.append(handled_step(spore, agent, latency, self.now()))

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.steps.append(letter_step(letter))

    def ended(self, spore: Spore) -> None:
        self.steps.append(ended_step(spore, self.now()))
