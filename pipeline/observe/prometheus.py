"""Prometheus exposition of ``organism.stats()``, served while an organism runs.

The HTTP server (``metrics_http``: one thread, idle connections timed out, their
number bounded) answers scrapes on a thread of its own, and that thread never
touches the live organism: a task on the event loop takes a :class:`Snapshot`
(``stats()`` plus the latency buckets) a few times a second and swaps it in
whole; a scrape turns the latest one into metric families. So a scrape never
waits on a busy loop and never sees a half-updated count; it may be up to one
refresh period old. prometheus-client is the ``metrics`` extra and is imported
only when metrics are served or collected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sporeflow.config.errors import SporeflowError
from sporeflow.config.extras import missing_extra
from sporeflow.pipeline.core.latency import BOUNDS, LatencyHistogram
from sporeflow.pipeline.observe.metrics_http import MetricsHttp

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


__all__ = ["MetricsServer", "Snapshot", "StatsCollector", "take_snapshot"]


class MetricsSource(Protocol):
    """What the metrics read: an organism's stats and latency histograms."""

    def stats(self) -> dict[str, Any]: ...

    def latency_histograms(self) -> dict[str, LatencyHistogram]: ...


# Export every eighth bound of the histogram (a factor of 4: 1 us .. 67 s): 14 buckets
# per agent, each exactly on one of the histogram's own bounds, so counts stay exact.
_EXPORTED = tuple(range(0, len(BOUNDS), 8))
_AGENT_COUNTERS = (
    ("received", "Spores delivered to the agent's lane."),
    ("handled", "Spores the agent's handler finished."),
    ("failed", "Spores whose last attempt failed (dead-lettered)."),
    ("retried", "Failed attempts that were retried."),
    ("deduplicated", "Copies of spores the agent handled within its dedupe window, dropped."),
    ("refused_sent", "Spores the agent sent that were refused (dead-lettered)."),
)
_AGENT_GAUGES = (
    ("in_flight", "Handler invocations running now."),
    ("queued", "Spores waiting in the agent's mailbox."),
    ("abandoned", "Slots held by sync handler threads given up on (past their timeout) "
                  "that still run."),
)
# A keyed agent's keys (agents.X.key): exported only for keyed agents.
_KEY_METRICS = (
    ("live", "gauge", "Keys of the keyed agent with an instance or state in memory."),
    ("kept", "gauge", "Evicted keys of the keyed agent whose state is kept."),
    ("evicted", "counter", "Keys of the keyed agent evicted after key_idle."),
    ("refused", "counter", "New keys refused past the keyed agent's max_keys."),
)
_CHANNEL_COUNTERS = (
    ("broadcasts", "Broadcasts routed on the channel."),
    ("deliveries", "Deliveries the channel's broadcasts made (one per subscriber)."),
    ("refused", "Broadcasts on the channel dead-lettered before delivery."),
)
_TOTAL_COUNTERS = (
    ("admitted", "Spores admitted from outside the organism."),
    ("replies", "Spores handlers sent (replies, sends, broadcasts)."),
    ("returned", "Spores addressed to the outside world."),
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one refresh saw: ``stats()`` and, per agent, its latency buckets and sum."""

    stats: dict[str, Any]
    latency: dict[str, tuple[list[int], float]]


def take_snapshot(organism: MetricsSource) -> Snapshot:
    """Copy what the metrics need out of ``organism``; call it on the organism's loop."""
    histograms = organism.latency_histograms()
    return Snapshot(
        stats=organism.stats(),
        latency={name: (list(h.counts), h.total) for name, h in histograms.items()},
    )


def _require_client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise missing_extra("serving Prometheus metrics", "prometheus-client",
                            "metrics") from None
    return prometheus_client


def _readable_accept(app: Any, choose: Callable[[str], Any]) -> Any:
    """``app`` (prometheus-client's WSGI app), a scrape whose Accept header its format
    negotiation ``choose`` cannot read answered 400: it raised (``version=banana``),
    and the server answered 500, as if a collector had failed."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        accept = environ.get("HTTP_ACCEPT", "")
        try:
            choose(accept)
        except Exception:  # whatever it raises, the header it read is at fault
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"the Accept header cannot be read: {accept[:200]!r}\n".encode()]
        return app(environ, start_response)

    return serve


class StatsCollector:
    """A prometheus-client collector: metric families from the latest :class:`Snapshot`.

    ``source`` returns that snapshot (None before the first): the collector itself
    holds no state, so any thread may call :meth:`collect`.
    """

    def __init__(self, source: Callable[[], Snapshot | None], *,
                 prefix: str = "sporeflow") -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """Yield every family of the current snapshot (nothing before the first)."""
        snapshot = self.source()
        if snapshot is None:
            return
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        p, stats = self.prefix, snapshot.stats
        organism = stats["organism"]
        agents: dict[str, dict[str, Any]] = stats["agents"]
        for key, doc in _AGENT_COUNTERS:
            family = CounterMetricFamily(f"{p}_agent_{key}", doc, labels=["organism", "agent"])
            for name, counts in agents.items():
                family.add_metric([organism, name], counts[key])
            yield family
        for key, doc in _AGENT_GAUGES:
            gauge = GaugeMetricFamily(f"{p}_agent_{key}", doc, labels=["organism", "agent"])
            for name, counts in agents.items():
                gauge.add_metric([organism, name], counts[key])
            yield gauge
        keyed = {name: counts["keys"] for name, counts in agents.items() if "keys" in counts}
        for key, kind, doc in _KEY_METRICS if keyed else ():
            make = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            keys = make(f"{p}_agent_keys_{key}", doc, labels=["organism", "agent"])
            for name, counts in keyed.items():
                keys.add_metric([organism, name], counts[key])
            yield keys
        latency = HistogramMetricFamily(
            f"{p}_handler_latency_seconds",
            "How long each handler run that succeeded took (failed runs are not counted).",
            labels=["organism", "agent"])
        for name, (buckets, total) in snapshot.latency.items():
            latency.add_metric([organism, name], _buckets(buckets, floatToGoString), total)
        yield latency
        channels: dict[str, dict[str, int]] = stats["channels"]
        for key, doc in _CHANNEL_COUNTERS:
            family = CounterMetricFamily(f"{p}_channel_{key}", doc,
                                         labels=["organism", "channel"])
            for name, counts in channels.items():
                family.add_metric([organism, name], counts[key])
            yield family
        totals = stats["totals"]
        for key, doc in _TOTAL_COUNTERS:
            yield _one(CounterMetricFamily(f"{p}_{key}", doc, labels=["organism"]),
                       organism, totals[key])
        yield _one(GaugeMetricFamily(f"{p}_held", "Spores admitted and not yet settled.",
                                     labels=["organism"]), organism, totals["held"])
        dead = stats["dead_letters"]
        by_reason = CounterMetricFamily(f"{p}_dead_letters", "Dead letters, by reason.",
                                        labels=["organism", "reason"])
        for reason, count in sorted(dead["by_reason"].items()):
            by_reason.add_metric([organism, reason], count)
        yield by_reason
        yield _one(GaugeMetricFamily(f"{p}_dead_letters_kept",
                                     "Dead letters kept in the store (replayable).",
                                     labels=["organism"]), organism, dead["kept"])
        yield _one(GaugeMetricFamily(f"{p}_uptime_seconds", "Seconds since the organism "
                                     "started.", labels=["organism"]), organism,
                   stats["uptime_s"])


def _one(family: Any, organism: str, value: float) -> Any:
    family.add_metric([organism], value)
    return family


def _buckets(counts: list[int], fmt: Callable[[float], str]) -> list[tuple[str, float]]:
    """Cumulative counts at the exported bounds, and ``+Inf``."""
    buckets: list[tuple[str, float]] = []
    seen = 0
    last = 0
    for index in _EXPORTED:
        seen += sum(counts[last:index + 1])
        last = index + 1
        buckets.append((fmt(BOUNDS[index]), seen))
    buckets.append(("+Inf", seen + sum(counts[last:])))
    return buckets


class MetricsServer:
    """Serve an organism's metrics in Prometheus text format on ``host:port``.

    Use it as an async context manager around a running organism, on its loop::

        async with MetricsServer(organism, port=9100):
            ...

    ``port=0`` picks a free port (see :attr:`port`). The snapshot is refreshed
    every ``period`` seconds by a task on the loop, and once more on exit. A
    connection has ``timeout`` seconds to send its request; at most
    ``max_connections`` wait at once (see ``metrics_http``).
    """

    def __init__(self, organism: MetricsSource, *, port: int, host: str = "127.0.0.1",
                 period: float = 0.25, timeout: float = 5.0,
                 max_connections: int = 64) -> None:
        self.organism = organism
        self.host = host
        self.period = period
        self.timeout = timeout
        self.max_connections = max_connections
        self._requested_port = port
        self._snapshot: Snapshot | None = None
        self._server: MetricsHttp | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (the one chosen when 0 was asked for)."""
        if self._server is None:
            raise SporeflowError("the metrics server is not running; enter it with "
                                 "`async with MetricsServer(...)` first")
        return self._server.port

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot scrapes see now."""
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Take a snapshot now (on the loop) and let scrapes see it."""
        # Replacing one reference is atomic: a scrape sees the old snapshot or the new.
        self._snapshot = take_snapshot(self.organism)
        return self._snapshot

    async def __aenter__(self) -> MetricsServer:
        client = _require_client()
        registry = client.CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(lambda: self._snapshot))
        self.refresh()
        server = MetricsHttp(_readable_accept(client.make_wsgi_app(registry),
                                              client.exposition.choose_encoder),
                             host=self.host,
                             port=self._requested_port, timeout=self.timeout,
                             max_connections=self.max_connections)
        try:
            server.start()
        except OSError as exc:
            raise SporeflowError(
                f"cannot serve metrics on {self.host}:{self._requested_port}: {exc}; pick "
                f"another --metrics-port") from exc
        self._server = server
        self._refresher = asyncio.get_running_loop().create_task(
            self._refresh_forever(), name="sporeflow:metrics")
        return self

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.refresh()

    async def __aexit__(self, *_: object) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        self.refresh()
        server, self._server = self._server, None
        if server is not None:
            server.close()
