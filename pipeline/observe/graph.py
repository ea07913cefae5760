"""The wiring of an organism as a graph, rendered as Mermaid (for READMEs) or DOT (Graphviz).

Nodes are the agents (name, and concurrency when above one), the channels, the
declared sources (name and kind), and the outside world when some agent gets a
``boot`` spore. Edges are what the file declares: what each source feeds (its
agent or channel), subscriptions (channel to agent), ``emit`` routes (to an agent
or a channel), ``peers`` and channel ``publish`` lists (dashed: may address, may
publish), and the requests of built-in gather and sequence agents. Only names
are drawn: never the backend URL, handler paths, boot knowledge, file paths or
ports, which may hold secrets. The built-in channels appear only when something
uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sporeflow.config.model import BUILTIN_CHANNELS, DEAD_LETTER_CHANNEL, OrganismSpec

__all__ = ["Wiring", "WiringEdge", "WiringNode", "render_dot", "render_mermaid", "wiring"]

NodeKind = Literal["agent", "channel", "outside", "source"]
EdgeKind = Literal["boot", "feed", "subscribe", "emit", "peer", "publish", "request"]
_DASHED: frozenset[str] = frozenset({"peer", "publish"})


@dataclass(frozen=True, slots=True)
class WiringNode:
    """An agent, a channel, a source, or the outside world; ``key`` is unique in its
    graph."""

    key: str
    kind: NodeKind
    label: str


@dataclass(frozen=True, slots=True)
class WiringEdge:
    """A declared route or permission from node ``source`` to node ``target``."""

    source: str
    target: str
    kind: EdgeKind
    label: str = ""


@dataclass(frozen=True, slots=True)
class Wiring:
    """The nodes and edges of one organism, in declaration order."""

    name: str
    nodes: tuple[WiringNode, ...]
    edges: tuple[WiringEdge, ...]


def _agent(name: str) -> str:
    return f"agent:{name}"


def _channel(name: str) -> str:
    return f"channel:{name}"


def _source(name: str) -> str:
    return f"source:{name}"


_OUTSIDE = "outside"


def wiring(spec: OrganismSpec) -> Wiring:
    """Collect the nodes and edges that ``spec`` declares."""
    edges: list[WiringEdge] = []
    seen: set[tuple[str, str, str]] = set()

    def add(source: str, target: str, kind: EdgeKind, label: str = "") -> None:
        if (source, target, kind) not in seen:
            seen.add((source, target, kind))
            edges.append(WiringEdge(source, target, kind, label))

    for agent in spec.agents.values():
        if agent.boot is not None:
            add(_OUTSIDE, _agent(agent.name), "boot", "boot")
    for name, source in spec.sources.items():
        if source.to is not None:  # an http source's is a default: a body may name another
            add(_source(name), _agent(source.to), "feed")
        elif source.channel is not None:
            add(_source(name), _channel(source.channel), "feed")
    for agent in spec.agents.values():
        for channel in agent.subscribe:
            add(_channel(channel), _agent(agent.name), "subscribe")
        if agent.emit is not None:
            if agent.emit.to is not None:
                add(_agent(agent.name), _agent(agent.emit.to), "emit", "emit")
            if agent.emit.channel is not None:
                add(_agent(agent.name), _channel(agent.emit.channel), "emit", "emit")
        for target, label in _requests(agent):
            add(_agent(agent.name), target, "request", label)
    routed = {(e.source, e.target) for e in edges}
    for agent in spec.agents.values():
        # A peer that is also the emit target needs no second arrow.
        for peer in sorted(agent.peers or ()):
            if (_agent(agent.name), _agent(peer)) not in routed:
                add(_agent(agent.name), _agent(peer), "peer", "peer")
    for channel_spec in spec.channels.values():
        for publisher in sorted(channel_spec.publish or ()):
            if (_agent(publisher), _channel(channel_spec.name)) not in routed:
                add(_agent(publisher), _channel(channel_spec.name), "publish", "may publish")

    used = {key for edge in edges for key in (edge.source, edge.target)}
    nodes: list[WiringNode] = []
    if _OUTSIDE in used:
        nodes.append(WiringNode(_OUTSIDE, "outside", "outside"))
    for name, source in spec.sources.items():
        nodes.append(WiringNode(_source(name), "source", f"{name} ({source.kind})"))
    for agent in spec.agents.values():
        label = agent.name if agent.concurrency == 1 else f"{agent.name} ×{agent.concurrency}"
        nodes.append(WiringNode(_agent(agent.name), "agent", label))
    for name in spec.channels:
        # The built-in channels only when used; dead-letter only when someone listens.
        if name == DEAD_LETTER_CHANNEL and not spec.subscribers(name):
            continue
        if name in BUILTIN_CHANNELS and _channel(name) not in used:
            continue
        nodes.append(WiringNode(_channel(name), "channel", name))
    keys = {node.key for node in nodes}
    for key in sorted(used - keys):  # a route to a channel the spec does not list
        if key.startswith("channel:"):
            nodes.append(WiringNode(key, "channel", key.removeprefix("channel:")))
    keys = {node.key for node in nodes}
    return Wiring(spec.name, tuple(nodes),
                  tuple(e for e in edges if e.source in keys and e.target in keys))


def _requests(agent: Any) -> list[tuple[str, str]]:
    """Whom a built-in gather or sequence agent asks (fields absent on plain agents)."""
    found: list[tuple[str, str]] = []
    gather = getattr(agent, "gather", None)
    if gather is not None:
        found += [(_agent(name), "gather") for name in gather.to or ()]
        if gather.channel is not None:
            found.append((_channel(gather.channel), "gather"))
    sequence = getattr(agent, "sequence", None)
    if sequence is not None:
        found += [(_agent(name), f"step {i}") for i, name in enumerate(sequence.steps, 1)]
    return found


# -- Mermaid ---------------------------------------------------------------------------

# A source is a parallelogram: a flowchart's input.
_MERMAID_SHAPES = {"agent": '["{}"]', "channel": '[("{}")]', "outside": '(("{}"))',
                   "source": '[/"{}"/]'}
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_]")


def _mermaid_ids(nodes: tuple[WiringNode, ...]) -> dict[str, str]:
    """Plain, unique node ids: prefixed so no name collides with a keyword like ``end``."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for node in nodes:
        base = {"agent": "a_", "channel": "c_", "outside": "", "source": "s_"}[
            node.kind] + _UNSAFE_ID.sub(
            "_", node.key.split(":", 1)[-1])
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        ids[node.key] = candidate
    return ids


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def render_mermaid(spec: OrganismSpec | Wiring) -> str:
    """The wiring as a Mermaid flowchart, left to right."""
    graph = spec if isinstance(spec, Wiring) else wiring(spec)
    ids = _mermaid_ids(graph.nodes)
    lines = ["flowchart LR", f"    %% organism {_mermaid_text(graph.name)}"]
    for node in graph.nodes:
        lines.append(f"    {ids[node.key]}"
                     + _MERMAID_SHAPES[node.kind].format(_mermaid_text(node.label)))
    for edge in graph.edges:
        arrow = "-.->" if edge.kind in _DASHED else "-->"
        label = f'|"{_mermaid_text(edge.label)}"|' if edge.label else ""
        lines.append(f"    {ids[edge.source]} {arrow}{label} {ids[edge.target]}")
    return "\n".join(lines) + "\n"


# -- DOT ---------------------------------------------------------------------------------

_DOT_SHAPES = {
    "agent": 'shape=box, style="rounded,filled", fillcolor="#e8f0fe"',
    "channel": 'shape=cylinder, style=filled, fillcolor="#fef7e0"',
    "outside": "shape=circle",
    "source": 'shape=parallelogram, style=filled, fillcolor="#e6f4ea"',
}


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(spec: OrganismSpec | Wiring) -> str:
    """The wiring as a Graphviz ``digraph``, left to right."""
    graph = spec if isinstance(spec, Wiring) else wiring(spec)
    lines = [f"digraph {_dot_quote(graph.name)} {{", "    rankdir=LR;",
             '    node [fontname="Helvetica"];', '    edge [fontname="Helvetica", fontsize=10];']
    for node in graph.nodes:
        lines.append(f"    {_dot_quote(node.key)} [label={_dot_quote(node.label)}, "
                     f"{_DOT_SHAPES[node.kind]}];")
    for edge in graph.edges:
        attributes = [f"label={_dot_quote(edge.label)}"] if edge.label else []
        if edge.kind in _DASHED:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {_dot_quote(edge.source)} -> {_dot_quote(edge.target)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
