"""What one aiostream stage costs an item, against a bare async generator.

A batch of one spore (a request/reply round trip, a probe under W6, a delivery from a
broker) pays the chain's per-batch cost whole; this measures its aiostream share. Run
each form at two counts under callgrind and divide the difference by the extra items:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.chain_hops aiostream 1000        # then 11000; bare likewise

Without valgrind it prints microseconds per item (noisy; the instruction counts are
not).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from aiostream import pipable_operator, stream, streamcontext

STAGES = 6  # validate, expire, route, schema, dispatch and the source's own hop


@pipable_operator
async def passthrough(source: AsyncIterable[list[int]]) -> AsyncIterator[list[int]]:
    """A stage shaped as sporeflow's are: a stream context, then each batch passed on."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield batch


async def _batches(count: int) -> AsyncIterator[list[int]]:
    for n in range(count):
        yield [n]


async def _bare(source: AsyncIterator[list[int]]) -> AsyncIterator[list[int]]:
    async for batch in source:
        yield batch


async def run(form: str, count: int) -> None:
    if form == "aiostream":
        chained: Any = stream.iterate(_batches(count))
        for _ in range(STAGES):
            chained = chained | passthrough.pipe()
        async with chained.stream() as items:
            async for _ in items:
                pass
    else:
        bare = _batches(count)
        for _ in range(STAGES):
            bare = _bare(bare)
        async for _ in bare:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("form", choices=["aiostream", "bare"])
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(run(args.form, args.count))
    took = time.perf_counter() - started
    print(f"{args.form}: {STAGES} stages, {args.count:,} items, "
          f"{took / args.count * 1e6:.2f} us per item")


if __name__ == "__main__":
    main()
