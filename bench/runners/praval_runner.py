"""praval 0.8.4: plain handlers subscribed to a Reef, no LLM.

praval's `Agent` and `@agent` need LLM provider credentials to be built, so this runner
uses the message bus they sit on: `Reef.subscribe(agent, handler, channel)`, `send`,
`broadcast`, `request_and_wait` / `reply_to_request`. The Reef is threaded: each
delivery is submitted to a shared ThreadPoolExecutor (4 workers by default), sync
handlers run on those threads, and `wait_for_completion()` waits for every
submitted handler, including those submitted by handlers. The API is synchronous,
so these runs are sync functions; handlers count under a lock because they run on
several threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter, perf_counter_ns

from praval.core.reef import Reef, Spore, SporeType

from bench.outcome import Outcome, WorkloadRun
from bench.workloads import Workload

SENDER = "bench"
WAIT_S = 600.0  # a backstop: wait_for_completion returns False past it


class Tally:
    def __init__(self) -> None:
        self.handled = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.handled += 1


@contextmanager
def running_reef() -> Iterator[Reef]:
    # A Reef of its own, not the process-wide get_reef(), shut down after the run.
    reef = Reef()
    try:
        yield reef
    finally:
        reef.shutdown(wait=True)


def _completed(reef: Reef) -> None:
    if not reef.wait_for_completion(timeout=WAIT_S):
        raise TimeoutError(f"praval handlers still running after {WAIT_S}s")


def _counter(tally: Tally) -> Callable[[Spore], None]:
    def count(spore: Spore) -> None:
        tally.hit()

    return count


def point_to_point(w: Workload) -> Outcome:
    tally = Tally()
    with running_reef() as reef:
        reef.subscribe("sink", _counter(tally))
        start = perf_counter()
        for i in range(w.count):
            reef.send(from_agent=SENDER, to_agent="sink", knowledge={"i": i})
        _completed(reef)
        elapsed = perf_counter() - start
    return Outcome(tally.handled, elapsed)


def broadcast(w: Workload) -> Outcome:
    tally = Tally()
    with running_reef() as reef:
        reef.create_channel("news")
        for k in range(w.width):
            reef.subscribe(f"sub{k}", _counter(tally), channel="news")
        start = perf_counter()
        for i in range(w.count):
            reef.broadcast(from_agent=SENDER, knowledge={"i": i}, channel="news")
        _completed(reef)
        elapsed = perf_counter() - start
    return Outcome(tally.handled, elapsed)


def request_reply(w: Workload) -> Outcome:
    tally = Tally()
    latencies: list[float] = []
    with running_reef() as reef:

        def echo(spore: Spore) -> None:
            if spore.spore_type is SporeType.REQUEST:
                tally.hit()
                reef.reply_to_request(spore, {"i": spore.knowledge["i"]})

        reef.subscribe("echo", echo)
        start = perf_counter()
        for i in range(w.count):
            sent = perf_counter_ns()
            answer = reef.request_and_wait(
                from_agent=SENDER, to_agent="echo", request={"i": i}, timeout=5.0
            )
            latencies.append((perf_counter_ns() - sent) / 1000)
            assert answer.knowledge == {"i": i}, answer
        elapsed = perf_counter() - start
        _completed(reef)
    return Outcome(tally.handled, elapsed, latencies)


def many_agents(w: Workload) -> Outcome:
    tally = Tally()
    names = [f"agent{k}" for k in range(w.width)]
    with running_reef() as reef:
        for name in names:
            reef.subscribe(name, _counter(tally))
        start = perf_counter()
        for r in range(w.count):
            for name in names:
                reef.send(from_agent=SENDER, to_agent=name, knowledge={"r": r})
        _completed(reef)
        elapsed = perf_counter() - start
    return Outcome(tally.handled, elapsed)


def reply_chain(w: Workload) -> Outcome:
    tally = Tally()
    names = [f"a{k + 1}" for k in range(w.width)]
    with running_reef() as reef:

        def step(me: str, nxt: str | None) -> Callable[[Spore], None]:
            def handle(spore: Spore) -> None:
                tally.hit()
                if nxt is not None:
                    reef.send(
                        from_agent=me, to_agent=nxt, knowledge={"n": spore.knowledge["n"] + 1}
                    )

            return handle

        for name, nxt in zip(names, [*names[1:], None], strict=True):
            reef.subscribe(name, step(name, nxt))
        start = perf_counter()
        for _ in range(w.count):
            reef.send(from_agent=SENDER, to_agent=names[0], knowledge={"n": 0})
        _completed(reef)
        elapsed = perf_counter() - start
    return Outcome(tally.handled, elapsed)


RUNS: dict[str, WorkloadRun] = {
    "W1": point_to_point,
    "W2": broadcast,
    "W3": request_reply,
    "W4": many_agents,
    "W5": reply_chain,
}
