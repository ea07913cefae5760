"""The spores a state snapshot carries: those queued, not yet started, at the moment it
is taken.

What a snapshot promises. ``save_state`` runs in one step of the event loop: nothing
moves while it reads, so each spore is in exactly one place of the cut. It keeps

- ``spores.queued``: per agent, what waits in its mailbox (each agent's state, saved
  in the same step, has not seen these yet);
- ``spores.intake``: what waits in the intake for the chain, not yet routed (handlers'
  replies and sends, outside spores admitted, those paged out to disk), so that a
  handler's effect on its state is never kept without the spores it sent.

It does not keep a spore whose handler is running, or that waits for a retry's delay
(its handler has started: its effect may be in the state already, and handling it
again could do it twice), nor an outside sender still waiting to be admitted (the
sender still holds it). A snapshot is a copy: the organism it was taken from goes on.

``load_state`` puts them back through the chain's one path (validate, expire, budget,
route, schema): a mailbox's spore is addressed to that agent alone (a broadcast's
delivery reaches no other subscriber twice); an expired one is dead-lettered as
``expired``, one for an agent that no longer exists as ``unknown agent``. Before a
start they wait, and enter at the start. Load a snapshot's spores once: a second load
delivers them again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sporeflow.config import OrganismStateError, SporeError
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import Spore, queued_in, redelivery

__all__ = ["SPORES", "QueuedSpores", "RunIntake", "Waiting"]

SPORES = "spores"  # the snapshot's section; absent when nothing was queued


class Waiting(Protocol):
    """What a snapshot reads and refills: the running organism's intake."""

    @property
    def closed(self) -> bool: ...

    def waiting(self) -> list[Spore]: ...

    def feed(self, spores: Iterable[Spore]) -> None: ...


class RunIntake(Protocol):
    """A run of the organism, as far as a snapshot cares: its intake."""

    @property
    def intake(self) -> Waiting: ...


class QueuedSpores:
    """Saves and restores the ``spores`` section of a snapshot (see the module doc)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.pending: list[Spore] = []  # loaded before a start; fed at the start

    def save(self, agents: Mapping[str, AgentRuntime],
             intake: Waiting | None) -> dict[str, Any] | None:
        """The ``spores`` section: queued per agent and in the intake; None if none."""
        queued = {name: self._dicts(queued_in(agent.lane)) for name, agent in agents.items()}
        section: dict[str, Any] = {"queued": {name: spores for name, spores in queued.items()
                                              if spores}}
        waiting = [*self.pending, *(intake.waiting() if intake is not None else ())]
        section["intake"] = self._dicts(waiting)
        return section if section["queued"] or section["intake"] else None

    def _dicts(self, spores: Iterable[Spore]) -> list[Any]:
        kept = []
        for spore in spores:
            try:  # the chain refuses what is no JSON; the organism saved from accounts for it
                kept.append(json.loads(json.dumps(spore.to_dict())))
            except (TypeError, ValueError) as exc:
                self.logger.warning("spore %s is left out of the snapshot: it is not JSON "
                                    "(%s); the chain dead-letters it as invalid", spore.id, exc)
        return kept

    def load(self, spores: list[Spore], intake: Waiting | None) -> None:
        """Feed a snapshot's spores (:func:`parse`) to ``intake`` (a running organism's),
        or keep them for the start."""
        if intake is not None and not intake.closed:
            intake.feed(spores)
        else:
            self.pending.extend(spores)

    def start(self, intake: Waiting) -> None:
        """Feed what was loaded before this start."""
        if self.pending:
            spores, self.pending = self.pending, []
            self.logger.info("restoring %d spore(s) from a state snapshot", len(spores))
            intake.feed(spores)


def parse(section: object) -> list[Spore]:
    """The spores of a snapshot's ``spores`` section: each mailbox's first (addressed to
    its agent), then the intake's. Raises :class:`OrganismStateError` naming the entry."""
    if not isinstance(section, Mapping) or not isinstance(section.get("queued", {}), Mapping) \
            or not isinstance(section.get("intake", []), list):
        raise OrganismStateError(
            f"the snapshot's {SPORES!r} must be {{'queued': {{agent: [spore, ...]}}, "
            f"'intake': [spore, ...]}}, got {section!r:.80}")
    spores: list[Spore] = []
    for agent, entries in section.get("queued", {}).items():
        if not isinstance(entries, list):
            raise OrganismStateError(f"the snapshot's spores.queued[{agent!r}] must be a "
                                     f"list of spores, got {type(entries).__name__}")
        spores += [redelivery(_spore(entry, f"spores.queued[{agent!r}][{index}]"), agent)
                   for index, entry in enumerate(entries)]
    spores += [_spore(entry, f"spores.intake[{index}]")
               for index, entry in enumerate(section.get("intake", []))]
    return spores


def _spore(entry: object, where: str) -> Spore:
    try:
        return Spore.from_dict(entry)
    except SporeError as exc:
        raise OrganismStateError(f"the snapshot's {where} is not a spore: {exc}; fix it or "
                                 f"remove it from the snapshot") from exc
