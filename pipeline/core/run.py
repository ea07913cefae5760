"""One run of an organism, from start to stop: its intake, ledger, ingress and chain.

A restart makes a new :class:`Run`; what outlives runs (dead letters, the outbox,
pending requests, the wiring) is handed in. Features that work per run (the broker
bridge) receive the run itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sporeflow.config import OrganismSpec, OrganismStateError
from sporeflow.pipeline.core.chain import Stage, assemble
from sporeflow.pipeline.core.deadletters import URL_PASSWORDS, DeadLetterStore, Masker
from sporeflow.pipeline.core.ingress import Ingress
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.outbox import Outbox
from sporeflow.pipeline.core.owed import Owed
from sporeflow.pipeline.core.recent import RecentNames
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.core.wiring import WiringCell
from sporeflow.steps import Spore
from sporeflow.steps.spore import SPORE_CLOCK

__all__ = ["Run"]


class Run:
    def __init__(self, *, spec: OrganismSpec, dead_letters: DeadLetterStore,
                 requests: RequestBook, wiring: WiringCell,
                 logger: logging.Logger, now: Callable[[], datetime], outbox: Outbox,
                 listeners: list[Callable[[Spore], None]],
                 outside: RecentNames, running: Callable[[], bool],
                 masker: Masker = URL_PASSWORDS) -> None:
        self.spec = spec
        self.requests = requests
        self.wiring = wiring
        self.outside = outside  # senders whose spores are returned outside, not routed
        self.running = running
        self.logger = logger
        self.intake = Intake(max_in_flight=spec.limits.max_in_flight,
                             capacities={c.name: c.capacity for c in spec.channels.values()},
                             max_in_memory=spec.limits.max_in_memory,
                             wiring=wiring)
        self.ledger = Ledger(intake=self.intake, dead_letters=dead_letters, requests=requests,
                             wiring=wiring, logger=logger, now=now, outbox=outbox,
                             listeners=listeners, masker=masker, limits=spec.limits)
        # What is owed to the lanes of agents a reload removed (core.owed).
        self.owed = Owed(self.intake, self.ledger)
        self.ingress = Ingress(intake=self.intake, ledger=self.ledger, requests=requests,
                               wiring=wiring, limits=spec.limits, now=now,
                               outside=outside, organism=spec.name)
        self.chain: asyncio.Task[None] | None = None
        self._now = now

    def start_chain(self, stages: Sequence[Stage], on_crash: Callable[[], None]) -> None:
        """Run the chain of ``stages`` over the intake, in a task of its own."""
        self.ingress.loop = asyncio.get_running_loop()  # the one outside sends must share

        async def pump() -> None:
            SPORE_CLOCK.set(self._now)  # this task's spores: the organism's clock
            try:
                async with assemble(self.intake.batches(), stages).stream() as deliveries:
                    async for _ in deliveries:
                        pass  # the stages did the work; the lanes run the handlers
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this task was cancelled: a teardown, not a crash
                crashed(exc)  # raised by a stage: the chain is gone all the same
                raise RuntimeError("a stage of the chain raised CancelledError") from exc
            except Exception as exc:
                crashed(exc)
                raise

        def crashed(exc: BaseException) -> None:
            self.logger.critical("the chain of %r crashed; the organism stops",
                                 self.spec.name, exc_info=exc)
            on_crash()

        self.chain = asyncio.get_running_loop().create_task(pump(),
                                                            name=f"sporeflow:{self.spec.name}")

    async def idle(self) -> None:
        """Return once nothing is queued or in flight (raise if the chain crashed)."""
        chain = self.chain
        assert chain is not None, "the chain starts with the run"
        waiter = asyncio.ensure_future(self.intake.idle())
        try:
            await asyncio.wait([waiter, chain], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if chain.done() and not chain.cancelled() and chain.exception() is not None:
            raise OrganismStateError(f"organism {self.spec.name!r} crashed") from (
                chain.exception())

    async def finish_chain(self) -> None:
        """Wait for the chain to end (after ``intake.finish()``), whatever its end."""
        if self.chain is not None:
            try:
                await self.chain
            except (Exception, asyncio.CancelledError):  # already logged by pump
                pass
