"""Seeded random hot reloads of an embedded organism under traffic, and the books they
must balance after the stop.

A seed makes 3-6 agents from a file (function and class agents, concurrency 1-4, some
with a timeout, retries or a schema; handlers that return at once, yield to the loop,
fan out ``ctx.send``s, ``ctx.request`` another agent, or hang until cancelled), small
channel capacities, ``max_in_flight`` and ``max_in_memory`` (so that senders wait and
handlers' output is paged out). Outside senders send while 5-20 random edits apply:
the file reloaded (concurrency, timeout, retry, schema, handler, an agent removed or
added, a handler module rewritten), ``add_agent``/``remove_agent``, two at once, one
while a handler hangs. Then a stop with a drain timeout, and :meth:`Driver.check`: each
spore whose send returned handled once or a dead letter once (a handler's send made
again by a retry of its run, same id, as often as it ran: README, at least once); no
attempt completed twice; ``stats()`` totals agreeing with the handlers and the dead
letters; nothing held, queued or in flight, and no task left, after the stop; with
``timed``, each reload and the stop within a bound.

``python -m tests.random_reloads 0 300`` runs seeds 0..299 and prints the failures
(the suite runs a few: ``tests/test_random_reloads.py``).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sporeflow.config import DeliveryError, SporeflowError
from sporeflow.pipeline import Organism, Spore

DRAIN = 1.0  # the stop's drain timeout
SHARED = "_reloadstress_shared"  # the module the handler files call into
KINDS = ("fast", "step", "fan", "ask", "hang")


@dataclass
class Book:
    """What the handlers and senders saw, by spore id."""

    starts: Counter[str] = field(default_factory=Counter)
    completes: Counter[str] = field(default_factory=Counter)
    tracked: set[str] = field(default_factory=set)  # sent to one agent, the send returned
    parent_of: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    attempts: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # completed
    present: list[str] = field(default_factory=list)  # the agents the driver last applied
    hung: asyncio.Event = field(default_factory=asyncio.Event)  # never set
    stop_hangs: bool = False

    async def run(self, kind: str, spore: Spore, ctx: Any) -> Any:
        knowledge = spore.knowledge
        self.starts[spore.id] += 1
        if knowledge.get("f") and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        if kind == "hang" and knowledge.get("hang"):
            await self.hung.wait()
        for _ in range(int(knowledge.get("y", 0)) if kind != "fast" else 0):
            await asyncio.sleep(0)
        depth = int(knowledge.get("d", 0))
        if kind == "fan" and depth < 1:
            for n in range(int(knowledge.get("k", 0))):
                to = self.present[(n + len(spore.id)) % len(self.present)]
                try:
                    sent = ctx.send(to, {"n": n, "d": depth + 1})
                except DeliveryError:
                    continue  # removed meanwhile: refused at the call, nothing sent
                # Sent at the call: a run cancelled in the await (spores paged out, its
                # timeout passing) has sent it, and its retry sends it again, same id.
                self.tracked.add(sent.spore.id)
                self.parent_of[sent.spore.id] = (spore.id, ctx.agent, ctx.attempt)
                await sent
        if kind == "ask" and depth < 1:
            to = self.present[len(spore.id) % len(self.present)]
            try:
                await ctx.request(to, {"n": 0, "d": depth + 1}, timeout=0.5)
            except SporeflowError:
                pass
        self.completes[spore.id] += 1
        self.attempts.setdefault(spore.id, []).append((ctx.agent, ctx.attempt))
        return {"ok": 1} if spore.spore_type.value == "request" else None

    async def on_stop(self) -> None:
        if self.stop_hangs:
            await self.hung.wait()


BOOK = Book()
shared = types.ModuleType(SHARED)
shared.BOOK = BOOK  # type: ignore[attr-defined]
sys.modules[SHARED] = shared


def handler_module(version: int) -> str:
    fns = "\n".join(f"async def {kind}(spore, ctx):\n"
                    f"    return await {SHARED}.BOOK.run({kind!r}, spore, ctx)\n"
                    for kind in KINDS)
    return (f"import {SHARED}\nVERSION = {version}\n\n{fns}\n\n"
            f"class Tally:\n"
            f"    async def handle(self, spore, ctx):\n"
            f"        return await {SHARED}.BOOK.run('step', spore, ctx)\n\n"
            f"    async def on_stop(self):\n"
            f"        await {SHARED}.BOOK.on_stop()\n")


@dataclass
class Result:
    seed: int
    problems: list[str]
    reloads: int = 0
    sends: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class Driver:
    def __init__(self, seed: int, folder: Path, *, timed: bool = True) -> None:
        self.seed = seed
        self.clocked = timed  # check how long reloads and the stop took (not in the suite)
        self.rng = random.Random(seed)
        self.folder = folder
        self.module = f"rr_{seed}_{uuid.uuid4().hex[:8]}"
        self.version = 0
        self.file = folder / "organism.yaml"
        self.agents: dict[str, dict[str, Any]] = {}
        self.next_name = 0
        self.problems: list[str] = []
        self.reload_times: list[tuple[str, float]] = []
        self.sends = 0
        self.hangs = False

    # -- the organism's file ----------------------------------------------------

    def new_agent(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        name = f"a{self.next_name}"
        self.next_name += 1
        spec: dict[str, Any] = {"concurrency": rng.randint(1, 4)}
        if rng.random() < 0.2:
            spec["handler"] = f"{self.module}:Tally"
        else:
            spec["handler"] = f"{self.module}:{rng.choice(KINDS)}"
        if rng.random() < 0.4:
            spec["timeout"] = rng.choice(["50ms", "200ms"])
        if rng.random() < 0.4:
            spec["retry"] = {"attempts": rng.randint(2, 3), "backoff": "1ms"}
        if rng.random() < 0.3:
            spec["schema"] = self.schema()
        return name, spec

    def schema(self) -> str:
        path = self.folder / f"schema{self.rng.randint(0, 2)}.json"
        limit = {"schema0.json": 1000, "schema1.json": 30, "schema2.json": 5}[path.name]
        path.write_text(json.dumps({"type": "object", "properties": {
            "n": {"type": "integer", "maximum": limit}}}))
        return path.name

    def write(self) -> None:
        doc = {
            "organism": {"name": f"reloadstress-{self.seed}"},
            "limits": {"max_in_flight": self.max_in_flight, "max_in_memory": self.memory},
            "channels": {"main": {"capacity": self.capacity}},
            "agents": self.agents,
        }
        self.file.write_text(yaml.safe_dump(doc))
        BOOK.present[:] = list(self.agents)

    def write_module(self) -> None:
        self.version += 1
        (self.folder / f"{self.module}.py").write_text(handler_module(self.version))

    # -- edits ------------------------------------------------------------------

    async def timed(self, what: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            report = await call
        except SporeflowError as exc:
            report = exc
        self.reload_times.append((what, time.perf_counter() - started))
        if not isinstance(report, Exception) and not report.ok:
            self.problems.append(f"{what}: refused: {report.errors}")
        return report

    def file_edit(self) -> str:
        rng = self.rng
        names = list(self.agents)
        pick = rng.random()
        name = rng.choice(names)
        spec = self.agents[name]
        if pick < 0.15:
            spec["concurrency"] = rng.randint(1, 4)
            return f"concurrency {name}"
        if pick < 0.25:
            if "timeout" in spec:
                del spec["timeout"]
            else:
                spec["timeout"] = rng.choice(["50ms", "200ms"])
            return f"timeout {name}"
        if pick < 0.35:
            if "retry" in spec:
                del spec["retry"]
            else:
                spec["retry"] = {"attempts": rng.randint(2, 3), "backoff": "1ms"}
            return f"retry {name}"
        if pick < 0.45:
            if "schema" in spec:
                del spec["schema"]
            else:
                spec["schema"] = self.schema()
            return f"schema {name}"
        if pick < 0.6:
            spec["handler"] = f"{self.module}:{rng.choice(KINDS)}"
            return f"handler {name}"
        if pick < 0.7:
            self.write_module()
            return "module"
        if pick < 0.85 and len(names) > 2:
            del self.agents[name]
            return f"remove {name}"
        new, spec = self.new_agent()
        self.agents[new] = spec
        return f"add {new}"

    async def edit(self, organism: Organism) -> None:
        rng = self.rng
        pick = rng.random()
        if pick < 0.15 and len(self.agents) > 2:
            name = rng.choice(list(self.agents))
            del self.agents[name]
            BOOK.present[:] = list(self.agents)
            await self.timed(f"remove_agent {name}", organism.remove_agent(name))
            self.write()
            return
        if pick < 0.25:
            name, spec = self.new_agent()
            self.agents[name] = spec
            BOOK.present[:] = list(self.agents)
            await self.timed(f"add_agent {name}", organism.add_agent(name, spec))
            self.write()
            return
        if pick < 0.35:  # two reloads at once
            first = self.file_edit()
            self.write()
            one = asyncio.ensure_future(self.timed(first, organism.reload()))
            await asyncio.sleep(0)
            second = self.file_edit()
            self.write()
            await asyncio.gather(one, self.timed(second, organism.reload()))
            return
        if pick < 0.45:  # a reload while a handler hangs
            hangers = [n for n, s in self.agents.items() if s["handler"].endswith(":hang")]
            if hangers:
                name = rng.choice(hangers)
                try:
                    await asyncio.wait_for(organism.send(name, {"n": 0, "hang": True}), 1)
                    self.hangs = True
                except (DeliveryError, TimeoutError):
                    pass
                for _ in range(rng.randint(0, 20)):
                    await asyncio.sleep(0)
                self.agents[name]["concurrency"] = rng.randint(1, 4)
                self.write()
                await self.timed(f"reload hanging {name}", organism.reload())
                return
        what = self.file_edit()
        self.write()
        await self.timed(what, organism.reload())

    # -- traffic ----------------------------------------------------------------

    async def sender(self, organism: Organism, count: int, rng: random.Random) -> None:
        for _ in range(count):
            names = list(self.agents)
            to = rng.choice(names)
            knowledge: dict[str, Any] = {"n": rng.randint(0, 40), "d": 0,
                                         "y": rng.choice([0, 0, 1, 5, 20])}
            if rng.random() < 0.15:
                knowledge["f"] = True
            if rng.random() < 0.4:
                knowledge["k"] = rng.randint(1, 12)
            try:
                spore = await organism.send(to, knowledge, priority=rng.randint(1, 10))
            except DeliveryError:
                continue  # removed: refused at the call
            except SporeflowError:
                return  # stopping
            BOOK.tracked.add(spore.id)
            self.sends += 1
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)

    async def run(self) -> Result:
        rng = self.rng
        BOOK.__init__()  # type: ignore[misc]
        BOOK.stop_hangs = rng.random() < 0.2
        self.capacity = rng.choice([2, 5, 20])
        self.max_in_flight = rng.choice([8, 30, 200])
        self.memory = rng.choice([10, 40, 1000])
        self.write_module()
        sys.path.insert(0, str(self.folder))
        try:
            for _ in range(rng.randint(3, 6)):
                name, spec = self.new_agent()
                self.agents[name] = spec
            self.write()
            organism = Organism.from_file(self.file)
            await organism.start()
            senders = [asyncio.ensure_future(self.sender(
                organism, rng.randint(10, 60), random.Random(rng.random())))
                for _ in range(rng.randint(2, 5))]
            edits = rng.randint(5, 20)
            for _ in range(edits):
                for _ in range(rng.randint(0, 30)):
                    await asyncio.sleep(0)
                await self.edit(organism)
            if rng.random() < 0.7:
                await asyncio.wait(senders, timeout=2)
            started = time.perf_counter()
            await asyncio.wait_for(organism.stop(drain_timeout=DRAIN), DRAIN + 10)
            took = time.perf_counter() - started
            if self.clocked and took > DRAIN + 0.75:
                self.problems.append(f"stop took {took:.2f}s (drain {DRAIN}s)")
            for task in senders:
                if not task.done():
                    await asyncio.wait([task], timeout=2)
                if not task.done():
                    self.problems.append("a sender still waits after the stop")
                    task.cancel()
                elif not task.cancelled() and task.exception() is not None:
                    self.problems.append(f"sender raised {task.exception()!r}")
            for _ in range(5):
                await asyncio.sleep(0)
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if left:
                self.problems.append(f"tasks left after stop: {left}")
            self.check(organism)
            return Result(self.seed, self.problems, len(self.reload_times), self.sends,
                          self.summary)
        finally:
            sys.path.remove(str(self.folder))
            sys.modules.pop(self.module, None)

    def check(self, organism: Organism) -> None:
        problems = self.problems
        for what, took in self.reload_times if self.clocked else ():
            if took > 0.5:
                problems.append(f"{what} took {took:.2f}s")
        letters = list(organism.dead_letters)
        stats = organism.stats()
        totals = stats["totals"]
        if stats["dead_letters"]["evicted"]:
            problems.append("dead letters evicted: checks weakened")
        dead = Counter(letter.spore.id for letter in letters)
        for letter in letters:
            if not letter.reason:
                problems.append(f"dead letter without a reason: {letter.spore.id}")
        # A run that returned past its timeout is a timeout, not handled.
        overrun = sum(1 for x in letters if x.reason == "timeout") + sum(
            1 for runs in BOOK.attempts.values() if len(runs) > 1)
        for spore_id in BOOK.tracked:
            done, died = BOOK.completes[spore_id], dead[spore_id]
            parent = BOOK.parent_of.get(spore_id)
            if parent is not None and BOOK.starts[parent[0]] > 1:
                # Made again, same id, by a retry of a run that had sent it (README:
                # at least once; dedupe drops copies): handled or dead, once a run.
                if not 1 <= done + died <= BOOK.starts[parent[0]]:
                    problems.append(f"spore {spore_id} (sent by a retried run): handled "
                                    f"{done}, dead letters {died}")
                continue
            runs = BOOK.attempts.get(spore_id, [])
            if done > 1 and len(set(runs)) == done and died + done - 1 <= overrun:
                continue  # completed past its timeout, retried (the timeout's dead letter)
            if done == 1 and died == 1 and {x.reason for x in letters
                                             if x.spore.id == spore_id} == {"timeout"}:
                continue  # completed past its timeout: failed
            if done + died != 1:
                why = [(x.reason, x.error[:120]) for x in letters if x.spore.id == spore_id]
                parent = BOOK.parent_of.get(spore_id)
                if parent is not None:
                    why.append(("parent", parent, BOOK.starts[parent[0]],
                                [(x.reason, x.error[:80]) for x in letters
                                 if x.spore.id == parent[0]]))
                problems.append(f"spore {spore_id}: handled {done} {runs}, dead letters "
                                f"{died} {why}")
        for spore_id, runs in BOOK.attempts.items():
            parent = BOOK.parent_of.get(spore_id)
            copies = BOOK.starts[parent[0]] if parent is not None else 1  # made again
            if max(Counter(runs).values()) > copies:
                problems.append(f"spore {spore_id}: one attempt completed twice: {runs}")
        if not 0 <= sum(BOOK.completes.values()) - totals["handled"] <= overrun:
            problems.append(f"totals.handled {totals['handled']} != handler completions "
                            f"{sum(BOOK.completes.values())}")
        # A lane's books after the stop balance: what it received was handled or failed
        # (dead-lettered from its mailbox or retry timers by the stop, or refused there by
        # a schema a reload gave it, counts as failed: README, stats).
        extra = totals["received"] - totals["handled"] - totals["failed"] - totals["deduplicated"]
        if extra:
            problems.append(f"received {totals['received']} - handled {totals['handled']} - "
                            f"failed {totals['failed']} - deduplicated "
                            f"{totals['deduplicated']} = {extra}, not 0")
        if totals["held"]:
            problems.append(f"held {totals['held']} after stop")
        if totals["dead_letters"] != len(letters):
            problems.append(f"totals.dead_letters {totals['dead_letters']} != {len(letters)}")
        if totals["admitted"] < self.sends:
            problems.append(f"admitted {totals['admitted']} < sends returned {self.sends}")
        self.summary = {k: totals[k] for k in ("admitted", "received", "handled", "failed",
                                               "retried", "dead_letters", "paged_out_total")}
        self.summary["reasons"] = stats["dead_letters"]["by_reason"]
        self.summary["edits"] = [what for what, _ in self.reload_times]
        for name, agent in stats["agents"].items():
            if agent["in_flight"] or agent["queued"]:
                problems.append(f"agent {name} in_flight {agent['in_flight']} queued "
                                f"{agent['queued']} after stop")


async def run_seed(seed: int, *, timed: bool = True) -> Result:
    with tempfile.TemporaryDirectory(prefix="reloadstress") as folder:
        driver = Driver(seed, Path(folder), timed=timed)
        try:
            return await driver.run()
        except Exception as exc:  # noqa: BLE001 - reported as the seed's finding
            import traceback
            return Result(seed, driver.problems + [f"crashed: {exc!r}\n{traceback.format_exc()}"])


def main(argv: list[str]) -> int:
    import logging
    logging.disable(logging.CRITICAL)
    start, count = int(argv[0]), int(argv[1])
    failed = 0
    began = time.perf_counter()
    for seed in range(start, start + count):
        result = asyncio.run(run_seed(seed))
        if "-v" in argv:
            print(seed, result.sends, result.detail, flush=True)
        if result.problems:
            failed += 1
            print(f"seed {seed}: {len(result.problems)} problems", flush=True)
            for problem in result.problems[:8]:
                print("   ", problem[:600], flush=True)
    print(f"{count - failed} passed, {failed} failed in {time.perf_counter() - began:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
