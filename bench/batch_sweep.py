"""Throughput against tail latency as the chain's batch grows (issue 20 point 3).

    python -m bench.batch_sweep [--runs 3] [--sizes 32,64,128,256,512,1024] [--scale 1]

The intake hands the chain at most ``max_batch`` spores at a time (512 by default): a
larger batch amortises each stage's per-batch cost, a smaller one lets a probe behind a
burst through sooner. For each size, in fresh processes: W1's rate and W6s's p50, p99
and p99.9 (a probe on a loaded channel), medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ENV = "SPOREFLOW_BENCH_MAX_BATCH"


def _patch_from_env() -> None:
    """Inside a run: give the intake the batch size asked for (a bench-only override)."""
    size = os.environ.get(ENV)
    if size:
        from sporeflow.pipeline.core import intake

        defaults = intake.Intake.__init__.__kwdefaults__
        if defaults is None or "max_batch" not in defaults:
            raise RuntimeError("Intake.__init__ takes no max_batch: update bench/batch_sweep")
        defaults["max_batch"] = int(size)


def _run(workload: str, size: int, scale: float) -> dict[str, float]:
    code = (f"import bench.batch_sweep as s; s._patch_from_env(); import bench.harness as h; "
            f"h.main(['--system', 'sporeflow', '--workload', '{workload}', "
            f"'--scale', '{scale}'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, cwd=Path(__file__).parent.parent,
                         env={**os.environ, ENV: str(size)})
    if out.returncode != 0:
        raise RuntimeError(f"{workload} at max_batch={size} failed:\n{out.stderr[-2000:]}")
    line: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="32,64,128,256,512,1024")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(f"Medians of {args.runs} run(s); load average {os.getloadavg()[0]:.2f} at start.\n")
    print("| max_batch | W1 spores/s | W6s p50 us | W6s p99 us | W6s p99.9 us |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        rates, p50, p99, p999 = [], [], [], []
        for _ in range(args.runs):  # interleaved: one W1 and one W6s per round
            rates.append(_run("W1", size, args.scale)["value"])
            probe = _run("W6s", size, args.scale)
            p50.append(probe["value"])
            p99.append(probe["p99_us"])
            p999.append(probe["p999_us"])
        print(f"| {size} | {statistics.median(rates):,.0f} | {statistics.median(p50):,.1f} | "
              f"{statistics.median(p99):,.1f} | {statistics.median(p999):,.1f} |", flush=True)
    print(f"\nLoad average {os.getloadavg()[0]:.2f} at the end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
