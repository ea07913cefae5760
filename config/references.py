"""The cross references of an organism file: names of agents and channels that must
exist, each problem located, with "did you mean"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sporeflow.config.errors import Problem
from sporeflow.config.model import (
    BUILTIN_CHANNELS,
)
from sporeflow.config.positions import Located
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.reasons import did_you_mean

__all__ = ["mapping", "names", "reference_problems"]


def reference_problems(located: Located) -> list[Problem]:
    data = located.data
    agents = mapping(data.get("agents"))
    agents = {name: agent for name, agent in agents.items() if isinstance(agent, dict)}
    channels = {n: c for n, c in mapping(data.get("channels")).items() if isinstance(c, dict)}
    channels.update({n: {} for n, c in mapping(data.get("channels")).items() if c is None})
    channel_names = [*channels, *BUILTIN_CHANNELS]
    problems: list[Problem] = []

    def unknown_agent(path: DataPath, name: str) -> None:
        if name not in agents:
            problems.append(located.problem(
                path, f"unknown agent {name!r}{did_you_mean(name, list(agents))}"))

    def unknown_channel(path: DataPath, name: str) -> bool:
        if name in channel_names:
            return False
        problems.append(located.problem(
            path, f"unknown channel {name!r}{did_you_mean(name, channel_names)}; "
                  f"declare it under channels:"))
        return True

    for name, agent in agents.items():
        base: DataPath = ("agents", name)
        for i, channel in names(agent.get("subscribe")):
            if unknown_channel((*base, "subscribe", i), channel):
                continue
            allowed = channels.get(channel, {}).get("subscribe")
            if allowed is not None and name not in allowed:
                problems.append(located.problem(
                    (*base, "subscribe", i),
                    f"agent {name!r} may not subscribe to {channel!r}: its subscribe list is "
                    f"{allowed!r}; add {name!r} there or remove this subscription"))
        emit = mapping(agent.get("emit"))
        peers = agent.get("peers") if isinstance(agent.get("peers"), list) else None
        if isinstance(emit.get("to"), str):
            unknown_agent((*base, "emit", "to"), emit["to"])
            if peers is not None and emit["to"] not in peers:
                problems.append(located.problem(
                    (*base, "emit", "to"),
                    f"emit to {emit['to']!r} is forbidden by this agent's own peers "
                    f"{peers!r}; add it to peers or change emit"))
        if isinstance(emit.get("channel"), str) and not unknown_channel((*base, "emit", "channel"),
                                                     emit["channel"]):
            allowed = channels.get(emit["channel"], {}).get("publish")
            if allowed is not None and name not in allowed:
                problems.append(located.problem(
                    (*base, "emit", "channel"),
                    f"agent {name!r} may not publish on {emit['channel']!r}: its publish list "
                    f"is {allowed!r}; add {name!r} there or change emit"))
        for i, peer in names(peers):
            unknown_agent((*base, "peers", i), peer)
        problems.extend(_kind_problems(located, base, agent, unknown_agent, unknown_channel))
    for cname, conf in channels.items():
        for key in ("publish", "subscribe"):
            for i, agent_name in names(conf.get(key)):
                unknown_agent(("channels", cname, key, i), agent_name)
    return problems


def _kind_problems(located: Located, base: DataPath, agent: dict[str, Any],
                   unknown_agent: Callable[[DataPath, str], None],
                   unknown_channel: Callable[[DataPath, str], bool]) -> list[Problem]:
    """An agent is exactly one of a handler, a gather or a sequence; check their names."""
    kinds = [key for key in ("handler", "gather", "sequence") if key in agent]
    if not kinds:
        return [located.problem(base, "'handler' is a required property; add it (or a "
                                      "gather or a sequence)")]
    if len(kinds) > 1:
        return [located.problem(base, f"give one of handler, gather or sequence, not "
                                      f"{' and '.join(kinds)}")]
    problems: list[Problem] = []
    gather = mapping(agent.get("gather"))
    if "gather" in agent and ("to" in gather) == ("channel" in gather):
        problems.append(located.problem((*base, "gather"), "give exactly one of 'to' (a list "
                                                           "of agents) or 'channel'"))
    for i, name in names(gather.get("to")):
        unknown_agent((*base, "gather", "to", i), name)
    if isinstance(gather.get("channel"), str):
        unknown_channel((*base, "gather", "channel"), gather["channel"])
    sequence = agent.get("sequence")
    steps = sequence if isinstance(sequence, list) else mapping(sequence).get("steps")
    step_path = (*base, "sequence") if isinstance(sequence, list) else (*base, "sequence",
                                                                         "steps")
    for i, name in names(steps):
        unknown_agent((*step_path, i), name)
    if agent.get("cpu_bound") and kinds != ["handler"]:
        problems.append(located.problem((*base, "cpu_bound"), "only a handler can be "
                                                              "cpu_bound; remove it"))
    return problems


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def names(value: Any) -> list[tuple[int, str]]:
    """The (index, name) pairs of a list of names, skipping what is not a string."""
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
