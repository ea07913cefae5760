"""What ``ctx.send``, ``ctx.broadcast`` and ``ctx.reply`` return.

A handler's output never waits for room (see ``core.intake``), so those calls do
their whole work when called, and return a :class:`Sent`: awaiting it gives the
spore sent. A forgotten ``await`` then loses nothing; as ``async def`` methods, the
spore was never sent and the only trace was a RuntimeWarning at garbage collection.
A coroutine in form, so that ``asyncio.create_task`` and ``gather`` take it too.

While spores are paged out to disk (see ``core.intake``), awaiting it waits, the
handler's slot lent, until they are read back, as a stream's next item does: a
handler sending in a loop cannot fill the disk alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from sporeflow.steps import Spore

__all__ = ["Sent"]


class Sent(Coroutine[Any, Any, Spore]):
    """A send already done; awaiting it gives its spore, at once unless ``pause`` is
    given (spores are paged out: the handler waits, its slot lent, as a stream does)."""

    __slots__ = ("spore", "_pause", "_steps")

    def __init__(self, spore: Spore,
                 pause: Callable[[], Awaitable[None]] | None = None) -> None:
        self.spore = spore
        self._pause = pause
        self._steps: Generator[Any, None, Spore] | None = None

    def __await__(self) -> Generator[Any, None, Spore]:
        return self._run()

    def _run(self) -> Generator[Any, None, Spore]:
        if self._pause is not None:
            yield from self._pause().__await__()
        return self.spore

    def _started(self) -> Generator[Any, None, Spore]:
        if self._steps is None:
            self._steps = self._run()
        return self._steps

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, *_: Any) -> Any:
        return self._started().throw(typ if val is None else val)

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()

    def __repr__(self) -> str:
        return f"<Sent {self.spore.id}>"
