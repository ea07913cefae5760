"""The cross references of an organism file: names of agents and channels that must
exist, each problem located, with "did you mean".

Linear in the agents: names are looked up in dicts and sets, never in lists, and "did
you mean", which compares an unknown name with every known one, is given to the first
``ALWAYS_HINTED`` unknown names and then while fewer than ``HINT_BUDGET`` names have
been compared in all (a file with thousands of unknown names gets them without hints).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from sporeflow.config.errors import Problem
from sporeflow.config.model import BUILTIN_CHANNELS, CLI_SENDER, OUTSIDE_SENDERS
from sporeflow.config.positions import Located
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.reasons import did_you_mean

__all__ = ["ALWAYS_HINTED", "HINT_BUDGET", "mapping", "names", "reference_problems"]

ALWAYS_HINTED = 10
"""Unknown names that get a "did you mean" however many names there are."""
HINT_BUDGET = 200_000
"""Known names compared with unknown ones in all, past the first ``ALWAYS_HINTED``."""


class _Hints:
    """"did you mean", within the budget above."""

    def __init__(self) -> None:
        self.given = 0
        self.compared = 0

    def __call__(self, name: str, choices: Sequence[str]) -> str:
        if self.given >= ALWAYS_HINTED and self.compared + len(choices) > HINT_BUDGET:
            return ""
        self.given += 1
        self.compared += len(choices)
        return did_you_mean(name, choices)


def reference_problems(located: Located, external: Collection[str] = ()) -> list[Problem]:
    """Every unknown name; ``external`` agents (``config.external``) are known too."""
    data = located.data
    agents = mapping(data.get("agents"))
    agents = {name: agent for name, agent in agents.items() if isinstance(agent, dict)}
    declared = mapping(data.get("channels"))
    # A channel whose settings are wrong (reported by the schema pass) is still declared:
    # its name stays known, its settings count as none.
    channels = {n: c if isinstance(c, dict) else {} for n, c in declared.items()}
    channel_names = [*channels, *BUILTIN_CHANNELS]
    known_channels = set(channel_names)
    agent_names: list[str] = []  # filled on the first unknown agent
    listed: dict[tuple[str, str], frozenset[str] | None] = {}
    hint = _Hints()
    problems: list[Problem] = []

    def unknown_agent(path: DataPath, name: str) -> bool:
        if name in agents or name in external:
            return False
        if not agent_names:
            agent_names.extend([*agents, *external])
        problems.append(located.problem(
            path, f"unknown agent {name!r}{hint(name, agent_names)}"))
        return True

    def unknown_channel(path: DataPath, name: str) -> bool:
        if name in known_channels:
            return False
        problems.append(located.problem(
            path, f"unknown channel {name!r}{hint(name, channel_names)}; "
                  f"declare it under channels:"))
        return True

    def allowed(channel: str, key: str) -> frozenset[str] | None:
        """The agents a channel's ``publish`` or ``subscribe`` lists, as a set made once
        (None: not restricted, or not a list, which the schema pass reports)."""
        if (channel, key) not in listed:
            value = channels.get(channel, {}).get(key)
            listed[channel, key] = frozenset(
                item for item in value if isinstance(item, str)) if isinstance(
                value, list) else None
        return listed[channel, key]

    for name, agent in agents.items():
        base: DataPath = ("agents", name)
        if name in OUTSIDE_SENDERS:
            problems.append(located.problem(base, (
                f"agent name {name!r} is the outside world's ({name!r} sends from "
                f"{'the command line' if name == CLI_SENDER else 'Python and notices'}): "
                f"what is sent back to it would go to this agent; rename the agent"),
                key=True))
        for i, channel in names(agent.get("subscribe")):
            if unknown_channel((*base, "subscribe", i), channel):
                continue
            members = allowed(channel, "subscribe")
            if members is not None and name not in members:
                problems.append(located.problem(
                    (*base, "subscribe", i),
                    f"agent {name!r} may not subscribe to {channel!r}: its subscribe list is "
                    f"{_listed(channels[channel]['subscribe'])}; add {name!r} there or "
                    f"remove this subscription"))
        emit = mapping(agent.get("emit"))
        peers = agent.get("peers") if isinstance(agent.get("peers"), list) else None
        if isinstance(emit.get("to"), str):
            # A typo is one problem: an unknown agent is no question of peers.
            if (not unknown_agent((*base, "emit", "to"), emit["to"]) and peers is not None
                    and emit["to"] not in peers):
                problems.append(located.problem(
                    (*base, "emit", "to"),
                    f"emit to {emit['to']!r} is forbidden by this agent's own peers "
                    f"{peers!r}; add it to peers or change emit"))
        if isinstance(emit.get("channel"), str) and not unknown_channel((*base, "emit", "channel"),
                                                     emit["channel"]):
            members = allowed(emit["channel"], "publish")
            if members is not None and name not in members:
                problems.append(located.problem(
                    (*base, "emit", "channel"),
                    f"agent {name!r} may not publish on {emit['channel']!r}: its publish list "
                    f"is {_listed(channels[emit['channel']]['publish'])}; add {name!r} there "
                    f"or change emit"))
        for i, peer in names(peers):
            unknown_agent((*base, "peers", i), peer)
        problems.extend(_kind_problems(located, base, agent, unknown_agent, unknown_channel))
    for cname, conf in channels.items():
        for key in ("publish", "subscribe"):
            for i, agent_name in names(conf.get(key)):
                unknown_agent(("channels", cname, key, i), agent_name)
    return problems


def _kind_problems(located: Located, base: DataPath, agent: dict[str, Any],
                   unknown_agent: Callable[[DataPath, str], bool],
                   unknown_channel: Callable[[DataPath, str], bool]) -> list[Problem]:
    """An agent is exactly one of a handler, a gather or a sequence; check their names."""
    kinds = [key for key in ("handler", "handlers", "gather", "sequence") if key in agent]
    if not kinds:
        return [located.problem(base, "'handler' is a required property; add it (or a "
                                      "gather or a sequence)")]
    if len(kinds) > 1:
        return [located.problem(base, f"give one of handler, handlers, gather or sequence, not "
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
    if agent.get("cpu_bound") and kinds not in (["handler"], ["handlers"]):
        problems.append(located.problem((*base, "cpu_bound"), "only a handler can be "
                                                              "cpu_bound; remove it"))
    if "key" in agent and (kinds != ["handler"] or agent.get("cpu_bound")):
        problems.append(located.problem((*base, "key"), "only a handler in this process can "
                                                        "be keyed (not a gather, a sequence "
                                                        "or cpu_bound); remove key"))
    for setting in ("key_idle", "max_keys"):
        if setting in agent and "key" not in agent:
            problems.append(located.problem((*base, setting), f"{setting} applies to a keyed "
                                                              f"agent only; add key or remove "
                                                              f"{setting}"))
    return problems


def _listed(names: list[Any]) -> str:
    """A channel's list of agents as a problem quotes it: whole while short."""
    if len(names) <= 10:
        return repr(names)
    return f"{repr(names[:10])[:-1]}, ... ({len(names)} agents)]"


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def names(value: Any) -> list[tuple[int, str]]:
    """The (index, name) pairs of a list of names, skipping what is not a string."""
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
