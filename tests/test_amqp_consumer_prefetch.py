"""A consumer's new prefetch (``broker/amqp_consumer.py``), against a stand-in for
aio-pika's robust channel: a reload's value is never lost to a second reload made while
the first one's still waits for the broker."""

from __future__ import annotations

import asyncio
from typing import Any

from sporeflow.pipeline.broker.amqp_consumer import Consumer
from sporeflow.pipeline.broker.link import Link


class Raw:
    """aiormq's channel, as far as the consumer uses it."""

    def __init__(self) -> None:
        self.consumers: dict[str, Any] = {}
        self.on_consumer_cancel_callbacks: set[Any] = set()

    async def basic_consume(self, queue: str, callback: Any, *, consumer_tag: str,
                            **_: Any) -> None:
        self.consumers[consumer_tag] = callback

    async def basic_cancel(self, tag: str) -> None:
        self.consumers.pop(tag, None)


class Channel:
    """A robust channel whose ``set_qos`` waits for the broker (``back``) and, like
    aio-pika's, keeps the value for its restores before it asks the broker."""

    def __init__(self) -> None:
        self.raw = Raw()
        self.reopen_callbacks: set[Any] = set()
        self.back = asyncio.Event()
        self.lost_once = True  # the first answer after the outage: the connection lost again
        self.kept = 0  # what aio-pika would set again after a reconnection
        self.asked: list[int] = []
        self.changed = asyncio.Event()

    async def get_underlay_channel(self) -> Raw:
        return self.raw

    async def set_qos(self, *, prefetch_count: int) -> None:
        await self.back.wait()
        self.kept = prefetch_count
        self.asked.append(prefetch_count)
        self.changed.set()
        if self.lost_once:
            self.lost_once = False
            raise ConnectionError("connection lost")


async def test_a_second_reload_during_an_outage_is_applied_though_the_first_was_cut_off(
        ) -> None:
    channel = Channel()
    consumer = Consumer(channel, "reviewer2.q", lambda message: None,  # type: ignore[arg-type]
                        link=Link("reviewer2"), address="reviewer2")
    await consumer.start()
    try:
        consumer.prefetch(4)  # a reload while the broker is away: waits for it
        await asyncio.sleep(0)
        consumer.prefetch(8)  # a second reload, still away
        channel.back.set()  # back, and lost again as the first value is asked
        async with asyncio.timeout(5):
            while channel.kept != 8:
                channel.changed.clear()
                await channel.changed.wait()
        assert channel.asked[-1] == 8
    finally:
        consumer.stop()
