"""CPU per call of the pieces a spore's trip over RabbitMQ is made of, one at a time.

    python -m bench.amqp_micro [--calls 20000] [--repeat 5]

In one process, no broker: what encoding and decoding a spore costs (sporeflow's
codec, aio-pika's Message, pamqp's header frame with sporeflow's headers against the
plain loop's two properties), and what a Task per ack costs against a plain call.
Each line is the best of ``--repeat`` rounds of ``--calls`` calls, in CPU us per call
(``time.process_time``): a floor the full runs of ``bench.amqp_compare`` can be read
against, for estimating what a change saves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.amqp_sides import PAYLOAD


def best(work: Callable[[], Any], calls: int, repeat: int) -> float:
    """CPU us per call of ``work``, the best of ``repeat`` rounds."""
    rounds = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(calls):
            work()
        rounds.append((time.process_time() - started) / calls * 1e6)
    return min(rounds)


def codec_cases() -> dict[str, Callable[[], Any]]:
    import aio_pika
    from pamqp import commands, frame, header

    from sporeflow.pipeline.broker.amqp_codec import (
        MAX_HEADERS_BYTES,
        headers_size,
        spore_from_amqp,
        spore_to_amqp,
    )
    from sporeflow.steps import Spore

    spore = Spore(knowledge=dict(PAYLOAD), from_agent="system", to_agent="sink")
    body, headers, properties = spore_to_amqp(spore)
    ours = aio_pika.Message(body, headers=headers, user_id="guest", **properties)
    # aiormq gives a message without message_id a random one: the plain loop's have one.
    plain = aio_pika.Message(body, priority=5, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=uuid.uuid4().hex)

    def header_frame(message: aio_pika.Message) -> Callable[[], bytes]:
        props = message.properties

        def marshal() -> bytes:
            return frame.marshal(header.ContentHeader(0, len(body), props), 1)
        return marshal

    def header_unmarshal(message: aio_pika.Message) -> Callable[[], Any]:
        data = frame.marshal(header.ContentHeader(0, len(body), message.properties), 1)

        def unmarshal() -> Any:
            return frame.unmarshal(data)
        return unmarshal

    publish = commands.Basic.Publish(exchange="sporeflow.x", routing_key="agent.sink.knowledge",
                                     mandatory=True)
    return {
        f"spore_to_amqp (body, {len(headers)} headers, {len(properties)} properties)":
            lambda: spore_to_amqp(spore),
        "json.dumps of the payload alone (the plain loop's encoding)":
            lambda: json.dumps({**PAYLOAD, "n": 1}).encode(),
        "aio_pika.Message with sporeflow's headers and properties":
            lambda: aio_pika.Message(body, headers=headers, user_id="guest", **properties),
        "aio_pika.Message as the plain loop builds it": lambda: aio_pika.Message(
            body, priority=5, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        "pamqp content header frame, sporeflow's properties": header_frame(ours),
        "pamqp content header frame, the plain loop's": header_frame(plain),
        "pamqp Basic.Publish method frame": lambda: frame.marshal(publish, 1),
        "pamqp content header frame read, sporeflow's properties": header_unmarshal(ours),
        "pamqp content header frame read, the plain loop's": header_unmarshal(plain),
        "spore_from_amqp, size checks on": lambda: spore_from_amqp(
            body, headers, max_spore_bytes=1_000_000),
        "spore_from_amqp, size checks off": lambda: spore_from_amqp(body, headers),
        "headers_size (the size check's walk of the headers)":
            lambda: headers_size(headers, MAX_HEADERS_BYTES),
        "json.loads of the body alone (the plain consumer's decoding)": lambda: json.loads(body),
    }


def task_cases(calls: int, repeat: int) -> dict[str, float]:
    """A Task per ack (what the bridge spawns) against calling on, on a running loop."""
    async def ack() -> None:
        return None

    def done(_: asyncio.Task[None]) -> None:
        return None

    async def measure() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def spawn() -> None:
            task = loop.create_task(ack())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(done)

        out = {}
        for label, work in (("create_task + 2 done callbacks, run to the end", spawn),
                            ("loop.call_soon of a plain function", lambda: loop.call_soon(
                                done, None))):
            rounds = []
            for _ in range(repeat):
                started = time.process_time()
                for _ in range(calls):
                    work()
                await asyncio.sleep(0)  # run what was scheduled: it counts too
                await asyncio.sleep(0)
                rounds.append((time.process_time() - started) / calls * 1e6)
            out[label] = min(rounds)
        return out

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> None:
    parse = argparse.ArgumentParser(prog="python -m bench.amqp_micro",
                                    description=__doc__.splitlines()[0])
    parse.add_argument("--calls", type=int, default=20_000)
    parse.add_argument("--repeat", type=int, default=5)
    options = parse.parse_args(argv)
    with open("/proc/loadavg", encoding="ascii") as file:
        load = " ".join(file.read().split()[:3])
    rows = ["| piece | CPU us per call |", "|---|---|"]
    for label, work in codec_cases().items():
        rows.append(f"| {label} | {best(work, options.calls, options.repeat):.2f} |")
    for label, value in task_cases(options.calls, options.repeat).items():
        rows.append(f"| {label} | {value:.2f} |")
    print(f"`python -m bench.amqp_micro --calls {options.calls} --repeat {options.repeat}`; "
          f"load average {load}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
