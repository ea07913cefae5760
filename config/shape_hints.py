"""What a value of the wrong type in an organism file most likely meant: the one rule
behind the hints of the schema's type errors, whatever the key (``loader._describe``),
and what a text that fails its pattern should be (``pattern_hint``).

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
from sporeflow.config.secrets import ENV_NAME_ADVICE, ENV_NAME_PATTERN

__all__ = ["pattern_hint", "shape_hint"]

_BARE = re.compile(r"[A-Za-z_][\w.-]*|-?\d+(\.\d+)?")  # written in a YAML list as it is
_NO_DOT_EXPONENT = re.compile(r"[-+]?\d+[eE][-+]?\d+")  # 1e3: text to YAML 1.1


def shape_hint(path: DataPath, instance: Any, expected: str | list[str] | None) -> str:
    """``"; write ..."``: what to write instead of ``instance`` where the schema expects
    ``expected`` (a JSON type or a list of them), or "" where nothing is likely."""
    kinds = expected if isinstance(expected, list) else [expected]
    if (isinstance(instance, str) and {"integer", "number"} & set(kinds)
            and "string" not in kinds and _number(instance)):
        if _NO_DOT_EXPONENT.fullmatch(instance.strip()):  # read as text, unquoted too
            value = float(instance)
            plain = f"{value:.0f}" if value.is_integer() else repr(value)
            mantissa, exponent = instance.strip().lower().split("e")
            return (f"; YAML reads an exponent without a dot as text: write {plain}, or "
                    f"{mantissa}.0e{exponent}")
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


def pattern_hint(path: DataPath, pattern: str) -> str:
    """What a text that fails ``pattern`` at ``path`` should be, and how to write it."""
    if pattern == ENV_NAME_PATTERN:  # every *_env setting, whatever its key
        return ENV_NAME_ADVICE
    last = str(path[-1]) if path else ""
    if last == "handler":
        return ("is not a handler reference; write module:function with dotted Python "
                "names, found beside the organism file or installed (no file paths, no "
                "leading dots)")
    if last == "key":
        return ("is not a key path; write knowledge.FIELD (dotted, e.g. "
                "knowledge.user.id), thread_id, from_agent or channel")
    if path == ("organism", "name"):
        return ("is not a valid organism name; use letters, digits, '_', '-', starting "
                "with a letter or '_', at most 64 characters. No '.': its broker objects "
                "are named sporeflow.<name>.<suffix>, and a dot lets two organisms' names "
                "meet (organism 'X.signed' would take X's signing mark): write '-' for it")
    if last == "backend":
        return ("is not a backend; write memory, an amqp:// or amqps:// URL, or ${NAME} "
                "naming an environment variable that holds one")
    if last in ("direct_key", "broadcast_key"):
        return ("is not a routing-key template; put {agent} (direct_key) or {channel} "
                "(broadcast_key) in it, e.g. agent.{agent}.{type}")
    return ("is not a valid name; use letters, digits, '_', '.', '-', "
            "starting with a letter or '_', at most 64 characters")
