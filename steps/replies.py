"""Turn what a handler returned into spores, routed by the agent's ``emit`` rule.

- ``None``: nothing.
- a dict: one spore with that knowledge: a ``response`` to the sender when the
  handled spore was a ``request``; else to ``emit``; else back to the sender.
- a :class:`Spore`: itself, stamped with the agent as sender and the lineage.
- XML text (str or bytes), as language models write it: repaired, split into its
  top-level elements, one spore each (see ``xmlpayload`` for the mapping). The
  attributes ``to``, ``channel``, ``priority``, ``expires_in`` address a spore
  (else ``emit`` applies); the element's tag is its ``metadata["kind"]``.
- any other iterable: each item as above (one spore in, N out: the flatmap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sporeflow.config.errors import SporeError
from sporeflow.config.model import Emit
from sporeflow.config.units import parse_duration
from sporeflow.steps.spore import Spore, SporeType, new_spore
from sporeflow.steps.xmlpayload import parse_payloads

__all__ = ["reply_spore", "shape_replies"]

_REQUEST = SporeType.REQUEST


def shape_replies(result: Any, *, parent: Spore, agent: str, emit: Emit | None) -> list[Spore]:
    """Return the spores that ``result``, returned by ``agent`` for ``parent``, stands for."""
    if result is None:
        return []
    kind = type(result)
    if kind is dict:
        return [reply_spore(result, parent=parent, agent=agent, emit=emit)]
    if kind is Spore:
        return [_adopt(result, parent, agent)]
    if kind is str or kind is bytes:
        return _xml_replies(result, parent=parent, agent=agent, emit=emit)
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | dict):
        shaped: list[Spore] = []
        for item in result:
            if item is None:
                continue
            if type(item) is dict:
                shaped.append(reply_spore(item, parent=parent, agent=agent, emit=emit))
            elif type(item) is Spore:
                shaped.append(_adopt(item, parent, agent))
            elif type(item) in (str, bytes):
                shaped.extend(_xml_replies(item, parent=parent, agent=agent, emit=emit))
            else:
                raise SporeError(_bad_return(agent, item))
        return shaped
    raise SporeError(_bad_return(agent, result))


def reply_spore(
    knowledge: dict[str, Any], *, parent: Spore, agent: str, emit: Emit | None,
    to: str | None = None, channel: str | None = None, priority: int | None = None,
) -> Spore:
    """One reply to ``parent``: explicit address first, then the request rule, then emit."""
    spore_type = SporeType.KNOWLEDGE
    reply_to = None
    if to is None and channel is None:
        if parent.spore_type is _REQUEST:
            to, spore_type, reply_to = parent.from_agent, SporeType.RESPONSE, parent.id
        elif emit is not None:
            to, channel = emit.to, emit.channel
        else:
            to = parent.from_agent
    return new_spore(
        knowledge=knowledge,
        spore_type=spore_type if to is not None else SporeType.BROADCAST,
        from_agent=agent,
        to_agent=to,
        channel=channel or parent.channel,
        priority=priority if priority is not None else parent.priority,
        reply_to=reply_to,
        thread_id=parent.thread_id or parent.id,
        hops=parent.hops + 1,
    )


def _adopt(spore: Spore, parent: Spore, agent: str) -> Spore:
    # A handler may build its own spore, but not forge its sender or reset its lineage.
    # A malformed field is left as it is, for the validate stage to refuse by name.
    hops = spore.hops
    return dataclasses.replace(
        spore, from_agent=agent, thread_id=spore.thread_id or parent.thread_id or parent.id,
        hops=max(hops, parent.hops + 1) if type(hops) is int else hops)


def _xml_replies(text: str | bytes, *, parent: Spore, agent: str,
                 emit: Emit | None) -> list[Spore]:
    """One spore per top-level element; its attributes address it, its tag is its kind."""
    spores = []
    for payload in parse_payloads(text):
        attrs = payload.attrs
        spore = reply_spore(
            payload.knowledge, parent=parent, agent=agent, emit=emit, to=attrs.get("to"),
            channel=attrs.get("channel"), priority=_int_attr(attrs, "priority", agent))
        expires_in = attrs.get("expires_in")
        spores.append(dataclasses.replace(
            spore, metadata={"kind": payload.tag},
            expires_at=None if expires_in is None else _expiry(
                spore.created_at, expires_in, agent)))
    return spores


def _expiry(start: datetime, value: str, agent: str) -> datetime:
    """``start`` plus the ``expires_in`` an agent wrote; nan, inf or huge are refused."""
    try:
        return start + timedelta(seconds=_seconds_attr(value, agent))
    except (OverflowError, ValueError):
        raise SporeError(f"agent {agent!r} wrote expires_in={value!r:.40} in its XML, which "
                         f"is out of range; use a duration like 30s or 5m") from None


def _int_attr(attrs: dict[str, str], name: str, agent: str) -> int | None:
    value = attrs.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SporeError(f"agent {agent!r} wrote {name}={value!r} in its XML; use an integer "
                         f"from 1 to 10") from None


def _seconds_attr(value: str, agent: str) -> float:
    """``expires_in`` as seconds: a bare number, or a duration like ``30s``."""
    try:
        return parse_duration(float(value))
    except ValueError:
        pass
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SporeError(f"agent {agent!r} wrote expires_in={value!r} in its XML: {exc}") from None


def _bad_return(agent: str, value: object) -> str:
    return (f"agent {agent!r} returned a {type(value).__name__} ({value!r:.60}); return None, "
            f"a dict, a Spore, XML text, or an iterable of those")
