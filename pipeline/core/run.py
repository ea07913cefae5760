"""What one run of an organism is made of, as features see it (the broker bridge)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.core.wiring import WiringSnapshot

__all__ = ["RunParts"]


@dataclass(frozen=True, slots=True, eq=False)
class RunParts:
    intake: Intake
    ledger: Ledger
    requests: RequestBook
    wiring: Callable[[], WiringSnapshot]
    outside: set[str]  # senders whose spores are returned outside, not routed to agents
    running: Callable[[], bool]
    idle: Callable[[], Awaitable[None]]
