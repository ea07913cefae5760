"""Where a system's CPU goes per message over RabbitMQ: both sides profiled in one run.

    python -m bench.amqp_profile [--system sporeflow] [--mode oneway] [--spores 20000]
                                 [--tool py-spy|cprofile] [--rate 1000] [--top 25]
                                 [--signed] [--out DIR] [--json-out FILE]

One run of ``bench.amqp_compare`` unprofiled first (its CPU us/message per side is
what the shares are scaled to: a profiler slows what it watches), then the same run
with the producer and the consumer profiled over the measured part only:

- ``py-spy`` (default; ``pip install py-spy``): samples both processes from outside
  (``--nonblocking``: it never stops them), idle threads left out; a sample is
  charged to the innermost frame of a known group (a sporeflow module, aio-pika,
  aiormq, pamqp, aiostream, asyncio's loop), so ``json.dumps`` inside the codec
  counts for the codec and aio-pika inside the bridge for aio-pika;
- ``cprofile``: deterministic, with call counts per message (how many tasks, frames
  and encodes one message costs); its own cost inflates small functions.

Printed: per side, the groups and the top functions with their share of the side's
CPU and that share in us/message.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.amqp_compare import SIDES, broker_pid, loadavg, run_once
from bench.amqp_compare import parser as compare_parser
from bench.amqp_sides import KEY_ENV, Setup, Signals, Tally

# (group, what a frame "name (path:line)" contains); the first that matches names it.
GROUPS: tuple[tuple[str, str], ...] = (
    ("socket send (syscall)", "_SelectorSocketTransport.write ("),
    ("socket send (syscall)", "<method 'send' of '_socket.socket' objects>"),
    ("socket receive (syscall)", "._read_ready"),
    ("socket receive (syscall)", "<method 'recv"),
    ("sporeflow amqp_codec", "broker/amqp_codec.py"),
    ("sporeflow amqp_backend", "broker/amqp_backend.py"),
    ("sporeflow bridge", "broker/bridge.py"),
    ("sporeflow signing", "steps/signing.py"),
    ("sporeflow spore", "steps/spore.py"),
    ("sporeflow outside/ingress", "pipeline/outside.py"),
    ("sporeflow outside/ingress", "core/ingress.py"),
    ("sporeflow intake", "core/intake.py"),
    ("sporeflow intake", "steps/buckets.py"),
    ("sporeflow ledger", "core/ledger.py"),
    ("sporeflow lanes/runners", "steps/lanes.py"),
    ("sporeflow lanes/runners", "steps/runners.py"),
    ("sporeflow lanes/runners", "pipeline/agents/"),
    ("sporeflow chain stages", "steps/"),
    ("sporeflow chain stages", "core/chain.py"),
    ("sporeflow chain stages", "core/budget.py"),
    ("sporeflow observe", "pipeline/observe/"),
    ("sporeflow core (other)", "pipeline/core/"),
    ("sporeflow (other)", "pipeline/"),
    ("aiostream", "aiostream/"),
    ("aio-pika", "aio_pika/"),
    ("aiormq", "aiormq/"),
    ("pamqp", "pamqp/"),
    ("faststream", "faststream/"),
    ("fast_depends/pydantic", "fast_depends/"),
    ("fast_depends/pydantic", "pydantic"),
    ("anyio", "anyio/"),
    ("asyncio loop", "asyncio/"),
    ("bench harness", "bench/amqp_"),
)


# Frames on (nearly) every stack: left out of the top functions by inclusive share.
BOILERPLATE = ("multiprocessing/", "asyncio/runners.py", "(<string>)", "run_forever (",
               "run_until_complete (", "_run_once (", "Handle._run (", "producer_main (",
               "consumer_main (")


def _group(frame: str) -> str | None:
    for name, part in GROUPS:
        if part in frame:
            return name
    return None


def _function(frame: str) -> str:
    """``name (path:line)`` without the line, the path from its package on."""
    name, _, where = frame.rpartition(" (")
    path = where.rsplit(":", 1)[0]
    for anchor in ("sporeflow/", "site-packages/", "python3.11/", "lib/python"):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            break
    return f"{name} ({path})"


# -- inside the profiled processes (hooks of bench.amqp_compare) ----------------------------


def _where(setup: Setup) -> tuple[str, Path]:
    assert setup.profile is not None
    tool, _, folder = setup.profile.partition(":")
    return tool, Path(folder)


def profiled_tally(setup: Setup, signals: Signals, side: str) -> Tally:
    """The consumer's tally; with cProfile, profiling from the warm-up's end to the last."""
    tool, folder = _where(setup)
    if tool != "cprofile":
        return Tally(setup, signals)  # py-spy watches from outside
    profiler = cProfile.Profile()

    class Profiled(Tally):
        __slots__ = ()

        def __call__(self) -> None:
            super().__call__()
            if self.n == self.warmup:
                profiler.enable()
            elif self.n == self.total:
                profiler.disable()
                profiler.dump_stats(folder / f"{side}.pstats")

    return Profiled(setup, signals)


class profiled_meter:  # noqa: N801 - stands in for a Meter
    """The producer's meter: starts the profilers as the measured part starts."""

    def __init__(self, setup: Setup, meter: Any) -> None:
        self.tool, self.folder = _where(setup)
        self.meter, self.rate = meter, int(os.environ.get("BENCH_PYSPY_RATE", "1000"))
        self.spies: list[subprocess.Popen[bytes]] = []
        self.profiler = cProfile.Profile()

    def start(self) -> None:
        if self.tool == "py-spy":
            spy = str(Path(sys.executable).with_name("py-spy"))
            for side in ("producer", "consumer"):
                self.spies.append(subprocess.Popen(
                    [spy, "record", "--pid", str(self.meter.pids[side]), "--rate",
                     str(self.rate), "--nonblocking", "--format", "raw",
                     "-o", str(self.folder / f"{side}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.5)  # attached before the measured part starts
        self.meter.start()
        if self.tool == "cprofile":
            self.profiler.enable()

    def stop(self) -> dict[str, Any]:
        if self.tool == "cprofile":
            self.profiler.disable()
        result: dict[str, Any] = self.meter.stop()
        if self.tool == "cprofile":
            self.profiler.dump_stats(self.folder / "producer.pstats")
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            spy.wait(60)
        return result


# -- reading the profiles -----------------------------------------------------------------


# A thread sampled in one of these waits is taken for idle (py-spy --nonblocking cannot
# always tell): the watchdog's and the executor's threads, the loop's epoll_wait.
WAITS = ("Condition.wait (", "Event.wait (", "EpollSelector.select (", "Thread.join (",
         "<method 'poll' of 'select.epoll' objects>", "<method 'acquire' of '_thread.lock")


def read_pyspy(path: Path) -> dict[str, Any]:
    """Groups and functions of a py-spy raw file, as shares of its samples (waits out)."""
    total, groups, own, inclusive = 0, Counter[str](), Counter[str](), Counter[str]()
    waiting = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(wait in frames[-1] for wait in WAITS):
            waiting += count
            continue
        total += count
        own[_function(frames[-1])] += count
        for function in {_function(frame) for frame in frames}:
            inclusive[function] += count
        groups[next((g for g in map(_group, reversed(frames)) if g), "other")] += count
    return {"samples": total, "waiting": waiting, "groups": groups, "self": own,
            "inclusive": inclusive}


def read_cprofile(path: Path) -> dict[str, Any]:
    """Self and cumulative time per function; waits (epoll, locks) are left out of the
    total, as the wall clock cProfile reads counts them. A coroutine's calls count each
    time it is resumed."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    own, inclusive, calls, groups = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    total = waiting = 0.0
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.items():
        frame = f"{name} ({file}:{line})"
        if any(wait in frame for wait in WAITS):
            waiting += tottime
            continue
        total += tottime
        function = _function(frame)
        own[function] += tottime
        inclusive[function] = max(inclusive[function], cumtime)
        calls[function] += ncalls
        groups[_group(frame) or ("C builtins" if file == "~" else "other")] += tottime
    return {"samples": total, "waiting": waiting, "groups": groups, "self": own,
            "inclusive": inclusive, "calls": calls}


def table(profile: dict[str, Any], us: float, count: int, top: int) -> list[str]:
    """Markdown rows: the groups, then the top functions by inclusive and by self share."""
    total = profile["samples"] or 1
    rows = ["| group | share | us/msg |", "|---|---|---|"]
    for name, value in profile["groups"].most_common():
        rows.append(f"| {name} | {value / total:.1%} | {value / total * us:.1f} |")
    calls = profile.get("calls")
    for kind in ("inclusive", "self"):
        head = f"| top by {kind} | share | us/msg |" + (" calls/msg |" if calls else "")
        rows += ["", head, "|---|---|---|" + ("---|" if calls else "")]
        ranked = [(name, value) for name, value in profile[kind].most_common()
                  if not any(part in name for part in BOILERPLATE)]
        for name, value in ranked[:top]:
            rows.append(f"| `{name}` | {value / total:.1%} | {value / total * us:.1f} |"
                        + (f" {calls[name] / count:.2f} |" if calls else ""))
    return rows


def main(argv: list[str] | None = None) -> None:
    parse = argparse.ArgumentParser(prog="python -m bench.amqp_profile",
                                    description=__doc__.splitlines()[0])
    parse.add_argument("--system", default="sporeflow",
                       choices=("plain", "sporeflow", "faststream"))
    parse.add_argument("--mode", default="oneway", choices=("oneway", "rr"))
    parse.add_argument("--tool", default="py-spy", choices=("py-spy", "cprofile"))
    parse.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parse.add_argument("--top", type=int, default=25)
    parse.add_argument("--out", default="/tmp/sporeflow-amqp-profile")
    parse.add_argument("--no-calibrate", action="store_true",
                       help="scale to the profiled run's CPU, not an unprofiled run's")
    options, rest = parse.parse_known_args(argv)
    compare = compare_parser().parse_args(["--spores", "20000", *rest])
    if compare.signed:
        os.environ.setdefault(KEY_ENV, os.urandom(32).hex())
    os.environ["BENCH_PYSPY_RATE"] = str(options.rate)
    folder = Path(options.out)
    folder.mkdir(parents=True, exist_ok=True)
    broker = compare.broker_pid or broker_pid(compare.url)
    load_before = loadavg()
    plain_line = None if options.no_calibrate else run_once(
        options.system, options.mode, compare, broker)
    line = run_once(options.system, options.mode, compare, broker,
                    profile=f"{options.tool}:{folder}")
    for done in (plain_line, line):
        if done is not None and "error" in done:
            raise SystemExit(f"the run failed: {done['error']}")
    scale = (plain_line or line)["us"]
    count = line["count"]
    command = "python -m bench.amqp_profile " + " ".join(sys.argv[1:] if argv is None
                                                          else argv)
    out = [f"`{command.strip()}`", "",
           f"{options.system} {options.mode}, {count:,} messages; load average "
           f"{load_before} before, {loadavg()} after; unprofiled run "
           + (f"{plain_line['rate']:,.0f}/s, " if plain_line else "")
           + "CPU us/msg " + ", ".join(f"{s} {scale[s]:.0f}" for s in SIDES)
           + f"; profiled run {line['rate']:,.0f}/s ({options.tool})"]
    report: dict[str, Any] = {"unprofiled": plain_line, "profiled": line}
    for side in ("producer", "consumer"):
        path = folder / (f"{side}.txt" if options.tool == "py-spy" else f"{side}.pstats")
        if not path.exists():
            out += ["", f"no profile of the {side} ({path})"]
            continue
        profile = read_pyspy(path) if options.tool == "py-spy" else read_cprofile(path)
        report[side] = {k: (dict(v.most_common(200)) if isinstance(v, Counter) else v)
                        for k, v in profile.items()}
        unit = (f"samples ({profile['waiting']:,} more in a wait, left out)"
                if options.tool == "py-spy" else
                f"s profiled ({profile['waiting']:,.1f} s more in a wait, left out)")
        out += ["", f"### {side}: {scale[side]:.0f} us/msg, "
                    f"{profile['samples']:,.0f} {unit}", "",
                *table(profile, scale[side], count, options.top)]
    print("\n".join(out))
    json_out = compare.json_out
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
