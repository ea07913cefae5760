"""The one backoff rule: exponential from a base, capped, with equal jitter (each pause drawn
between half and all of its step, so that many waiters that failed together do not retry
in step). Handlers' retries (``steps.lanes``) and reconnects to a broker
(``pipeline.broker.link``) both use it."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sporeflow.config.model import Retry

__all__ = ["backoff_delay", "equal_jitter"]


def equal_jitter(base: float, cap: float, attempt: int, draw: Callable[[], float]) -> float:
    """Seconds to pause before retry ``attempt`` (1 for the first): ``base`` doubled per
    attempt up to ``cap``, then between half and all of that by ``draw()`` in [0, 1)."""
    step = min(cap, base * 2.0 ** min(attempt - 1, 62))  # 2**62: no overflow, cap long hit
    return step / 2 + draw() * step / 2


def backoff_delay(retry: Retry, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds a handler's retry waits after failed ``attempt``: its agent's ``retry``."""
    return equal_jitter(retry.backoff, retry.max_backoff, attempt, (rng or random).random)
