"""What a log line about a spore carries: its ids and names, never its knowledge."""

from __future__ import annotations

from typing import Any

from sporeflow.config import LimitExceeded, SporeError
from sporeflow.pipeline.core.deadletters import URL_PASSWORDS, Masker, error_text
from sporeflow.steps import Spore

__all__ = ["CONTEXT_FIELDS", "describe_error", "spore_fields"]

# Fields a log call may attach with ``extra=``; they are copied into the JSON line.
CONTEXT_FIELDS = ("spore_id", "thread_id", "agent", "event", "reason")


def spore_fields(spore: Spore, *, agent: str | None = None, event: str | None = None,
                 reason: str | None = None) -> dict[str, Any]:
    """The ``extra=`` of a log call about ``spore`` (ids and names, never its knowledge)."""
    fields: dict[str, Any] = {"spore_id": spore.id, "thread_id": spore.thread}
    if agent is not None:
        fields["agent"] = agent
    if event is not None:
        fields["event"] = event
    if reason is not None:
        fields["reason"] = reason
    return fields


def describe_error(error: BaseException | None, masker: Masker = URL_PASSWORDS) -> str:
    """``Type: message`` of ``error`` for a log line, without quoting any knowledge, its
    secrets masked with ``masker``.

    A :class:`SporeError`'s message may quote the knowledge it found wrong, so only
    its type is given; the dead letter keeps the whole message. A limit's message
    quotes only sizes and the limit, so it is given whole.
    """
    if error is None:
        return "no error"
    if isinstance(error, SporeError) and not isinstance(error, LimitExceeded):
        return f"{type(error).__name__} (the dead letter has the details)"
    return error_text(error, masker)
