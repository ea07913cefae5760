"""The organism's thread budget, its warnings told as typed events and log lines.

``core.budget`` decides when a conversation passes one of ``limits.budget_warnings``
(once per thread, limit and percentage); this turns each into a
:class:`ThreadBudgetReached` event (built only while someone listens) and a WARNING line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sporeflow.config import Limits
from sporeflow.pipeline.core.budget import BudgetWarning, ThreadBudget
from sporeflow.pipeline.observe.events import EventBus, ThreadBudgetReached

__all__ = ["warned_budget"]


def warned_budget(limits: Limits, events: EventBus, logger: logging.Logger,
                  now: Callable[[], datetime]) -> ThreadBudget:
    """A :class:`ThreadBudget` of ``limits`` whose warnings go to ``events`` and ``logger``."""

    def warn(warning: BudgetWarning) -> None:
        logger.warning("conversation %s reached %g%% of limits.%s: %g of %g",
                       warning.thread, warning.percent, warning.limit, warning.used,
                       warning.maximum, extra={"event": "thread-budget",
                                               "thread_id": warning.thread})
        if events.active:
            events.emit(ThreadBudgetReached(
                thread_id=warning.thread, limit=warning.limit, percent=warning.percent,
                used=warning.used, maximum=warning.maximum, at=now()))

    return ThreadBudget.from_limits(limits, on_warning=warn)
