"""Dead letters: every spore the organism could not deliver or handle, with why."""

from __future__ import annotations

import traceback
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sporeflow.steps import Spore

__all__ = ["DeadLetter", "DeadLetterStore"]


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
           agent: str | None = None, attempts: int = 0, trace_it: bool = True) -> DeadLetter:
        """``trace_it``: keep the error's traceback (a handler's failure); a refusal by
        the chain keeps none, its frames would be sporeflow's own checks."""
        text = f"{type(error).__name__}: {error}" if error is not None else reason
        trace = None
        if trace_it and error is not None and error.__traceback__ is not None:
            trace = "".join(traceback.format_exception(error))
        return cls(spore, reason, text, agent, attempts, trace)

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "error": self.error, "agent": self.agent,
                "attempts": self.attempts, "at": self.at.isoformat(),
                "traceback": self.traceback, "spore": self.spore.to_dict()}


class DeadLetterStore:
    """The most recent ``capacity`` dead letters; older ones are evicted and counted."""

    def __init__(self, capacity: int) -> None:
        self._letters: deque[DeadLetter] = deque(maxlen=capacity)
        self.by_reason: Counter[str] = Counter()
        self.total = 0
        self.evicted = 0

    def add(self, letter: DeadLetter) -> None:
        if len(self._letters) == self._letters.maxlen:
            self.evicted += 1
        self._letters.append(letter)
        self.by_reason[letter.reason] += 1
        self.total += 1

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(list(self._letters))
