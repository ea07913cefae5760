"""The summary printed when a run ends: per-agent counts, channels, totals and throughput.

Plain text, so it needs no extra and reads the same on a terminal, in a log file
or in CI output.
"""

from __future__ import annotations

from typing import Any

from sporeflow.config.words import plural

__all__ = ["render_summary"]

_COLUMNS = ("received", "handled", "failed", "retried", "in_flight", "queued")
# Shown when some agent has threads abandoned past their timeout (agents.threads).
_ABANDONED = "abandoned"
_CHANNEL_COLUMNS = ("broadcasts", "deliveries", "refused")


def render_summary(stats: dict[str, Any], elapsed: float) -> str:
    """Render ``organism.stats()`` after a run of ``elapsed`` seconds as a text table: the
    agents this process hosts (over a broker with ``--agents``, not the others' zeros)."""
    hosted = (stats.get("broker") or {}).get("hosted")
    agents = {name: counts for name, counts in stats["agents"].items()
              if hosted is None or name in hosted}
    columns: tuple[str, ...] = _COLUMNS
    if any(counts.get(_ABANDONED) for counts in agents.values()):
        columns = (*columns, _ABANDONED)
    width = max([len("agent"), *map(len, agents)])
    header = (f"{'agent':<{width}}  " + "  ".join(f"{c:>9}" for c in columns)
              + f"  {'p50 ms':>9}  {'p99 ms':>9}")
    rows = [header, "-" * len(header)]
    for name, counts in agents.items():
        latency = counts["latency"]
        rows.append(f"{name:<{width}}  " + "  ".join(f"{counts[c]:>9,}" for c in columns)
                    + f"  {_ms(latency['p50_ms']):>9}  {_ms(latency['p99_ms']):>9}")
    channels = {name: counts for name, counts in stats.get("channels", {}).items()
                if any(counts.values())}
    if channels:
        cwidth = max([len("channel"), *map(len, channels)])
        rows.append("")
        rows.append(f"{'channel':<{cwidth}}  " + "  ".join(f"{c:>10}" for c in _CHANNEL_COLUMNS))
        for name, counts in channels.items():
            rows.append(f"{name:<{cwidth}}  "
                        + "  ".join(f"{counts[c]:>10,}" for c in _CHANNEL_COLUMNS))
    totals = stats["totals"]
    rate = totals["handled"] / elapsed if elapsed > 0 else 0.0
    dead = stats["dead_letters"]
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(dead["by_reason"].items()))
    rows.append("")
    rows.append(f"{plural(totals['handled'], 'spore')} handled in {elapsed:.2f}s "
                f"({_rate(rate)} spores/s); {totals['admitted']:,} admitted from outside, "
                f"{plural(totals['replies'], 'reply', 'replies')}, "
                f"{plural(dead['total'], 'dead letter')}" + (f" ({reasons})" if reasons else ""))
    return "\n".join(rows)


def _rate(per_second: float) -> str:
    """``2,277`` for a rate of thousands; two figures below ten (``0.48``), never ``0``."""
    return f"{per_second:,.0f}" if per_second >= 10 or per_second == 0 else f"{per_second:.2g}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
