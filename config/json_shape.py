"""Where a value holds what JSON cannot write (or UTF-8, in its text): the one walk
behind the validate stage's explanation of a refused spore and organism.yaml's check of
the knowledge it declares (each tells the place its own way); and JSON text that any
writer of UTF-8 can take."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["JSON_SCALARS", "NotJson", "decimal_writable", "first_not_json", "lone_surrogate",
           "long_integer", "utf8_writable", "writable_json"]

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

    @property
    def digits(self) -> bool:
        """An integer longer than Python writes in decimal (``long_integer``)."""
        return isinstance(self.value, int) and not isinstance(self.value, bool)

    @property
    def text(self) -> bool:
        """Text UTF-8 cannot write (it holds a lone surrogate): a value, or with ``key``
        a key."""
        return isinstance(self.value, str)


def utf8_writable(text: str) -> bool:
    """Whether UTF-8 can write ``text``. Not when it holds a lone surrogate: what
    ``json.loads`` makes of a ``"\\ud800"`` escape, or ``os.fsdecode`` of a file name that
    is no UTF-8. Such text would pass everything else and then fail the journal, a broker
    or an HTTP answer that writes it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def writable_json(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)``, or, when that text holds a
    lone surrogate UTF-8 cannot write, the same with every such character escaped
    (``\\ud800``, as JSON may write it). For writers that must never fail on what they
    report: the journal, the control endpoint, the event stream. The chain refuses such
    text; a dead letter or an event may still quote it."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return text if utf8_writable(text) else json.dumps(value, ensure_ascii=True, **options)


def decimal_writable(number: int) -> bool:
    """Whether Python writes ``number`` in decimal: not past ``sys.get_int_max_str_digits()``
    digits (4300 by default), where ``str`` and ``json.dumps`` raise ValueError."""
    if -(1 << 64) < number < 1 << 64:
        return True
    try:
        str(int(number))
    except ValueError:
        return False
    return True


def long_integer() -> str:
    """What an integer ``decimal_writable`` refuses is, and what to do, for a refusal."""
    return (f"an integer of more than {sys.get_int_max_str_digits()} digits, which Python "
            f"will not write as JSON (sys.set_int_max_str_digits); send it as text")


def lone_surrogate(text: str) -> str:
    """Where ``text`` holds its first lone surrogate, and what to do, for a refusal."""
    at = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
    return (f"a lone surrogate (U+{ord(text[at]):04X} at character {at}) that UTF-8 "
            f"cannot write; decode bytes with errors='replace', or drop it")


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
    elif isinstance(value, str):
        return None if utf8_writable(value) else NotJson(parts, value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return None if decimal_writable(value) else NotJson(parts, value)
    else:
        return None if isinstance(value, JSON_SCALARS) else NotJson(parts, value)
    for part, item in (value.items() if kind is dict else enumerate(value)):
        if kind is dict and (type(part) is not str or not utf8_writable(part)):
            return NotJson(parts, part, key=True)
        found = first_not_json(item, depth - 1, (*parts, part), seen) if depth > 0 else None
        if found is not None:
            return found
    return None
