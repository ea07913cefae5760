"""What ``sporeflow trace`` shows: the settlements of spores (:class:`TraceStep`), made
from the ledger's hooks in one place, and the tree of what a root spore produced
(:func:`trace_tree`, drawn by :func:`render_tree`).

A step is one settlement of one delivery: a spore handled by an agent (with how long its
handler took), failed by one (with the dead letter's reason), refused by a stage (a dead
letter), or ended without a handler (a response that resolved its request, a spore
returned outside, a copy dropped). A broadcast has one step per agent that got it.
The tree follows ``causation_id``: a node's children are the spores made while it was
handled. Steps come from a running organism's recent window
(``observe.lineage.TraceWindow``) or from a journal (``journal.lineage``), as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.steps import Spore

__all__ = ["DEAD_LETTER", "ENDED", "FAILED", "HANDLED", "TraceNode", "TraceStep",
           "ended_step", "handled_step", "letter_step", "render_tree", "trace_tree", "tree_steps"]

HANDLED: Final = "handled"
FAILED: Final = "failed"
DEAD_LETTER: Final = "dead letter"
ENDED: Final = "ended"
_OUTCOMES: Final = frozenset({HANDLED, FAILED, DEAD_LETTER, ENDED})
_MAX_TEXT: Final = 1024  # the longest id a step keeps, as validation bounds lineage ids
_HANDLER_FAULTS: Final = frozenset({Reason.HANDLER_FAILED, Reason.TIMEOUT, Reason.POISON})
_TEXT_FIELDS: Final = ("id", "from_agent", "spore_type", "outcome", "at")
_OPTIONAL_FIELDS: Final = ("causation_id", "correlation_id", "to", "agent", "reason",
                           "created_at")


class TraceStep(NamedTuple):
    """One settlement of one delivery of a spore: a tuple, made per settlement at the cost
    of one. Its times stay datetimes until it is written (:meth:`to_json`,
    :meth:`to_row`): the journal's writer thread formats them, not the loop."""

    id: str
    causation_id: str | None
    correlation_id: str | None
    from_agent: str
    to: str | None  # the agent addressed, or "#channel" for a broadcast
    spore_type: str
    outcome: str  # HANDLED, FAILED, DEAD_LETTER or ENDED
    at: datetime  # when it was settled
    created_at: datetime | None = None
    agent: str | None = None  # who handled or failed it
    reason: str | None = None  # a dead letter's
    latency: float | None = None  # seconds its handler took

    def to_json(self) -> dict[str, Any]:
        """The step as a JSON object (the control endpoint's answer, ``--json``)."""
        return dict(zip(self._fields, self.to_row(), strict=True))

    def to_row(self) -> list[Any]:
        """The step as a JSON array, in field order (a journal's row: half the bytes)."""
        row = list(self)
        row[7] = self.at.isoformat()
        created = self.created_at
        row[8] = None if created is None else created.isoformat()
        return row

    @classmethod
    def from_row(cls, row: object) -> TraceStep | None:
        """The step a row of :meth:`to_row` holds, or None (see :meth:`from_json`)."""
        if type(row) is not list or len(row) != len(cls._fields):
            return None
        return cls.from_json(dict(zip(cls._fields, row, strict=True)))

    @classmethod
    def from_json(cls, data: object) -> TraceStep | None:
        """The step ``data`` holds, or None when it holds none (a row or an answer is
        read as found: one malformed step is left out, never fatal)."""
        if not isinstance(data, Mapping):
            return None
        if not all(type(data.get(name)) is str for name in _TEXT_FIELDS):
            return None
        if not all(data.get(name) is None or type(data.get(name)) is str
                   for name in _OPTIONAL_FIELDS):
            return None
        latency = data.get("latency")
        if latency is not None and type(latency) not in (int, float):
            return None
        if data["outcome"] not in _OUTCOMES:
            return None
        fields: dict[str, Any] = {name: data.get(name) for name in cls._fields}
        try:
            fields["at"] = datetime.fromisoformat(fields["at"])
            if fields["created_at"] is not None:
                fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        except ValueError:
            return None
        if any(moment is not None and moment.tzinfo is None  # compared with aware ones
               for moment in (fields["at"], fields["created_at"])):
            return None
        return cls(**fields)


def _lineage(spore: Spore) -> tuple[str, str | None, str | None, str, str | None, str,
                                    datetime | None]:
    """What a step keeps of a spore (a refused spore may be malformed in any field: each
    is kept as text of at most ``_MAX_TEXT`` characters, or None)."""
    to = spore.to_agent if spore.to_agent is not None else f"#{spore.channel}"
    created = spore.created_at
    return (_text(spore.id) or "", _text(spore.causation_id), _text(spore.correlation_id),
            _text(spore.from_agent) or "", _text(to),
            _text(getattr(spore.spore_type, "value", spore.spore_type)) or "",
            created if isinstance(created, datetime) else None)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value[:_MAX_TEXT] if type(value) is str else repr(value)[:_MAX_TEXT]


# A handled or ended spore passed the validate stage: its fields are what they should be,
# and are taken as they are. A dead letter's spore may be malformed: see _lineage.


def handled_step(spore: Spore, agent: str, latency: float, at: datetime) -> TraceStep:
    to = spore.to_agent
    return TraceStep(spore.id, spore.causation_id, spore.correlation_id, spore.from_agent,
                     "#" + spore.channel if to is None else to, spore.spore_type.value, HANDLED,
                     at, spore.created_at, agent, None, latency)


def letter_step(letter: DeadLetter) -> TraceStep:
    """A dead letter's step: FAILED when its handler failed it, else DEAD_LETTER."""
    ident, cause, correlation, sender, to, kind, created = _lineage(letter.spore)
    outcome = FAILED if letter.reason in _HANDLER_FAULTS else DEAD_LETTER
    return TraceStep(ident, cause, correlation, sender, to, kind, outcome, letter.at, created,
                     _text(letter.agent), str(letter.reason))


def ended_step(spore: Spore, at: datetime) -> TraceStep:
    to = spore.to_agent
    return TraceStep(spore.id, spore.causation_id, spore.correlation_id, spore.from_agent,
                     "#" + spore.channel if to is None else to, spore.spore_type.value, ENDED,
                     at, spore.created_at)


# -- the tree --------------------------------------------------------------------------


@dataclass(slots=True)
class TraceNode:
    """One spore of a trace: its settlements (one per delivery) and what it caused."""

    id: str
    steps: list[TraceStep]
    children: list[TraceNode] = field(default_factory=list)


def trace_tree(steps: Iterable[TraceStep], root: str) -> TraceNode | None:
    """The tree of spores ``root`` produced, from ``steps`` (any order, any others
    among them); None when no step of ``root`` is there."""
    by_id: dict[str, list[TraceStep]] = {}
    caused: dict[str, list[str]] = {}
    for step in steps:
        known = by_id.get(step.id)
        if known is None:
            by_id[step.id] = [step]
            if step.causation_id is not None:
                caused.setdefault(step.causation_id, []).append(step.id)
        else:
            known.append(step)
    if root not in by_id:
        return None
    top = TraceNode(root, by_id[root])
    seen = {root}
    frontier = [top]
    while frontier:  # breadth first, each id once: a forged cycle ends here
        node = frontier.pop()
        for child in caused.get(node.id, ()):
            if child not in seen:
                seen.add(child)
                branch = TraceNode(child, by_id[child])
                node.children.append(branch)
                frontier.append(branch)
    for node in _walk(top):
        node.children.sort(key=lambda n: (_first(n).created_at or _first(n).at, n.id))
    return top


def tree_steps(root: TraceNode) -> list[TraceStep]:
    """Every step of the tree under ``root`` (its own included): enough to draw it again."""
    return [step for node in _walk(root) for step in node.steps]


def _walk(node: TraceNode) -> Iterable[TraceNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children)


def _first(node: TraceNode) -> TraceStep:
    return node.steps[0]


def render_tree(root: TraceNode) -> list[str]:
    """The tree as lines of text: each spore with its sender, addressee and type, each
    delivery's outcome with its agent, reason and handler time, and when it was made
    (``+12.3ms``) after the root."""
    origin = _first(root).created_at
    lines: list[str] = []
    stack: list[tuple[TraceNode, str, str]] = [(root, "", "")]
    while stack:
        node, lead, rest = stack.pop()
        lines.append(lead + _describe(node, origin))
        count = len(node.children)
        for index, child in reversed(list(enumerate(node.children))):
            last = index == count - 1
            stack.append((child, rest + ("└─ " if last else "├─ "),
                          rest + ("   " if last else "│  ")))
    return lines


def _describe(node: TraceNode, origin: datetime | None) -> str:
    first = _first(node)
    made = first.created_at
    offset = "" if origin is None or made is None else (
        f" +{_duration((made - origin).total_seconds())}")
    outcomes = "; ".join(_outcome(step) for step in node.steps)
    return (f"{node.id} [{first.spore_type}] {first.from_agent} -> {first.to or '?'}"
            f"{offset}: {outcomes}")


def _outcome(step: TraceStep) -> str:
    # A response ends so whenever it answers its request (found by a new user: "ended
    # without a handler" read as a failure there).
    words = step.outcome if step.outcome != ENDED else (
        "answered its request" if step.spore_type == "response" else "ended without a handler")
    if step.agent is not None:
        words += f" by {step.agent}"
    if step.reason is not None:
        words += f" ({step.reason})"
    if step.latency is not None:
        words += f" in {_duration(step.latency)}"
    return words


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.2f}s"
