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
sender still holds it), nor a batch a user's stage holds while it awaits something
(the built-in stages never wait). A snapshot is a copy: the organism it was taken from
goes on.

``load_state`` puts them back through the chain's one path (validate, expire, budget,
route, schema), the journal, if any, recording them first: a mailbox's spore is
addressed to that agent alone (a broadcast's delivery reaches no other subscriber
twice); an expired one is dead-lettered as ``expired``, one for an agent that no
longer exists as ``unknown agent``. Loaded while the organism does not run, they enter
at its next start. Load a snapshot's spores once: a second load delivers them again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sporeflow.config import OrganismStateError, SporeError
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import Spore, queued_in, redelivery

__all__ = ["SPORES", "QueuedSpores", "SnapshotPort", "parse"]

SPORES = "spores"  # the snapshot's section; absent when nothing was queued


class SnapshotPort(Protocol):
    """What a snapshot reads and refills: the running organism's ingress."""

    def waiting(self) -> list[Spore]: ...

    def restore(self, spores: list[Spore]) -> bool: ...


class QueuedSpores:
    """Saves and restores the ``spores`` section of a snapshot (see the module doc)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.pending: list[Spore] = []  # loaded while not running; fed at the next start

    def save(self, agents: Mapping[str, AgentRuntime],
             port: SnapshotPort | None) -> dict[str, Any] | None:
        """The ``spores`` section: queued per agent and in the intake; None if none."""
        queued = {name: self._dicts(queued_in(agent.lane)) for name, agent in agents.items()}
        section: dict[str, Any] = {"queued": {name: spores for name, spores in queued.items()
                                              if spores}}
        section["intake"] = self._dicts([*self.pending,
                                         *(port.waiting() if port is not None else ())])
        return section if section["queued"] or section["intake"] else None

    def _dicts(self, spores: Iterable[Spore]) -> list[Any]:
        """The spores' JSON forms, detached from them by a JSON round trip (one for all:
        per spore it would cost several times more); one that is no JSON is left out."""
        dicts = [spore.to_dict() for spore in spores]
        try:
            copied: list[Any] = json.loads(json.dumps(dicts))
            return copied
        except (TypeError, ValueError):
            return [copy for copy in map(self._copy, dicts) if copy is not None]

    def _copy(self, spore: dict[str, Any]) -> Any:
        try:  # the chain refuses what is no JSON; the organism saved from accounts for it
            return json.loads(json.dumps(spore))
        except (TypeError, ValueError) as exc:
            self.logger.warning("spore %s is left out of the snapshot: it is not JSON (%s); "
                                "the chain dead-letters it as invalid", spore.get("id"), exc)
            return None

    def load(self, spores: list[Spore], port: SnapshotPort | None) -> None:
        """Feed a snapshot's spores (:func:`parse`) through ``port`` (a running
        organism's), or keep them for the next start."""
        if port is None or not port.restore(spores):
            self.pending.extend(spores)

    def start(self, port: SnapshotPort) -> None:
        """Feed what was loaded while the organism was not running."""
        if self.pending:
            spores, self.pending = self.pending, []
            self.logger.info("restoring %d spore(s) from a state snapshot", len(spores))
            if not port.restore(spores):
                self.pending = spores


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
