"""sporeflow against plain aio-pika and FastStream on one RabbitMQ, interleaved, with the
CPU time each process spends per message.

    python -m bench.amqp_compare [--runs 5] [--spores 10000] [--requests 1000]
                                 [--systems plain,sporeflow,faststream]
                                 [--workloads oneway,rr] [--signed] [--url amqp://...]
                                 [--broker-pid PID] [--json-out FILE] [--base-path DIR]

Workloads (sides in ``bench.amqp_sides``; each side in a fresh process):

- ``oneway``: N persistent messages from a producer process to a consumer process
  that acks after its handler; rate = N / (first publish .. last handled);
- ``rr``: sequential request/reply round trips; round trips/s, p50 and p99.

Runs interleave: run i of plain, sporeflow, FastStream, then run i + 1, one workload
after the other; the table shows medians (and the spread) over the runs. Before the
measured part, a warm-up goes through (``--warmup``, ``--warmup-rr``).

CPU per message: utime + stime (``/proc/<pid>/stat``) of the producer, the consumer
and the broker (the ``beam.smp`` of the node ``rabbit``), read as the measured part
starts and as it ends, divided by N. The broker and the machine are shared: what
others do on them lands in these numbers, so each run also samples the broker's CPU
while idle (``--idle-sample`` seconds before the run) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
import uuid
from typing import Any

from bench.amqp_sides import (
    CONSUMERS,
    KEY_ENV,
    PREFETCH,
    PRODUCERS,
    SPAWN,
    TOPIC_BINDING,
    URL,
    VARIANTS,
    WAIT,
    WINDOW,
    Setup,
    Signals,
    Tally,
    _spec,
    topic_exchange,
)
from bench.processes import broker_pid, cpu_seconds, loadavg

SYSTEMS = ("plain", *VARIANTS, "sporeflow-base", "sporeflow", "faststream")
DEFAULT_SYSTEMS = ("plain", "sporeflow", "faststream")
LABELS = {"plain": "plain aio-pika", "sporeflow": "sporeflow", "faststream": "FastStream",
          "sporeflow-base": "sporeflow (--base-path)",
          **{variant: f"plain {variant[6:]}" for variant in VARIANTS}}
WORKLOADS = ("oneway", "rr")
SIDES = ("producer", "consumer", "broker")
class Meter:
    """CPU seconds of the producer (this process), the consumer and the broker, and wall
    time, between start() and stop()."""

    def __init__(self, consumer: int, broker: int) -> None:
        self.pids = {"producer": os.getpid(), "consumer": consumer, "broker": broker}
        self._start: tuple[float, dict[str, float]] = (0.0, {})

    def _read(self) -> dict[str, float]:
        return {side: cpu_seconds(pid) for side, pid in self.pids.items()}

    def start(self) -> None:
        cpu = self._read()
        self._start = (time.perf_counter(), cpu)

    def stop(self) -> dict[str, Any]:
        ended = time.perf_counter()
        cpu = self._read()
        started, before = self._start
        return {"elapsed": ended - started,
                "cpu": {side: cpu[side] - before[side] for side in SIDES}}


# -- one run ------------------------------------------------------------------------------


def _sporeflow_from(setup: Setup) -> None:
    """sporeflow-base imports the build at ``--base-path`` (before the one installed)."""
    if setup.path:
        sys.path.insert(0, setup.path)


def consumer_main(setup: Setup, signals: Signals) -> None:
    _sporeflow_from(setup)
    tally = Tally(setup, signals)
    if setup.profile:
        from bench.amqp_profile import profiled_tally
        tally = profiled_tally(setup, signals, "consumer")
    asyncio.run(CONSUMERS[setup.system](setup, tally, signals))


def producer_main(setup: Setup, signals: Signals, consumer: int, broker: int,
                  conn: Any) -> None:
    _sporeflow_from(setup)
    meter: Any = Meter(consumer, broker)
    if setup.profile:
        from bench.amqp_profile import profiled_meter
        meter = profiled_meter(setup, meter)
    try:
        conn.send(asyncio.run(PRODUCERS[setup.system, setup.mode](setup, signals, meter)))
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def queue_arguments(setup_name: str, signed: bool) -> dict[str, Any]:
    """The arguments sporeflow gives an agent's queue (dead letters to this run's own)."""
    from sporeflow.pipeline import Topology

    probe = Setup("sporeflow", "oneway", URL, setup_name, {}, 0, 0, signed)
    topology = Topology.of(_spec(probe, None))
    try:
        arguments = topology.queue_arguments("sink")
    except TypeError:  # before quorum queues (e1955cc): the same for every agent
        arguments = topology.queue_arguments()  # type: ignore[call-arg]
    arguments["x-dead-letter-exchange"] = f"{setup_name}.dead"
    return arguments


async def _declare(setup: Setup) -> str:
    """Declare the plain and FastStream queue; return the broker's version."""
    import aio_pika

    connection = await aio_pika.connect(setup.url)
    async with connection:
        transport = connection.transport
        properties = getattr(transport.connection if transport else None,
                             "server_properties", None) or {}
        if not setup.system.startswith("sporeflow"):
            channel = await connection.channel()
            queue = await channel.declare_queue(setup.name, durable=True,
                                                arguments=setup.arguments)
            if setup.system in ("plain-topic", "plain-wire"):
                exchange = await channel.declare_exchange(
                    topic_exchange(setup), aio_pika.ExchangeType.TOPIC, durable=True)
                await queue.bind(exchange, routing_key=TOPIC_BINDING)
        version = properties.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)


async def _clean(setup: Setup) -> None:
    if setup.system.startswith("sporeflow"):
        from sporeflow.pipeline import Topology
        from sporeflow.pipeline.broker.amqp_backend import AmqpBackend

        await AmqpBackend(setup.url).destroy(Topology.of(_spec(setup, None)))
        return
    import aio_pika

    connection = await aio_pika.connect(setup.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(setup.name)
        if setup.system in ("plain-topic", "plain-wire"):
            await channel.exchange_delete(topic_exchange(setup))


def _idle_broker(broker: int, seconds: float) -> float:
    """The broker's CPU share while this bench does nothing (others may not be idle)."""
    if seconds <= 0:
        return 0.0
    before, started = cpu_seconds(broker), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(broker) - before) / (time.perf_counter() - started)


def _start(process: Any, executable: str | None) -> None:
    """Start ``process``, spawned through ``executable`` if given (a valgrind wrapper)."""
    if executable is None:
        process.start()
        return
    from multiprocessing import spawn

    spawn.set_executable(executable)
    try:
        process.start()
    finally:
        spawn.set_executable(sys.executable)


def run_once(system: str, mode: str, options: argparse.Namespace, broker: int,
             profile: str | None = None,
             wrap: tuple[str, str] | None = None) -> dict[str, Any]:
    """One measured run of ``system`` on ``mode``, in two fresh processes (``wrap``:
    ``(side, executable)``, that side spawned through ``executable``)."""
    name = f"bench-{system}-{mode}-{uuid.uuid4().hex[:8]}"
    count = options.spores if mode == "oneway" else options.requests
    warmup = options.warmup if mode == "oneway" else options.warmup_rr
    setup = Setup(system, mode, options.url, name, queue_arguments(name, options.signed),
                  warmup, count, options.signed, profile,
                  options.base_path if system == "sporeflow-base" else None)
    line: dict[str, Any] = {"system": system, "mode": mode, "count": count,
                            "loadavg_before": loadavg(),
                            "broker_idle": round(_idle_broker(broker, options.idle_sample), 4)}
    signals = Signals()
    consumer = producer = None
    try:
        line["rabbitmq"] = asyncio.run(_declare(setup))
        consumer = SPAWN.Process(target=consumer_main, args=(setup, signals), daemon=True)
        wrapped = dict([wrap]) if wrap else {}
        _start(consumer, wrapped.get("consumer"))
        if not signals.ready.wait(600 if wrap else 60):
            raise RuntimeError("the consumer did not start within 60s")
        receive, send = SPAWN.Pipe(duplex=False)
        producer = SPAWN.Process(target=producer_main, daemon=True,
                                 args=(setup, signals, consumer.pid, broker, send))
        _start(producer, wrapped.get("producer"))
        if not receive.poll(WAIT + 60):
            raise RuntimeError(f"the producer did not finish within {WAIT + 60}s")
        line.update(receive.recv())
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
        line["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        signals.stop.set()
        for process in (producer, consumer):
            if process is not None:
                process.join(300 if wrap else 30)
                if process.is_alive():
                    process.kill()
        try:
            asyncio.run(_clean(setup))
        except Exception as exc:  # noqa: BLE001
            line.setdefault("error", f"cleaning up: {type(exc).__name__}: {exc}")
    line["loadavg_after"] = loadavg()
    return _per_message(line)


def _per_message(line: dict[str, Any]) -> dict[str, Any]:
    if "elapsed" not in line:
        return line
    count = line["count"]
    line["rate"] = count / line["elapsed"]
    line["us"] = {side: line["cpu"][side] / count * 1e6 for side in SIDES}
    line["us"]["total"] = sum(line["us"][side] for side in SIDES)
    # What the broker did for others meanwhile, at the rate sampled before the run, out.
    line["us"]["broker_net"] = max(
        line["cpu"]["broker"] - line["broker_idle"] * line["elapsed"], 0.0) / count * 1e6
    took = sorted(line.pop("took", []))
    if took:
        line["p50_ms"] = statistics.median(took) * 1000
        line["p99_ms"] = took[max(int(len(took) * 0.99) - 1, 0)] * 1000
    return line


# -- the report ---------------------------------------------------------------------------


def summarize(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per "system/mode": the median, min and max of each measure over the good runs."""
    out: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        for mode in WORKLOADS:
            good = [ln for ln in lines if ln["system"] == system and ln["mode"] == mode
                    and "rate" in ln]
            errors = [ln["error"] for ln in lines if ln["system"] == system
                      and ln["mode"] == mode and "error" in ln]
            if not good and not errors:
                continue
            entry: dict[str, Any] = {"runs": len(good), "errors": errors}
            measures = {"rate": [ln["rate"] for ln in good],
                        "broker_idle": [ln["broker_idle"] for ln in good]}
            for side in (*SIDES, "total", "broker_net"):
                measures[f"us_{side}"] = [ln["us"][side] for ln in good]
            if mode == "rr":
                measures["p50_ms"] = [ln["p50_ms"] for ln in good]
                measures["p99_ms"] = [ln["p99_ms"] for ln in good]
            for key, values in measures.items():
                if values:
                    entry[key] = {"median": statistics.median(values), "min": min(values),
                                  "max": max(values)}
            out[f"{system}/{mode}"] = entry
    return out


def _rate_cell(entry: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if entry is None or "rate" not in entry:
        return "FAILED" if entry else "-"
    rate = entry["rate"]
    text = f"{rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f})"
    if base is not None and "rate" in base and base is not entry:
        text += f" **{rate['median'] / base['rate']['median']:.2f}x**"
    return text


def _us_cell(entry: dict[str, Any] | None, base: dict[str, Any] | None, key: str) -> str:
    if entry is None or key not in entry:
        return "-"
    value = entry[key]["median"]
    if base is not None and key in base and base is not entry:
        return f"{value:,.0f} ({value - base[key]['median']:+,.0f})"
    return f"{value:,.0f}"


def render(summary: dict[str, dict[str, Any]], options: argparse.Namespace,
           meta: dict[str, Any]) -> str:
    systems = [s for s in SYSTEMS if any(k.startswith(f"{s}/") for k in summary)]
    head = "| | " + " | ".join(LABELS[s] for s in systems) + " |"
    rule = "|---" * (len(systems) + 1) + "|"
    rows = [f"`{meta['command']}`", "",
            f"{meta['when']}; Python {meta['python']}, aio-pika {meta['aio_pika']}, "
            f"FastStream {meta['faststream']}, RabbitMQ {meta['rabbitmq']} (pid "
            f"{meta['broker_pid']}); {options.runs} interleaved runs, medians (min-max); "
            f"load average before {meta['load_before']}, after {meta['load_after']}; "
            f"sides: {meta['sides']}", "", head, rule]
    titles = {"oneway": f"one-way, {options.spores:,} persistent messages",
              "rr": f"request/reply, {options.requests:,} sequential"}
    for mode in WORKLOADS:
        entries = {s: summary.get(f"{s}/{mode}") for s in systems}
        if not any(entries.values()):
            continue
        base = entries.get("plain")
        unit, per = ("messages/s", "msg") if mode == "oneway" else ("round trips/s", "rt")
        rows.append(f"| **{titles[mode]}**: {unit} |"
                    + "".join(f" {_rate_cell(e, base)} |" for e in entries.values()))
        if mode == "rr":
            rows.append("| p50 / p99 ms |" + "".join(
                f" {e['p50_ms']['median']:.2f} / {e['p99_ms']['median']:.2f} |"
                if e and "p50_ms" in e else " - |" for e in entries.values()))
        for side in (*SIDES, "total", "broker_net"):
            label = {"producer": "requester" if mode == "rr" else "producer",
                     "consumer": "responder" if mode == "rr" else "consumer",
                     "broker": "broker", "total": "all three",
                     "broker_net": "broker less its idle rate"}[side]
            rows.append(f"| CPU us/{per}, {label} |"
                        + "".join(f" {_us_cell(e, base, f'us_{side}')} |"
                                  for e in entries.values()))
        rows.append("| broker busy when idle (CPU share) |" + "".join(
            f" {e['broker_idle']['median']:.1%} |" if e and "broker_idle" in e else " - |"
            for e in entries.values()))
    notes = [f"- {key} FAILED: {error}" for key, entry in summary.items()
             for error in dict.fromkeys(entry["errors"])]
    return "\n".join(rows + ([""] + notes if notes else [])) + "\n"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("aio-pika", "faststream"):
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            found[package.replace("-", "_")] = "not installed"
    return found


def _names(text: str, known: tuple[str, ...]) -> list[str]:
    chosen = [word.strip() for word in text.split(",") if word.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"unknown {unknown}; choose from {', '.join(known)}")
    return [name for name in known if name in chosen]


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="python -m bench.amqp_compare",
                                    description=__doc__.splitlines()[0])
    parse.add_argument("--runs", type=int, default=5)
    parse.add_argument("--spores", type=int, default=10_000, help="one-way messages")
    parse.add_argument("--requests", type=int, default=1_000, help="round trips")
    parse.add_argument("--warmup", type=int, default=500, help="one-way warm-up messages")
    parse.add_argument("--warmup-rr", type=int, default=50, help="warm-up round trips")
    parse.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                       help=f"of {','.join(SYSTEMS)} (on request/reply: plain-topic and "
                            f"plain-wire only)")
    parse.add_argument("--workloads", default=",".join(WORKLOADS))
    parse.add_argument("--signed", action="store_true",
                       help="sporeflow signs and verifies every spore (a random key)")
    parse.add_argument("--url", default=URL)
    parse.add_argument("--broker-pid", type=int, help="the broker's beam.smp (found if one)")
    parse.add_argument("--idle-sample", type=float, default=1.0,
                       help="seconds of the broker's idle CPU sampled before each run")
    parse.add_argument("--base-path",
                       help="for system sporeflow-base: a folder holding another build's "
                            "sporeflow package, imported before the installed one")
    parse.add_argument("--json-out")
    return parse


def main(argv: list[str] | None = None) -> None:
    options = parser().parse_args(argv)
    systems = _names(options.systems, SYSTEMS)
    workloads = _names(options.workloads, WORKLOADS)
    if options.signed:
        os.environ.setdefault(KEY_ENV, secrets.token_hex(32))  # the sides inherit it
    broker = options.broker_pid or broker_pid(options.url)
    command = "python -m bench.amqp_compare " + " ".join(sys.argv[1:] if argv is None
                                                          else argv)
    meta: dict[str, Any] = {
        "command": command.strip(), "when": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(), **_versions(), "broker_pid": broker,
        "load_before": loadavg(), "rabbitmq": "?",
        "sides": f"prefetch {PREFETCH}, {WINDOW} unconfirmed publishes at most for plain "
                 f"and FastStream, sporeflow's send() as its intake admits"
                 + (", sporeflow signed" if options.signed else "")}
    lines: list[dict[str, Any]] = []
    for mode in workloads:
        for run in range(options.runs):
            for system in systems:
                if (system, mode) not in PRODUCERS:
                    continue
                line = run_once(system, mode, options, broker)
                line["run"] = run + 1
                meta["rabbitmq"] = line.get("rabbitmq", meta["rabbitmq"])
                lines.append(line)
                shown = (f"{line['rate']:,.0f}/s, CPU us producer/consumer/broker "
                         + "/".join(f"{line['us'][s]:.0f}" for s in SIDES)
                         if "rate" in line else line.get("error"))
                print(f"run {run + 1} {mode:<6} {system:<10} {shown}  "
                      f"[load {line['loadavg_after']}]", file=sys.stderr, flush=True)
    meta["load_after"] = loadavg()
    summary = summarize(lines)
    print(render(summary, options, meta))
    if options.json_out:
        with open(options.json_out, "w", encoding="utf-8") as file:
            json.dump({"meta": meta, "options": vars(options), "summary": summary,
                       "runs": lines}, file, indent=2)
    if any("error" in line for line in lines):
        raise SystemExit(1)  # a failed run is reported in the table, and fails the command


if __name__ == "__main__":
    main()
