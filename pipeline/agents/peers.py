"""LLM-ready peer descriptions: what ``ctx.peers_prompt()`` renders for an agent.

For each agent the caller may address (its ``peers``, else every other agent):
its ``description``, what it accepts (read from its ``schema``: the fields of a
JSON Schema with their types, the fields of each top-level element of an XSD, or
the payload types of typed handlers, through the JSON Schema made of them) and an
example payload (the schema's first ``examples`` entry, else one made from the
schema; for an XSD, an XML element). A handler backed by a language model puts the
text in its system prompt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sporeflow.config import AgentSpec
from sporeflow.pipeline.agents.xsdpeers import xsd_lines

__all__ = ["example_payload", "peers_prompt"]

_MAX_DEPTH = 6


def peers_prompt(agent: AgentSpec, agents: Mapping[str, AgentSpec]) -> str:
    """The text describing the peers ``agent`` may address."""
    names = sorted(agent.peers if agent.peers is not None else
                   (name for name in agents if name != agent.name))
    names = [name for name in names if name in agents]
    if not names:
        return f"You ({agent.name}) may not address any other agent."
    lines = [f"You are {agent.name!r}. You may address these agents; send each a JSON "
             f"object as its knowledge:"]
    for name in names:
        lines.extend(_describe(agents[name], agents))
    return "\n".join(lines)


def _describe(peer: AgentSpec, agents: Mapping[str, AgentSpec]) -> list[str]:
    lines = [f"- {peer.name}: {peer.description.strip() or _implied_description(peer)}"]
    schema_of = _accepting(peer, agents)
    schema = getattr(schema_of, "schema", None)
    if schema_of.payloads is not None:  # typed handlers: the schema made of their types
        return lines + _typed_lines(schema_of.payloads.json_schema())
    if schema is None:
        lines.append("  accepts: any JSON object")
        return lines
    if schema.language == "xsd":
        return lines + xsd_lines(schema.source, schema.path.name)
    document = schema.document  # as loaded and checked: the file is never read again
    lines.append(f"  accepts: {_summary(document)}")
    lines.append(f"  example: {json.dumps(example_payload(document), sort_keys=True)}")
    return lines


def _typed_lines(document: dict[str, Any]) -> list[str]:
    branches = document.get("anyOf")
    if not isinstance(branches, list):
        return [f"  accepts: {_summary(document, document)}",
                f"  example: {json.dumps(example_payload(document), sort_keys=True)}"]
    lines = ["  accepts one of:"]
    for branch in branches:
        record = _resolved(branch, document)
        lines.append(f"  - {record.get('title', 'object')}: {_summary(record, document)}")
        lines.append(f"    example: "
                     f"{json.dumps(example_payload(branch, document), sort_keys=True)}")
    return lines


def _resolved(schema: Any, root: Any) -> Any:
    ref = schema.get("$ref") if isinstance(schema, Mapping) else None
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
    return schema


def _implied_description(peer: AgentSpec) -> str:
    if peer.gather is not None:
        asked = ", ".join(peer.gather.to) if peer.gather.to else f"#{peer.gather.channel}"
        return f"asks {asked} at once and answers with all their replies combined"
    if peer.sequence is not None:
        return f"passes what it gets through {' -> '.join(peer.sequence.steps)}"
    return "(no description)"


def _accepting(peer: AgentSpec, agents: Mapping[str, AgentSpec]) -> AgentSpec:
    """A sequence accepts what its first step accepts."""
    if peer.sequence is not None and peer.sequence.steps[0] in agents:
        return agents[peer.sequence.steps[0]]
    return peer


def _summary(schema: Any, root: Any = None) -> str:
    """One line: the object's fields, their types, which are required."""
    if not isinstance(schema, Mapping):
        return "any JSON object"
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return schema.get("description") or f"a JSON {schema.get('type', 'object')}"
    required = set(schema.get("required", ()))
    fields = []
    for name, spec in properties.items():
        kind = _kind(spec, root)
        note = f"{name} ({kind}{', required' if name in required else ''})"
        if isinstance(spec, Mapping) and spec.get("description"):
            note += f": {spec['description']}"
        fields.append(note)
    return "an object with " + "; ".join(fields)


def _kind(spec: Any, root: Any) -> str:
    """A field's type in words: its JSON type, a type it refers to by name, a list of."""
    if not isinstance(spec, Mapping):
        return "any"
    kind = spec.get("type")
    if kind == "array" and isinstance(spec.get("items"), Mapping) and root is not None:
        return f"list of {_kind(spec['items'], root)}"
    if kind is not None:
        return "/".join(kind) if isinstance(kind, list) else str(kind)
    if root is not None and isinstance(spec.get("$ref"), str):
        return str(_resolved(spec, root).get("title") or "object")
    options = spec.get("anyOf")
    if root is not None and isinstance(options, list):
        return "/".join(_kind(option, root) for option in options)
    return "any"


def example_payload(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value that fits ``schema``: its ``examples``/``const``/``default``/``enum`` first,
    else one built from its type, required fields only when it names any."""
    root = schema if root is None else root
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return {}
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return example_payload(target, root, depth + 1)
    for key in ("oneOf", "anyOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_payload(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else None)
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object":
        properties = schema.get("properties") or {}
        wanted = schema.get("required") or list(properties)
        return {name: example_payload(properties.get(name, {}), root, depth + 1)
                for name in wanted}
    if kind == "array":
        return [example_payload(schema.get("items", {}), root, depth + 1)]
    samples = {"string": "text", "integer": 1, "number": 1.5, "boolean": True, "null": None}
    return samples.get(str(kind), "value")
