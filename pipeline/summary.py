"""The summary printed when a run ends: per-agent counts, totals and throughput."""

from __future__ import annotations

from typing import Any

__all__ = ["render_summary"]

_COLUMNS = ("received", "handled", "failed", "retried", "in_flight", "queued")


def render_summary(stats: dict[str, Any], elapsed: float) -> str:
    agents = stats["agents"]
    width = max([len("agent"), *map(len, agents)])
    header = f"{'agent':<{width}}  " + "  ".join(f"{c:>9}" for c in _COLUMNS) + "     p50 ms"
    rows = [header, "-" * len(header)]
    for name, counts in agents.items():
        p50 = counts["latency"]["p50_ms"]
        rows.append(f"{name:<{width}}  " + "  ".join(f"{counts[c]:>9,}" for c in _COLUMNS)
                    + f"  {p50 if p50 is not None else '-':>9}")
    totals = stats["totals"]
    rate = totals["handled"] / elapsed if elapsed > 0 else 0.0
    dead = stats["dead_letters"]
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(dead["by_reason"].items()))
    rows.append("")
    rows.append(f"{totals['handled']:,} spores handled in {elapsed:.2f}s ({rate:,.0f} spores/s); "
                f"{totals['admitted']:,} admitted from outside, {totals['replies']:,} replies, "
                f"{dead['total']:,} dead letters" + (f" ({reasons})" if reasons else ""))
    return "\n".join(rows)
