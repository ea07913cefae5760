"""Seeded random organisms, run on one backend, and the books they must balance after
``await organism.idle()``.

A seed makes 2-8 agents wired at random: direct emits, channels with several
subscribers, ``ctx.send``/``ctx.broadcast``, ``ctx.request`` and ``ctx.gather``,
handlers that raise on some attempts, retries, concurrency 1-4, priorities, some expiry,
``dedupe`` on one agent, lists returned (a fan-out). What a handler does is a function of
the seed, its agent, the spore's token and the attempt only, never of the order things
ran in: the same seed on another backend handles the same spores, unless the organism
uses what depends on timing (expiry, dedupe), which :attr:`Plan.deterministic` says.

``python -m tests.random_organisms memory-broker 0 300`` runs seeds 0..299 and prints
the failures (the suite runs a handful: ``tests/test_random_organisms.py``).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sporeflow.config import organism_from_dict
from sporeflow.config.errors import SporeflowError
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.backend import Backend, Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend
from sporeflow.pipeline.observe.events import (
    SporeDeadLettered,
    SporeEvent,
    SporeFailed,
    SporeHandled,
)
from sporeflow.steps import SporeType

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BACKSTOP = 30.0  # seconds for idle(): a healthy seed takes well under one
MAX_DEPTH = 3  # a spore at this depth makes nothing: every organism's work ends
REQUEST_TIMEOUT = 20.0  # never reached by a healthy run: a timeout would be a finding


@dataclass
class AgentPlan:
    name: str
    concurrency: int
    attempts: int  # 1: no retry
    emit: dict[str, str] | None
    subscribe: list[str]
    dedupe: bool
    fail_rate: float  # of the spores it sees, how many raise on some attempts
    act_rate: float  # how likely each kind of action is, per spore


@dataclass
class Plan:
    seed: int
    agents: dict[str, AgentPlan]
    channels: list[str]
    sends: list[dict[str, Any]]  # from outside: to or channel, knowledge, priority, expiry
    expiry: bool

    @property
    def deterministic(self) -> bool:
        """Whether the totals are the same on every backend (no timing in them)."""
        return not self.expiry and not any(a.dedupe for a in self.agents.values())

    def organism(self) -> dict[str, Any]:
        agents: dict[str, Any] = {}
        for plan in self.agents.values():
            spec: dict[str, Any] = {"handler": behaviour(self, plan),
                                    "concurrency": plan.concurrency}
            if plan.attempts > 1:
                spec["retry"] = {"attempts": plan.attempts, "backoff": "1ms"}
            if plan.emit is not None:
                spec["emit"] = plan.emit
            if plan.subscribe:
                spec["subscribe"] = plan.subscribe
            if plan.dedupe:
                spec["dedupe"] = "10m"
            agents[plan.name] = spec
        return {"channels": {name: {} for name in self.channels}, "agents": agents}


def make_plan(seed: int) -> Plan:
    rng = random.Random(seed)
    names = [f"a{n}" for n in range(rng.randint(2, 8))]
    channels = [f"c{n}" for n in range(rng.randint(0, 3))]
    deduped = rng.choice(names) if rng.random() < 0.3 else None
    agents: dict[str, AgentPlan] = {}
    for name in names:
        emit: dict[str, str] | None = None
        pick = rng.random()
        if pick < 0.35:
            emit = {"to": rng.choice(names)}
        elif pick < 0.55 and channels:
            emit = {"channel": rng.choice(channels)}
        subscribe = sorted({c for c in channels if rng.random() < 0.5})
        agents[name] = AgentPlan(
            name=name, concurrency=rng.randint(1, 4), attempts=rng.choice([1, 1, 2, 3]),
            emit=emit, subscribe=subscribe, dedupe=name == deduped,
            fail_rate=rng.choice([0.0, 0.1, 0.3]), act_rate=rng.uniform(0.1, 0.45))
    expiry = rng.random() < 0.2
    sends = []
    for n in range(rng.randint(3, 15)):
        send: dict[str, Any] = {"knowledge": {"t": f"{seed}.{n}", "d": 0},
                                "priority": rng.randint(1, 10)}
        if channels and rng.random() < 0.3:
            send["channel"] = rng.choice(channels)
        else:
            send["to"] = rng.choice(names)
        if expiry and rng.random() < 0.5:
            send["expires_in"] = rng.choice([0.001, 0.01, 60.0])
        sends.append(send)
    return Plan(seed, agents, channels, sends, expiry)


@dataclass
class Record:
    """What the handlers did, by (spore id, agent)."""

    starts: Counter[tuple[str, str]] = field(default_factory=Counter)
    successes: Counter[tuple[str, str]] = field(default_factory=Counter)
    raises: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    request_errors: list[str] = field(default_factory=list)


def behaviour(plan: Plan, agent: AgentPlan) -> Any:
    """``agent``'s handler: its choices are drawn from (seed, agent, token) alone."""
    names = sorted(plan.agents)

    async def handler(spore: Spore, ctx: Any) -> Any:
        record = RECORDS[plan.seed]
        key = (spore.id, agent.name)
        record.starts[key] += 1
        token, depth = str(spore.knowledge.get("t")), int(spore.knowledge.get("d", 0))
        rng = random.Random(f"{plan.seed}|{agent.name}|{token}")
        fails_until = rng.randint(1, agent.attempts + 1) if rng.random() < agent.fail_rate \
            else 0
        out: list[dict[str, Any]] = []
        if depth < MAX_DEPTH:
            child = 0

            def next_knowledge() -> dict[str, Any]:
                nonlocal child
                child += 1
                return {"t": f"{token}.{agent.name}{child}", "d": depth + 1}

            if rng.random() < agent.act_rate:
                ctx.send(rng.choice(names), next_knowledge(), priority=rng.randint(1, 10))
            if plan.channels and rng.random() < agent.act_rate:
                ctx.broadcast(next_knowledge(), channel=rng.choice(plan.channels))
            if rng.random() < agent.act_rate / 2:
                try:
                    answer = await ctx.request(rng.choice(names), next_knowledge(),
                                               timeout=REQUEST_TIMEOUT)
                    out.append({"t": str(answer.knowledge.get("t")) + "!",
                                "d": depth + 1})
                except SporeflowError as exc:
                    if "RequestTimeout" in type(exc).__name__:
                        record.request_errors.append(f"{key}: {exc!r}")
            if rng.random() < agent.act_rate / 3:
                targets = rng.sample(names, rng.randint(1, min(3, len(names))))
                gathered = await ctx.gather(targets, next_knowledge(), timeout=REQUEST_TIMEOUT)
                if gathered.missing:
                    record.request_errors.append(f"{key}: missing {gathered.missing}")
            for _ in range(rng.choice([0, 0, 1, 1, 2, 3]) if rng.random() < agent.act_rate
                           * 2 else 0):
                out.append(next_knowledge())
        if ctx.attempt <= fails_until:
            record.raises[key] += 1
            if ctx.attempt == agent.attempts:
                record.last_failures[key] += 1
            raise RuntimeError(f"{agent.name} fails {token} on attempt {ctx.attempt}")
        record.successes[key] += 1
        if spore.spore_type is SporeType.REQUEST:
            return {"t": token, "d": depth + 1}  # a request is always answered
        if not out:
            return None
        return out[0] if len(out) == 1 and rng.random() < 0.5 else out

    return handler


RECORDS: dict[int, Record] = {}


@dataclass
class Outcome:
    """What one run ended with: its problems, and totals to compare across backends."""

    problems: list[str]
    totals: dict[str, Any]


def _backend(kind: str) -> Backend | None:
    if kind == "memory-broker":
        return MemoryBackend()
    if kind == "amqp":
        from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
        return AmqpBackend(AMQP_URL)
    return None


def _settled(stats: dict[str, Any]) -> dict[str, Any]:
    """The parts of stats() that a finished run must not change any more."""
    agents = {name: {k: v for k, v in row.items() if k != "latency"}
              for name, row in stats["agents"].items()}
    broker = dict(stats.get("broker") or {})
    broker.pop("connection", None)
    return {"agents": agents, "totals": stats["totals"], "dead_letters": stats["dead_letters"],
            "broker": broker}


async def run_plan(plan: Plan, kind: str) -> Outcome:
    RECORDS[plan.seed] = record = Record()
    events: list[SporeEvent] = []
    data = plan.organism()
    data["organism"] = {"name": f"stress-{uuid.uuid4().hex[:12]}"}
    backend = _backend(kind)
    org = Organism(organism_from_dict(data), backend=backend)
    org.events.subscribe(lambda event: events.append(event)
                         if isinstance(event, SporeEvent) else None)
    problems: list[str] = []
    try:
        async with org.running(drain_timeout=5):
            for send in plan.sends:
                extra = {k: send[k] for k in ("priority", "expires_in") if k in send}
                if "to" in send:
                    await org.send(send["to"], send["knowledge"], **extra)
                else:
                    await org.broadcast(send["knowledge"], channel=send["channel"], **extra)
            try:
                await asyncio.wait_for(org.idle(), BACKSTOP)
            except TimeoutError:
                problems.append(f"idle() did not return within {BACKSTOP}s: "
                                f"{_settled(org.stats())}")
                return Outcome(problems, {})
            first = _settled(org.stats())
            problems += await _check_broker(org, backend)
            await asyncio.wait_for(org.idle(), BACKSTOP)
            if _settled(org.stats()) != first:
                problems.append(f"work went on after idle(): {first} then "
                                f"{_settled(org.stats())}")
            problems += _check_books(org, record, events)
            return Outcome(problems, _totals(org))
    finally:
        if backend is not None:
            await backend.destroy(Topology.of(org.spec))


async def _check_broker(org: Organism, backend: Backend | None) -> list[str]:
    if backend is None:
        return []
    problems = []
    topology = Topology.of(org.spec)
    for name in org.spec.agents:
        left = await backend.waiting(topology.queue(name))
        if left:
            problems.append(f"queue of {name} holds {left} after idle()")
    broker = org.stats()["broker"]
    for key in ("in_flight", "awaiting_confirms", "expected_back", "waiting_sends"):
        if broker[key]:
            problems.append(f"broker {key} = {broker[key]} after idle()")
    if isinstance(backend, MemoryBackend) and backend.unacked:
        problems.append(f"{len(backend.unacked)} deliveries unacked after idle()")
    return problems


def _check_books(org: Organism, record: Record, events: list[SporeEvent]) -> list[str]:
    problems = [f"request not answered: {error}" for error in record.request_errors]
    stats = org.stats()
    handled: Counter[tuple[str, str]] = Counter()
    failed: Counter[tuple[str, str]] = Counter()
    lettered: Counter[str] = Counter()
    for event in events:
        if isinstance(event, SporeHandled):
            handled[(event.spore.id, event.agent)] += 1
        elif isinstance(event, SporeFailed):
            failed[(event.spore.id, event.agent)] += 1
        elif isinstance(event, SporeDeadLettered):
            lettered[event.spore.id] += 1
    if handled != record.successes:
        problems.append(f"handled events {handled - record.successes} / handler successes "
                        f"{record.successes - handled} differ")
    if failed != record.last_failures:
        problems.append(f"failed events {failed - record.last_failures} / last failures "
                        f"{record.last_failures - failed} differ")
    letters = list(org.dead_letters)
    if Counter(letter.spore.id for letter in letters) != lettered:
        problems.append("dead-letter events and the dead letters kept differ")
    for letter in letters:
        if not letter.reason:
            problems.append(f"dead letter without a reason: {letter}")
    by_reason = Counter(letter.reason for letter in letters)
    if dict(by_reason) != stats["dead_letters"]["by_reason"]:
        problems.append(f"dead letters {dict(by_reason)} != stats "
                        f"{stats['dead_letters']['by_reason']}")
    totals = stats["totals"]
    if totals["held"] or totals["dead_letters"] != len(letters):
        problems.append(f"totals: held {totals['held']}, dead_letters "
                        f"{totals['dead_letters']} for {len(letters)} kept")
    failed_handler = 0
    for name, row in stats["agents"].items():
        starts = sum(n for (_, agent), n in record.starts.items() if agent == name)
        raises = sum(n for (_, agent), n in record.raises.items() if agent == name)
        wins = sum(n for (_, agent), n in record.successes.items() if agent == name)
        if row["in_flight"] or row["queued"]:
            problems.append(f"{name}: in_flight {row['in_flight']}, queued {row['queued']}")
        if row["received"] != row["handled"] + row["failed"] + row["deduplicated"]:
            problems.append(f"{name}: received {row['received']} != handled "
                            f"{row['handled']} + failed {row['failed']} + deduplicated "
                            f"{row['deduplicated']}")
        if row["handled"] != wins or starts != wins + raises:
            problems.append(f"{name}: handled {row['handled']}, {wins} successes, "
                            f"{starts} starts, {raises} raises")
        if row["retried"] + row["failed"] < raises:
            problems.append(f"{name}: {raises} raises, retried {row['retried']} + failed "
                            f"{row['failed']}")
        failed_handler += sum(n for (_, agent), n in record.last_failures.items()
                              if agent == name)
    if by_reason.get("handler failed", 0) != failed_handler:
        problems.append(f"{by_reason.get('handler failed', 0)} 'handler failed' letters for "
                        f"{failed_handler} last failures")
    return problems


def _totals(org: Organism) -> dict[str, Any]:
    stats = org.stats()
    return {"agents": {name: (row["handled"], row["failed"])
                       for name, row in stats["agents"].items()},
            "dead_letters": stats["dead_letters"]["by_reason"],
            "returned": stats["totals"]["returned"]}


async def check_seed(seed: int, kind: str, *, compare: bool = True) -> list[str]:
    """The problems of seed ``seed`` on backend ``kind`` (and, when the organism is
    deterministic, against the same seed embedded)."""
    plan = make_plan(seed)
    outcome = await run_plan(plan, kind)
    problems = list(outcome.problems)
    # Compared even when this run has problems of its own: both sides are printed.
    if compare and plan.deterministic and kind != "embedded":
        embedded = await run_plan(make_plan(seed), "embedded")
        problems += [f"embedded: {p}" for p in embedded.problems]
        if embedded.totals != outcome.totals:
            problems.append(f"totals differ: {kind} {outcome.totals}, embedded "
                            f"{embedded.totals}")
    return [f"seed {seed} on {kind}: {p}" for p in problems]


async def _main(kind: str, first: int, count: int) -> int:
    bad = 0
    began = time.monotonic()
    for seed in range(first, first + count):
        problems = await check_seed(seed, kind)
        if problems:
            bad += 1
            print("\n".join(problems), flush=True)
    print(f"{count} seeds on {kind} in {time.monotonic() - began:.1f}s: {bad} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
