"""A message a RabbitMQ consumer received, decoded, to be settled once: the ``Inbound``
of ``amqp_backend`` (aiormq's message, as ``amqp_consumer`` receives it); and the errors
aio-pika and aiormq raise, as :class:`BrokerError`.

A message that came on a connection since lost can no longer be acked or rejected: the
broker gave it back to its queue when the connection went, and delivers it again (the
ack of an old delivery tag on the new connection would settle another message). Such a
message raises :class:`Requeued` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiormq
from pamqp.commands import Basic

from sporeflow.config import BrokerError, SporeError, SporeflowError, redact_text
from sporeflow.config.reasons import reason_of
from sporeflow.pipeline.broker.ack_window import AckWindow
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp
from sporeflow.pipeline.broker.backend import BackendStatistics
from sporeflow.pipeline.broker.link import Link, Requeued
from sporeflow.steps import Spore

__all__ = ["AMQP_ERRORS", "AmqpInbound", "broker_failure"]

# What aio-pika and aiormq raise; each becomes a BrokerError, the URL's password masked.
AMQP_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
               ConnectionError, OSError, asyncio.TimeoutError, RuntimeError)


def broker_failure(address: str, doing: str, exc: BaseException) -> BrokerError:
    detail = redact_text(f"{type(exc).__name__}: {exc}")
    return BrokerError(f"RabbitMQ at {address}: {doing} failed: {detail}")


class AmqpInbound:
    """One delivered message, decoded; its ack and nack raise only :class:`BrokerError`."""

    __slots__ = ("raw", "properties", "spore", "rejection", "generation", "_link", "_stats",
                 "_address", "_window")

    def __init__(self, raw: aiormq.abc.DeliveredMessage, *, link: Link,
                 stats: BackendStatistics, address: str, max_spore_bytes: int | None,
                 window: AckWindow | None = None) -> None:
        self.raw = raw
        self.properties: Basic.Properties = raw.header.properties
        self._window = window  # its channel's batched acks (None: acked on its own)
        self._link, self._stats, self._address = link, stats, address
        self.generation = link.generation  # of the connection it came on
        self.spore: Spore | None = None
        self.rejection: tuple[str, SporeflowError] | None = None
        headers: Mapping[str, Any] = self.properties.headers or {}
        try:  # a body too large for a spore is refused unread
            self.spore = spore_from_amqp(raw.body, headers, max_spore_bytes=max_spore_bytes)
        except SporeError as exc:
            self.rejection = (reason_of(exc), exc)

    @property
    def redelivered(self) -> bool:
        return bool(self.raw.redelivered)

    @property
    def reply_queue(self) -> str | None:
        return self.properties.reply_to or None

    @property
    def user_id(self) -> str | None:
        return self.properties.user_id or None

    @property
    def given_back(self) -> bool:
        return self.generation != self._link.generation

    def check_current(self, doing: str) -> None:
        """Raise :class:`Requeued` if its connection was lost: the broker gave it back."""
        if self.given_back:
            raise Requeued(f"RabbitMQ at {self._address}: {doing} a message of a lost "
                           f"connection: the broker gave it back to its queue, and delivers "
                           f"it again")

    def ack_nowait(self) -> bool:
        window = self._window
        if window is None:
            return False
        self.check_current("acknowledging")
        window.settled(self.raw.delivery_tag or 0, ack=True)
        self._stats.acked += 1
        return True

    async def ack(self) -> None:
        if self.ack_nowait():
            return
        self.check_current("acknowledging")
        try:
            await self.raw.channel.basic_ack(self.raw.delivery_tag or 0)
        except AMQP_ERRORS as exc:
            raise broker_failure(self._address, "acknowledging a message", exc) from exc
        self._stats.acked += 1

    async def nack(self, *, requeue: bool) -> None:
        self.check_current("rejecting")
        try:
            await self.raw.channel.basic_reject(self.raw.delivery_tag or 0, requeue=requeue)
        except AMQP_ERRORS as exc:
            raise broker_failure(self._address, "rejecting a message", exc) from exc
        finally:
            if self._window is not None:  # settled either way: acks behind it may go
                self._window.settled(self.raw.delivery_tag or 0, ack=False)
        self._stats.nacked += 1
