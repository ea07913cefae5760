"""A keyed agent's keys (``agents.X.key``): what each one holds, made on first use, evicted
when idle, and bounded.

- A key is made live on its first spore (``make``, given the state it was evicted with,
  if any) and stays live while it runs and for ``idle`` seconds after (the organism's
  loop clock, so a virtual clock moves it too).
- An idle key is then evicted: its holder's state (``save``) is kept as JSON text,
  handed back when the key returns; a key whose state is empty (None or ``{}``) is
  forgotten. A running key is never evicted.
- ``limit`` caps the keys held, live or evicted with a state: a new key past it is
  refused (:class:`DeliveryError`, reason ``key limit``). So memory does not grow with
  the input: live keys by time and by the cap, kept states by the cap. An application
  releases a key by emptying its state.

What a holder is (a class instance, a ``ctx.state`` dict) is the agents layer's
business: :class:`Holders` makes, saves and loads them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from sporeflow.config.errors import DeliveryError
from sporeflow.config.reasons import Reason

__all__ = ["Holders", "KeyTable"]

_log = logging.getLogger("sporeflow.keys")


class Holders(Protocol):
    """How a keyed agent's per-key holder is made, saved and loaded."""

    def make(self, key: str, state: Any) -> Any: ...

    def save(self, holder: Any) -> Any: ...

    def load(self, holder: Any, state: Any) -> None: ...


def _empty(state: Any) -> bool:
    return state is None or state == {}


class KeyTable:
    """One keyed agent's live keys (least recently released first) and kept states."""

    def __init__(self, agent: str, holders: Holders, *, idle: float | None,
                 limit: int) -> None:
        self.agent = agent
        self.holders = holders
        self.idle = idle
        self.limit = limit
        self.live: OrderedDict[str, Any] = OrderedDict()
        self.kept: dict[str, str] = {}  # evicted keys' state, as JSON text
        self._released: dict[str, float] = {}  # idle live keys: loop time of their last run
        self._running: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.evicted = 0
        self.refused = 0

    def rebind(self, holders: Holders, *, idle: float | None, limit: int) -> None:
        """New settings (a reload): idle keys are evicted, to be made anew by ``holders``."""
        self.idle, self.limit = idle, limit
        for key in [key for key in self.live if key not in self._running]:
            self._evict(key)
        self.holders = holders
        self.close()

    def acquire(self, key: str) -> Any:
        """Mark ``key`` running, making it live first; refuse a new key past the limit."""
        holder = self.live.get(key)
        if holder is None:
            text = self.kept.get(key)
            if text is None and len(self.live) + len(self.kept) >= self.limit:
                self._sweep()  # keys idle past their time may free room
                if len(self.live) + len(self.kept) >= self.limit:
                    self.refused += 1
                    raise DeliveryError(
                        f"agent {self.agent!r} holds {self.limit} keys, its max_keys; the "
                        f"new key {key!r} is refused. Raise agents.{self.agent}.max_keys, or "
                        f"empty the state of keys you are done with (an evicted key with "
                        f"an empty state is forgotten)", reason=Reason.KEY_LIMIT)
            holder = self.live[key] = self.holders.make(
                key, None if text is None else json.loads(text))
            self.kept.pop(key, None)  # only now: a state that failed to load stays kept
        self._running.add(key)
        self._released.pop(key, None)
        return holder

    def holder(self, key: str) -> Any:
        """The holder of running ``key``."""
        return self.live[key]

    def release(self, key: str) -> None:
        """``key``'s run (its spores queued behind it included) ended: it is idle now."""
        self._running.discard(key)
        if key not in self.live:
            return
        self.live.move_to_end(key)
        self._released[key] = asyncio.get_running_loop().time()
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        if self.idle is None:
            return
        for key in self.live:  # the oldest idle key; running ones are skipped
            at = self._released.get(key)
            if at is not None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_at(at + self.idle, self._on_timer)
                return

    def _on_timer(self) -> None:
        self._timer = None
        self._sweep()
        self._arm()

    def _sweep(self) -> None:
        """Evict the keys idle for ``idle`` seconds or more."""
        if self.idle is None:
            return
        now, idle = asyncio.get_running_loop().time(), self.idle
        due = []
        for key in self.live:
            at = self._released.get(key)
            if at is None:
                continue  # running
            # `at + idle`, the very sum the timer was set to (`now - idle` may round below
            # `at` when it fires, and the key would never be due: the timer armed again)
            if at + idle > now:
                break  # released later than this one: not due either
            due.append(key)
        for key in due:
            self._evict(key)

    def _evict(self, key: str) -> None:
        holder = self.live.pop(key)
        self._released.pop(key, None)
        try:
            state = self.holders.save(holder)
            text = None if _empty(state) else json.dumps(state)
        except Exception:  # kept live rather than lost; tried again at its next eviction
            _log.exception("agent %r: the state of key %r could not be saved; it stays live",
                           self.agent, key)
            self.live[key] = holder  # at the end: released last, as the sweep reads them
            self._released[key] = asyncio.get_running_loop().time()
            return
        if text is not None:
            self.kept[key] = text
        self.evicted += 1

    def close(self) -> None:
        """Stop the eviction timer (the run ends); keys and states stay for a snapshot."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def snapshot(self) -> dict[str, Any]:
        """Every key's state, live and kept (JSON-ready; empty states left out)."""
        states = {key: json.loads(text) for key, text in self.kept.items()}
        for key, holder in self.live.items():
            state = self.holders.save(holder)
            if not _empty(state):
                states[key] = state
        return states

    def load(self, states: Mapping[str, Any]) -> None:
        """Restore ``states`` (a snapshot's): into live keys now, the others when they
        come."""
        for key, state in states.items():
            key = str(key)
            holder = self.live.get(key)
            if holder is not None:
                self.holders.load(holder, state)
            elif not _empty(state):
                self.holders.make(key, state)  # refused now if it cannot be loaded later
                self.kept[key] = json.dumps(state)

    def stats(self) -> dict[str, int]:
        return {"live": len(self.live), "kept": len(self.kept),
                "running": len(self._running), "evicted": self.evicted,
                "refused": self.refused}
