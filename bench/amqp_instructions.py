"""Instructions per message of one side over RabbitMQ, counted by callgrind: what the
machine's load does not move.

    python -m bench.amqp_instructions [--systems plain,sporeflow] [--workloads oneway,rr]
                                      [--sides producer,consumer] [--counts 500,2500]
                                      [--json-out FILE]

Each (system, workload, side) is run twice by ``bench.amqp_compare.run_once``, that
side's process under ``valgrind --tool=callgrind`` (the other sides as usual), with the
two ``--counts`` of measured messages (the same warm-up); the difference of the two
totals over the difference of the counts is what one more message costs that side,
start-up and warm-up left out. ``producer`` is the requester on ``rr``, ``consumer``
the responder.

The side under valgrind runs some 50 times slower than the others, so it sees the
broker and the other side as very fast: its loop turns carry fewer messages each than
in a real run. Compare builds and systems with it, not against wall-clock numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.amqp_compare import SYSTEMS, WORKLOADS, _names, broker_pid, loadavg, run_once
from bench.amqp_compare import parser as compare_parser

_TOTAL = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def _wrapper(folder: Path, side: str) -> tuple[str, Path]:
    """A shell script that runs Python under callgrind, and the file it writes."""
    out = folder / f"{side}.callgrind"
    script = folder / f"{side}-python"
    script.write_text(f'#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out} '
                      f'{sys.executable} "$@"\n', encoding="ascii")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), out


def instructions(system: str, mode: str, side: str, count: int,
                 options: argparse.Namespace, broker: int) -> int:
    """Instructions ``side`` executed in one run of ``count`` measured messages."""
    with tempfile.TemporaryDirectory(prefix="amqp-cg-") as folder:
        script, out = _wrapper(Path(folder), side)
        if mode == "oneway":
            options.spores = count
        else:
            options.requests = count
        line = run_once(system, mode, options, broker, wrap=(side, script))
        if "error" in line:
            raise SystemExit(f"{system} {mode} ({side} under callgrind) failed: "
                             f"{line['error']}")
        match = _TOTAL.search(out.read_text(encoding="ascii", errors="replace"))
        if match is None:
            raise SystemExit(f"no total in {out}")
        return int(match.group(1))


def main(argv: list[str] | None = None) -> None:
    parse = argparse.ArgumentParser(prog="python -m bench.amqp_instructions",
                                    description=__doc__.splitlines()[0])
    parse.add_argument("--systems", default="plain,sporeflow")
    parse.add_argument("--workloads", default=",".join(WORKLOADS))
    parse.add_argument("--sides", default="producer,consumer")
    parse.add_argument("--counts", default="500,2500")
    parse.add_argument("--json-out")
    options, rest = parse.parse_known_args(argv)
    compare = compare_parser().parse_args(["--warmup", "200", "--warmup-rr", "50",
                                           "--idle-sample", "0", *rest])
    low, high = (int(n) for n in options.counts.split(","))
    broker = compare.broker_pid or broker_pid(compare.url)
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the sides inherit it
    results: dict[str, Any] = {"load_before": loadavg(), "counts": [low, high]}
    rows = ["| system | workload | side | instructions/msg |", "|---|---|---|---|"]
    for mode in _names(options.workloads, WORKLOADS):
        for system in _names(options.systems, SYSTEMS):
            for side in [s.strip() for s in options.sides.split(",") if s.strip()]:
                first = instructions(system, mode, side, low, compare, broker)
                second = instructions(system, mode, side, high, compare, broker)
                per = (second - first) / (high - low)
                results[f"{system}/{mode}/{side}"] = per
                rows.append(f"| {system} | {mode} | {side} | {per:,.0f} |")
                print(rows[-1], file=sys.stderr, flush=True)
    results["load_after"] = loadavg()
    print("\n".join(rows))
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
