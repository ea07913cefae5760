"""A deployment's boot record on RabbitMQ (the rule is ``broker.boots``'s).

    exchange <exchange>.booted:<agent>   durable, bound to nothing: it exists once the
                                         deployment sent the agent's boot spore
    queue <exchange>.booting:<agent>     exclusive: held by the one process booting the
                                         agent; RabbitMQ deletes it with the connection
                                         holding it, so a killed process lets go at once

A second process declaring the lock is refused (RESOURCE_LOCKED) and tries again
until the lock is free. A process needs the configure permission on both names
(declare, delete) and nothing else: whether the marker exists is asked by a passive
declaration, which needs none (``broker.permissions`` grants them to the processes
hosting the agent). Part of the RabbitMQ backend: ``amqp_backend`` hands it its
connection and how it translates errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from sporeflow.config import BrokerError
from sporeflow.pipeline.broker.amqp_marks import mark, marked
from sporeflow.pipeline.broker.backend import Topology

__all__ = ["AmqpBootRecord"]

LOCK_WAIT = 300.0  # seconds: past a dead host's heartbeat timeout, RabbitMQ frees its lock
_RETRY_FIRST, _RETRY_MOST = 0.02, 0.5
_log = logging.getLogger("sporeflow.broker.amqp")


class AmqpBootRecord:
    """The boot record of ``topology``'s deployment, through the backend's connection."""

    def __init__(self, topology: Topology, connection: Callable[[], AbstractConnection], *,
                 fail: Callable[[str, BaseException], BrokerError],
                 errors: tuple[type[BaseException], ...], address: str, user: str) -> None:
        self._topology = topology
        self._connection = connection
        self._fail, self._errors = fail, errors
        self._address, self._user = address, user

    @contextlib.asynccontextmanager
    async def holding(self, agent: str) -> AsyncIterator[None]:
        name = self._topology.boot_lock(agent)
        channel = await self._lock(name, agent)
        try:
            yield
        finally:
            with contextlib.suppress(*self._errors):  # a lost connection took it already
                await channel.queue_delete(name)
                await channel.close()

    async def _lock(self, name: str, agent: str) -> AbstractChannel:
        deadline = time.monotonic() + LOCK_WAIT
        delay = _RETRY_FIRST
        while True:
            channel = await self._channel(f"taking the boot lock {name!r}")
            try:
                await channel.declare_queue(name, exclusive=True)
                return channel
            except aiormq.exceptions.ChannelLockedResource:
                pass  # another process boots the agent now: its record decides for us
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise self._refused(name, agent, exc) from exc
            except self._errors as exc:
                raise self._fail(f"taking the boot lock {name!r}", exc) from exc
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"RabbitMQ at {self._address}: another process has held {name!r} for "
                    f"over {LOCK_WAIT:.0f}s while booting agent {agent!r}; if it hangs, stop "
                    f"it (rabbitmqctl list_queues name owner_pid shows which)")
            if delay == _RETRY_FIRST:
                _log.info("RabbitMQ at %s: another process is booting agent %r; waiting for "
                          "it", self._address, agent)
            # No event tells another connection that an exclusive queue is gone: poll.
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MOST)

    async def booted(self, agent: str) -> bool:
        name = self._topology.boot_marker(agent)
        try:
            return await marked(self._connection(), name)
        except self._errors as exc:
            raise self._fail(f"reading the boot record {name!r}", exc) from exc

    async def note(self, agent: str) -> None:
        name = self._topology.boot_marker(agent)
        try:
            await mark(self._connection(), name)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise self._refused(name, agent, exc) from exc
        except self._errors as exc:
            raise self._fail(f"recording the boot record {name!r}", exc) from exc

    async def _channel(self, doing: str) -> AbstractChannel:
        try:
            return await self._connection().channel()
        except self._errors as exc:
            raise self._fail(doing, exc) from exc

    def _refused(self, name: str, agent: str, exc: BaseException) -> BrokerError:
        return BrokerError(
            f"RabbitMQ at {self._address}: user {self._user!r} may not declare {name!r}, "
            f"by which the processes hosting agent {agent!r} send its boot spore once per "
            f"deployment ({exc}); give the user what `sporeflow broker-permissions` prints")
