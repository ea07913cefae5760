"""Edits of a running organism's spec from Python: ``add_agent`` and ``remove_agent``.

Each gives the spec to apply (through the reload path), or raises
:class:`ConfigError` and changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sporeflow.config import ConfigError, DeliveryError, OrganismSpec, Problem, organism_from_dict
from sporeflow.config.model import BUILTIN_CHANNELS
from sporeflow.config.reasons import Reason, did_you_mean
from sporeflow.steps import Spore

__all__ = ["with_agent", "without_agent"]


async def _stub(spore: Spore, ctx: Any) -> None:
    """Stands in for the existing agents while a new agent's references are checked."""


def with_agent(spec: OrganismSpec, name: str, agent: Mapping[str, Any]) -> OrganismSpec:
    """``spec`` with agent ``name`` added, its references checked against ``spec``."""
    if name in spec.agents:
        raise _problem(f"agents.{name}", f"agent {name!r} exists already; reload a changed "
                                         f"file to change it")
    probe = organism_from_dict({
        "organism": {"name": spec.name},
        # The others as stubs: enough for the new agent's references to resolve.
        "agents": {**{n: {"handler": _stub} for n in spec.agents}, name: dict(agent)},
        "channels": {c.name: {k: list(v) for k, v in (("publish", c.publish),
                                                      ("subscribe", c.subscribe))
                              if v is not None}
                     for c in spec.channels.values() if c.name not in BUILTIN_CHANNELS},
    }, base_dir=spec.base_dir)
    return dataclasses.replace(spec, agents={**spec.agents, name: probe.agents[name]})


def without_agent(spec: OrganismSpec, name: str) -> OrganismSpec:
    """``spec`` without agent ``name``; refused while another agent emits to it or names
    it among its peers."""
    if name not in spec.agents:
        raise DeliveryError(f"no agent {name!r} in organism {spec.name!r}"
                            f"{did_you_mean(name, spec.agents)}", reason=Reason.UNKNOWN_AGENT)
    users = sorted(a.name for a in spec.agents.values() if a.name != name and (
        (a.emit is not None and a.emit.to == name) or (a.peers and name in a.peers)))
    if users:
        raise _problem(f"agents.{name}", f"agents {users} still emit to or name {name!r} as "
                                         f"a peer; change them first")
    return dataclasses.replace(spec, agents={n: a for n, a in spec.agents.items() if n != name})


def _problem(path: str, message: str) -> ConfigError:
    return ConfigError([Problem(file="<python>", line=0, column=0, path=path, message=message)])
