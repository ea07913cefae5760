"""Run one workload of one system once, in this process, and print one JSON line.

    python -m bench.harness --system autogen-core --workload W1 --run 0 --scale 1

A runner module only defines `RUNS`: workload key -> function taking the (scaled)
`Workload` and returning an `Outcome` (bench.outcome), sync or async. The harness
times nothing itself: runners measure from the first send until everything was
handled, so that start-up and imports stay out of the numbers. The harness checks
the delivery count, turns the outcome into the result line and adds the peak RSS
of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import math
import platform
import resource
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bench.outcome import Outcome, WorkloadRun
from bench.systems import BASELINES, SYSTEMS, System
from bench.workloads import WORKLOADS, Workload


class CountMismatch(RuntimeError):
    """A runner saw a different number of deliveries than the workload sends."""


def peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the nearest-rank percentile `q` (0..100) of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def result_line(
    system: str, workload: Workload, run: int, scale: float, out: Outcome
) -> dict[str, Any]:
    if out.handled != workload.deliveries:
        raise CountMismatch(
            f"{system} {workload.key}: handled {out.handled} deliveries, "
            f"expected {workload.deliveries}"
        )
    line: dict[str, Any] = {"system": system, "workload": workload.key, "run": run}
    if workload.metric == "latency":
        if len(out.latencies_us) != workload.count:
            raise CountMismatch(
                f"{system} {workload.key}: {len(out.latencies_us)} latencies, "
                f"expected {workload.count}"
            )
        ordered = sorted(out.latencies_us)
        line.update(value=percentile(ordered, 50), p99_us=percentile(ordered, 99),
                    p999_us=percentile(ordered, 99.9))
    else:
        line["value"] = workload.deliveries / out.elapsed_s
    line.update(
        unit=workload.unit,
        peak_rss_mib=round(peak_rss_mib(), 1),
        elapsed_s=round(out.elapsed_s, 4),
        count=workload.count,
        width=workload.width,
        scale=scale,
        python=platform.python_version(),
    )
    return line


def missing_requirement(system: System, exc: ModuleNotFoundError) -> bool:
    """Tell whether `exc` means the system's own package is not installed."""
    return (exc.name or "").split(".")[0] == system.requires


def run_one(system: System, workload: Workload, run: int, scale: float) -> dict[str, Any]:
    try:
        runs: Mapping[str, WorkloadRun] = importlib.import_module(system.module).RUNS
    except ModuleNotFoundError as exc:
        if not missing_requirement(system, exc):
            raise
        reason = f"{system.requires} is not importable by {sys.executable} ({exc})"
        return {"system": system.name, "workload": workload.key, "run": run, "skipped": reason}
    if workload.key not in runs:  # a limit measured on some workloads only (sqlite)
        return {"system": system.name, "workload": workload.key, "run": run,
                "skipped": f"{system.name} does not run {workload.key}", "undefined": True}
    outcome = runs[workload.key](workload)
    if inspect.iscoroutine(outcome):
        outcome = asyncio.run(outcome)
    assert isinstance(outcome, Outcome)
    return result_line(system.name, workload, run, scale, outcome)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__)
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS | BASELINES))
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--run", type=int, default=0, help="run index, recorded in the line")
    parser.add_argument("--scale", type=float, default=1.0, help="factor on the workload count")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload].scaled(args.scale)
    line = run_one((SYSTEMS | BASELINES)[args.system], workload, args.run, args.scale)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
