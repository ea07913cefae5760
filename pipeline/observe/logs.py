"""Logging for the CLI: readable text by default, or one JSON object per line.

Log calls about a spore pass ``extra=spore_fields(spore, agent=..., event=...)``;
the JSON form carries those fields (``spore_id``, ``thread_id``, ``agent``,
``event``, ``reason``) as keys, and the text form appends ``[spore ...]``. A log
line never carries a spore's knowledge (at INFO or above, none at all).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sporeflow.config import SecretFilter
from sporeflow.pipeline.core.logfields import CONTEXT_FIELDS, describe_error, spore_fields
from sporeflow.pipeline.observe.events import Event, EventBus, SporeEvent, SporeHandled

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "describe_error",
    "log_events",
    "spore_fields",
]

class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            # The secret filter masked exc_text; formatting exc_info afresh would undo that.
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [spore ID thread ID]``: the ids only when the call had them."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        spore_id = getattr(record, "spore_id", None)
        if spore_id is None:
            return text
        thread_id = getattr(record, "thread_id", None)
        where = f"spore {spore_id}" + (f" thread {thread_id}" if thread_id not in (
            None, spore_id) else "")
        head, newline, trace = text.partition("\n")  # keep a traceback below the line
        return f"{head} [{where}]{newline}{trace}"


def configure_logging(fmt: str = "text", level: str = "WARNING") -> None:
    """Send sporeflow's logs and Python's warnings to stderr as ``text`` or ``json``,
    sporeflow's from ``level`` up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter())  # URL passwords and keys never reach the output
    root = logging.getLogger("sporeflow")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aio-pika and aiormq log every attempt to reconnect to a lost broker; the broker's
    # link logs each change of state once instead. Theirs show at --log-level debug.
    for library in ("aio_pika", "aiormq"):
        logging.getLogger(library).handlers[:] = [
            handler if level.upper() == "DEBUG" else logging.NullHandler()]
    # Python's warnings (a handler's forgotten await: "coroutine ... was never awaited")
    # go the same way. captureWarnings gives "py.warnings" a NullHandler: ours replaces it.
    logging.captureWarnings(True)
    warned = logging.getLogger("py.warnings")
    warned.handlers[:] = [handler]
    warned.propagate = False


def log_events(bus: EventBus, logger: logging.Logger | None = None) -> Callable[[], None]:
    """Log every event of ``bus`` at DEBUG on ``logger`` (``sporeflow.events``).

    Subscribes only while ``logger`` is enabled for DEBUG, so an organism whose
    logs stop at INFO pays nothing. Returns the unsubscribe function.
    """
    log = logger or logging.getLogger("sporeflow.events")
    if not log.isEnabledFor(logging.DEBUG):
        return lambda: None

    def write(event: Event) -> None:
        if isinstance(event, SporeEvent):
            reason = getattr(event, "reason", None)
            extra = spore_fields(event.spore, agent=event.agent, event=event.kind,
                                 reason=reason)
            spore = event.spore
            took = (f" in {event.latency * 1000:.3f} ms"
                    if isinstance(event, SporeHandled) else "")
            # A broadcast's handler is not its address: name it.
            by = (f" by {event.agent}" if event.agent not in (None, spore.to_agent,
                                                               spore.from_agent) else "")
            log.debug("%s %s %s %s -> %s%s%s%s", event.kind, spore.spore_type.value, spore.id,
                      spore.from_agent, spore.to_agent or f"#{spore.channel}", by, took,
                      f" ({reason})" if reason else "", extra=extra)
        else:
            fields = event.to_dict()
            del fields["event"], fields["at"]
            who = fields.pop("agent", None) or fields.pop("organism", "")
            if "old" in fields:
                detail = f"{fields.pop('old')} -> {fields.pop('new')}"
            else:
                detail = json.dumps(fields, default=str)
            log.debug("%s %s: %s", event.kind, who, detail,
                      extra={"event": event.kind, "agent": getattr(event, "agent", None)})

    return bus.subscribe(write)
