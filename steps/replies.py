"""Turn what a handler returned into spores, routed by the agent's ``emit`` rule.

- ``None``: nothing.
- a dict: one spore with that knowledge: a ``response`` to the sender when the
  handled spore was a ``request``; else to ``emit``; else back to the sender.
- a :class:`Spore`: itself, stamped with the agent as sender and the lineage.
- XML text (str or bytes): one spore per top-level element (see ``xmlpayload``).
- any other iterable: each item as above (one spore in, N out: the flatmap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from sporeflow.config.errors import SporeError
from sporeflow.config.model import Emit
from sporeflow.steps.spore import Spore, SporeType

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
    return Spore(
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
    return dataclasses.replace(
        spore, from_agent=agent, thread_id=spore.thread_id or parent.thread_id or parent.id,
        hops=max(spore.hops, parent.hops + 1))


def _xml_replies(text: str | bytes, *, parent: Spore, agent: str,
                 emit: Emit | None) -> list[Spore]:
    raise SporeError(
        f"agent {agent!r} returned text ({text[:40]!r}...); return a dict, a Spore, or XML")


def _bad_return(agent: str, value: object) -> str:
    return (f"agent {agent!r} returned a {type(value).__name__} ({value!r:.60}); return None, "
            f"a dict, a Spore, XML text, or an iterable of those")
