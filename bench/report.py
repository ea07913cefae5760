"""Turn result lines into the side-by-side tables: medians, ratios and targets, peak RSS,
and with baseline twins (NAME@base) this build against the baseline.

The tables are Markdown, so a run's output can be pasted into BENCHMARKS.md as it is.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from bench.systems import BASE, LIMIT, SUBJECT, origin
from bench.targets import TARGETS
from bench.workloads import WORKLOADS

Line = dict[str, Any]
RSS_WORKLOAD = "W4"


class Results:
    """Result lines of one suite run, looked up by (system, workload)."""

    def __init__(self, lines: Sequence[Line]) -> None:
        self.lines = list(lines)

    def _of(self, system: str, workload: str) -> list[Line]:
        return [ln for ln in self.lines if ln["system"] == system and ln["workload"] == workload]

    def median(self, system: str, workload: str, field: str = "value") -> float | None:
        values = [ln[field] for ln in self._of(system, workload) if field in ln]
        return statistics.median(values) if values else None

    def status(self, system: str, workload: str) -> str:
        """Return what to show where there is no median: why there is none."""
        if any("error" in ln for ln in self._of(system, workload)):
            return "FAILED"
        # A system found missing is not tried again, on this workload or the next.
        if any("skipped" in ln for ln in self.lines if ln["system"] == system):
            return "skipped"
        return "-"

    def scale(self, system: str) -> float:
        scales = {ln["scale"] for ln in self.lines if ln["system"] == system and "scale" in ln}
        return scales.pop() if len(scales) == 1 else 1.0

    def notes(self) -> list[str]:
        seen: set[tuple[str, str]] = set()
        notes = []
        for ln in self.lines:
            text = ln.get("skipped") or ln.get("error")
            if text and (ln["system"], text) not in seen:
                seen.add((ln["system"], text))
                kind = "skipped" if "skipped" in ln else f"FAILED on {ln['workload']}"
                notes.append(f"- {ln['system']} {kind}: {text}")
        return notes


def speedup(workload: str, subject: float | None, other: float | None) -> float | None:
    """Return how many times faster `subject` is than `other` (>1: subject faster)."""
    if subject is None or other is None or subject <= 0 or other <= 0:
        return None
    return other / subject if WORKLOADS[workload].metric == "latency" else subject / other


def fmt_number(value: float | None, latency: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if latency or value < 100 else f"{value:,.0f}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.2g}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(row) for row in rows)])


def system_label(results: Results, system: str) -> str:
    scale = results.scale(system)
    return system if scale == 1.0 else f"{system} (x{scale:g})"


def medians_table(results: Results, systems: Sequence[str], workloads: Sequence[str]) -> str:
    def cell(system: str, key: str, field: str = "value") -> str:
        value = results.median(system, key, field)
        latency = WORKLOADS[key].metric == "latency"
        return results.status(system, key) if value is None else fmt_number(value, latency)

    rows = []
    for key in workloads:
        w = WORKLOADS[key]
        rows.append([f"{key} {w.name}", w.unit, *(cell(s, key) for s in systems)])
        if w.metric == "latency":
            rows.append([f"{key} {w.name}", "us p99", *(cell(s, key, "p99_us") for s in systems)])
            if key.startswith("W6"):  # the latency workloads: the tail matters
                rows.append([f"{key} {w.name}", "us p99.9",
                             *(cell(s, key, "p999_us") for s in systems)])
    header = ["workload", "unit", *(system_label(results, s) for s in systems)]
    return table(header, rows)


def verdicts(results: Results, workload: str, field: str) -> list[tuple[str, str]]:
    """Return (label, PASS/FAIL/pending) for each target on this workload and field."""
    return [
        (t.label, t.verdict(results.median(t.subject, workload, field),
                            results.median(t.peer, workload, field) if t.peer else None))
        for t in TARGETS
        if t.workload == workload and t.field == field
    ]


def subject_table(results: Results, systems: Sequence[str], workloads: Sequence[str]) -> str:
    others = [s for s in systems if s != SUBJECT and not s.endswith(BASE)]
    rows = []
    for key in workloads:
        subject = results.median(SUBJECT, key)
        ratios = [fmt_ratio(speedup(key, subject, results.median(o, key))) for o in others]
        lead = [f"{key} {WORKLOADS[key].name}", *ratios]
        judged = verdicts(results, key, "value") + verdicts(results, key, "p99_us")
        for label, verdict in judged or [("", "")]:
            rows.append([*lead, label, verdict])
            lead = [""] * len(lead)  # one row per target, the ratios on the first
    header = ["workload", *(f"vs {system_label(results, o)}" for o in others), "target", "result"]
    return table(header, rows)


def baseline_table(results: Results, twins: Sequence[str], workloads: Sequence[str]) -> str:
    """This build against the baseline build, per workload: medians, >1x faster now."""

    def cell(twin: str, key: str, field: str) -> str:
        now, base = results.median(origin(twin), key, field), results.median(twin, key, field)
        ratio = speedup(key, now, base)
        return "-" if ratio is None else f"{ratio:.2f}x"

    rows = []
    for key in workloads:
        w = WORKLOADS[key]
        rows.append([f"{key} {w.name}", w.unit, *(cell(t, key, "value") for t in twins)])
        if w.metric == "latency":
            rows.append([f"{key} {w.name}", "us p99", *(cell(t, key, "p99_us") for t in twins)])
    header = ["workload", "unit", *(f"{origin(t)} / {t}" for t in twins)]
    return table(header, rows)


def rss_table(results: Results, systems: Sequence[str]) -> str:
    cells = [
        fmt_number(results.median(s, RSS_WORKLOAD, "peak_rss_mib"), latency=True) for s in systems
    ]
    targets = "; ".join(
        f"{label}: {v}" for label, v in verdicts(results, RSS_WORKLOAD, "peak_rss_mib")
    )
    header = ["", *(system_label(results, s) for s in systems), "target"]
    return table(header, [[f"{RSS_WORKLOAD} peak RSS (MiB)", *cells, targets]])


def render(
    lines: Sequence[Line], systems: Sequence[str], workloads: Sequence[str], runs: int
) -> str:
    results = Results(lines)
    parts = [
        f"Medians of {runs} run(s); rates per second, latency in microseconds.",
        "",
        medians_table(results, systems, workloads),
    ]
    if SUBJECT in systems:
        parts += [
            "",
            f"{SUBJECT} speed against each (>1x: {SUBJECT} faster; {LIMIT} is the "
            "hand-written limit), and its targets:",
            "",
            subject_table(results, systems, workloads),
        ]
    twins = [s for s in systems if s.endswith(BASE)]
    if twins:
        parts += [
            "",
            f"This build against the baseline ({BASE}), median against median "
            "(>1x: this build faster):",
            "",
            baseline_table(results, twins, workloads),
        ]
    if RSS_WORKLOAD in workloads:
        parts += ["", rss_table(results, systems)]
    notes = results.notes()
    if any(results.scale(s) != 1.0 for s in systems):
        notes.append(
            "- (xF): that system ran at F times the workload sizes; rates stay "
            "per second, so they compare, but peak RSS does not."
        )
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)
