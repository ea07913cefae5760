"""Acks of one consumer channel, sent in batches: :class:`AckWindow`.

An ack frame per delivery costs the consumer a task, a frame and a system call, and the
broker a frame to parse. Deliveries settled in the same turn of the loop are acked with
one ``basic.ack(multiple=True)`` for the highest delivery tag below which every
delivery of the channel is settled: nothing still being handled is ever acked, so
at-least-once holds (a crash leaves those unacked, as before).

A delivery settled behind one still in hand (a slow handler) is acked on its own in
that same flush, so a long handler never holds back the acks, and so the prefetch
room, of the deliveries after it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["AckWindow", "AckWindows"]


class AckWindow:
    """The deliveries of one channel, from delivery to ack."""

    __slots__ = ("_acked", "_ahead", "_channel", "_done", "_flushing", "_on_error",
                 "_open", "_up_to")

    _sending: set[asyncio.Task[None]] = set()  # a reference to each flush, of any window

    def __init__(self, channel: Any, on_error: Callable[[BaseException], None]) -> None:
        # aiormq's channel (basic_ack(tag, multiple=...)), weakly: AckWindows keys its
        # windows by their channel weakly, and a window holding it would keep both for ever.
        # A delivery in hand holds its channel; once it is gone its deliveries come again.
        self._channel = weakref.ref(channel)
        self._on_error = on_error
        self._open: deque[int] = deque()  # delivered, in order, not yet acked or nacked
        self._done: set[int] = set()  # settled here, behind an open one
        self._acked: set[int] = set()  # of those, the ones to ack (the rest were nacked)
        self._ahead: list[int] = []  # acked behind an open one: sent on their own
        self._up_to = 0  # the highest tag to ack with multiple=True at the next flush
        self._flushing = False

    def delivered(self, tag: int) -> None:
        self._open.append(tag)

    def settled(self, tag: int, *, ack: bool) -> None:
        """``tag`` is done: to be acked (``ack``), or nacked already by the caller."""
        opened = self._open
        if opened and opened[0] == tag:
            opened.popleft()
            if ack:
                self._up_to = tag
            self._advance()
        else:
            self._done.add(tag)
            if ack:
                self._acked.add(tag)
                self._ahead.append(tag)
        if (self._up_to or self._ahead) and not self._flushing:
            self._flushing = True  # after what else settles in this turn of the loop:
            self._sending.add(asyncio.get_running_loop().create_task(self._flush()))

    def _advance(self) -> None:
        opened, done = self._open, self._done
        while opened and opened[0] in done:
            tag = opened.popleft()
            done.discard(tag)
            if tag in self._acked:
                self._acked.discard(tag)
                self._up_to = tag

    async def _flush(self) -> None:
        # One flush at a time, until nothing is left: a frame may wait for room in the
        # connection's write queue, and a second flush's ack(multiple) written before the
        # first's would ack its tags, so the first's then names unknown tags: RabbitMQ
        # closes the channel, and every delivery still in hand comes again.
        try:
            while self._up_to or self._ahead:
                await self._send()
        except Exception as exc:  # the channel or connection is gone: they come again
            self._on_error(exc)
        finally:
            self._flushing = False
            self._sending.discard(asyncio.current_task())

    async def _send(self) -> None:
        up_to, self._up_to = self._up_to, 0
        # Acked on their own: the ones still behind an open delivery (none is in the range
        # the multiple ack covers, which ends below the first open one).
        ahead = [tag for tag in self._ahead if tag in self._acked and tag > up_to]
        self._ahead = []
        for tag in ahead:
            self._acked.discard(tag)
        frames = [(up_to, True)] if up_to else []
        frames += [(tag, False) for tag in ahead]
        channel = self._channel()
        for tag, multiple in frames:  # queued for the connection's writer: not awaited
            if channel is not None:
                await channel.basic_ack(tag, multiple=multiple, wait=False)


class AckWindows:
    """The ack window of each consuming channel (a new one after a reconnect: delivery
    tags start again on a new channel), forgotten with its channel."""

    def __init__(self, failed: Callable[[BaseException], None]) -> None:
        self._failed = failed
        self._windows: weakref.WeakKeyDictionary[Any, AckWindow] = weakref.WeakKeyDictionary()

    def of(self, channel: Any, delivery_tag: int) -> AckWindow:
        """The window of ``channel``, told of the delivery ``delivery_tag``."""
        window = self._windows.get(channel)
        if window is None:
            window = self._windows[channel] = AckWindow(channel, self._failed)
        window.delivered(delivery_tag)
        return window
