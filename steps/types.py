"""Plain types the stages share: batches, deliveries, and the reject callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from sporeflow.steps.spore import Spore

__all__ = ["Batch", "Delivery", "Reject", "SchemaCheck"]

Batch: TypeAlias = list[Spore]
"""The unit every stage consumes and yields: spores in priority order."""

Delivery: TypeAlias = tuple[Spore, tuple[str, ...]]
"""A spore and the agents it goes to (one for direct, many for a broadcast)."""

Reject: TypeAlias = Callable[[Spore, str, "BaseException | None"], None]
"""Called with (spore, reason, error) for each spore a stage refuses."""

SchemaCheck: TypeAlias = Callable[[Spore], None]
"""Raises a :class:`~sporeflow.config.errors.SporeError` when a spore fails a check."""
