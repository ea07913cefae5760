"""What a declaration takes away: the bindings and queues of an organism's agents that
its file no longer declares (the rule every backend follows; the record is theirs).

A broker keeps what was declared on it: a subscription removed from the file leaves
its binding, and every broadcast on that channel still reaches the agent's queue (to
be refused there as ``wrong queue``); an agent removed leaves its queue bound with no
consumer, filling until it is full and the broker refuses every broadcast it would
take. So each declaration of the topology compares it with the **record** of what
was declared before (``Record``: agent queue -> its binding patterns, kept on the
broker, ``amqp_declared``; in a ``MemoryBroker``), and:

- unbinds every pattern the record has and the file does not (a subscription, a
  channel, an external agent removed; a routing-key template changed);
- unbinds a queue the file no longer has from everything, so that it stops filling;
  deletes it if it is empty and unused, else keeps it, with a WARNING naming it, the
  messages it holds and the command that deletes it (its spores are not thrown away
  silently; putting the agent back in the file binds it again and delivers them);
- leaves a queue another process consumes as it is bound, since that process may run
  another version of the file (a rolling deploy: one restarted on the older file must
  not unbind what the newer one declared for an agent it serves); it stays in the
  record, and a declaration once nothing consumes it takes it away;
- then records what it declared: the record is always the last declaration's, plus
  the queues kept and left.

Without a record (a deployment declared by an older version), each agent's queue is
unbound from the keys of the file's channels it does not subscribe to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Leftovers", "Plan", "Record", "decode", "encode", "merged", "stale"]

Record = Mapping[str, tuple[str, ...]]  # agent queue -> the patterns binding it
Counts = tuple[int, int]  # a queue's messages and consumers
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What one declaration takes away, the rule above applied (each backend carries it
    out its own way, then writes :meth:`record`)."""

    unbind: tuple[tuple[str, str], ...]  # (queue, pattern)
    orphans: tuple[str, ...]  # no agent's queues, unbound now: deleted if idle, else kept
    left: Mapping[str, tuple[str, ...]]  # consumed by another process: as they were

    @classmethod
    def of(cls, now: Record, before: Record, counts: Mapping[str, Counts | None]) -> Plan:
        """``counts``: of each queue :meth:`asked` names (None: it does not exist)."""
        gone = stale(now, before)
        left = {queue: before[queue] for queue in gone if (counts.get(queue) or (0, 0))[1]}
        return cls(
            unbind=tuple((queue, pattern) for queue, patterns in gone.items()
                         if queue not in left and counts.get(queue) is not None
                         for pattern in patterns),
            orphans=tuple(queue for queue in before if queue not in now
                          and queue not in left and counts.get(queue) is not None),
            left=left)

    @staticmethod
    def asked(now: Record, before: Record) -> list[str]:
        """The queues whose counts :meth:`of` needs."""
        return list(dict.fromkeys([*stale(now, before), *(q for q in before if q not in now)]))

    def record(self, now: Record, kept: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """What to record: ``now``, the orphans ``kept`` (unbound), and those left."""
        return merged([now, {queue: () for queue in kept}, self.left])


def stale(now: Record, before: Record) -> dict[str, tuple[str, ...]]:
    """Per queue, the patterns ``before`` binds it by and ``now`` does not: what to
    unbind (a queue absent from ``now`` is no agent's any more)."""
    gone: dict[str, tuple[str, ...]] = {}
    for queue, patterns in before.items():
        kept = set(now.get(queue, ()))
        extra = tuple(dict.fromkeys(p for p in patterns if p not in kept))
        if extra:
            gone[queue] = extra
    return gone


def merged(records: Iterable[Record]) -> dict[str, tuple[str, ...]]:
    """Several records as one (a declaration cut off between writing its record and
    taking away the one before leaves both: what either binds may be bound)."""
    union: dict[str, dict[str, None]] = {}
    for record in records:
        for queue, patterns in record.items():
            union.setdefault(queue, {}).update(dict.fromkeys(patterns))
    return {queue: tuple(patterns) for queue, patterns in union.items()}


def encode(record: Record) -> bytes:
    return json.dumps({"version": _VERSION, "queues": {q: list(p) for q, p in
                                                     sorted(record.items())}}).encode()


def decode(body: bytes) -> dict[str, tuple[str, ...]] | None:
    """The record in ``body``; None when it is none (written by nobody we know)."""
    try:
        data = json.loads(body)
        queues = data["queues"]
        if data.get("version") != _VERSION or not isinstance(queues, dict):
            return None
        return {str(q): tuple(str(p) for p in patterns) for q, patterns in queues.items()
                if isinstance(patterns, list)}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What one declaration took away, and the queues it had to leave."""

    unbound: tuple[tuple[str, str], ...] = ()  # (queue, pattern)
    deleted: tuple[str, ...] = ()  # queues of agents no longer declared, empty
    # Such queues holding messages or consumed still: (queue, messages, consumers).
    kept: tuple[tuple[str, int, int], ...] = ()
    vhost: str = "/"
    # No record was found (a new deployment, or one declared by an older version): what
    # ``unbound`` names was unbound where it was bound, which RabbitMQ does not tell.
    guessed: bool = False
    # Queues with bindings the file no longer declares, left bound: another process
    # consumes them (one running another version of the file, perhaps).
    left: tuple[str, ...] = ()

    def delete_command(self, queue: str) -> str:
        where = "" if self.vhost == "/" else f" -p {self.vhost}"
        return f"rabbitmqctl delete_queue{where} {queue}"

    def warnings(self) -> list[str]:
        return [f"queue {queue!r} belongs to no agent of the organism file any more: it "
                f"was unbound, so it takes no more spores, and kept: {_held(count, users)}; "
                f"delete it once they do not matter (`{self.delete_command(queue)}`), or "
                f"put the agent back in the file to have them handled"
                for queue, count, users in self.kept]

    def lines(self) -> list[str]:
        """What was taken away, a line each (for ``broker-declare``)."""
        if self.guessed:
            unbound = [f"no record of an earlier declaration (a new deployment, or one of an "
                       f"older version): unbound each agent's queue from the keys of the "
                       f"file's channels it does not subscribe to ({len(self.unbound)}), "
                       f"where bound"] if self.unbound else []
        else:
            unbound = [f"unbound {queue} from {pattern}" for queue, pattern in self.unbound]
        return [*unbound,
                *(f"left {queue} bound as it was: another process consumes it (one of "
                  f"another version of the file?); taken away once none does"
                  for queue in self.left),
                *(f"deleted {queue} (empty; no agent of the file)" for queue in self.deleted),
                *(f"kept {queue}, unbound: {_held(count, users)} "
                  f"(`{self.delete_command(queue)}`)" for queue, count, users in self.kept)]

    def report(self, logger: logging.Logger, address: str, exchange: str) -> None:
        """Log what was taken away (INFO) and each queue kept (WARNING)."""
        if self.unbound or self.deleted or self.left:
            logger.info("%s: declaring the topology of %r: %s", address, exchange, "; ".join(
                line for line in self.lines() if not line.startswith("kept")))
        for warning in self.warnings():
            logger.warning("%s: %s", address, warning)


def _held(messages: int, consumers: int) -> str:
    held = f"it holds {messages} message{'' if messages == 1 else 's'}"
    if consumers:
        held += (f" and {consumers} consumer{'' if consumers == 1 else 's'} (a process "
                 f"of an older file?)")
    return held
