"""Turn what a handler returned into spores, routed by the agent's ``emit`` rule.

- ``None``: nothing.
- a dict: one spore with that knowledge: a ``response`` to the sender when the
  handled spore was a ``request``; else to ``emit``; else back to the sender.
- a :class:`Spore`: itself, stamped with the agent as sender and the lineage.

Every reply carries its lineage: ``causation_id`` is the parent's id, ``correlation_id``
the parent's (or the parent's id, when the parent is a root that has none).
- XML text (str or bytes), as language models write it: repaired, split into its
  top-level elements, one spore each (see ``xmlpayload`` for the mapping). The
  attributes ``to``, ``channel``, ``priority``, ``expires_in`` address a spore
  (else ``emit`` applies); the element's tag is its ``metadata["kind"]``.
- any other iterable: each item as above (one spore in, N out: the flatmap).

Each spore gets the id :func:`~sporeflow.steps.ids.derived_id` makes of the parent's id,
the agent and its position among them (``start``, ``start + 1``, ...): handled again,
the parent gives the same output the same ids.

XML is read under the organism's ``limits.max_xml_elements`` and
``limits.max_xml_attributes``. :func:`shape_replies_off_loop` is what an agent's lane
uses: XML text over ``OFFLOAD_XML_BYTES`` (alone or in an iterable) is parsed on a worker
thread, and an awaitable of the spores is returned instead of the list; the lane awaits
it inside the handler's timeout, so parsing a large reply counts against the handler
that wrote it and never holds the event loop. A timed-out parse runs on to its end on
its thread (it is linear and bounded by the parser's ``max_bytes``); its result is
dropped. Smaller XML, dicts and spores are shaped inline, the list returned directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Iterable
from datetime import datetime, timedelta
from typing import Any, Final

from sporeflow.config.errors import SporeError
from sporeflow.config.model import Emit, Limits
from sporeflow.config.units import parse_written_seconds
from sporeflow.config.words import shown, with_article
from sporeflow.steps.ids import derived_id
from sporeflow.steps.spore import Spore, SporeType, new_spore
from sporeflow.steps.xmldocument import payload_metadata
from sporeflow.steps.xmlpayload import NO_ELEMENT, Payload, XmlPayloadError, parse_payloads

__all__ = ["OFFLOAD_XML_BYTES", "reply_spore", "shape_replies", "shape_replies_off_loop"]

OFFLOAD_XML_BYTES: Final = 64 * 1024
"""XML text longer than this (characters of a str, bytes of bytes) is parsed on a worker
thread by :func:`shape_replies_off_loop`; shorter text is parsed inline, quicker than a
trip to a thread."""

_REQUEST = SporeType.REQUEST
_DEFAULT_LIMITS: Final = Limits()


def shape_replies(result: Any, *, parent: Spore, agent: str, emit: Emit | None,
                  limits: Limits = _DEFAULT_LIMITS, start: int = 0,
                  made: str = "returned") -> list[Spore]:
    """Return the spores that ``result``, returned by ``agent`` for ``parent``, stands for,
    their ids derived from positions ``start`` on. ``made`` is how the handler made it,
    for the error a bad value gets (``"yielded"`` for an item of a stream)."""
    if result is None:
        return []
    kind = type(result)
    if kind is dict:
        return [reply_spore(result, parent=parent, agent=agent, emit=emit,
                            id=derived_id(parent.id, agent, start))]
    if kind is Spore:
        return _numbered([_adopt(result, parent, agent)], parent, agent, start)
    if kind is str or kind is bytes:
        return _numbered(_xml_replies(result, parent=parent, agent=agent, emit=emit,
                                      limits=limits), parent, agent, start)
    if kind is set or kind is frozenset:  # no order, so no ids to derive from positions
        raise SporeError(_bad_return(agent, result, made))
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | dict):
        shaped: list[Spore] = []
        _shape_items(_Items(result, made), shaped, parent=parent, agent=agent, emit=emit,
                     limits=limits, offload=None)
        return _numbered(shaped, parent, agent, start)
    raise SporeError(_bad_return(agent, result, made))


def shape_replies_off_loop(
    result: Any, *, parent: Spore, agent: str, emit: Emit | None,
    limits: Limits = _DEFAULT_LIMITS, start: int = 0, made: str = "returned",
) -> list[Spore] | Awaitable[list[Spore]]:
    """:func:`shape_replies`, or, when ``result`` is or holds XML text over
    ``OFFLOAD_XML_BYTES``, an awaitable of the same spores that parses it on a worker
    thread (nothing is parsed before it is awaited). The items of an iterable keep their
    order; those after a large one are taken when the awaitable gets to them.
    """
    kind = type(result)
    if kind is dict:
        return [reply_spore(result, parent=parent, agent=agent, emit=emit,
                            id=derived_id(parent.id, agent, start))]
    if kind is str or kind is bytes:
        if len(result) > OFFLOAD_XML_BYTES:
            return _rest_off_loop([], result, _Items((), made), parent=parent, agent=agent,
                                  emit=emit, limits=limits, start=start)
        return _numbered(_xml_replies(result, parent=parent, agent=agent, emit=emit,
                                      limits=limits), parent, agent, start)
    if result is None or kind is Spore or kind is set or kind is frozenset or not isinstance(
            result, Iterable) or isinstance(result, str | bytes | dict):
        return shape_replies(result, parent=parent, agent=agent, emit=emit, limits=limits,
                             start=start, made=made)
    items = _Items(result, made)
    shaped: list[Spore] = []
    large = _shape_items(items, shaped, parent=parent, agent=agent, emit=emit, limits=limits,
                         offload=OFFLOAD_XML_BYTES)
    if large is None:
        return _numbered(shaped, parent, agent, start)
    return _rest_off_loop(shaped, large, items, parent=parent, agent=agent, emit=emit,
                          limits=limits, start=start)


def _numbered(spores: list[Spore], parent: Spore, agent: str, start: int) -> list[Spore]:
    """Give ``spores`` their derived ids, in place: each was made just now and nothing
    else holds it yet (dataclasses.replace would cost ten times more)."""
    parent_id = parent.id
    for position, spore in enumerate(spores, start):
        object.__setattr__(spore, "id", derived_id(parent_id, agent, position))
    return spores


class _Items:
    """The items of what a handler returned (or ``made`` otherwise), not yet shaped, and
    how many were taken: a bad one is named by its place."""

    __slots__ = ("container", "made", "rest", "taken")

    def __init__(self, container: Iterable[Any], made: str) -> None:
        self.container = container
        self.made = made
        self.rest = iter(container)
        self.taken = 0


def _shape_items(items: _Items, shaped: list[Spore], *, parent: Spore, agent: str,
                 emit: Emit | None, limits: Limits, offload: int | None) -> str | bytes | None:
    """Shape ``items`` into ``shaped`` until XML text over ``offload`` comes; return it
    (None: every item is shaped)."""
    for index, item in enumerate(items.rest, items.taken):
        kind = type(item)
        if kind is dict:
            shaped.append(reply_spore(item, parent=parent, agent=agent, emit=emit))
        elif item is None:
            continue
        elif kind is Spore:
            shaped.append(_adopt(item, parent, agent))
        elif kind is str or kind is bytes:
            if offload is not None and len(item) > offload:
                items.taken = index + 1
                return item  # type: ignore[no-any-return]
            shaped.extend(_xml_replies(item, parent=parent, agent=agent, emit=emit,
                                       limits=limits))
        else:
            raise SporeError(_bad_return(agent, item, items.made,
                                         within=(items.container, index)))
    return None


async def _rest_off_loop(shaped: list[Spore], large: str | bytes | None, items: _Items,
                         *, parent: Spore, agent: str, emit: Emit | None,
                         limits: Limits, start: int) -> list[Spore]:
    """Parse ``large`` on a worker thread, then shape the rest of ``items`` the same way."""
    while large is not None:
        shaped.extend(await _xml_replies_off_loop(large, parent=parent, agent=agent,
                                                  emit=emit, limits=limits))
        large = _shape_items(items, shaped, parent=parent, agent=agent, emit=emit,
                             limits=limits, offload=OFFLOAD_XML_BYTES)
    return _numbered(shaped, parent, agent, start)


async def _xml_replies_off_loop(text: str | bytes, *, parent: Spore, agent: str,
                                emit: Emit | None, limits: Limits) -> list[Spore]:
    payloads = await asyncio.to_thread(_returned_payloads, text, agent, limits)
    return _payload_spores(payloads, parent=parent, agent=agent, emit=emit)


def _returned_payloads(text: str | bytes, agent: str, limits: Limits) -> list[Payload]:
    """The payloads of text a handler returned; text with no element at all says that a
    returned ``str`` is read as XML (a plain sentence is the usual mistake)."""
    try:
        return parse_payloads(text, max_elements=limits.max_xml_elements,
                              max_attributes=limits.max_xml_attributes)
    except XmlPayloadError as exc:
        if not exc.message.startswith(NO_ELEMENT):
            raise
        returned = "bytes" if isinstance(text, bytes) else "text"
        raise XmlPayloadError(
            f"agent {agent!r} returned {returned} with no XML element in it: a str (or "
            f"bytes) a handler returns is read as XML replies; return a dict (JSON "
            f"knowledge, e.g. "
            f"{{\"text\": ...}}) instead ({exc.message})", exc.excerpt) from None


def reply_spore(
    knowledge: dict[str, Any], *, parent: Spore, agent: str, emit: Emit | None,
    to: str | None = None, channel: str | None = None, priority: int | None = None,
    id: str | None = None,
) -> Spore:
    """One reply to ``parent``: explicit address first, then the request rule, then emit.
    ``id``: its derived id (see ``steps.ids``); a fresh one when None."""
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
        causation_id=parent.id,
        correlation_id=parent.correlation_id or parent.id,
        id=id,
    )


def _adopt(spore: Spore, parent: Spore, agent: str) -> Spore:
    # A handler may build its own spore, but not forge its sender or leave its
    # conversation: its parent is the spore handled, whatever it says, and its thread and
    # correlation are the parent's, as ctx.send's are (a thread of its own would escape
    # the thread's budget, limits.max_spores_per_thread). A malformed field of the others
    # is left as it is, for the validate stage to refuse by name.
    hops = spore.hops
    return dataclasses.replace(
        spore, from_agent=agent, thread_id=parent.thread,
        hops=max(hops, parent.hops + 1) if type(hops) is int else hops,
        causation_id=parent.id, correlation_id=parent.conversation)


def _xml_replies(text: str | bytes, *, parent: Spore, agent: str, emit: Emit | None,
                 limits: Limits) -> list[Spore]:
    payloads = _returned_payloads(text, agent, limits)
    return _payload_spores(payloads, parent=parent, agent=agent, emit=emit)


def _payload_spores(payloads: list[Payload], *, parent: Spore, agent: str,
                    emit: Emit | None) -> list[Spore]:
    """One spore per top-level element; its attributes address it, its tag is its kind."""
    spores = []
    for payload in payloads:
        attrs = payload.attrs
        spore = reply_spore(
            payload.knowledge, parent=parent, agent=agent, emit=emit, to=attrs.get("to"),
            channel=attrs.get("channel"), priority=_int_attr(attrs, "priority", agent))
        expires_in = attrs.get("expires_in")
        spores.append(dataclasses.replace(
            spore, metadata=payload_metadata(payload),
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
        return parse_written_seconds(value)
    except ValueError as exc:
        raise SporeError(f"agent {agent!r} wrote expires_in={value!r} in its XML: {exc}") from None


def _bad_return(agent: str, value: object, made: str, *,
                within: tuple[Iterable[Any], int] | None = None) -> str:
    """Why ``value``, returned (or ``made`` otherwise) by ``agent`` (``within``: the item
    at that index of what it made), makes no reply, and what to make instead."""
    returned = with_article(type(value).__name__)
    if within is not None:
        container, index = within
        returned = (f"{with_article(type(container).__name__)} whose item {index} is "
                    f"{returned}")
    unordered = (" (a set has no order: its replies would get different ids each time "
                 "it is handled; return a list)") if isinstance(value, set | frozenset) else (
        f" (a {type(value).__name__} is a dict of another type: return dict(it))"
        if isinstance(value, dict) else "")
    verb = "return" if made == "returned" else "yield"
    return (f"agent {agent!r} {made} {returned}, {shown(value, 60)}; "
            f"{verb} None, a dict, a Spore, XML text, or a list or other ordered iterable "
            f"of those{unordered}")
