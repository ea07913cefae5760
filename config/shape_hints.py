"""What a value of the wrong type in an organism file most likely meant: the one rule
behind the hints of the schema's type errors, whatever the key (``loader._describe``).

    concurrency: "4"    a number quoted          write it unquoted, 4
    subscribe: orders   one name where a list    write a list, [orders]
    emit: pricer        a name where a mapping   write {to: pricer} or {channel: pricer}
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sporeflow.config.positions import Path as DataPath

__all__ = ["shape_hint"]

_BARE = re.compile(r"[A-Za-z_][\w.-]*|-?\d+(\.\d+)?")  # written in a YAML list as it is


def shape_hint(path: DataPath, instance: Any, expected: str | list[str] | None) -> str:
    """``"; write ..."``: what to write instead of ``instance`` where the schema expects
    ``expected`` (a JSON type or a list of them), or "" where nothing is likely."""
    kinds = expected if isinstance(expected, list) else [expected]
    if (isinstance(instance, str) and {"integer", "number"} & set(kinds)
            and "string" not in kinds and _number(instance)):  # a number quoted
        return f"; it is a string (quoted): write it unquoted, {instance.strip()}"
    if "array" in kinds and isinstance(instance, str | int | float) and (
            not isinstance(instance, bool)):
        shown = instance if _BARE.fullmatch(str(instance)) else json.dumps(instance)
        return f"; write a list, [{shown}]"
    last = str(path[-1]) if path else ""
    if last == "retry" and type(instance) is int:
        return f"; write {{attempts: {instance}}}"
    if last == "emit" and isinstance(instance, str):
        return f"; write {{to: {instance}}} (an agent) or {{channel: {instance}}}"
    return ""


def _number(text: str) -> bool:
    """Whether ``text`` reads as a finite number, as YAML would read it unquoted."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
