"""What ``check`` warns about: wiring that can only loop, agents nothing reaches
(a declared source's target is reached), an emit on a channel nobody hears, and a cost
declared without a cost limit.

Linear in the agents: who emits to an agent or on a channel is indexed once, and an
agent that can loop gets one warning naming its first senders and how many others.
"""

from __future__ import annotations

import heapq
from itertools import islice

from sporeflow.config.errors import Problem
from sporeflow.config.handler_returns import never_replies
from sporeflow.config.model import (
    AgentSpec,
    OrganismSpec,
)
from sporeflow.config.positions import Located
from sporeflow.config.references import mapping

__all__ = ["wiring_warnings"]


def wiring_warnings(located: Located, spec: OrganismSpec) -> list[Problem]:
    warnings: list[Problem] = []
    emitted_to = {a.emit.to for a in spec.agents.values() if a.emit and a.emit.to}
    named_peers = {p for a in spec.agents.values() for p in (a.peers or ())}
    named_peers |= {p for a in spec.agents.values() for p in _orchestrated_names(a)}
    # A declared source feeds its agent (a channel's subscribers are reached already).
    fed = {source.to for source in spec.sources.values() if source.to is not None}
    # Only an organism that drives itself (it has boot spores) can be judged for agents
    # nothing reaches: otherwise the entry points are fed from outside by design.
    self_driving = any(a.boot is not None for a in spec.agents.values())
    # Who emits to each agent and on each channel, in the order of the agents. An emit
    # names one of an agent or a channel (the schema); each emitter is listed once.
    to_agent: dict[str, list[tuple[int, str]]] = {}
    on_channel: dict[str, list[tuple[int, str]]] = {}
    sinks: dict[int, bool] = {}  # id of a handler -> it never replies
    for index, other in enumerate(spec.agents.values()):
        target = other.emit
        if target is not None and (target.to or target.channel):
            table, key = (to_agent, target.to) if target.to else (on_channel, target.channel)
            table.setdefault(str(key), []).append((index, other.name))
    heard = {channel for a in spec.agents.values() for channel in a.subscribe}
    heard |= {channel for x in spec.external.values() for channel in x.subscribe}
    for agent in spec.agents.values():
        if agent.emit is not None and agent.emit.channel and agent.emit.channel not in heard:
            warnings.append(located.problem(
                ("agents", agent.name, "emit", "channel"),
                f"{agent.name!r} emits on channel {agent.emit.channel!r}, to which no agent "
                f"subscribes: what it returns becomes 'no subscribers' dead letters, unless "
                f"an agent subscribes at run time; subscribe one to it", warning=True))
        if agent.cost is not None and spec.limits.max_cost_per_thread is None:
            warnings.append(located.problem(
                ("agents", agent.name, "cost"),
                f"{agent.name!r} declares a cost, but without limits.max_cost_per_thread "
                f"nothing is charged or refused: set that limit or drop the cost",
                warning=True))
        retry = agent.retry
        if retry.attempts > 1 and retry.backoff > retry.max_backoff:
            given = "max_backoff" in mapping(mapping(mapping(located.data.get(
                "agents")).get(agent.name)).get("retry"))
            warnings.append(located.problem(
                ("agents", agent.name, "retry", "backoff"),
                f"{_seconds(retry.backoff)} is more than retry.max_backoff "
                f"({_seconds(retry.max_backoff)}{'' if given else ', its default'}): every "
                f"pause is capped there; raise max_backoff to wait longer", warning=True))
        reached = (agent.subscribe or agent.boot is not None or agent.name in emitted_to
                   or agent.name in named_peers or agent.name in fed)
        if self_driving and not reached:
            warnings.append(located.problem(
                ("agents", agent.name),
                f"nothing declared reaches {agent.name!r} (no subscribe, no boot, no "
                f"emit, peers or source naming it): only outside sends, and handlers' "
                f"ctx.send or ctx.request naming it, will; list it in its senders' peers "
                f"to say so",
                warning=True))
        if agent.emit is not None:
            continue
        # Without emit, replies go back to the sender: a sender that emits here again loops.
        # (The agent itself has no emit, so it is none of the senders.)
        senders = [to_agent.get(agent.name, []),
                   *(on_channel.get(channel, []) for channel in dict.fromkeys(agent.subscribe))]
        count = sum(map(len, senders))
        if not count:
            continue
        if id(agent.handler) not in sinks:  # agents often share a handler: read it once
            sinks[id(agent.handler)] = never_replies(agent.handler)
        if sinks[id(agent.handler)]:
            continue
        first = [name for _, name in islice(heapq.merge(*senders), _NAMED_SENDERS)]
        warnings.append(located.problem(
            ("agents", agent.name),
            f"{agent.name!r} has no emit, so its replies go back to "
            f"{_some(first, count)}, which {'emits' if count == 1 else 'emit'} to it again: "
            f"this can only loop until max_hops; give {agent.name!r} an emit or return None",
            warning=True))
    return warnings


_NAMED_SENDERS = 3


def _some(names: list[str], count: int) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``, ``'a', 'b', 'c' and 7 others``."""
    quoted = [repr(name) for name in names]
    if count > len(quoted):
        return f"{', '.join(quoted)} and {count - len(quoted)} others"
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"


# -- small helpers -----------------------------------------------------------------


def _orchestrated_names(agent: AgentSpec) -> tuple[str, ...]:
    """The agents a gather or sequence agent addresses."""
    if agent.gather is not None:
        return agent.gather.to or ()
    return agent.sequence.steps if agent.sequence is not None else ()


def _seconds(value: float) -> str:
    return f"{value:g}s"
