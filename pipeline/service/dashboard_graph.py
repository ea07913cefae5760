"""The dashboard's wiring graph: the declared nodes and edges, placed in layers.

The nodes and edges are :func:`sporeflow.pipeline.observe.graph.wiring`'s (the
declared sources among them, each with an edge to what it feeds), plus the outside
world, always (senders through the control endpoint, HTTP or the CLI are
drawn from it). The layout is a plain layered one, left to right: edges that close a
cycle are set aside, each node goes one layer right of its furthest predecessor,
and a few barycentre sweeps order each layer to cross fewer edges. The page only
draws what this returns: positions are in pixels of an SVG ``viewBox``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sporeflow.config import OrganismSpec
from sporeflow.pipeline.observe.graph import Wiring, WiringNode, wiring

__all__ = ["OUTSIDE", "NODE_HEIGHT", "NODE_WIDTH", "graph_json", "layers"]

OUTSIDE = "outside"
NODE_WIDTH, NODE_HEIGHT = 150, 54
_GAP_X, _GAP_Y, _MARGIN = 90, 36, 24
_TOP = 40  # above the nodes: where edges that skip layers run
_SWEEPS = 4  # barycentre passes (down and up alternately); small graphs settle fast


def layers(keys: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Place ``keys`` in layers so that edges point right, except those closing a cycle.

    Within a layer, nodes are ordered by the mean position of their neighbours in the
    layer before (then after), starting from declaration order.
    """
    position = {key: index for index, key in enumerate(keys)}
    successors: dict[str, list[str]] = {key: [] for key in keys}
    for source, target in edges:
        if source in successors and target in successors and source != target:
            successors[source].append(target)
    forward = _acyclic(keys, successors)
    layer = dict.fromkeys(keys, 0)
    for key in _topological(keys, forward):
        for target in forward[key]:
            layer[target] = max(layer[target], layer[key] + 1)
    rows: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for key in keys:
        rows[layer[key]].append(key)
    neighbours_before: dict[str, list[str]] = {key: [] for key in keys}
    neighbours_after: dict[str, list[str]] = {key: [] for key in keys}
    for source, targets in forward.items():
        for target in targets:
            neighbours_before[target].append(source)
            neighbours_after[source].append(target)
    for sweep in range(_SWEEPS):
        down = sweep % 2 == 0
        order = range(1, len(rows)) if down else range(len(rows) - 2, -1, -1)
        for index in order:
            fixed = rows[index - 1] if down else rows[index + 1]
            rank = {key: i for i, key in enumerate(fixed)}
            near = neighbours_before if down else neighbours_after

            def barycentre(key: str, near: dict[str, list[str]] = near,
                           rank: dict[str, int] = rank) -> tuple[float, int]:
                placed = [rank[other] for other in near[key] if other in rank]
                centre = sum(placed) / len(placed) if placed else float("inf")
                return centre, position[key]

            rows[index].sort(key=barycentre)
    return rows


def _acyclic(keys: Sequence[str], successors: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """``successors`` without the edges a depth-first walk finds going back up its path."""
    forward: dict[str, list[str]] = {key: [] for key in keys}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in keys:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(successors[root]))]
        while stack:
            key, pending = stack[-1]
            target = next(pending, None)
            if target is None:
                state[key] = 2
                stack.pop()
            elif state.get(target) == 1:
                continue  # closes a cycle: drawn, but not used to place nodes
            else:
                forward[key].append(target)
                if target not in state:
                    state[target] = 1
                    stack.append((target, iter(successors[target])))
    return forward


def _topological(keys: Sequence[str], forward: Mapping[str, list[str]]) -> list[str]:
    incoming = dict.fromkeys(keys, 0)
    for targets in forward.values():
        for target in targets:
            incoming[target] += 1
    ready = [key for key in keys if not incoming[key]]
    ordered: list[str] = []
    while ready:
        key = ready.pop(0)
        ordered.append(key)
        for target in forward[key]:
            incoming[target] -= 1
            if not incoming[target]:
                ready.append(target)
    return ordered


def graph_json(spec: OrganismSpec) -> dict[str, Any]:
    """The wiring of ``spec`` with each node's place: what the page draws."""
    graph = _with_outside(wiring(spec))
    keys = [node.key for node in graph.nodes]
    rows = layers(keys, [(edge.source, edge.target) for edge in graph.edges])
    tallest = max((len(row) for row in rows), default=0)
    height = _TOP + _MARGIN + tallest * NODE_HEIGHT + max(tallest - 1, 0) * _GAP_Y
    place: dict[str, tuple[int, int]] = {}
    for column, row in enumerate(rows):
        used = len(row) * NODE_HEIGHT + (len(row) - 1) * _GAP_Y
        top = _TOP + (height - _TOP - _MARGIN - used) // 2  # centred on the tallest
        for index, key in enumerate(row):
            place[key] = (_MARGIN + column * (NODE_WIDTH + _GAP_X),
                          top + index * (NODE_HEIGHT + _GAP_Y))
    width = 2 * _MARGIN + len(rows) * NODE_WIDTH + max(len(rows) - 1, 0) * _GAP_X
    return {
        "organism": graph.name,
        "width": width, "height": height,
        "node_width": NODE_WIDTH, "node_height": NODE_HEIGHT,
        "nodes": [_node(node, place[node.key], spec) for node in graph.nodes],
        "edges": [{"source": edge.source, "target": edge.target, "kind": edge.kind,
                   "label": edge.label} for edge in graph.edges],
    }


def _with_outside(graph: Wiring) -> Wiring:
    if any(node.key == OUTSIDE for node in graph.nodes):
        return graph
    return Wiring(graph.name, (WiringNode(OUTSIDE, "outside", "outside"), *graph.nodes),
                  graph.edges)


def _node(node: WiringNode, at: tuple[int, int], spec: OrganismSpec) -> dict[str, Any]:
    name = node.key.split(":", 1)[-1]
    data: dict[str, Any] = {"key": node.key, "kind": node.kind, "name": name,
                            "label": node.label, "x": at[0], "y": at[1]}
    if node.kind == "agent" and name in spec.agents:
        data["description"] = spec.agents[name].description
        data["concurrency"] = spec.agents[name].concurrency
    elif node.kind == "channel" and name in spec.channels:
        data["description"] = spec.channels[name].description
    elif node.kind == "source" and name in spec.sources:
        data["source_kind"] = spec.sources[name].kind
    return data
