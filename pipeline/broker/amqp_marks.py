"""Marks on RabbitMQ: durable exchanges bound to nothing, whose existence is a fact
every process of a deployment can read without permission (a passive declaration):
the organism signs its spores (``<exchange>.signed``), an agent's boot spore was sent
(``<exchange>.booted:<agent>``).

Each check or mark takes a one-off channel: a passive declaration of a missing exchange
closes its channel.
"""

from __future__ import annotations

import contextlib

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

__all__ = ["mark", "marked"]


async def marked(connection: AbstractConnection, name: str) -> bool:
    """True when the exchange ``name`` exists."""
    channel = await connection.channel()
    try:
        await channel.get_exchange(name, ensure=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await _close(channel)


async def mark(connection: AbstractConnection, name: str) -> None:
    """Declare the exchange ``name`` (idempotent)."""
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
    finally:
        await _close(channel)


async def _close(channel: aio_pika.abc.AbstractChannel) -> None:
    if not channel.is_closed:  # a refusal closed it already
        with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError):
            await channel.close()
