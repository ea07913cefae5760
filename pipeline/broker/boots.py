"""Boot spores over a broker: sent once per deployment, not once per process start.

A deployment is an organism's topology on one broker: every process of it, whenever
it starts, shares its queues, and a record of the boot spores sent, kept on the
broker (``Backend.boot_record``; on RabbitMQ, ``amqp_boots``). At its start, a
process hosting a booted agent:

    1. takes the agent's boot lock (one process at a time; one that dies lets go)
    2. reads the record: booted already, nothing is sent
    3. sends the boot spore, its id derived from the exchange and the agent
    4. waits for the broker's confirm, then records the boot
    5. lets go of the lock

**At-least-once.** A process that dies between 3 and 4 sent the boot spore without
recording it: the next start sends it again, with the same id, by which receivers can
de-duplicate. A boot is never lost: it is recorded only once the broker holds the
spore. Two processes starting together boot once: the second waits for the lock,
then reads the record. ``again`` (``sporeflow run --reboot``, ``start(reboot=True)``)
sends it even so, with a fresh id: a reboot is new work, not a copy of the first.

The broker keeps a deployment's durable state (its queues, its boots), so a journal
is refused there (:func:`refuse_journal`): it would keep, and re-publish at every
start, the spores this process sent to agents of other processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from sporeflow.config import BrokerError, ConfigError, OrganismSpec, Problem
from sporeflow.pipeline.broker.backend import Backend, Topology
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import Ledger, LedgerHook
from sporeflow.steps import Spore, new_spore_id

__all__ = ["BootOnce", "boot_spore_id", "refuse_journal"]

CONFIRM_WAIT = 60.0  # seconds a boot spore may take to be confirmed; then it is not recorded

SendBoot = Callable[[str], Awaitable[Spore]]  # sends the boot spore with the given id


def boot_spore_id(topology: Topology, agent: str) -> str:
    """The id of ``agent``'s first boot spore: the same in every process of a deployment."""
    digest = hashlib.blake2b(f"{topology.exchange}|{agent}".encode(), digest_size=9)
    return f"boot-{digest.hexdigest()}"


class BootOnce(LedgerHook):
    """Sends boot spores over ``backend`` once per deployment (see the module doc).

    The bridge calls :meth:`confirmed` for each spore the broker confirmed while
    ``waiting`` holds any; the ledger tells of boot spores dead-lettered instead (refused
    by the chain, or by the broker) while this hook is attached, during a boot only.
    """

    def __init__(self, backend: Backend, topology: Topology, ledger: Callable[[], Ledger],
                 logger: logging.Logger) -> None:
        self._backend, self._topology, self._ledger = backend, topology, ledger
        self.logger = logger
        self.waiting: dict[str, asyncio.Future[bool]] = {}  # boot spore id -> confirmed?
        self._locks: dict[str, asyncio.Lock] = {}  # the broker's lock is per connection

    async def boot(self, agent: str, send: SendBoot, *, again: bool = False) -> Spore | None:
        """Send ``agent``'s boot spore unless the deployment did (``again``: even so);
        return it, or None when it was not sent."""
        record = self._backend.boot_record(self._topology)
        if record is None:  # a backend that records nothing: every start boots
            return await send(new_spore_id())
        async with self._locks.setdefault(agent, asyncio.Lock()), record.holding(agent):
            if not again and await record.booted(agent):
                self.logger.info("agent %r was booted by this deployment already: no boot "
                                 "spore (sporeflow run --reboot sends it again)", agent)
                return None
            spore_id = new_spore_id() if again else boot_spore_id(self._topology, agent)
            spore, confirmed = await self._sent(spore_id, send)
            if not confirmed:  # dead-lettered, or no confirm: the next start tries again
                self.logger.warning("the boot spore %s of agent %r is not on the broker; the "
                                    "next start sends it again", spore.id, agent)
                return spore
            try:
                await record.note(agent)
            except BrokerError as exc:  # sent, not recorded: at-least-once, as a crash here
                self.logger.warning("the boot spore %s of agent %r was sent, but not recorded "
                                    "(%s); the next start sends it again", spore.id, agent, exc)
            return spore

    async def _sent(self, spore_id: str, send: SendBoot) -> tuple[Spore, bool]:
        """Send with ``spore_id``; the spore, and whether the broker confirmed it."""
        waiter = self.waiting[spore_id] = asyncio.get_running_loop().create_future()
        ledger = self._ledger()
        ledger.add_hook(self)
        try:
            spore = await send(spore_id)
            try:
                async with asyncio.timeout(CONFIRM_WAIT):
                    return spore, await waiter
            except TimeoutError:
                return spore, False
        finally:
            del self.waiting[spore_id]
            if not self.waiting:
                ledger.remove_hook(self)

    def confirmed(self, spore: Spore) -> None:
        """The broker confirmed ``spore``."""
        self._settle(spore, True)

    def dead_lettered(self, letter: DeadLetter) -> None:
        self._settle(letter.spore, False)

    def _settle(self, spore: Spore, confirmed: bool) -> None:
        # A dead letter's spore may come from the broker, malformed: its id any type.
        waiter = self.waiting.get(spore.id) if type(spore.id) is str else None
        if waiter is not None and not waiter.done():
            waiter.set_result(confirmed)


def refuse_journal(spec: OrganismSpec, journal: object | None) -> None:
    """Raise :class:`ConfigError` if an organism run over a broker has a ``journal``."""
    if journal is None:
        return
    source = str(spec.source or f"<organism {spec.name}>")
    raise ConfigError([Problem(source, 1, 1, "organism.journal", (
        "a journal (organism.journal, or --journal) keeps the spores of an organism that "
        "runs embedded; over a broker, its durable queues keep them (a delivery is acked "
        "once what its handler sent is confirmed), and a journal would keep, and re-publish "
        "at every start, the spores sent to agents of other processes. Remove the journal, "
        "or run embedded (backend: memory)"))])
