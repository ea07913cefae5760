"""Warnings about bare numbers in durations that are usually milliseconds.

A bare number in a duration is seconds, everywhere (organism.yaml and the command
line alike). Where the usual value is a fraction of a second, ``backoff: 50`` is far
more likely a forgotten ``ms`` than 50 seconds: the load goes on, with a warning that
says how to write either.
"""

from __future__ import annotations

from sporeflow.config.errors import Problem
from sporeflow.config.positions import Located
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.references import mapping

__all__ = ["BARE_SECONDS_WARNED_FROM", "bare_duration_warnings"]

BARE_SECONDS_WARNED_FROM = 10
"""A bare number this large, in a duration usually under a second, gets a warning."""
_YEAR = 365 * 24 * 3600  # the longest duration the schema accepts


def bare_duration_warnings(located: Located) -> list[Problem]:
    """A warning for each millisecond-scale duration written as a large bare number."""
    data = mapping(located.data)
    places: list[tuple[DataPath, object]] = [
        (("agents", name, "retry", "backoff"), mapping(mapping(agent).get("retry")).get("backoff"))
        for name, agent in mapping(data.get("agents")).items()]
    places.append((("limits", "loop_stall_warning"),
                   mapping(data.get("limits")).get("loop_stall_warning")))
    return [located.problem(path, f"{_number(value)} is read as {_number(value)} seconds; "
                                  f"write {_number(value)}s to keep it, or {_number(value)}ms",
                            warning=True)
            for path, value in places
            if isinstance(value, int | float) and not isinstance(value, bool)
            and BARE_SECONDS_WARNED_FROM <= value <= _YEAR]  # past a year: an error already


def _number(value: float) -> str:
    """``50`` for 50 and 50.0, ``12.5`` for 12.5: as a unit would follow it."""
    return str(int(value)) if float(value).is_integer() else repr(value)
