"""Run the suite: every (system, workload) side by side, each run in a fresh process.

    python -m bench [--runs 5] [--systems sporeflow,autogen-core] [--workloads W1,W3]
                    [--quick] [--python PY] [--python-peers PY] [--json-out FILE]
                    [--baseline-python PY]

A fresh process per run keeps peak RSS per run and one system's warm state out of the
next. Runs interleave (for each workload, run i of every system, then run i + 1), so
a drift of the machine spreads over all systems. A runner that fails or whose system
is not installed is reported in the table; it never stops the suite.

Before and after in one run: `--baseline-python PY`, PY a venv with another (older)
build of sporeflow installed, runs sporeflow and sporeflow+journal a second time
under PY, as sporeflow@base and sporeflow+journal@base, interleaved like every
system: the bench code of this checkout, the sporeflow of PY. The report adds the
ratio this build / baseline per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.report import render
from bench.systems import BASE, BASELINES, SYSTEMS, System, origin
from bench.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent  # runners import `bench` from here
QUICK = 0.1


def names(option: str, known: Iterable[str]) -> list[str]:
    """Parse a comma-separated option, keeping the order of `known`."""
    known = list(known)
    picked = [n.strip() for n in option.split(",") if n.strip()]
    unknown = [n for n in picked if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(known)}")
    return [n for n in known if n in picked]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=5, help="runs per (system, workload)")
    p.add_argument(
        "--systems",
        type=lambda o: names(o, SYSTEMS),
        default=list(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)}",
    )
    p.add_argument(
        "--workloads",
        type=lambda o: names(o, WORKLOADS),
        default=list(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)}",
    )
    p.add_argument("--quick", action="store_true", help=f"scale every size by {QUICK}")
    p.add_argument(
        "--scale",
        action="append",
        type=scale_override,
        default=[],
        metavar="SYSTEM=FACTOR",
        help="override a system's size factor (praval defaults to 0.1)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for sporeflow and the asyncio limit (default: this one)",
    )
    p.add_argument(
        "--python-peers",
        default=sys.executable,
        help="interpreter for autogen-core and praval (default: this one)",
    )
    p.add_argument(
        "--baseline-python",
        metavar="PY",
        help="also run sporeflow and sporeflow+journal under PY, a venv with another build "
        f"of sporeflow, as NAME{BASE}; the report adds this build / baseline per workload",
    )
    p.add_argument(
        "--json-out",
        type=Path,
        default=ROOT / "bench" / "results" / "latest.jsonl",
        help="where to write the result lines (default: %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    return p.parse_args(argv)


def scale_override(option: str) -> tuple[str, float]:
    name, _, factor = option.partition("=")
    if name not in SYSTEMS:
        raise argparse.ArgumentTypeError(f"unknown system {name!r} in {option!r}")
    try:
        return name, float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option!r} is not SYSTEM=FACTOR") from None


def scales(args: argparse.Namespace) -> dict[str, float]:
    factor = {name: s.scale for name, s in SYSTEMS.items()} | dict(args.scale)
    quick = QUICK if args.quick else 1.0
    return {name: round(f * quick, 6) for name, f in factor.items()}


def run_one(
    python: str, system: System, workload: str, run: int, scale: float, timeout: float
) -> dict[str, Any]:
    """Run one (system, workload) in a fresh interpreter; return its result line."""
    options = {"--system": system.name, "--workload": workload, "--run": run, "--scale": scale}
    cmd = [python, "-m", "bench.harness", *(str(x) for kv in options.items() for x in kv)]
    head = {"system": system.name, "workload": workload, "run": run}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return {**head, "skipped": f"no interpreter at {python}"}
    except subprocess.TimeoutExpired:
        return {**head, "error": f"timed out after {timeout:g}s"}
    if proc.returncode == 0 and proc.stdout.strip():
        line: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return line
    sys.stderr.write(proc.stderr)  # fail loudly: the runner's traceback, as it printed it
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {**head, "error": last}


def progress(line: dict[str, Any], runs: int, out: TextIO) -> None:
    where = f"{line['workload']} run {line['run'] + 1}/{runs} {line['system']:<12}"
    if "value" in line:
        what = f"{line['value']:>14,.1f} {line['unit']:<13} {line['peak_rss_mib']:>6} MiB"
    else:
        what = f"skipped: {line['skipped']}" if "skipped" in line else f"FAILED: {line['error']}"
    print(f"{where} {what}", file=out, flush=True)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    factor = scales(args)
    systems = [SYSTEMS[name] for name in args.systems]
    if args.baseline_python:  # each baseline twin right after the system it runs again
        systems = [t for s in systems for t in (s, BASELINES.get(s.name + BASE)) if t]
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    lines: list[dict[str, Any]] = []
    skipped: set[str] = set()
    with args.json_out.open("w") as sink:
        for workload in args.workloads:
            for run in range(args.runs):
                for system in systems:
                    if system.name in skipped:
                        continue
                    python = args.python_peers if system.peer else args.python
                    if system.baseline:
                        python = args.baseline_python
                    scale = factor[origin(system.name)]  # a twin runs the sizes of its origin
                    line = run_one(python, system, workload, run, scale, args.timeout)
                    if "skipped" in line and not line.get("undefined"):
                        skipped.add(system.name)  # not installed: no use trying again
                    lines.append(line)
                    sink.write(json.dumps(line) + "\n")
                    sink.flush()
                    progress(line, args.runs, sys.stderr)
    print(f"\nMachine: {machine()}")
    print(f"Interpreters: {args.python} (sporeflow, asyncio); {args.python_peers} (peers)")
    if args.baseline_python:
        print(f"Baseline: {args.baseline_python} (*{BASE})")
    # Other work on the machine skews every number: say how busy it was.
    print(f"Load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"Result lines: {args.json_out}\n")
    print(render(lines, [s.name for s in systems], args.workloads, args.runs))
    return 1 if any("error" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
