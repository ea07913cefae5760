"""What ``ctx.send``, ``ctx.broadcast`` and ``ctx.reply`` return.

A handler's output never waits for room (see ``core.intake``), so those calls do
their whole work when called, and return a :class:`Sent`: awaiting it gives the
spore sent. A forgotten ``await`` then loses nothing; as ``async def`` methods, the
spore was never sent and the only trace was a RuntimeWarning at garbage collection.
A coroutine in form, so that ``asyncio.create_task`` and ``gather`` take it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, NoReturn

from sporeflow.config import OrganismStateError
from sporeflow.steps import Spore

__all__ = ["Sent", "on_the_loop"]


class Sent(Coroutine[Any, Any, Spore]):
    """A send already done; awaiting it gives its spore at once."""

    __slots__ = ("spore",)

    def __init__(self, spore: Spore) -> None:
        self.spore = spore

    def __await__(self) -> Generator[Any, None, Spore]:
        return self._result()

    def _result(self) -> Generator[Any, None, Spore]:
        yield from ()
        return self.spore

    def send(self, value: Any) -> NoReturn:
        raise StopIteration(self.spore)

    def throw(self, typ: Any, val: Any = None, *_: Any) -> NoReturn:
        raise typ if val is None else val

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<Sent {self.spore.id}>"


def on_the_loop(call: str) -> None:
    """Refuse ``call`` off the event loop: a sync handler runs on a thread of its own,
    where it would touch the organism's state unguarded."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise OrganismStateError(
            f"{call} was called from a sync handler's thread, off the event loop; "
            f"nothing was sent: return the spores instead (a dict, a Spore or a list), "
            f"or make the handler `async def`") from None
