"""Handlers of the schema fixture organisms."""

from __future__ import annotations

from typing import Any


async def accept(spore: Any, ctx: Any) -> None:
    """Take any spore and reply nothing."""


async def echo(spore: Any, ctx: Any) -> dict[str, Any]:
    """Reply to the sender with the knowledge that came and its kind."""
    return {"kind": spore.metadata.get("kind"), "knowledge": spore.knowledge}
