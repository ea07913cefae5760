"""Where a value holds what JSON cannot write: the one walk behind the validate stage's
explanation of a refused spore and organism.yaml's check of the knowledge it declares
(each tells the place its own way)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["JSON_SCALARS", "NotJson", "first_not_json"]

JSON_SCALARS = (str, int, float, bool, type(None))  # and their subclasses (a bool is an int)


@dataclass(frozen=True, slots=True)
class NotJson:
    """The first thing found: at ``parts`` (keys and indexes from the root), ``value``;
    ``key``: it is a key of the dict at ``parts`` that is no text."""

    parts: tuple[str | int, ...]
    value: Any
    key: bool = False

    @property
    def number(self) -> bool:
        """A float JSON cannot represent (NaN, an infinity)."""
        return type(self.value) is float


def first_not_json(value: Any, depth: int, parts: tuple[str | int, ...] = (),
                   seen: set[int] | None = None) -> NotJson | None:
    """The first place in ``value`` JSON cannot write, walking ``depth`` levels deep at
    most, each container once (``seen``), however often it is referred to; None if none."""
    seen = set() if seen is None else seen
    kind = type(value)
    if kind is dict or kind is list or kind is tuple:
        if id(value) in seen:
            return None
        seen.add(id(value))
    elif kind is float:
        return None if math.isfinite(value) else NotJson(parts, value)
    else:
        return None if isinstance(value, JSON_SCALARS) else NotJson(parts, value)
    for part, item in (value.items() if kind is dict else enumerate(value)):
        if kind is dict and type(part) is not str:
            return NotJson(parts, part, key=True)
        found = first_not_json(item, depth - 1, (*parts, part), seen) if depth > 0 else None
        if found is not None:
            return found
    return None
