"""Agents that live outside sporeflow, on the same broker (a Praval agent), as declared:

    agents:
      pr:
        external: praval       # the only kind so far: Praval 0.8.4 on its RabbitMQ backend
        subscribe: [alerts]    # our channels whose broadcasts it hears (it binds channel.alerts.*)
        channel: alerts        # where its broadcasts land here (Praval sends no channel)

Sporeflow agents may send to, request from and broadcast to such an agent; sporeflow
declares no queue for it and hosts no handler. The loader takes these entries out of
``agents:`` before the other passes (they have no handler), checks them here, and keeps
their names known to the cross references.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from sporeflow.config.model import BUILTIN_CHANNELS, DEFAULT_CHANNEL, ExternalAgentSpec
from sporeflow.config.reasons import did_you_mean
from sporeflow.config.schema import EXTERNAL_AGENT_SCHEMA, NAME_PATTERN

__all__ = ["EXTERNAL_KINDS", "take_external"]

# The published schema's (`sporeflow schema`, for editors) are the ones checked here.
EXTERNAL_KINDS = tuple(EXTERNAL_AGENT_SCHEMA["properties"]["external"]["enum"])
_SETTINGS = tuple(EXTERNAL_AGENT_SCHEMA["properties"])
_NAME = re.compile(NAME_PATTERN)
Problem = Callable[[tuple[str | int, ...], str], None]


def take_external(data: dict[str, Any], problem: Problem) -> dict[str, ExternalAgentSpec]:
    """Take the external agents out of ``data["agents"]`` (a new mapping: the caller's
    stays whole) and return them checked; each mistake goes to ``problem(path, message)``."""
    agents = data.get("agents")
    if not isinstance(agents, dict):
        return {}
    found = {name: conf for name, conf in agents.items()
             if isinstance(conf, dict) and "external" in conf}
    if not found:
        return {}
    data["agents"] = {name: conf for name, conf in agents.items() if name not in found}
    declared = data.get("channels")
    channels = [*(declared if isinstance(declared, dict) else {}), *BUILTIN_CHANNELS]
    return {name: spec for name, conf in found.items()
            if (spec := _external(name, conf, channels, problem)) is not None}


def _external(name: Any, conf: Mapping[str, Any], channels: Collection[str],
              problem: Problem) -> ExternalAgentSpec | None:
    where: tuple[str | int, ...] = ("agents", str(name))
    ok = True

    def refuse(path: tuple[str | int, ...], message: str) -> None:
        nonlocal ok
        ok = False
        problem(path, message)

    if not isinstance(name, str) or not _NAME.match(name):
        refuse(where, f"agent name {name!r} must match {NAME_PATTERN} (a word of a "
                      f"routing key)")
    kind = conf.get("external")
    if kind not in EXTERNAL_KINDS:
        refuse((*where, "external"), f"external is {kind!r}; the frameworks sporeflow "
                                     f"speaks with are {list(EXTERNAL_KINDS)!r}")
    for key in conf:
        if key not in _SETTINGS:
            refuse((*where, str(key)),
                   f"{key!r} does not apply to an external agent (its code runs outside "
                   f"sporeflow){did_you_mean(str(key), _SETTINGS)}; its settings are "
                   f"{list(_SETTINGS)!r}")
    subscribe = conf.get("subscribe", [])
    if not isinstance(subscribe, list) or not all(isinstance(c, str) for c in subscribe):
        refuse((*where, "subscribe"), f"subscribe is {subscribe!r}; write a list of "
                                      f"channel names")
        subscribe = []
    channel = conf.get("channel", DEFAULT_CHANNEL)
    if not isinstance(channel, str):
        refuse((*where, "channel"), f"channel is {channel!r}; write a channel name")
        channel = DEFAULT_CHANNEL
    for path, named in [*(((*where, "subscribe", i), c) for i, c in enumerate(subscribe)),
                        ((*where, "channel"), channel)]:
        if named not in channels:
            refuse(path, f"unknown channel {named!r}{did_you_mean(named, channels)}; "
                         f"declare it under channels:")
    description = conf.get("description", "")
    if not isinstance(description, str):
        refuse((*where, "description"), f"description is {description!r}; write text")
    if not ok:
        return None
    return ExternalAgentSpec(name=name, kind=str(kind), description=description,
                             subscribe=tuple(subscribe), channel=channel)
