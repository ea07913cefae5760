"""What the bounds of an organism's queues mean when RabbitMQ enforces them, in words.

Each agent's queue and the dead-letter queue are declared with ``x-max-length``,
``x-max-length-bytes`` and ``x-overflow`` from ``organism.broker`` (see
``Topology.queue_arguments``). Two refusals follow, and each is told plainly here:

- a queue declared before with other arguments: RabbitMQ never changes them and refuses
  the declaration (``PRECONDITION_FAILED - inequivalent arg ...``);
- a publish to a full queue with ``overflow: reject-publish``: the confirm is a nack.
"""

from __future__ import annotations

import re

from sporeflow.pipeline.broker.backend import Topology

__all__ = ["full_queue_message", "redeclared_message"]

# RabbitMQ's words: "inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received
# '5' but current is '10'"; a value may also be "none" or "the value '10' of type 'long'".
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue '(?P<queue>[^']*)' in vhost '[^']*': "
    r"received (?P<new>.+?) but current is (?P<old>.+?)\s*$")
_VALUE = re.compile(r"^(?:the value )?'(?P<value>[^']*)'(?: of type '[^']*')?$")
_KEYS = {"x-max-length": "max_length", "x-max-length-bytes": "max_length_bytes",
         "x-overflow": "overflow", "x-queue-type": "queue_type"}
# Arguments only a quorum queue is declared with (Topology.queue_arguments).
_QUORUM_ONLY = frozenset({"x-delivery-limit", "x-dead-letter-strategy"})


def redeclared_message(address: str, topology: Topology, error: str) -> str | None:
    """The error of a queue RabbitMQ holds with other arguments than ``topology`` declares,
    naming the queue, both values and the fix; None when ``error`` is about no queue."""
    found = _INEQUIVALENT.search(error)
    if found is None:
        return None
    arg, queue = found["arg"], found["queue"]
    old, new = _value(found["old"]), _value(found["new"])
    if arg == "x-max-priority" and topology.queue_type == "quorum":
        # Checked before the type: a queue with priorities is classic, a quorum one has none.
        arg, old, new = "x-queue-type", None, "quorum"
    elif arg in _QUORUM_ONLY and new is None and topology.queue_type != "quorum":
        # Checked before the type too: a queue with these is a quorum one.
        arg, old, new = "x-queue-type", "quorum", None
    head = (f"RabbitMQ at {address} holds queue {queue!r} with {arg}={old or 'unset'}, and "
            f"this organism declares it with {arg}={new or 'unset'}")
    key = _KEYS.get(arg)
    if arg == "x-delivery-limit":  # an agent's max_crashes, less one
        agent = queue.removeprefix(f"{topology.exchange}.")
        return (f"{head}: agents.{agent}.max_crashes changed on a quorum queue; RabbitMQ "
                f"never changes a queue's arguments: delete the queue (rabbitmqctl "
                f"delete_queue {queue}; the messages in it are lost) and start again, or keep "
                f"the old setting (agents.{agent}.max_crashes: "
                f"{int(old) + 1 if old and old.isdigit() else 'as before'})")
    if key is None:  # not a setting of ours (x-max-priority, x-dead-letter-exchange)
        return (f"{head}; RabbitMQ never changes a queue's arguments: delete the queue "
                f"(rabbitmqctl delete_queue {queue}; the messages in it are lost) or set "
                f"organism.broker.exchange to a new name")
    if queue == topology.dead_letter_queue and key != "overflow":
        key = f"dead_letter_{key}"
    keep = old if old is not None else "classic" if key == "queue_type" else "null"
    return (f"{head} (organism.broker.{key}); RabbitMQ never changes a queue's arguments: "
            f"delete the queue (rabbitmqctl delete_queue {queue}; the messages in it are "
            f"lost) and start again, or keep the old setting (organism.broker.{key}: {keep})")


def full_queue_message(topology: Topology | None, what: str) -> str:
    """Why the broker refused (nacked) ``what``: a queue it goes to is full."""
    if topology is None:
        return f"RabbitMQ refused {what} (a nack)"
    dead = "dead_letter_" if "dead-letter" in what else ""
    length = getattr(topology, f"{dead}max_length")
    size = getattr(topology, f"{dead}max_length_bytes")
    return (f"RabbitMQ refused {what} (a nack): a queue it goes to is full "
            f"(organism.broker.{dead}max_length={length}, {dead}max_length_bytes={size}, "
            f"overflow {topology.overflow}); its consumers are behind or gone")


def _value(text: str) -> str | None:
    if text == "none":
        return None
    match = _VALUE.match(text)
    return match["value"] if match else text
