"""The broker's dead-letter queue at rest, for ``sporeflow dlq`` on an amqp organism.

``<exchange>.dead-letters`` holds what sporeflow dead-lettered (headers
``x-sporeflow-reason``, ``-error``, ``-agent``, ``-attempts``: ``AmqpBackend.dead_letter``)
and what RabbitMQ dead-lettered itself, told by its ``x-death`` header: a quorum queue's
delivery limit (``delivery_limit``, read as ``poison``: the agent's ``max_crashes``), a
per-message TTL (``expired``), a full queue's ``drop-head`` (``maxlen``) or a consumer's
reject (``rejected``).

RabbitMQ cannot read a queue without taking its messages. A :class:`DeadLetterQueue`
takes the letters the queue held when it opened, one ``basic.get`` at a time (memory
holds only the chosen ones), on one channel, acking none. A letter is acked only when it
is removed: purged, or replayed once the broker confirmed the replay. At the end all the
others are given back at once (``basic.nack`` of every outstanding tag, requeue); a
process that dies first gives them back too, as the broker requeues what a closed
channel held: no letter is lost. A classic queue puts a requeued message back where it
was, so their order survives; each comes back marked redelivered, which nothing here
reads. (So the dead-letter queue stays classic with quorum agents' queues: a quorum
queue counts each such read as a delivery.)

One reader at a time: the reader holds an exclusive queue ``<dead-letter queue>.reader``,
which no other connection may declare while it lives. A letter's number is its place in
the queue when read, 1 the oldest: removing letters renumbers the ones after them, a
spore's id never changes. The broker keeps no traceback, and no time for the letters
sporeflow dead-lettered: theirs is their spore's (``x-death`` has RabbitMQ's own).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from sporeflow.config import BrokerError, SporeError, redact_text, redact_url
from sporeflow.config.model import DEFAULT_MAX_CRASHES
from sporeflow.config.reasons import Reason, reason_of
from sporeflow.config.signing_keys import SigningSpec
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp
from sporeflow.pipeline.broker.amqp_inbound import AMQP_ERRORS, broker_failure
from sporeflow.pipeline.broker.backend import Backend, Topology
from sporeflow.pipeline.core.deadletters import DeadLetter, LetterChoice, StoredDeadLetter
from sporeflow.pipeline.core.replaying import ReplayBook
from sporeflow.steps import Spore
from sporeflow.steps.signing import signed, verify_origin

__all__ = ["DeadLetterQueue", "read_letter"]

_ERRORS = AMQP_ERRORS
_MAX_TEXT = 4000  # an error header is cut at 2000 when written; anyone may write one


class DeadLetterQueue:
    """``async with DeadLetterQueue(url, topology) as queue:`` read, replay, purge."""

    def __init__(self, url: str, topology: Topology, *, connect_timeout: float = 10.0) -> None:
        self._url = url
        self.address = redact_url(url)
        self.topology = topology
        self.name = topology.dead_letter_queue
        self._timeout = connect_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._held: dict[int, tuple[AbstractIncomingMessage, bool]] = {}  # number -> (it, readable)
        self._outstanding = False  # letters taken and neither removed nor given back

    async def __aenter__(self) -> DeadLetterQueue:
        try:
            self._connection = await aio_pika.connect(self._url, timeout=self._timeout)
            self._channel = await self._connection.channel(publisher_confirms=False)
            await self._channel.declare_queue(f"{self.name}.reader", exclusive=True,
                                              auto_delete=True)
        except aiormq.exceptions.ChannelLockedResource as exc:
            await self.close()
            raise BrokerError(f"another `sporeflow dlq` is reading {self.name!r} at "
                              f"{self.address}; try again once it is done") from exc
        except aiormq.exceptions.ChannelAccessRefused as exc:
            await self.close()
            raise self._refused(exc) from exc
        except _ERRORS as exc:
            await self.close()
            raise self._fail("connecting", exc) from exc
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def read(self, choice: LetterChoice) -> list[StoredDeadLetter]:
        """The letters ``choice`` matches, oldest first; held until removed or closed."""
        channel = self._require_channel()
        try:
            queue = await channel.declare_queue(self.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise BrokerError(f"RabbitMQ at {self.address} has no queue {self.name!r}: no "
                              f"process of {self.topology.exchange!r} has run there yet, so "
                              f"there are no dead letters") from exc
        except _ERRORS as exc:
            raise self._fail(f"reading {self.name!r}", exc) from exc
        # Those there now: a letter dead-lettered meanwhile goes after them, for next time.
        count = int(queue.declaration_result.message_count or 0)
        chosen: list[StoredDeadLetter] = []
        for number in range(1, count + 1):
            try:
                message = await queue.get(no_ack=False, fail=False)
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise self._refused(exc) from exc
            except _ERRORS as exc:
                raise self._fail(f"reading {self.name!r}", exc) from exc
            if message is None:
                break
            self._outstanding = True
            letter, readable = read_letter(message.headers or {}, message.body,
                                           message.timestamp, self.topology)
            stored = StoredDeadLetter(number, letter)
            if choice.picks(stored):
                chosen.append(stored)
                self._held[number] = (message, readable)
        return chosen

    async def purge(self, letters: Iterable[StoredDeadLetter]) -> int:
        """Remove ``letters`` for good; returns how many were removed."""
        removed = 0
        for stored in letters:
            await self._remove(stored)
            removed += 1
        return removed

    async def replay(self, letters: Iterable[StoredDeadLetter], backend: Backend,
                     keys: SigningSpec | None, book: ReplayBook) -> None:
        """Publish each of ``letters`` to the organism's exchange by its routing key (signed
        with ``keys``) through ``backend``, opened on this topology, and remove it once the
        broker confirmed it. Each on its own (``book``: the replay's rule, and what came
        of each): one that cannot be signed or published stays in the queue, told in
        ``book.refused``, and the others are replayed all the same. With ``keys``, only a
        letter whose spore carries a good signature is: anyone who may dead-letter may
        write a letter, and a replay signs it as the organism's own."""
        readable = self._readable(letters, book)
        proven = readable if keys is None else self._proven(readable, keys, book)
        for stored, spore in book.judged(proven):
            with book.delivering(stored) as attempt:
                await backend.publish(signed(spore, keys) if keys is not None else spore,
                                      routing_key=self.topology.routing_key(spore))
            if attempt.done:
                await self._remove(stored)

    def _readable(self, letters: Iterable[StoredDeadLetter],
                  book: ReplayBook) -> Iterator[StoredDeadLetter]:
        """``letters`` but those whose message holds no spore: nothing to publish."""
        for stored in letters:
            if self._held[stored.number][1]:
                yield stored
            else:
                book.refuse(stored, f"it holds no spore ({stored.letter.error[:200]})",
                            forever=True)

    def _proven(self, letters: Iterable[StoredDeadLetter], keys: SigningSpec,
                book: ReplayBook) -> Iterator[StoredDeadLetter]:
        """``letters`` but those whose spore's signature does not prove its sender (its age
        aside: a replay signs it afresh)."""
        for stored in letters:
            message, _ = self._held[stored.number]
            try:
                verify_origin(stored.letter.spore, keys, reply_queue=message.reply_to or "")
            except SporeError as exc:
                book.refuse(stored, f"its spore's signature does not prove its sender "
                                    f"({exc}), and a replay would sign it as this "
                                    f"organism's own", forever=True)
            else:
                yield stored

    async def close(self) -> None:
        """Give back every letter not removed, then disconnect."""
        channel, self._channel = self._channel, None
        connection, self._connection = self._connection, None
        self._held.clear()
        try:
            if channel is not None and self._outstanding and not channel.is_closed:
                # Tag 0 with multiple: every outstanding delivery of this channel, in order.
                underlay = await channel.get_underlay_channel()
                await underlay.basic_nack(0, multiple=True, requeue=True)
        except _ERRORS:
            pass  # closing the connection gives them back all the same
        finally:
            self._outstanding = False
            if connection is not None and not connection.is_closed:
                try:
                    await connection.close()
                except _ERRORS:
                    pass  # a broken connection: the broker requeues what it held

    async def _remove(self, stored: StoredDeadLetter) -> None:
        message, _ = self._held.pop(stored.number)
        try:
            await message.ack()
        except _ERRORS as exc:
            raise self._fail(f"removing dead letter {stored.number}", exc) from exc

    def _require_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise BrokerError(f"the dead-letter queue at {self.address} is not open")
        return self._channel

    def _refused(self, exc: BaseException) -> BrokerError:
        return BrokerError(
            f"RabbitMQ at {self.address} refused to let this user read {self.name!r} "
            f"({redact_text(str(exc))}): the users of sporeflow broker-permissions may not; "
            f"pass --backend with an administrator's URL")

    def _fail(self, doing: str, exc: BaseException) -> BrokerError:
        return broker_failure(self.address, doing, exc)


# -- a message of the dead-letter queue as a dead letter -------------------------------

_DEATHS = {"delivery_limit": Reason.POISON, "expired": Reason.EXPIRED}


def read_letter(headers: Mapping[str, Any], body: bytes, timestamp: datetime | None,
                topology: Topology) -> tuple[DeadLetter, bool]:
    """The dead letter a message of the dead-letter queue holds, and whether it holds a
    spore (one that does not is shown with a stand-in spore, and cannot be replayed).

    Untrusted: anyone allowed to dead-letter may have written it."""
    readable = True
    try:
        spore = spore_from_amqp(body, headers, max_spore_bytes=topology.max_spore_bytes)
    except SporeError as exc:
        readable = False
        spore = Spore(knowledge={"unreadable": _text(f"{type(exc).__name__}: {exc}")},
                      from_agent=_text(headers.get("from_agent"))[:80] or "?",
                      id=_text(headers.get("spore_id"))[:80] or "?",
                      created_at=_moment(_iso(headers.get("created_at")), datetime.now(UTC)))
        fallback: tuple[str, str] = (reason_of(exc), _text(f"{type(exc).__name__}: {exc}"))
    else:
        fallback = (Reason.INVALID, "the message came to the dead-letter queue with no reason")
    # No AMQP timestamp: the time of its spore, the same at every listing.
    at = _moment(timestamp, spore.created_at)
    reason = _text(headers.get("x-sporeflow-reason"))
    if reason:  # sporeflow's own
        attempts = headers.get("x-sporeflow-attempts")
        return DeadLetter(spore, reason, _text(headers.get("x-sporeflow-error")),
                          _text(headers.get("x-sporeflow-agent")) or None,
                          attempts if type(attempts) is int else 0, at=at), readable
    death = _last_death(headers)
    if death is None:  # published to the dead-letter exchange by hand
        return DeadLetter(spore, fallback[0], fallback[1], at=at), readable
    cause, queue = _text(death.get("reason")), _text(death.get("queue"))
    head = f"{topology.exchange}."
    agent = queue[len(head):] if queue.startswith(head) else None
    limit = topology.max_crashes.get(agent or "", DEFAULT_MAX_CRASHES)
    error = _death_error(cause, queue, agent, limit)
    return DeadLetter(spore, _DEATHS.get(cause, Reason.BROKER_ERROR), error, agent,
                      limit if cause == "delivery_limit" else 0,
                      at=_moment(death.get("time"), at)), readable


def _death_error(cause: str, queue: str, agent: str | None, limit: int) -> str:
    if cause == "delivery_limit":
        return (f"PoisonError: RabbitMQ dead-lettered it from quorum queue {queue!r} after "
                f"{limit} deliveries given back unfinished (a consumer died, stopped or "
                f"lost its connection while holding it); agents.{agent or 'X'}.max_crashes")
    if cause == "expired":
        return f"it expired in queue {queue!r} before a consumer took it"
    if cause == "maxlen":
        return (f"queue {queue!r} was full (organism.broker.max_length, overflow drop-head): "
                f"RabbitMQ dropped it, the oldest, into the dead letters")
    if cause == "rejected":
        return f"a consumer of queue {queue!r} rejected it without requeueing it"
    return f"RabbitMQ dead-lettered it from queue {queue!r} ({cause or 'no reason given'})"


def _last_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The latest entry of ``x-death`` (RabbitMQ puts it first)."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    return value[:_MAX_TEXT] if isinstance(value, str) else ""


def _moment(value: Any, otherwise: datetime) -> datetime:
    """A header's or property's time (a naive one is UTC, as AMQP times are)."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return otherwise


def _iso(value: Any) -> datetime | None:
    """An ISO time written in a header (None: none that reads as one)."""
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
