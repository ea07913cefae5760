"""The record of an organism's declared bindings on RabbitMQ (the rule is ``leftovers``'s).

    queue <exchange>.declared:topology   durable: the record, a persistent JSON message
                                         (``leftovers.encode``)
    queue <exchange>.declaring:topology  exclusive: held by the one process declaring the
                                         topology just now (``amqp_lock``); processes
                                         starting together take their turns

Holding the lock, a process reads every message of the record (``basic.get``, unacked),
unbinds what the file no longer declares, publishes the new record and, once the
broker confirmed it, acks those it read. One that dies before publishing leaves the
old record (RabbitMQ gives it back); one that dies after leaves both, read next time
as one (``leftovers.merged``): nothing bound is ever forgotten. After a reconnection
aio-pika declares again what this process declared at its start, whatever another
process's newer file took away meanwhile: ``remember`` adds it to the record (taking
nothing away), so that the next declaration of the newer file takes it away again.
A ``:`` is in no
agent's name: these never meet an agent's queue. A user that may not declare them
(a per-process user declares nothing) leaves this to ``sporeflow broker-declare``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from sporeflow.config import BrokerError
from sporeflow.pipeline.broker.amqp_lock import holding as lock
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.leftovers import Leftovers, Plan, Record, decode, encode, merged

__all__ = ["deployment_queues", "ready_count", "remember", "take_away", "tidy"]

_MOST_READ = 100  # messages of the record read at most (a few, unless written by others)
_log = logging.getLogger("sporeflow.broker.amqp")
T = TypeVar("T")


class _Refused(Exception):
    pass


async def tidy(connection: Callable[[], AbstractConnection], topology: Topology, *,
               address: str, vhost: str, fail: Callable[[str, BaseException], BrokerError],
               errors: tuple[type[BaseException], ...]) -> Leftovers:
    """Take away the bindings and queues of ``topology``'s agents that it no longer
    declares (its own were declared just before), and record what it declares."""
    try:
        return await _locked(connection, topology, f"declaring the topology of "
                             f"{topology.exchange!r}", address, fail, errors,
                             partial(_tidy, connection=connection, topology=topology,
                                     vhost=vhost))
    except (_Refused, aiormq.exceptions.ChannelAccessRefused) as exc:
        _log.warning("RabbitMQ at %s: this user may declare the queues of %r but not its "
                     "record %r (%s): bindings the file no longer declares are left; run "
                     "`sporeflow broker-declare ORGANISM` as an administrator to take them "
                     "away", address, topology.exchange, topology.record_queue, exc.__cause__
                     or exc)
        return Leftovers(vhost=vhost)


async def remember(connection: Callable[[], AbstractConnection], topology: Topology, *,
                   address: str, fail: Callable[[str, BaseException], BrokerError],
                   errors: tuple[type[BaseException], ...]) -> None:
    """Add what ``topology`` binds to the record, taking nothing away: after a
    reconnection, which bound it all again (see the module doc)."""
    async def add(channel: AbstractChannel) -> None:
        read = await _read(await channel.declare_queue(topology.record_queue, durable=True))
        records = [r for r in (decode(m.body) for m in read) if r is not None]
        await _write(channel, topology, merged([*records, topology.declared()]), read)

    try:
        await _locked(connection, topology, f"recording the topology of "
                      f"{topology.exchange!r}", address, fail, errors, add)
    except (_Refused, aiormq.exceptions.ChannelAccessRefused):
        return  # this user may not write the record: tidy() told so at the start


async def _locked(connection: Callable[[], AbstractConnection], topology: Topology,
                  doing: str, address: str, fail: Callable[[str, BaseException], BrokerError],
                  errors: tuple[type[BaseException], ...],
                  work: Callable[[AbstractChannel], Awaitable[T]]) -> T:
    """``work`` on a channel of its own, holding the declaring lock (one process at a
    time); raise ``_Refused`` for a user that may not take the lock."""
    async with lock(connection, topology.declaring_lock, doing=doing, address=address,
                    fail=fail, errors=errors, refused=_Refused):
        channel = await connection().channel()
        try:
            return await work(channel)
        finally:
            if not channel.is_closed:
                await channel.close()


async def deployment_queues(connection: AbstractConnection, topology: Topology, *,
                            address: str, fail: Callable[[str, BaseException], BrokerError],
                            errors: tuple[type[BaseException], ...]) -> list[str]:
    """The agents' queues of ``topology``'s deployment: those it declares and those its
    record lists (the last declaration's, and those it kept unbound for the spores they
    held), the record read holding the declaring lock (a process declaring meanwhile
    would find it taken) and given back."""
    async def read(channel: AbstractChannel) -> list[str]:
        try:
            record = await channel.declare_queue(topology.record_queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        records = [r for r in (decode(m.body) for m in await _read(record)) if r is not None]
        prefix = f"{topology.exchange}."  # never another organism's (names hold no '.')
        return [q for q in merged(records) if q.startswith(prefix) and ":" not in q]

    try:
        recorded = await _locked(lambda: connection, topology,
                                 "reading the declaration record", address, fail, errors, read)
    except _Refused:
        raise BrokerError(f"RabbitMQ at {address}: this user may not take the lock "
                          f"{topology.declaring_lock!r} to read the declaration record; "
                          f"use an administrator's URL (--backend)") from None
    return sorted({*topology.declared(), *recorded})


async def take_away(connection: AbstractConnection, topology: Topology, *, unused_only: bool,
                    address: str, fail: Callable[[str, BaseException], BrokerError],
                    errors: tuple[type[BaseException], ...]) -> None:
    """Delete what the declarations of ``topology`` made: its agents' queues, those the
    record kept for agents removed since, the dead letters, the record, the exchanges,
    the signing mark and every such agent's boot record. ``unused_only``: refuse
    (:class:`BrokerError`) while a process consumes one, before anything is deleted."""
    agent_queues = await deployment_queues(connection, topology, address=address, fail=fail,
                                           errors=errors)
    agents = [queue[len(topology.exchange) + 1:] for queue in agent_queues]
    queues = [*agent_queues, topology.dead_letter_queue]
    if unused_only:
        for queue in queues:
            counts = await queue_counts(lambda: connection, queue)
            if counts is not None and counts[1]:
                raise BrokerError(f"queue {queue!r} at {address} is consumed by a running "
                                  f"process: stop the organism's processes, then delete")
    channel = await connection.channel()
    for queue in queues:
        await channel.queue_delete(queue)
    await channel.queue_delete(topology.record_queue)
    for exchange in (topology.exchange, topology.dead_letter_exchange, topology.signing_marker,
                     *map(topology.boot_marker, agents)):  # boot records too
        await channel.exchange_delete(exchange)
    await channel.close()


async def _read(record: AbstractQueue) -> list[AbstractIncomingMessage]:
    read: list[AbstractIncomingMessage] = []
    while len(read) < _MOST_READ:
        message = await record.get(no_ack=False, fail=False)
        if message is None:
            break
        read.append(message)
    return read


async def _write(channel: AbstractChannel, topology: Topology, record: Record,
                 read: list[AbstractIncomingMessage]) -> None:
    """Publish ``record``, then ack those ``read``: the new record is the broker's."""
    await channel.default_exchange.publish(
        aio_pika.Message(encode(record), content_type="application/json",
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=topology.record_queue)
    for message in read:
        await message.ack()


async def _tidy(channel: AbstractChannel, *, connection: Callable[[], AbstractConnection],
                topology: Topology, vhost: str) -> Leftovers:
    record = await channel.declare_queue(topology.record_queue, durable=True)
    read = await _read(record)
    records = [r for r in (decode(m.body) for m in read) if r is not None]
    now = topology.declared()
    before: Record = merged(records) if records else topology.guessed()
    counts = {queue: await queue_counts(connection, queue) for queue in Plan.asked(now, before)}
    plan = Plan.of(now, before, counts)
    underlay = await channel.get_underlay_channel()
    for queue, pattern in plan.unbind:
        await underlay.queue_unbind(queue=queue, exchange=topology.exchange,
                                    routing_key=pattern)
    deleted: list[str] = []
    kept: list[tuple[str, int, int]] = []
    for queue in plan.orphans:
        messages, consumers = counts[queue] or (0, 0)
        if messages == 0 and consumers == 0 and await _delete_if_idle(connection, queue):
            deleted.append(queue)
        else:
            kept.append((queue, messages, consumers))
    await _write(channel, topology, plan.record(now, (queue for queue, _, _ in kept)), read)
    return Leftovers(plan.unbind, tuple(deleted), tuple(kept), vhost, guessed=not records,
                     left=tuple(plan.left))


async def queue_counts(connection: Callable[[], AbstractConnection],
                  queue: str) -> tuple[int, int] | None:
    """``queue``'s messages and consumers; None when it does not exist (a passive
    declaration of a missing queue closes its channel: a channel of its own)."""
    channel = await connection().channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()
    result = declared.declaration_result
    return result.message_count or 0, result.consumer_count or 0


async def ready_count(connection: Callable[[], AbstractConnection], queue: str,
                      errors: tuple[type[BaseException], ...]) -> int | None:
    """``queue``'s messages no consumer has taken; None when not known (the connection is
    lost: the caller asks again later). A queue that is gone holds none: what it held went
    with it."""
    unknown: tuple[type[BaseException], ...] = (*errors, BrokerError)
    try:
        counts = await queue_counts(connection, queue)
    except unknown:
        return None
    return counts[0] if counts is not None else 0


async def _delete_if_idle(connection: Callable[[], AbstractConnection], queue: str) -> bool:
    """Delete ``queue`` if it is still empty and unused (the broker checks, at once)."""
    channel = await connection().channel()
    try:
        await channel.queue_delete(queue, if_unused=True, if_empty=True)
        return True
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False  # a message or a consumer came meanwhile: kept
    finally:
        if not channel.is_closed:
            await channel.close()
