"""autogen-core 0.7.5: RoutedAgent handlers on a SingleThreadedAgentRuntime.

In autogen-core `send_message` is RPC: the sender awaits the handler's return value.
One-way delivery is `publish_message` to a topic, so W1, W2, W4 and W5 publish to
topics that `TypeSubscription`s map to the receiving agents (the topic source picks
the agent key), and W3 uses `send_message`. Completion is `stop_when_idle()`, which
returns once the runtime's queue is drained and every handler finished.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from time import perf_counter, perf_counter_ns
from typing import Any

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    TopicId,
    TypeSubscription,
    message_handler,
)

from bench.outcome import Outcome, WorkloadRun
from bench.workloads import Workload


@dataclass
class Note:
    knowledge: dict[str, Any]


@dataclass
class Tally:
    handled: int = 0


class Counter(RoutedAgent):
    def __init__(self, tally: Tally) -> None:
        super().__init__("counts what it receives")
        self._tally = tally

    @message_handler
    async def on_note(self, message: Note, ctx: MessageContext) -> None:
        self._tally.handled += 1


class Echo(RoutedAgent):
    def __init__(self, tally: Tally) -> None:
        super().__init__("answers a request with its number")
        self._tally = tally

    @message_handler
    async def on_note(self, message: Note, ctx: MessageContext) -> Note:
        self._tally.handled += 1
        return Note({"i": message.knowledge["i"]})


class Step(RoutedAgent):
    def __init__(self, tally: Tally, next_topic: str | None) -> None:
        super().__init__("increments n and passes it on")
        self._tally = tally
        self._next_topic = next_topic

    @message_handler
    async def on_note(self, message: Note, ctx: MessageContext) -> None:
        self._tally.handled += 1
        if self._next_topic is not None:
            out = Note({"n": message.knowledge["n"] + 1})
            await self.publish_message(out, TopicId(self._next_topic, self.id.key))


async def publish_timed(
    runtime: SingleThreadedAgentRuntime, tally: Tally, sends: Iterable[tuple[Note, TopicId]]
) -> Outcome:
    """Start the runtime, publish every (note, topic), and time until it is idle."""
    runtime.start()
    start = perf_counter()
    for note, topic in sends:
        await runtime.publish_message(note, topic)
    await runtime.stop_when_idle()
    elapsed = perf_counter() - start
    await runtime.close()
    return Outcome(tally.handled, elapsed)


async def point_to_point(w: Workload) -> Outcome:
    tally = Tally()
    runtime = SingleThreadedAgentRuntime()
    await Counter.register(runtime, "sink", lambda: Counter(tally))
    await runtime.add_subscription(TypeSubscription(topic_type="sink", agent_type="sink"))
    topic = TopicId("sink", "default")
    return await publish_timed(runtime, tally, ((Note({"i": i}), topic) for i in range(w.count)))


async def broadcast(w: Workload) -> Outcome:
    tally = Tally()
    runtime = SingleThreadedAgentRuntime()
    for k in range(w.width):
        await Counter.register(runtime, f"sub{k}", lambda: Counter(tally))
        await runtime.add_subscription(TypeSubscription(topic_type="news", agent_type=f"sub{k}"))
    topic = TopicId("news", "default")
    return await publish_timed(runtime, tally, ((Note({"i": i}), topic) for i in range(w.count)))


async def request_reply(w: Workload) -> Outcome:
    tally = Tally()
    runtime = SingleThreadedAgentRuntime()
    await Echo.register(runtime, "echo", lambda: Echo(tally))
    runtime.start()
    echo = AgentId("echo", "default")
    latencies: list[float] = []
    start = perf_counter()
    for i in range(w.count):
        sent = perf_counter_ns()
        answer = await runtime.send_message(Note({"i": i}), echo)
        latencies.append((perf_counter_ns() - sent) / 1000)
        assert answer == Note({"i": i}), answer
    elapsed = perf_counter() - start
    await runtime.stop_when_idle()
    await runtime.close()
    return Outcome(tally.handled, elapsed, latencies)


async def many_agents(w: Workload) -> Outcome:
    tally = Tally()
    runtime = SingleThreadedAgentRuntime()
    # One agent type, one instance per key: the topic source picks the instance.
    await Counter.register(runtime, "agent", lambda: Counter(tally))
    await runtime.add_subscription(TypeSubscription(topic_type="agent", agent_type="agent"))
    topics = [TopicId("agent", str(k)) for k in range(w.width)]
    return await publish_timed(
        runtime, tally, ((Note({"r": r}), topic) for r in range(w.count) for topic in topics))


async def reply_chain(w: Workload) -> Outcome:
    tally = Tally()
    runtime = SingleThreadedAgentRuntime()
    names = [f"a{k + 1}" for k in range(w.width)]
    for name, nxt in zip(names, [*names[1:], None], strict=True):
        await Step.register(runtime, name, partial(Step, tally, nxt))
        await runtime.add_subscription(TypeSubscription(topic_type=name, agent_type=name))
    topic = TopicId(names[0], "default")
    return await publish_timed(runtime, tally, ((Note({"n": 0}), topic) for _ in range(w.count)))


RUNS: dict[str, WorkloadRun] = {
    "W1": point_to_point,
    "W2": broadcast,
    "W3": request_reply,
    "W4": many_agents,
    "W5": reply_chain,
}
