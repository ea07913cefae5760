"""Prometheus exposition: scraped during a run, parsed with the official client's parser."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sporeflow.pipeline import (
    Context,
    MetricsServer,
    NotAPeer,
    Organism,
    Spore,
    SporeflowError,
)
from sporeflow.pipeline.observe.prometheus import StatsCollector, take_snapshot

from .newsroom import news_agents

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def rogue(spore: Spore, ctx: Context) -> None:
    with contextlib.suppress(NotAPeer):  # refused and dead-lettered: only source publishes
        await ctx.broadcast({"n": 0}, channel="news")


def news_organism() -> Organism:
    return Organism.from_dict({
        "organism": {"name": "news"},
        "channels": {"news": {"publish": ["source"]}},
        "agents": {**news_agents(), "rogue": {"handler": rogue}},
    })


async def feed(organism: Organism) -> None:
    for n in range(3):
        await organism.send("source", {"n": n})
    for n in range(4):
        await organism.send("flaky", {"n": n})
    await organism.send("rogue", {"n": 9})
    await organism.idle()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_scrape_during_a_run_matches_stats() -> None:
    organism = news_organism()
    async with organism.running(), MetricsServer(organism, port=0) as server:
        await feed(organism)
        server.refresh()
        samples = await asyncio.to_thread(scrape, server.port)
        stats = organism.stats()
        assert organism.state == "running"
    for agent, counts in stats["agents"].items():
        for key in ("received", "handled", "failed", "retried", "refused_sent"):
            assert value(samples, f"sporeflow_agent_{key}_total", organism="news",
                         agent=agent) == counts[key]
        for key in ("in_flight", "queued"):
            assert value(samples, f"sporeflow_agent_{key}", organism="news",
                         agent=agent) == counts[key]
        assert value(samples, "sporeflow_handler_latency_seconds_count", organism="news",
                     agent=agent) == counts["latency"]["count"]
    for channel, counts in stats["channels"].items():
        for key in ("broadcasts", "deliveries", "refused"):
            assert value(samples, f"sporeflow_channel_{key}_total", organism="news",
                         channel=channel) == counts[key]
    for key in ("admitted", "replies", "returned"):
        assert value(samples, f"sporeflow_{key}_total", organism="news") == stats["totals"][key]
    for reason, count in stats["dead_letters"]["by_reason"].items():
        assert value(samples, "sporeflow_dead_letters_total", organism="news",
                     reason=reason) == count
    # The counts themselves, so that matching stats() means something.
    assert stats["agents"]["flaky"]["failed"] == 2
    assert stats["channels"]["news"] == {"broadcasts": 3, "deliveries": 6, "refused": 1}
    assert stats["dead_letters"]["by_reason"] == {"handler failed": 2, "not a peer": 1}


async def latency_family() -> tuple[Any, Any]:
    """The latency histogram's family scraped after ``feed``, and the snapshot it is of."""
    organism = news_organism()
    async with organism.running():
        await feed(organism)
        snapshot = take_snapshot(organism)
    [family] = [f for f in StatsCollector(lambda: snapshot).collect()
                if f.name == "sporeflow_handler_latency_seconds"]
    return family, snapshot


async def test_latency_buckets_are_cumulative_and_end_in_the_count() -> None:
    family, snapshot = await latency_family()
    buckets = [s for s in family.samples
               if s.name.endswith("_bucket") and s.labels["agent"] == "source"]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)
    assert buckets[-1].labels["le"] == "+Inf"
    assert counts[-1] == snapshot.stats["agents"]["source"]["latency"]["count"] == 3
    assert len(buckets) == 15  # 1 us .. 67 s by factors of 4, and +Inf


async def test_the_latency_histogram_says_it_counts_runs_that_succeeded() -> None:
    family, snapshot = await latency_family()
    [count] = [s.value for s in family.samples
               if s.name.endswith("_count") and s.labels["agent"] == "flaky"]
    flaky = snapshot.stats["agents"]["flaky"]
    # Four runs of flaky, two failed: the histogram holds the two that succeeded, and
    # its help says so (it said "per invocation attempt", which failed runs are too).
    assert (flaky["handled"], flaky["failed"], count) == (2, 2, 2)
    assert "succeeded" in family.documentation
    assert "attempt" not in family.documentation


async def test_a_removed_agent_leaves_the_latency_histogram_as_its_counters_do() -> None:
    organism = news_organism()
    async with organism.running():
        await feed(organism)
        await organism.remove_agent("rogue")
        snapshot = take_snapshot(organism)
    agents = {s.labels["agent"] for family in StatsCollector(lambda: snapshot).collect()
              for s in family.samples if "agent" in s.labels}
    # Labels name declared agents only: rogue handled a spore, then was removed.
    assert "flaky" in agents
    assert "rogue" not in agents


def test_collector_yields_nothing_before_the_first_snapshot() -> None:
    assert list(StatsCollector(lambda: None).collect()) == []


def test_scrapes_see_the_snapshot_the_loop_refreshes_every_period(
    virtual: Callable[[Callable[[Any], Coroutine[Any, Any, Any]]], Any],
) -> None:
    async def main(loop: Any) -> tuple[int, int]:
        organism = news_organism()
        async with organism.running(), MetricsServer(organism, port=0, period=10) as server:
            await feed(organism)
            assert server.snapshot is not None
            before = server.snapshot.stats["totals"]["handled"]
            await asyncio.sleep(15)  # virtual time: one refresh period passes
            return before, server.snapshot.stats["totals"]["handled"]

    before, after = virtual(main)
    assert (before, after) == (0, 12)  # 3 source, 6 readers, 2 of 4 flaky, rogue


async def test_a_taken_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SporeflowError, match=f"127.0.0.1:{port}.*pick another "
                                                 f"--metrics-port"):
            async with MetricsServer(news_organism(), port=port):
                pass


async def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(SporeflowError, match=re.escape("pip install 'sporeflow[metrics]'")):
        async with MetricsServer(news_organism(), port=0):
            pass


def test_cli_run_serves_metrics_while_running() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(SMALL), "--metrics-port",
         "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=SMALL.parent,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline().decode()
            match = re.match(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", line)
            assert match is not None, line
            samples = scrape(int(match.group(1)))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err.decode()
    assert value(samples, "sporeflow_agent_received_total", organism="small",
                 agent="squarer") == 0
    assert {labels for name, labels in samples if name == "sporeflow_agent_handled_total"} == {
        frozenset({("organism", "small"), ("agent", a)})
        for a in ("intake", "shouter", "ear1", "ear2", "picky", "squarer", "asker")}
    assert " handled in " in err.decode()  # the final summary
