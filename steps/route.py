"""route: turn spores into deliveries (direct, broadcast), resolve awaited responses.

The stage reads plain tables: which agents exist, who subscribes to what, whom
each agent may address. It enforces permissions and refuses what it cannot
route, so nothing leaves it unaccounted for: each spore becomes a delivery, a
resolved response, a spore for the outside world, or a rejection.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Container, Mapping
from dataclasses import dataclass, field

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError, NotAPeer
from sporeflow.config.model import DEAD_LETTER_CHANNEL, SYSTEM_SENDER
from sporeflow.config.reasons import Reason, did_you_mean
from sporeflow.config.words import shown
from sporeflow.steps.spore import Spore, SporeType
from sporeflow.steps.types import Batch, Delivery, Reject

__all__ = ["RoutingTable", "no_agent_error", "permission_error", "route", "unheard_error",
           "unroutable", "unsubscribed_error"]

_RESPONSE = SporeType.RESPONSE
_BROADCAST = SporeType.BROADCAST


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Who exists and who may talk to whom; rebuilt by the runtime on every change."""

    agents: frozenset[str]
    subscribers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    peers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    publishers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    channels: frozenset[str] = frozenset()
    organism: str = ""  # its name, for messages
    # Names a reload took out of the organism in this run and no reload put back: a
    # refusal of a spore to one says so, and only a spore to one may be owed to its
    # agent's retiring lane (see ``route``'s ``owed``).
    removed: frozenset[str] = frozenset()

    @property
    def guarded(self) -> bool:
        """Whether :func:`permission_error` may refuse anything here: peers, publish lists,
        or an agent hearing the dead-letter channel (whose notices only the organism
        sends); else every spore is allowed and the check is skipped."""
        return bool(self.peers or self.publishers or DEAD_LETTER_CHANNEL in self.subscribers)


_NAME_SHOWN = 140  # characters of a name quoted: any name an organism may hold, whole


def no_agent_error(table: RoutingTable, target: str, spore: Spore | None = None
                   ) -> DeliveryError:
    """Why a spore (``spore``, or one about to be built) to ``target`` is refused when no
    agent of ``table`` has that name: the one text of this rule, at the door and in route."""
    named = shown(target, _NAME_SHOWN)  # what a sender names may be of any length
    about = (f"spore {spore.id} from {shown(spore.from_agent, _NAME_SHOWN)} is addressed to "
             f"{named}: " if spore is not None else "")
    if target in table.removed:  # not a typo: no did-you-mean
        return DeliveryError(f"{about}no agent {named} in organism {table.organism!r}: it "
                             f"was removed by a reload (what was sent to it before that "
                             f"reload is still handled)", reason=Reason.UNKNOWN_AGENT)
    return DeliveryError(f"{about}no agent {named} in organism {table.organism!r}"
                         f"{did_you_mean(target, table.agents)}", reason=Reason.UNKNOWN_AGENT)


def unheard_error(table: RoutingTable, spore: Spore) -> DeliveryError:
    """Why broadcast ``spore`` is refused when its channel reaches no agent but its sender."""
    reason = (Reason.NO_SUBSCRIBERS if spore.channel in table.channels
              else Reason.UNKNOWN_CHANNEL)
    return DeliveryError(
        f"broadcast {spore.id} from {shown(spore.from_agent, _NAME_SHOWN)} on channel "
        f"{shown(spore.channel, _NAME_SHOWN)} reaches no agent ({reason})"
        f"{did_you_mean(spore.channel, table.channels)}",
        reason=reason)


def unsubscribed_error(table: RoutingTable, spore: Spore) -> NotAPeer | None:
    """Why ``spore``, a broadcast addressed to one agent of ``table`` (a delivery of it
    replayed: to the subscriber that failed on it), may not reach that agent: a broadcast
    goes only to its channel's subscribers, whatever its sender's peers."""
    target = spore.to_agent
    if (spore.spore_type is not _BROADCAST or target is None
            or target in table.subscribers.get(spore.channel, ())):
        return None
    return NotAPeer(
        f"agent {shown(target, _NAME_SHOWN)} does not subscribe to channel "
        f"{shown(spore.channel, _NAME_SHOWN)}: a broadcast goes only to its channel's "
        f"subscribers (a delivery of one replayed, to the subscriber that failed on it)")


def unroutable(table: RoutingTable, spore: Spore, *,
               outside: Container[str] = frozenset()) -> DeliveryError | None:
    """Why route would find no agent for ``spore`` (not a response), or None: what a
    sender that wants to hear of it at once (the HTTP ingress) is told before admission."""
    target = spore.to_agent
    if target is not None:
        if target in table.agents:
            return unsubscribed_error(table, spore)
        if target in outside:
            return None
        return no_agent_error(table, target, spore)
    if any(name != spore.from_agent for name in table.subscribers.get(spore.channel, ())):
        return None
    return unheard_error(table, spore)


def permission_error(table: RoutingTable, spore: Spore, *,
                     outside: Container[str] = frozenset()) -> NotAPeer | None:
    """Return why ``table`` forbids ``spore``, or None when it is allowed.

    ``peers`` limit whom an agent addresses among the agents (a name that is none is
    :func:`unroutable`'s): a response, and a reply to an ``outside`` sender (the caller
    of ``organism.send``, the CLI), always pass.
    A broadcast addressed to one of its channel's subscribers (a replayed dead letter of
    one delivery) is held to the broadcast's rule, ``publish``, as its delivery was: it
    reaches no agent the broadcast itself would not.
    """
    sender, target = spore.from_agent, spore.to_agent
    if target is not None and not (spore.spore_type is _BROADCAST and target in
                                   table.subscribers.get(spore.channel, ())):
        allowed = table.peers.get(sender)
        # An agent that does not exist is no question of peers: route refuses it as an
        # unknown agent, with a did-you-mean (a typo is not a peer to add).
        if (allowed is not None and target not in allowed and spore.spore_type is not _RESPONSE
                and target not in outside and target in table.agents):
            return NotAPeer(
                f"agent {sender!r} may not address {target!r}: its peers are "
                f"{sorted(allowed)!r}")
        return None
    if spore.channel == DEAD_LETTER_CHANNEL and sender != SYSTEM_SENDER:
        # The organism's own notices of its dead letters: a forged one would look real.
        return NotAPeer(
            f"agent {sender!r} may not broadcast on {spore.channel!r}: that channel carries "
            f"the organism's own notices of its dead letters, sent by {SYSTEM_SENDER!r}")
    publishers = table.publishers.get(spore.channel)
    if publishers is not None and sender not in publishers:
        return NotAPeer(
            f"agent {sender!r} may not broadcast on {spore.channel!r}: its publish list is "
            f"{sorted(publishers)!r}")
    return None


@pipable_operator
async def route(
    source: AsyncIterable[Batch],
    *,
    table: Callable[[], RoutingTable],
    on_reject: Reject,
    asked: Callable[[str], str | None] = lambda request_id: None,
    abandoned: Container[str] = frozenset(),
    answered: Mapping[str, str] | None = None,
    on_response: Callable[[Spore], None] = lambda spore: None,
    on_copy: Callable[[Spore], None] = lambda spore: None,
    outside: Container[str] = frozenset(),
    on_outside: Callable[[Spore], None] = lambda spore: None,
    on_broadcast: Callable[[Spore, int], None] = lambda spore, targets: None,
    arrived: Callable[[Spore], str | None] | None = None,
    owed: Callable[[Spore], bool] = lambda spore: False,
) -> AsyncIterator[list[Delivery]]:
    """Yield one delivery per routable spore; settle or reject every other spore.

    A response goes to ``on_response`` only when ``asked(reply_to)`` names its sender:
    the agent a still pending request went to. Any other response is refused
    (``late response`` when its request was ``abandoned``, else ``unexpected
    response``, saying so when it was ``answered`` already) and never reaches a
    handler, but for a copy of the response that answered it (``answered`` maps a request
    to that response's id; at-least-once delivery makes a request's answer again, with the
    same id): that copy goes to ``on_copy``. ``arrived`` tells, for a spore consumed from
    a broker, the agent whose queue it came from: it goes to that agent only, and only if
    that agent is its recipient or subscribes to its channel.
    ``on_broadcast`` is told, for each broadcast routed here, how many agents it reaches.
    A spore to an agent a reload ``removed`` that ``owed`` says was accepted for it before
    that reload goes to it still (to its retiring lane: see ``dispatch``); asked only of
    a spore addressed to no agent, so that routing pays nothing for it otherwise.
    """
    # One ``(name,)`` per agent, reused: a tuple per direct spore would be one more
    # object to allocate and for the garbage collector to track while it is queued.
    alone: dict[str, tuple[str]] = {}
    answers: Mapping[str, str] = {} if answered is None else answered
    async with streamcontext(source) as batches:
        async for batch in batches:
            routes = table()
            agents, subscribers = routes.agents, routes.subscribers
            check_permissions = routes.guarded
            deliveries: list[Delivery] = []
            for spore in batch:
                if spore.spore_type is _RESPONSE:
                    refusal = _response_refusal(spore, asked, abandoned, answers)
                    if refusal is None:
                        on_response(spore)
                    elif refusal is _COPY:
                        on_copy(spore)
                    else:
                        on_reject(spore, refusal.reason, refusal)
                    continue
                if check_permissions:
                    refusal = permission_error(routes, spore, outside=outside)
                    if refusal is not None:
                        on_reject(spore, refusal.reason, refusal)
                        continue
                if spore.spore_type is _BROADCAST and spore.to_agent in agents:
                    refusal = unsubscribed_error(routes, spore)  # a delivery, replayed
                    if refusal is not None:
                        on_reject(spore, refusal.reason, refusal)
                        continue
                queue = arrived(spore) if arrived is not None else None
                if queue is not None:
                    refusal = _queue_refusal(spore, queue, subscribers)
                    if refusal is None:
                        deliveries.append((spore, (queue,)))
                    else:
                        on_reject(spore, refusal.reason, refusal)
                    continue
                target = spore.to_agent
                if target is not None:
                    if target in agents:
                        single = alone.get(target)
                        if single is None:
                            single = alone[target] = (target,)
                        deliveries.append((spore, single))
                    elif target in outside:
                        on_outside(spore)
                    elif target in routes.removed and owed(spore):
                        deliveries.append((spore, (target,)))
                    else:
                        on_reject(spore, Reason.UNKNOWN_AGENT,
                                  no_agent_error(routes, target, spore))
                    continue
                targets = subscribers.get(spore.channel, ())
                if spore.from_agent in targets:
                    targets = tuple(a for a in targets if a != spore.from_agent)
                if targets:
                    deliveries.append((spore, targets))
                    on_broadcast(spore, len(targets))
                else:
                    refusal = unheard_error(routes, spore)
                    on_reject(spore, refusal.reason, refusal)
            if deliveries:
                yield deliveries


# What _response_refusal says of a copy of the response that answered its request.
_COPY = DeliveryError("a copy of the response that answered its request",
                      reason=Reason.UNEXPECTED_RESPONSE)


def _response_refusal(spore: Spore, asked: Callable[[str], str | None],
                      abandoned: Container[str],
                      answered: Mapping[str, str]) -> DeliveryError | None:
    """Why ``spore``, a response, may not resolve anything (``_COPY``: it is a copy of the
    one that answered); None when it may."""
    reply_to = spore.reply_to
    if reply_to is None:
        return DeliveryError(f"response {spore.id} from {spore.from_agent!r} answers no "
                             f"request (reply_to is empty)", reason=Reason.UNEXPECTED_RESPONSE)
    responder = asked(reply_to)
    if responder is not None and responder == spore.from_agent:
        return None
    if responder is not None:
        return DeliveryError(
            f"response {spore.id} to request {reply_to} comes from {spore.from_agent!r}, "
            f"but the request went to {responder!r}", reason=Reason.UNEXPECTED_RESPONSE)
    if reply_to in abandoned:
        return DeliveryError(f"response {spore.id} came after the asker of request "
                             f"{reply_to} stopped waiting (its timeout passed, or it was "
                             f"cancelled)", reason=Reason.LATE_RESPONSE)
    if reply_to in answered:
        if answered[reply_to] == spore.id:
            return _COPY
        return DeliveryError(
            f"response {spore.id} from {spore.from_agent!r} answers request {reply_to}, "
            f"which an earlier response answered already: a request takes one response "
            f"(a handler answering one returns one item; ctx.send the others)",
            reason=Reason.UNEXPECTED_RESPONSE)
    return DeliveryError(f"response {spore.id} from {spore.from_agent!r} answers "
                         f"{reply_to!r:.80}, which is no pending request",
                         reason=Reason.UNEXPECTED_RESPONSE)


def _queue_refusal(spore: Spore, queue: str,
                   subscribers: Mapping[str, tuple[str, ...]]) -> DeliveryError | None:
    """Why ``spore``, consumed from agent ``queue``'s queue, may not go to that agent."""
    target = spore.to_agent
    if target is not None:
        if target == queue:
            return None
        return DeliveryError(f"spore {spore.id} is addressed to {target!r} but arrived in "
                             f"the queue of {queue!r}", reason=Reason.WRONG_QUEUE)
    if queue in subscribers.get(spore.channel, ()) and spore.from_agent != queue:
        return None
    return DeliveryError(f"broadcast {spore.id} on channel {spore.channel!r} arrived in the "
                         f"queue of {queue!r}, which does not subscribe to it",
                         reason=Reason.WRONG_QUEUE)
