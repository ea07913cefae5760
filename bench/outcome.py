"""What a runner returns for one workload run: the contract between runners and harness."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from bench.workloads import Workload


@dataclass(frozen=True, slots=True)
class Outcome:
    handled: int  # handler calls observed; must equal Workload.deliveries
    elapsed_s: float  # first send until everything was handled
    latencies_us: Sequence[float] = ()  # one per round trip (W3 only)


# A runner's function for one workload: sync (threaded peers) or async.
WorkloadRun = Callable[[Workload], Outcome | Coroutine[Any, Any, Outcome]]
