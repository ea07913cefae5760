"""Durations (``250ms``, ``5s``, ``2m``) and sizes (``512KiB``, ``1MiB``) as written in YAML."""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_PATTERN", "SIZE_PATTERN", "duration_mistake", "parse_duration",
           "parse_size", "parse_written_seconds", "written_duration"]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
               "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}

DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$"
SIZE_PATTERN = r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_LONGEST = 365 * 24 * 3600.0  # longer is a mistake (and overflows the platform's timers)
_LONGEST_WRITTEN = "8760h"  # _LONGEST with its largest unit
_SIZE = re.compile(SIZE_PATTERN)


def parse_duration(value: str | int | float) -> float:
    """Return seconds; a bare number is seconds already."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value > _LONGEST:
            raise ValueError(f"duration {value!r} is not a usable number of seconds; write "
                             f"one up to {_LONGEST:.0f} (a year), like 30 or 5s")
        if value < 0:
            raise ValueError(f"duration {value!r} is negative; use 0 or more")
        return float(value)
    seconds = _written_seconds(str(value))
    if seconds is None:
        raise ValueError(f"duration {value!r} is not understood; write it like 250ms, 5s or "
                         f"2m{duration_mistake(str(value))}")
    if not seconds <= _LONGEST:  # the bound of a number of seconds, whatever the unit
        raise ValueError(f"duration {value!r} is longer than a year; write one up to "
                         f"{_LONGEST_WRITTEN}")
    return seconds


def parse_written_seconds(text: str) -> float:
    """A duration written as text where no YAML types it (a command line, an XML
    attribute): a bare number is seconds (``1.5``, ``30``), else it carries its unit."""
    try:
        number = float(text)
    except ValueError:
        return parse_duration(text)
    return parse_duration(number)


def _written_seconds(text: str) -> float | None:
    """The seconds ``text`` writes with its unit (None: it is no duration)."""
    match = _DURATION.match(text)
    return None if match is None else float(match[1]) * _DURATION_UNITS[match[2]]


_PARTS = re.compile(r"\s*(-?)(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_UNIT_WORDS = {"sec": "s", "secs": "s", "second": "s", "seconds": "s", "min": "m",
               "mins": "m", "minute": "m", "minutes": "m", "hr": "h", "hrs": "h",
               "hour": "h", "hours": "h", "msec": "ms", "millis": "ms"}


def duration_mistake(text: str | int | float) -> str:
    """``"; ..."``: the fix of a duration written in a common wrong way (a negative one,
    a unit in capitals or as a word, two units, one longer than a year, with its unit or
    as a number of seconds), or "" for none of those."""
    if not isinstance(text, str):  # a number of seconds: only its length can be wrong
        longer = not isinstance(text, bool) and math.isfinite(text) and text > _LONGEST
        return f"; at most a year: {_LONGEST_WRITTEN}" if longer else ""
    seconds = _written_seconds(text)
    if seconds is not None:  # well written: what can be wrong is its length
        return "" if seconds <= _LONGEST else f"; at most a year: {_LONGEST_WRITTEN}"
    parts = _PARTS.findall(text)
    written = "".join(f"{sign}{number}{unit}" for sign, number, unit in parts)
    if not parts or written != "".join(text.split()):  # something else is wrong
        return ""
    if any(sign for sign, _, _ in parts):
        return "; a duration is 0 or more"
    units = [_UNIT_WORDS.get(unit.lower(), unit.lower()) for _, _, unit in parts]
    if any(unit not in _DURATION_UNITS for unit in units):
        return ""
    if len(parts) > 1:
        seconds = sum(float(number) * _DURATION_UNITS[unit]
                      for (_, number, _), unit in zip(parts, units, strict=True))
        return f"; one number and one unit: {_shortest(seconds)}"
    return f"; the unit is {units[0]!r}: {parts[0][1]}{units[0]}"


def _shortest(seconds: float) -> str:
    """``seconds`` in the largest unit that writes them whole (90m, not 5400s)."""
    for unit in ("h", "m", "s"):
        count = seconds / _DURATION_UNITS[unit]
        if count == int(count):
            return f"{int(count)}{unit}"
    return f"{int(seconds * 1000)}ms"


def parse_size(value: str | int) -> int:
    """Return bytes; a bare integer is bytes already."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"size {value!r} is negative; use 0 or more")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"size {value!r} is not understood; write it like 512KiB or 1MiB")
    return int(match[1]) * _SIZE_UNITS[match[2] or ""]


def written_duration(seconds: float) -> str:
    """``seconds`` as organism.yaml would write it: ``720h``, ``90m``, ``1.5s``, ``250ms``
    (for messages: ``2.592e+06s`` names 30 days to nobody)."""
    for unit in ("h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s" if seconds >= 1 or seconds == 0 else f"{seconds * 1000:g}ms"
