"""Batched acks of a consumer channel (``broker/ack_window.py``): only settled deliveries
are ever acked, several with one frame, and a slow one holds back no other."""

from __future__ import annotations

import asyncio
import gc
import weakref

from sporeflow.pipeline.broker.ack_window import AckWindow, AckWindows


class Channel:
    """Records the ack frames sent, as aiormq's channel would send them."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bool]] = []

    async def basic_ack(self, tag: int, *, multiple: bool, wait: bool = True) -> None:
        self.frames.append((tag, multiple))


def acked(frames: list[tuple[int, bool]], delivered: range) -> set[int]:
    """The tags those frames ack, as RabbitMQ reads them."""
    done: set[int] = set()
    for tag, multiple in frames:
        done |= {t for t in delivered if t <= tag} if multiple else {tag}
    return done


async def turn() -> None:
    for _ in range(3):  # the flush is called soon, and its sending task runs after it
        await asyncio.sleep(0)


async def test_deliveries_settled_in_one_turn_are_acked_with_one_frame() -> None:
    channel = Channel()
    window = AckWindow(channel, on_error=lambda exc: None)
    for tag in range(1, 9):
        window.delivered(tag)
    for tag in (2, 1, 3, 5, 4):  # out of order within the turn
        window.settled(tag, ack=True)
    await turn()
    assert channel.frames == [(5, True)]
    assert acked(channel.frames, range(1, 9)) == {1, 2, 3, 4, 5}


async def test_a_slow_delivery_is_never_acked_and_holds_back_no_other() -> None:
    channel = Channel()
    window = AckWindow(channel, on_error=lambda exc: None)
    for tag in range(1, 7):
        window.delivered(tag)
    window.settled(1, ack=True)
    window.settled(3, ack=True)  # 2 is still being handled
    window.settled(4, ack=True)
    await turn()
    assert acked(channel.frames, range(1, 7)) == {1, 3, 4}
    assert (1, True) in channel.frames
    window.settled(2, ack=True)
    window.settled(5, ack=True)
    await turn()
    assert acked(channel.frames, range(1, 7)) == {1, 2, 3, 4, 5}  # 6 is not done


async def test_a_nacked_delivery_is_skipped_and_never_acked() -> None:
    channel = Channel()
    window = AckWindow(channel, on_error=lambda exc: None)
    for tag in range(1, 5):
        window.delivered(tag)
    window.settled(1, ack=False)  # nacked by the caller: RabbitMQ forgot it
    await turn()
    assert channel.frames == []  # an ack of a forgotten tag would close the channel
    window.settled(2, ack=True)
    window.settled(3, ack=False)
    await turn()
    assert channel.frames == [(2, True)]


async def test_a_failed_send_is_reported_not_raised() -> None:
    errors: list[BaseException] = []

    class Gone(Channel):
        async def basic_ack(self, tag: int, *, multiple: bool, wait: bool = True) -> None:
            raise ConnectionError("the connection is gone")

    channel = Gone()  # held, as a delivery in hand holds its channel
    window = AckWindow(channel, on_error=errors.append)
    window.delivered(1)
    window.settled(1, ack=True)
    await turn()
    assert [str(error) for error in errors] == ["the connection is gone"]


async def test_a_channel_gone_takes_its_window_with_it() -> None:
    """A reconnect makes a new channel: the old one, and its window, are not kept."""
    windows = AckWindows(lambda exc: None)
    channel = Channel()
    gone = weakref.ref(channel)
    window = windows.of(channel, 1)
    window.settled(1, ack=True)
    await turn()
    assert channel.frames == [(1, True)]
    del channel, window
    gc.collect()
    assert gone() is None


class Broker:
    """A channel whose first ack frame waits (aiormq's write queue full, under load),
    refusing an ack of a tag not outstanding as RabbitMQ does (``unknown delivery tag``,
    which closes the channel: every unacked delivery comes again)."""

    def __init__(self, delivered: range) -> None:
        self.outstanding = set(delivered)
        self.unknown: list[int] = []
        self.gate = asyncio.Event()
        self.calls = 0

    async def basic_ack(self, tag: int, *, multiple: bool, wait: bool = True) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        if tag not in self.outstanding:
            self.unknown.append(tag)
        self.outstanding -= {t for t in self.outstanding if t <= tag} if multiple else {tag}


async def test_a_flush_held_up_writing_is_not_overtaken_by_the_next() -> None:
    broker = Broker(range(1, 5))
    window = AckWindow(broker, on_error=lambda exc: None)
    for tag in range(1, 5):
        window.delivered(tag)
    window.settled(1, ack=True)
    await turn()  # the first flush waits to write ack(1, multiple)
    window.settled(2, ack=True)
    window.settled(3, ack=True)
    await turn()
    broker.gate.set()
    await turn()
    assert broker.unknown == []
    assert broker.outstanding == {4}
