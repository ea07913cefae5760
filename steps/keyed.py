"""A keyed agent's lane (``agents.X.key: knowledge.user_id``): one at a time per key,
different keys at once.

Each spore's key is read off it (:func:`key_reader`) as its turn comes:

- A spore whose key is running waits beside that run (it still counts as queued, for
  the mailbox's room too) and runs next, in the same slot: the spores of one key run one
  at a time, in the lane's order (priority first, arrival order within a priority).
- Spores of different keys run at once, up to the agent's ``concurrency``.
- A spore without the key, or whose key is not a string or an integer, or is longer than
  ``KEY_MAX_CHARS``, fails with reason ``no key``; a new key past ``max_keys`` with
  ``key limit`` (see :mod:`sporeflow.steps.keytable`). Neither is retried.
- A failed attempt waiting for its retry does not hold its key: the key's next spore
  may run meanwhile, as on any lane.

The plain lane pays nothing for this: only an agent with ``key`` gets a ``KeyedLane``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from sporeflow.config.errors import DeliveryError
from sporeflow.config.reasons import Reason
from sporeflow.config.words import with_article
from sporeflow.steps.buckets import PriorityBuckets
from sporeflow.steps.dedupe import DedupingLane
from sporeflow.steps.keytable import KeyTable
from sporeflow.steps.lanes import AgentLane
from sporeflow.steps.spore import Spore

__all__ = ["KEY_MAX_CHARS", "KeyedDedupingLane", "KeyedLane", "key_reader"]

KEY_MAX_CHARS = 256  # a key is kept as long as its state: a sender must not make it huge
# Spores of one key run back to back before the loop gets a turn.
_CHAIN_BURST = 64


def key_reader(path: str, agent: str) -> Callable[[Spore], str]:
    """The function that reads the key at ``path`` (``knowledge.a.b``, ``thread_id``,
    ``from_agent``, ``channel``) off a spore, as text; it raises :class:`DeliveryError`
    (reason ``no key``) when the spore has none. ``thread_id`` is the spore's thread (its
    own id when it starts one)."""
    head, *inside = path.split(".")

    def missing(spore: Spore, why: str) -> DeliveryError:
        return DeliveryError(f"spore {spore.id} cannot go to {agent!r}, which is keyed by "
                             f"{path}: {why}", reason=Reason.NO_KEY)

    def refuse(spore: Spore) -> DeliveryError:
        """Why ``spore`` has no key (the slow path: only for a refusal)."""
        value: Any = spore.thread if head == "thread_id" else getattr(spore, head)
        for depth, part in enumerate(inside):
            if not isinstance(value, dict) or part not in value:
                return missing(spore, f"it has no {'.'.join([head, *inside[:depth + 1]])}")
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, str | int):
            kind = with_article(type(value).__name__)
            return missing(spore, f"the key is {kind}, not a string or an integer")
        return missing(spore, f"the key is {len(str(value))} characters long; a key has 1 "
                              f"to {KEY_MAX_CHARS}")

    def key_of(spore: Spore) -> str:
        value: Any = spore.thread if head == "thread_id" else getattr(spore, head)
        try:
            for part in inside:
                value = value[part]
        except (KeyError, TypeError, IndexError):
            raise refuse(spore) from None
        if value.__class__ is not str:  # the plain text of an int, or of a str subclass
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise refuse(spore)
            value = str.__str__(value) if isinstance(value, str) else int.__repr__(value)
        if 0 < len(value) <= KEY_MAX_CHARS:
            return value  # type: ignore[no-any-return]
        raise refuse(spore)

    return key_of


class _Backlog:
    """What a keyed lane holds for admission and the runners: its mailbox and the spores
    waiting for their key."""

    __slots__ = ("_lane", "_mailbox")

    def __init__(self, mailbox: PriorityBuckets[Any], lane: KeyedLane) -> None:
        self._mailbox = mailbox
        self._lane = lane

    @property
    def size(self) -> int:
        return self._mailbox.size + self._lane.parked

    def __len__(self) -> int:
        return self.size

    def items(self) -> list[Any]:
        """Everything queued, kept: the mailbox's, then the spores waiting for their key
        (for a snapshot, ``steps.mailbox.queued_in``)."""
        return [*self._mailbox.items(), *self._lane.parked_spores()]


class KeyedLane(AgentLane):
    """An :class:`AgentLane` that runs the spores of one key one at a time."""

    inline = False  # each spore goes through _run, where its key is read

    def __init__(self, *args: Any, key_of: Callable[[Spore], str], keys: KeyTable,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_of = key_of
        self.keys = keys
        self._waiting: dict[str, deque[tuple[Spore, int]]] = {}  # by running key
        self.parked = 0  # spores waiting for their key
        self._run_keys: dict[asyncio.Task[Any], str] = {}  # the key each runner runs
        self._held: dict[str, int] = {}  # keys an abandoned thread still runs (hold_slot)
        self.backlog = _Backlog(self._mailbox, self)  # type: ignore[assignment]

    def parked_spores(self) -> list[Spore]:
        """The spores waiting for their key to be free, oldest first per key."""
        return [spore for waiting in self._waiting.values() for spore, _ in waiting]

    @property
    def queued(self) -> int:
        return len(self._mailbox) + self.parked

    async def _run(self, spore: Spore, attempt: int) -> None:
        try:
            key = self.key_of(spore)
        except DeliveryError as exc:
            self._failed(spore, Reason.NO_KEY, exc, attempt)
            return
        waiting = self._waiting.get(key)
        if waiting is not None:  # its key runs: it goes next, in that run's slot
            waiting.append((spore, attempt))
            self.parked += 1
            return
        try:
            self.keys.acquire(key)
        except DeliveryError as exc:
            self._failed(spore, Reason.KEY_LIMIT, exc, attempt)
            return
        except Exception as exc:  # its kept state would not load: the key's spores fail
            self._failed(spore, Reason.HANDLER_FAILED, exc, attempt)
            return
        waiting = self._waiting[key] = deque()
        run = super()._run
        task = asyncio.current_task()
        assert task is not None
        self._run_keys[task] = key
        try:
            await run(spore, attempt)
            ran = 1
            while waiting and not self.paused and key not in self._held:
                spore, attempt = waiting.popleft()
                self.parked -= 1
                if self.on_room is not None and self.parked + len(
                        self._mailbox) <= self.room_at:
                    self.room_freed()  # an outside sender waits for room here
                if ran % _CHAIN_BURST == 0:
                    await asyncio.sleep(0)  # let the loop run now and then
                ran += 1
                await run(spore, attempt)
        finally:
            del self._run_keys[task]
            if key not in self._held:  # else the key waits for the thread (hold_slot)
                self._free_key(key)

    def _free_key(self, key: str) -> None:
        """``key`` runs no more: what waited for it goes back to the mailbox."""
        self._put_back(self._waiting.pop(key))
        self.keys.release(key)

    def hold_slot(self) -> Callable[[], None]:
        """An abandoned thread keeps its key as well as its slot: the key's next spores
        wait until it returns, as they would for its run (one key, one run at a time)."""
        free_slot = super().hold_slot()
        key = self._run_keys.get(asyncio.current_task())  # type: ignore[arg-type]
        if key is None:
            return free_slot
        self._held[key] = self._held.get(key, 0) + 1
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]
                    if key not in self._run_keys.values():  # else its run frees it
                        self._free_key(key)
                free_slot()  # after: the freed slot takes what waited for the key

        return free

    def _put_back(self, waiting: deque[tuple[Spore, int]]) -> None:
        """The lane paused (a reload, a stop) or this run was cancelled: what waited for the
        key goes back to the front of the mailbox, in its order."""
        while waiting:
            spore, attempt = waiting.pop()
            self.parked -= 1
            if attempt == 1:
                self._mailbox.push_first(spore.priority, spore)
            else:
                self.deliver(spore, attempt)  # a retry: to the back, as retries go

    def drain_queue(self) -> list[tuple[Spore, int]]:
        """Take every queued spore out, those waiting for their key included."""
        taken = super().drain_queue()
        for waiting in self._waiting.values():
            taken.extend(waiting)
            self.parked -= len(waiting)
            waiting.clear()
        return taken


class KeyedDedupingLane(KeyedLane, DedupingLane):
    """A keyed lane that also drops a copy of a spore handled within its dedupe window."""
