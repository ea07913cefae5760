"""A deployment's boot record on RabbitMQ (the rule is ``broker.boots``'s).

    exchange <exchange>.booted:<agent>   durable, bound to nothing: it exists once the
                                         deployment sent the agent's boot spore
    queue <exchange>.booting:<agent>     exclusive: held by the one process booting the
                                         agent; RabbitMQ deletes it with the connection
                                         holding it, so a killed process lets go at once

A second process declaring the lock is refused (RESOURCE_LOCKED) and tries again
until the lock is free (``amqp_lock``). A process needs the configure permission on both names
(declare, delete) and nothing else: whether the marker exists is asked by a passive
declaration, which needs none (``broker.permissions`` grants them to the processes
hosting the agent). Part of the RabbitMQ backend: ``amqp_backend`` hands it its
connection and how it translates errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import aiormq
from aio_pika.abc import AbstractConnection

from sporeflow.config import BrokerError
from sporeflow.pipeline.broker.amqp_lock import holding as lock
from sporeflow.pipeline.broker.amqp_marks import mark, marked
from sporeflow.pipeline.broker.backend import Topology

__all__ = ["AmqpBootRecord"]


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
        async with lock(self._connection, name, doing=f"booting agent {agent!r}",
                        address=self._address, fail=self._fail, errors=self._errors,
                        refused=lambda exc: self._refused(name, agent, exc)):
            yield

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

    def _refused(self, name: str, agent: str, exc: BaseException) -> BrokerError:
        return BrokerError(
            f"RabbitMQ at {self._address}: user {self._user!r} may not declare {name!r}, "
            f"by which the processes hosting agent {agent!r} send its boot spore once per "
            f"deployment ({exc}); give the user what `sporeflow broker-permissions` prints")
