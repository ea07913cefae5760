"""A dead letter as a message of RabbitMQ's dead-letter queue: the spore's own message
(a delivery's as it came, or a spore of this process's as it would be published) with
why in ``x-sporeflow-*`` headers, what ``dead_letter_queue`` reads back and replays by
``x-sporeflow-routing-key``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from sporeflow.config import BrokerError, SporeError
from sporeflow.config.json_shape import utf8_writable
from sporeflow.pipeline.broker.amqp_codec import (
    CONTENT_TYPE,
    forwardable_headers,
    spore_body_headers,
)
from sporeflow.pipeline.broker.amqp_inbound import AMQP_ERRORS, broker_failure
from sporeflow.pipeline.broker.backend import BackendStatistics, Topology
from sporeflow.pipeline.broker.queue_bounds import full_queue_message
from sporeflow.pipeline.core.deadletters import spore_form
from sporeflow.steps import Spore

__all__ = ["delivery_letter", "put_letter", "spore_letter"]

_MAX_ERROR_HEADER = 2000


def delivery_letter(raw: DeliveredMessage, properties: Basic.Properties, *, reason: str,
                    error: str, agent: str | None, attempts: int) -> aio_pika.Message:
    """The dead letter of a delivery: its body and the headers that can be written back."""
    headers = forwardable_headers(properties.headers)
    headers.update(_why(reason, error, agent, attempts, raw.routing_key or ""))
    # reply_to kept: a signature covers it, checked before a replay signs the letter again.
    return aio_pika.Message(raw.body, headers=headers, content_type=properties.content_type,
                            message_id=properties.message_id, timestamp=properties.timestamp,
                            reply_to=properties.reply_to,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def spore_letter(spore: Spore, routing_key: str, *, reason: str, error: str,
                 agent: str | None, attempts: int) -> aio_pika.Message:
    """The dead letter of a spore this process refused before it was published: as it
    would have been published; one JSON cannot write, as its bounded text (read back, a
    letter that holds no spore)."""
    try:
        body, headers = spore_body_headers(spore)
    except SporeError:
        body = json.dumps(spore_form(spore), ensure_ascii=True).encode()
        headers = {"spore_id": str(spore.id)[:200]}
    headers.update(_why(reason, error, agent, attempts, routing_key))
    # Its names may be what got it refused (a lone surrogate, which AMQP's text cannot
    # hold): written escaped, so that the letter reaches the queue all the same.
    headers = {key: _writable(value) if isinstance(value, str) else value
               for key, value in headers.items()}
    made = spore.created_at if isinstance(spore.created_at, datetime) else None
    return aio_pika.Message(body, headers=headers, content_type=CONTENT_TYPE,
                            message_id=_writable(str(spore.id)[:200]), timestamp=made,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def _writable(text: str) -> str:
    return text if utf8_writable(text) else text.encode("utf-8", "backslashreplace").decode()


def _why(reason: str, error: str, agent: str | None, attempts: int,
         routing_key: str) -> dict[str, Any]:
    return {"x-sporeflow-reason": reason, "x-sporeflow-error": error[:_MAX_ERROR_HEADER],
            "x-sporeflow-agent": agent or "", "x-sporeflow-attempts": attempts,
            "x-sporeflow-routing-key": routing_key}


async def put_letter(dead: AbstractExchange, letter: aio_pika.Message, *,
                     topology: Topology | None, address: str,
                     stats: BackendStatistics) -> None:
    """Publish ``letter`` to the dead-letter exchange ``dead`` and wait for its confirm;
    a nack (the dead-letter queue is full) or any AMQP error raises :class:`BrokerError`."""
    try:
        await dead.publish(letter, routing_key="", mandatory=True)
    except aiormq.exceptions.DeliveryError as exc:  # a nack: the dead-letter queue is full
        raise BrokerError(full_queue_message(
            topology, f"a dead letter for the dead-letter queue at {address}")) from exc
    except AMQP_ERRORS as exc:
        raise broker_failure(address, "dead-lettering a message", exc) from exc
    stats.dead_lettered += 1
