"""Knowledge written in organism.yaml (an agent's ``boot:``, a timer source's
``knowledge:``) checked at load, where a mistake has a line: YAML reads an unquoted
``2024-01-01`` as a date, ``.nan`` as a float JSON cannot hold, ``{1: a}`` with a number
for a key, and the chain would refuse the spore only once the organism runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sporeflow.config.errors import Problem
from sporeflow.config.json_shape import first_not_json, lone_surrogate, long_integer
from sporeflow.config.limits import limits_of
from sporeflow.config.model import Limits
from sporeflow.config.positions import Located
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.references import mapping
from sporeflow.config.schema import MAX_DEPTH_CEILING as _DEEPEST
from sporeflow.config.words import shown, with_article

__all__ = ["declared_knowledge_problems"]


def declared_knowledge_problems(located: Located) -> list[Problem]:
    """Each declared knowledge that is no JSON object, or larger than a spore may be."""
    data = located.data
    try:
        limit = limits_of(mapping(data.get("limits"))).max_spore_bytes
    except Exception:  # noqa: BLE001  # a bad limit, reported by the schema pass
        limit = Limits().max_spore_bytes
    problems = []
    for path, knowledge in _declared(data):
        found = _not_json(knowledge, path)
        if found is not None:
            problems.append(located.problem(*found))
            continue
        # As a spore writes it (``Spore.to_json``): compact, or it would count a space
        # after every comma and colon that the chain never sees.
        size = len(json.dumps(knowledge, ensure_ascii=False,
                              separators=(",", ":")).encode())
        if size > limit:
            problems.append(located.problem(path, (
                f"is {size} bytes as JSON, over limits.max_spore_bytes={limit}: its spore "
                f"would be refused; send less, or raise the limit")))
    return problems


def _declared(data: dict[str, Any]) -> Iterator[tuple[DataPath, dict[str, Any]]]:
    for name, agent in mapping(data.get("agents")).items():
        boot = mapping(agent).get("boot")
        if isinstance(boot, dict):
            yield ("agents", name, "boot"), boot
    for name, source in mapping(data.get("sources")).items():
        knowledge = mapping(source).get("knowledge")
        if isinstance(knowledge, dict):
            yield ("sources", name, "knowledge"), knowledge


def _not_json(knowledge: dict[str, Any], path: DataPath) -> tuple[DataPath, str] | None:
    """Where ``knowledge`` is no JSON (the first place found, ``json_shape``), and why."""
    found = first_not_json(knowledge, _DEEPEST)
    if found is None:
        return None
    where, bad = (*path, *found.parts), found.value
    if found.text:
        return where, (f"has the key {shown(bad, 40)}, which holds " if found.key
                       else "holds ") + lone_surrogate(bad)
    if found.key:
        return where, (f"has the key {shown(bad, 40)}, {with_article(type(bad).__name__)}: "
                       f"JSON keys are text; quote it")
    if found.number:
        return where, f"is {bad}, which JSON cannot represent; write a number or text"
    if found.digits:
        return where, f"is {long_integer()}"
    return where, (f"is {with_article(type(bad).__name__)} ({shown(bad, 40)}), which is not "
                   f"JSON; quote it to make it text")
