"""A broker connection across outages, without a broker: the pauses between attempts to
reconnect (``Backoff``), the connection's states (``Link``), and publishing through them
(``Publisher``). Timers run on the virtual clock; RabbitMQ itself is in
tests/test_broker_outage.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sporeflow.config import BrokerError, BrokerSpec
from sporeflow.pipeline.broker.link import Backoff, Disconnected, Link
from sporeflow.pipeline.broker.memory_backend import MemoryBackend
from sporeflow.pipeline.broker.publisher import Publisher
from sporeflow.steps import Spore

from .conftest import VirtualClockLoop


def test_pauses_double_between_half_and_all_of_their_length_up_to_the_cap() -> None:
    now = [0.0]
    draws = iter([0.0, 1.0, 0.5, 1.0, 1.0, 0.0])
    backoff = Backoff(1.0, 4.0, clock=lambda: now[0], draw=lambda: next(draws))
    pauses = []
    for _ in range(5):
        pauses.append(backoff.pause())
        now[0] += pauses[-1]
    assert pauses == [0.5, 2.0, 3.0, 4.0, 4.0]  # 1, 2, 4, 4, 4 with jitter
    backoff.reset()
    assert backoff.pause() == 0.5  # from the base again: the last draw, 0.0, halves it


def test_reading_a_pause_twice_gives_what_is_left_of_it_not_a_new_one() -> None:
    now = [10.0]
    backoff = Backoff(2.0, clock=lambda: now[0], draw=lambda: 1.0)
    assert backoff.pause() == 2.0
    now[0] += 0.5
    assert backoff.pause() == 1.5  # aio-pika logs the pause, then sleeps it
    assert backoff.attempt == 1
    now[0] += 1.5
    assert backoff.pause() == 4.0
    assert backoff.cap == 40.0  # 20 times the base unless given


def test_a_link_logs_each_change_once_and_gives_up_after_its_limit(
        virtual: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("amqp://host/", clock=loop.time)
        link.give_up_after = 10.0
        told: list[BrokerError] = []
        link.on_give_up.append(told.append)
        link.connected()
        link.lost(ConnectionResetError("reset by peer"))
        assert (link.state, link.generation, link.up) == ("disconnected", 1, False)
        for _ in range(5):
            link.lost(ConnectionRefusedError("refused"))
        waiter = asyncio.ensure_future(link.wait_up())
        await asyncio.sleep(9.9)
        assert not waiter.done()
        await asyncio.sleep(0.2)
        with pytest.raises(BrokerError, match=r"gave up .* disconnected for 10\.0 s, 5 "
                                              r"attempt\(s\) .*ConnectionRefusedError"):
            await waiter
        assert link.state == "gave up"
        assert len(told) == 1
        link.lost(None)  # ended: nothing changes, nothing is logged
        link.connected()
        assert link.state == "gave up"

    with caplog.at_level(logging.WARNING, logger="sporeflow.broker.link"):
        virtual(main)
    lines = [record.getMessage() for record in caplog.records]
    assert sum("connection lost (ConnectionResetError" in line for line in lines) == 1
    attempts = [line.split("attempt ")[1].split()[0] for line in lines if "attempt " in line
                and "failed after" in line]
    assert attempts == ["1", "2", "4"]  # of 5: a falling rate
    assert sum("gave up on RabbitMQ at amqp://host/" in line for line in lines) == 1


def test_a_reconnection_in_time_counts_and_cancels_giving_up(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("amqp://host/", clock=loop.time)
        link.give_up_after = 10.0
        link.connected()
        link.lost(None)
        waiter = asyncio.ensure_future(link.wait_up())
        await asyncio.sleep(5)
        assert not waiter.done()
        link.connected()
        await waiter
        await asyncio.sleep(60)  # past the limit: it was cancelled
        assert (link.state, link.reconnects, link.down_for) == ("connected", 1, 0.0)
        renewed = link.renewed()
        assert (renewed.state, renewed.give_up_after, renewed.reconnects) == (
            "connecting", 10.0, 0)

    virtual(main)


def test_the_first_connection_follows_the_rule_of_a_reconnection_and_gives_up_in_time(
        virtual: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("amqp://u:***@host/", clock=loop.time)
        link.give_up_after = 10.0
        told: list[BrokerError] = []
        link.on_give_up.append(told.append)
        link.connecting()
        for _ in range(5):  # the broker is not there yet
            link.lost(ConnectionRefusedError("refused"))
        assert (link.state, link.attempts, link.generation) == ("connecting", 5, 0)
        waiter = asyncio.ensure_future(link.wait_up())
        await asyncio.sleep(9.9)
        assert not waiter.done()
        await asyncio.sleep(0.2)
        with pytest.raises(BrokerError, match=r"gave up on RabbitMQ at amqp://u:\*\*\*@host/: "
                                              r"could not connect for 10\.0 s since starting, 5 "
                                              r"attempt\(s\) .*ConnectionRefusedError.* "
                                              r"organism\.broker\.give_up_after is 10 s"):
            await waiter
        assert (link.state, len(told)) == ("gave up", 1)

    with caplog.at_level(logging.WARNING, logger="sporeflow.broker.link"):
        virtual(main)
    lines = [record.getMessage() for record in caplog.records]
    attempts = [line.split("attempt ")[1].split()[0] for line in lines
                if "connecting, attempt " in line]
    assert attempts == ["1", "2", "4"]  # of 5: a falling rate, as after a loss
    assert sum("gave up on RabbitMQ" in line for line in lines) == 1


def test_a_first_connection_in_time_is_logged_once_and_cancels_giving_up(
        virtual: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("amqp://host/", clock=loop.time)
        link.give_up_after = 10.0
        link.connecting()
        link.lost(ConnectionRefusedError("refused"))
        waiter = asyncio.ensure_future(link.wait_up())
        await asyncio.sleep(5)
        link.connected()
        await waiter
        await asyncio.sleep(60)  # past the limit: it was cancelled
        assert (link.state, link.reconnects, link.attempts) == ("connected", 0, 0)

    with caplog.at_level(logging.WARNING, logger="sporeflow.broker.link"):
        virtual(main)
    lines = [record.getMessage() for record in caplog.records]
    assert sum("connected after 5.0 s (1 failed attempt(s))" in line for line in lines) == 1


def test_a_link_that_may_not_wait_gives_up_at_the_first_failed_attempt(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("amqp://host/", clock=loop.time)  # a one-off command's: give_up_after 0
        attempt: asyncio.Future[None] = loop.create_future()
        connecting = asyncio.ensure_future(link.unless_ended(attempt))
        link.connecting()
        await asyncio.sleep(0)
        assert not connecting.done()  # no attempt failed yet
        link.lost(ConnectionRefusedError("refused"))
        with pytest.raises(BrokerError, match=r"cannot reach RabbitMQ at amqp://host/: "
                                              r"ConnectionRefusedError: refused; is the broker"):
            await connecting
        assert attempt.cancelled()  # the attempt does not outlive the link

    virtual(main)


@pytest.mark.parametrize("give_up_after", [0.0, None])
def test_a_one_off_link_the_broker_blocks_gives_up_at_once_and_a_lasting_one_waits(
        virtual: Any, give_up_after: float | None) -> None:
    """A blocked connection is no failed attempt: a one-off command (give_up_after 0)
    waited as long as the broker's alarm lasted. It gives up at once, saying so; a
    process that may wait (None: for ever) waits."""
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("amqp://host/", clock=loop.time)
        link.give_up_after = give_up_after
        connecting = asyncio.ensure_future(link.unless_ended(loop.create_future()))
        link.connecting()
        link.blocked("low on memory")
        await asyncio.sleep(0)
        if give_up_after is None:
            assert not connecting.done()
            assert link.state == "connecting"
            connecting.cancel()
            return
        with pytest.raises(BrokerError, match=r"blocks the connection \(low on memory\): "
                                              r"it is running, but its memory or disk alarm"):
            await connecting

    virtual(main)


class _Flaky(MemoryBackend):
    """A MemoryBackend whose first ``cuts`` publishes are cut off by a lost connection."""

    def __init__(self, link: Link, cuts: int) -> None:
        super().__init__()
        self._flaky_link, self.cuts, self.attempts = link, cuts, 0

    @property
    def link(self) -> Link:
        return self._flaky_link

    async def publish(self, spore: Spore, **where: Any) -> None:
        self.attempts += 1
        if self.cuts:
            self.cuts -= 1
            self._flaky_link.lost(ConnectionResetError("cut"))
            raise Disconnected("cut off")


def _publisher(backend: MemoryBackend, **broker: Any) -> tuple[Publisher, dict[str, int]]:
    counts: dict[str, int] = {}
    return Publisher(backend, BrokerSpec(**broker), counts), counts


def test_a_publish_cut_off_by_a_loss_is_made_again_once_reconnected(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("x", up=True, clock=loop.time)
        backend = _Flaky(link, cuts=1)
        publisher, counts = _publisher(backend, give_up_after=60)
        spore = Spore(knowledge={"n": 1}, to_agent="a")
        publishing = asyncio.ensure_future(publisher.publish(spore, lambda: spore, routing_key="k"))
        await asyncio.sleep(30)
        assert (publishing.done(), backend.attempts, link.generation) == (False, 1, 1)
        link.connected()
        await publishing
        assert (backend.attempts, counts["republished"]) == (2, 1)
        assert link.give_up_after == 60  # set on the backend's link, before it opens

    virtual(main)


def test_handler_output_waits_until_the_link_gives_up_then_fails(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("x", up=True, clock=loop.time)
        publisher, _ = _publisher(_Flaky(link, cuts=1), give_up_after=60)
        failures: list[Exception] = []
        publisher.on_failure = failures.append
        publisher.opened()
        spore = Spore(knowledge={}, to_agent="a")
        started = loop.time()
        with pytest.raises(BrokerError, match="gave up"):
            await publisher.publish(spore, lambda: spore, routing_key="k")
        assert loop.time() - started == 60
        assert len(failures) == 1

    virtual(main)


def test_an_outside_send_while_disconnected_waits_for_the_confirm(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link = Link("x", up=True, clock=loop.time)
        backend = _Flaky(link, cuts=0)
        publisher, _ = _publisher(backend, send_timeout=5)
        spore = Spore(knowledge={}, to_agent="a")
        await publisher.confirmed(spore, None)  # connected: returns at admission
        link.lost(None)
        confirming = asyncio.ensure_future(publisher.confirmed(spore, None))
        publishing = asyncio.ensure_future(publisher.publish(spore, lambda: spore, routing_key="k"))
        await asyncio.sleep(3)
        assert publisher.waiting == 1
        assert not confirming.done()
        link.connected()
        await publishing
        await confirming  # returns once the broker has it
        assert (backend.attempts, publisher.waiting) == (1, 0)

    virtual(main)


class _Unconfirmed(_Flaky):
    """Publishes, and the broker never confirms (a confirm in flight when time runs out)."""

    async def publish(self, spore: Spore, **where: Any) -> None:
        self.attempts += 1
        await asyncio.Event().wait()


def _down(loop: VirtualClockLoop, backend: type[_Flaky] = _Flaky,
          cuts: int = 0) -> tuple[Link, _Flaky, Publisher, Spore]:
    """A publisher (send_timeout 5 s) whose link is down, its backend, and a spore."""
    link = Link("x", up=True, clock=loop.time)
    flaky = backend(link, cuts=cuts)
    publisher, _ = _publisher(flaky, send_timeout=5)
    link.lost(None)
    return link, flaky, publisher, Spore(knowledge={}, to_agent="a")


def test_a_send_whose_time_runs_out_while_it_is_published_says_it_may_arrive(
        virtual: Any) -> None:
    # Found by a fault injector: the time ran out as the link came back, the spore on the
    # wire already; the error said "it was not sent (retry it)", and it arrived: a retry
    # would have delivered it twice.
    async def main(loop: VirtualClockLoop) -> None:
        link, backend, publisher, spore = _down(loop, _Unconfirmed)
        confirming = asyncio.ensure_future(publisher.confirmed(spore, None))
        publishing = asyncio.ensure_future(publisher.publish(spore, lambda: spore,
                                                             routing_key="k"))
        await asyncio.sleep(4)
        link.connected()  # published at once; its confirm never comes
        with pytest.raises(BrokerError, match=r"it may still arrive \(it was being "
                                              r"published when the time ran out\): a retry "
                                              r"may deliver it twice$"):
            await confirming
        assert backend.attempts == 1
        publishing.cancel()

    virtual(main)


def test_an_unconfirmed_send_raises_at_its_deadline_and_is_never_published(
        virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        link, backend, publisher, spore = _down(loop)
        started = loop.time()
        with pytest.raises(BrokerError, match="did not confirm .* it was not sent"):
            await publisher.confirmed(spore, loop.time() + 2)  # a request's own deadline
        assert loop.time() - started == 2
        link.connected()
        with pytest.raises(BrokerError, match="withdrawn"):
            await publisher.publish(spore, lambda: spore, routing_key="k")
        assert backend.attempts == 0

    virtual(main)


def test_a_send_cut_off_after_it_was_published_says_it_may_arrive(virtual: Any) -> None:
    # A publish cut off by a loss (Disconnected: its confirm was in flight) may have
    # reached the broker; the time running out before the link is back must not say
    # "it was not sent (retry it)": a retry could deliver it twice.
    async def main(loop: VirtualClockLoop) -> None:
        link, backend, publisher, spore = _down(loop, cuts=1)
        confirming = asyncio.ensure_future(publisher.confirmed(spore, None))
        publishing = asyncio.ensure_future(publisher.publish(spore, lambda: spore,
                                                             routing_key="k"))
        await asyncio.sleep(1)
        link.connected()  # published, then cut off: the link is lost again
        await asyncio.sleep(1)
        assert (backend.attempts, link.up) == (1, False)
        with pytest.raises(BrokerError, match=r"it may still arrive"):
            await confirming
        publishing.cancel()

    virtual(main)
