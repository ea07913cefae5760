"""The live view: a per-agent table and overall progress of a running organism.

A task on the organism's event loop reads ``stats()`` (O(agents)) a few times a
second and redraws a rich ``Live`` display, by default on stderr. Nothing runs
per spore and no other thread reads the organism (rich's own refresh thread is
off). rich is the ``live`` extra and is imported only when a view is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sporeflow.config.extras import missing_extra

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text


__all__ = ["LiveView"]


class StatsSource(Protocol):
    """What the live view reads: an organism's stats."""

    def stats(self) -> dict[str, Any]: ...


# Rates are measured over the samples of about the last second.
_RATE_SAMPLES = 5
_HEADERS = ("agent", "received", "handled", "failed", "in flight", "queued", "rate/s",
            "p50 ms", "p99 ms")
# With threads abandoned past their timeout (agents.threads), one more column after
# "in flight": the slots they still hold.
_WITH_ABANDONED = (*_HEADERS[:5], "abandoned", *_HEADERS[5:])
_ALARMING = ("failed", "abandoned")  # shown in red when not 0


def _require_rich() -> None:
    try:
        import rich  # noqa: F401
    except ImportError:
        raise missing_extra("the live view", "rich", "live") from None


class LiveView:
    """Show ``organism``'s agents and progress live, redrawn every ``period`` seconds.

    ``async with LiveView(organism):`` runs it around a run; :meth:`refresh` redraws
    at once (tests drive it that way). ``console`` defaults to a rich console on
    stderr; ``clock`` (seconds, monotonic) is injectable for rates and elapsed time.
    """

    def __init__(self, organism: StatsSource, *, console: Console | None = None,
                 period: float = 0.25, clock: Callable[[], float] = time.monotonic,
                 transient: bool = True) -> None:
        _require_rich()
        from rich.console import Console

        self.organism = organism
        self.console = console if console is not None else Console(stderr=True)
        self.period = period
        self.clock = clock
        self.transient = transient
        self._started = clock()
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=_RATE_SAMPLES)
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None
        self._routed: list[tuple[logging.StreamHandler[Any], Any]] = []

    def render(self) -> Text:
        """Read ``stats()`` once and build the table and the progress line."""
        from rich.text import Text

        stats = self.organism.stats()
        now = self.clock()
        handled = {name: a["handled"] for name, a in stats["agents"].items()}
        rates = self._rates(now, handled)
        self._samples.append((now, handled))

        abandoned = any(agent.get("abandoned") for agent in stats["agents"].values())
        headers = _WITH_ABANDONED if abandoned else _HEADERS
        keyed = any("keys" in agent for agent in stats["agents"].values())
        if keyed:  # keyed agents (agents.X.key): their live keys and kept states
            headers = (*headers, "keys", "kept")
        alarming = {headers.index(name) for name in _ALARMING if name in headers}
        rows: list[tuple[str, ...]] = [headers]
        for name, agent in stats["agents"].items():
            latency = agent["latency"]
            rows.append((
                name, f"{agent['received']:,}", f"{agent['handled']:,}",
                f"{agent['failed']:,}", f"{agent['in_flight']:,}",
                *((f"{agent['abandoned']:,}",) if abandoned else ()), f"{agent['queued']:,}",
                f"{rates[name]:,.0f}" if name in rates else "-",
                _ms(latency["p50_ms"]), _ms(latency["p99_ms"]),
                *(_keys(agent.get("keys")) if keyed else ())))
        # Columns aligned here rather than by rich's Table: its layout pass costs ~15
        # times as much per frame, and frames are drawn on the organism's loop.
        widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
        text = Text(f"sporeflow · {stats['organism']} · {stats['state']}\n", style="bold",
                    no_wrap=True, overflow="crop")
        for index, row in enumerate(rows):
            for column, (cell, width) in enumerate(zip(row, widths, strict=True)):
                padded = cell.ljust(width) if column == 0 else cell.rjust(width)
                style = ("bold underline" if index == 0 else "bold" if column == 0
                         else "red" if column in alarming and cell != "0" else "")
                text.append(padded, style)
                text.append("  " if column < len(row) - 1 else "\n")
        totals, dead = stats["totals"], stats["dead_letters"]
        text.append_tokens([
            ("admitted ", "dim"), (f"{totals['admitted']:,}", ""),
            ("  handled ", "dim"), (f"{totals['handled']:,}", ""),
            ("  dead letters ", "dim"), (f"{dead['total']:,}", "red" if dead["total"] else ""),
            ("  held ", "dim"), (f"{totals['held']:,}", ""),
            ("  elapsed ", "dim"), (f"{now - self._started:.1f}s", ""),
        ])
        return text

    def _rates(self, now: float, handled: dict[str, int]) -> dict[str, float]:
        """Handled per second per agent since the oldest kept sample."""
        if not self._samples:
            return {}
        then, before = self._samples[0]
        span = now - then
        if span <= 0:
            return {}
        return {name: (count - before.get(name, 0)) / span for name, count in handled.items()}

    def refresh(self) -> None:
        """Redraw now (or, outside ``async with``, print one frame)."""
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
        else:
            self.console.print(self.render())

    async def __aenter__(self) -> LiveView:
        from rich.live import Live

        self._started = self.clock()
        # rich's auto-refresh thread would call render(), reading the organism off its
        # loop: redraws come from the task below instead. What is printed to a terminal
        # is shown above the table; a redirected stdout is left alone.
        self._live = Live(self.render(), console=self.console, auto_refresh=False,
                          transient=self.transient, redirect_stdout=sys.stdout.isatty())
        self._live.start(refresh=True)
        self._route_logs()
        self._task = asyncio.get_running_loop().create_task(self._redraw_forever(),
                                                            name="sporeflow:live")
        return self

    def _route_logs(self) -> None:
        """Send log handlers that write to the terminal through rich, above the table.

        They hold the stderr of their making, so rich's redirection of ``sys.stderr``
        misses them, and a line written behind rich's back garbles the display.
        """
        from rich.file_proxy import FileProxy

        proxy = sys.stderr
        if not isinstance(proxy, FileProxy):  # not a terminal: nothing is redrawn
            return
        terminal = proxy.rich_proxied_file
        loggers = [logging.getLogger(), *(logger for logger in
                                          logging.Logger.manager.loggerDict.values()
                                          if isinstance(logger, logging.Logger))]
        for logger in loggers:
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is terminal:
                    handler.setStream(proxy)
                    self._routed.append((handler, terminal))

    async def _redraw_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.refresh()

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for handler, stream in self._routed:
            handler.setStream(stream)
        self._routed.clear()
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None


def _keys(keys: dict[str, int] | None) -> tuple[str, str]:
    return ("-", "-") if keys is None else (f"{keys['live']:,}", f"{keys['kept']:,}")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
