"""The JSON Schema of an organism file: the structural contract, exported for editors.

Cross references (an ``emit`` naming an agent that does not exist, ...) are
checked by the loader, which can say "did you mean"; this schema checks shapes.
"""

from __future__ import annotations

import math
from typing import Any

import jsonschema

from sporeflow.config.model import DEFAULT_CAPACITY, STAGE_NAMES
from sporeflow.config.secrets import ENV_NAME_PATTERN
from sporeflow.config.signing_keys import SIGNING_SCHEMA
from sporeflow.config.sources import sources_schema
from sporeflow.config.units import DURATION_PATTERN, SIZE_PATTERN, parse_duration

__all__ = ["BROKER_WORDS", "ENV_NAME_PATTERN", "EXTERNAL_AGENT_SCHEMA", "HANDLER_PATTERN",
           "KEY_PATTERN", "MAX_DEPTH_CEILING", "NAME_PATTERN", "ORGANISM_NAME_PATTERN",
           "ORGANISM_SCHEMA", "ORGANISM_VALIDATOR"]

# Names of agents and channels: short, printable, usable as AMQP routing-key parts.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
# An organism's: no '.'. Its broker objects are `sporeflow.<organism>.<suffix>`, and with
# a dot two organisms' names meet on a shared vhost ('X.signed' is organism X's mark).
ORGANISM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
# What follows `<exchange>.` in the organism's own broker objects: an agent's queue is
# `<exchange>.<agent>`, so no agent is named so (nor so followed by a dot).
BROKER_WORDS = ("dead", "dead-letters", "signed", "reply")

# module:function with dotted Python names only: no file paths, no relative imports.
HANDLER_PATTERN = r"^[^\W\d]\w*(\.[^\W\d]\w*)*:[^\W\d]\w*(\.[^\W\d]\w*)*$"
# A keyed agent's key: a field of the spore, or a dotted path into its knowledge.
KEY_PATTERN = r"^(knowledge(\.[^.\s]{1,64}){1,8}|thread_id|from_agent|channel)$"
# Deeper knowledge would let a spore exhaust the interpreter's recursion on checks.
MAX_DEPTH_CEILING = 256

_name: dict[str, Any] = {"type": "string", "pattern": NAME_PATTERN}
_agent_name: dict[str, Any] = {"allOf": [_name, {
    "not": {"pattern": rf"^({'|'.join(BROKER_WORDS)})(\.|$)"},
    "x-why": "is reserved: an agent's queue on a broker is `<exchange>.<agent>`, and the "
             "organism's own objects are `<exchange>.dead`, `.dead-letters`, `.signed` and "
             "`.reply.*`; rename the agent (e.g. with a prefix: 'my-dead-letters')"}]}
_names: dict[str, Any] = {"type": "array", "items": _name, "uniqueItems": True}
DURATION_FORMAT = "sporeflow-duration"  # text parse_duration reads
_duration: dict[str, Any] = {
    # At most a year: more is a mistake (.inf, 1e20), and overflows the platform's timers.
    "oneOf": [{"type": "number", "minimum": 0, "maximum": 365 * 24 * 3600},
              {"type": "string", "pattern": DURATION_PATTERN, "format": DURATION_FORMAT}],
    # A quoted number ('5') is a string without its unit: say both forms.
    "x-write": "a number of seconds (5, unquoted), or a string with its unit like 250ms, "
               "5s or 2m",
}
_size: dict[str, Any] = {
    "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": SIZE_PATTERN}],
    "x-write": "bytes, or a string like 512KiB or 1MiB",
}
_count: dict[str, Any] = {"type": "integer", "minimum": 1, "x-expect": "a positive integer"}


def _closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False, **extra}


def _or_null(kind: dict[str, Any]) -> dict[str, Any]:
    what = kind.get("x-write", "an integer of 1 or more")
    return {"oneOf": [kind, {"type": "null"}], "x-write": f"{what}; or null for none"}


_emit = _closed(
    {"to": {**_name, "description": "the agent that receives returned knowledge"},
     "channel": {**_name, "description": "the channel returned knowledge is broadcast on"}},
    minProperties=1, maxProperties=1,
    description="where a handler's returned knowledge goes; without it, back to the sender",
)

_retry = _closed(
    {"attempts": {**_count, "description": "tries in all, the first included"},
     "backoff": {**_duration, "description": "wait before the 2nd try, doubling each time; "
                               "jittered to between half and all of it"},
     "max_backoff": {**_duration, "description": "the longest wait between tries"}},
)

EXTERNAL_AGENT_SCHEMA = _closed(
    {"external": {"enum": ["praval"], "description": "the framework it runs in, on the same "
                                                     "broker (Praval 0.8.4)"},
     "description": {"type": "string"},
     "subscribe": {**_names, "description": "our channels whose broadcasts it hears"},
     "channel": {**_name, "description": "the channel its broadcasts are delivered on here "
                                         "(default main)"}},
    required=["external"],
    description="an agent outside sporeflow, addressed over the broker; no handler here")

_agent = _closed(
    {
        "handler": {"type": "string", "pattern": HANDLER_PATTERN,
                    "description": "module:function, resolved beside the organism file"},
        "handlers": {"type": "array", "minItems": 1,
                     "items": {"type": "string", "pattern": HANDLER_PATTERN},
                     "description": "instead of handler: module:function handlers, each "
                                    "taking a typed payload (a dataclass or pydantic model); "
                                    "a spore goes to the first whose type it fits"},
        "description": {"type": "string"},
        "subscribe": {**_names, "description": "channels whose broadcasts it receives"},
        "emit": _emit,
        "peers": {**_names, "description": "the only agents it may address; [] is no one"},
        "concurrency": {**_count, "description": "handlers running at once (default 1)"},
        "timeout": {**_duration, "description": "a handler running longer is cancelled"},
        "retry": _retry,
        "max_crashes": {**_count, "description": "with a journal: times the process may die "
                                                 "while this agent handles a spore before the "
                                                 "spore is dead-lettered 'poison' instead of "
                                                 "replayed (default 3); on quorum queues, "
                                                 "times a delivery of it may be given back "
                                                 "unfinished (RabbitMQ's delivery-limit is one "
                                                 "less)"},
        "dedupe": {**_duration, "description": "drop a spore whose id this agent handled "
                                               "within this long (a redelivered copy); "
                                               "default: off"},
        "key": {"type": "string", "pattern": KEY_PATTERN,
                "description": "one instance and one state per value at this path of a "
                               "spore (knowledge.user_id, thread_id, from_agent, channel)"},
        "key_idle": {**_duration, "description": "a keyed agent's key idle this long is "
                                                 "evicted, its state kept for its return "
                                                 "(default 10m; 0: never)"},
        "max_keys": {**_count, "description": "keys a keyed agent holds, live or evicted "
                                              "with a state; a spore with a new key past "
                                              "it is dead-lettered 'key limit' "
                                              "(default 10000)"},
        "boot": {"type": "object", "description": "knowledge of a spore sent to it at start"},
        "cost": {"type": "number", "exclusiveMinimum": 0,
                 "description": "what each spore it handles costs its conversation, charged "
                                "before it runs: one that would take the conversation past "
                                "limits.max_cost_per_thread is refused ('budget')"},
        "schema": {"type": "string", "minLength": 1,
                   "description": "JSON Schema (.json, .yaml, .yml) or XML Schema (.xsd) "
                                  "that knowledge sent to it must satisfy; relative to the "
                                  "organism file"},
        "lazy": {"type": "boolean", "description": "a class handler is made on its first "
                                                   "spore (true, default) or at start"},
        "cpu_bound": {"type": "boolean", "description": "run the plain-function handler in "
                                                        "a worker process"},
        "gather": _closed(
            {"to": {**_names, "minItems": 1, "description": "the agents asked"},
             "channel": {**_name, "description": "ask every subscriber of this channel"},
             "timeout": {**_duration, "description": "combine what came after this long"}},
            description="instead of a handler: ask several agents, combine their answers"),
        "sequence": {
            "oneOf": [  # a list of steps, which may visit an agent twice
                {"type": "array", "items": _name, "minItems": 1},
                _closed({"steps": {"type": "array", "items": _name, "minItems": 1},
                         "timeout": {**_duration, "description": "longest wait per step"}},
                        required=["steps"]),
            ],
            "description": "instead of a handler: pass knowledge through these agents in order",
        },
    },
)

_channel = _closed(
    {
        "description": {"type": "string"},
        "capacity": {**_count, "description": f"outside spores queued before senders wait "
                                              f"(default {DEFAULT_CAPACITY})"},
        "publish": {**_names, "description": "agents allowed to broadcast here (absent: all)"},
        "subscribe": {**_names, "description": "agents allowed to subscribe (absent: all)"},
    },
)

_limits = _closed(
    {
        "max_spore_bytes": {**_size, "description": "largest spore, as JSON"},
        "max_hops": {**_count, "description": "handler hops before a spore is refused"},
        "max_in_flight": {**_count, "description": "spores held before outside senders wait"},
        "max_in_memory": {**_count, "minimum": 1, "description": "spores held in memory; "
                          "handler output past it is paged out to a temporary file"},
        "max_depth": {**_count, "maximum": MAX_DEPTH_CEILING,
                      "description": "deepest nesting of knowledge"},
        "max_xml_elements": {**_count, "description": "elements in all in XML a handler "
                                                      "returns (default 100000)"},
        "max_xml_attributes": {**_count, "description": "attributes in all in XML a handler "
                                                        "returns (default 50000)"},
        "max_dead_letters": {**_count, "description": "dead letters kept in memory"},
        "max_dead_letter_bytes": {**_size, "description": "bytes of dead letters kept in "
                                  "memory, as JSON"},
        "max_spores_per_thread": {**_count, "description": "spores one conversation may make "
                                                           "before it is stopped"},
        "max_cost_per_thread": {"type": "number", "exclusiveMinimum": 0,
                                "description": "cost (ctx.spend, agents' cost) one "
                                               "conversation may reach"},
        "budget_warnings": {"type": "array", "uniqueItems": True,
                            "items": {"type": "number", "exclusiveMinimum": 0,
                                      "exclusiveMaximum": 100},
                            "description": "percentages of a per-thread limit at which a "
                                           "thread-budget event is emitted and logged, once "
                                           "per thread (default [75, 90, 95]; [] for none)"},
        "process_pool": {**_count, "description": "worker processes for cpu_bound agents "
                                                  "(default: the number of CPUs)"},
        "loop_stall_warning": {**_duration, "description": "warn, naming the agent and the "
                               "spore, when a handler blocks the event loop this long "
                               "(default 1s; 0: never)"},
        "max_outside_senders": {**_count, "description": "senders that are no agent "
                                "remembered, so what goes back to them is returned; the least "
                                "recently seen are forgotten first (default 10000)"},
        "max_journal_dead_letters": {**_count, "description": "dead letters a journal keeps; "
                                     "the oldest are dropped first (default 100000)"},
        "max_journal_dead_letter_age": {**_or_null(_duration),
                                        "description": "a journal drops dead letters older "
                                        "than this (default 720h; 0 or null: any age)"},
    },
)

_queue_bounds: dict[str, Any] = {
    "max_length": {**_or_null(_count), "description": "messages each agent's queue holds "
                   "(x-max-length; default 100000; null: no bound)"},
    "max_length_bytes": {**_or_null(_size), "description": "bytes each agent's queue holds "
                         "(x-max-length-bytes; default 1GiB; null: no bound)"},
    "overflow": {"enum": ["reject-publish", "reject-publish-dlx", "drop-head"],
                 "description": "what a full queue does (x-overflow; default reject-publish: "
                                "the publisher's confirm is a nack, a dead letter there)"},
    "dead_letter_max_length": {**_or_null(_count), "description": "messages the dead-letter "
                               "queue holds (default 100000; null: no bound)"},
    "dead_letter_max_length_bytes": {**_or_null(_size), "description": "bytes the dead-letter "
                                     "queue holds (default 1GiB; null: no bound)"},
    "queue_type": {"enum": ["classic", "quorum"],
                   "description": "the agents' queues: classic (the default; priorities) or "
                                  "quorum (replicated; no priorities; a spore given back "
                                  "max_crashes times is dead-lettered as poison)"},
}
# RabbitMQ's quorum queues know drop-head and reject-publish only.
_quorum_overflow: dict[str, Any] = {
    "if": {"properties": {"queue_type": {"const": "quorum"}}, "required": ["queue_type"]},
    "then": {"properties": {"overflow": {
        "enum": ["reject-publish", "drop-head"],
        "x-why": "quorum queues (queue_type: quorum) overflow by reject-publish or drop-head "
                 "only; RabbitMQ does not support reject-publish-dlx on them"}}},
}

ORGANISM_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sporeflow organism",
    **_closed(
        {
            "organism": _closed(
                {"name": {"type": "string", "pattern": ORGANISM_NAME_PATTERN},
                 "description": {"type": "string"},
                 "backend": {"type": "string",
                             "pattern": r"^(memory|amqps?://.*|\$\{[A-Za-z_][A-Za-z0-9_]*\})$",
                             "description": "memory, an amqp:// or amqps:// URL, or ${NAME} "
                                            "to read it from the environment (${NAME} also "
                                            "works inside the URL)"},
                 "broker": _closed(
                     {"exchange": {"type": "string", "minLength": 1, "maxLength": 200,
                                   "description": "the topic exchange (default "
                                                  "sporeflow.<organism name>)"},
                      "direct_key": {"type": "string", "pattern": r"\{agent\}",
                                     "description": "routing key of direct spores; "
                                                    "{agent} and {type} are filled in"},
                      "broadcast_key": {"type": "string", "pattern": r"\{channel\}",
                                        "description": "routing key of channel broadcasts; "
                                                       "{channel} and {type} are filled in"},
                      **_queue_bounds,
                      "give_up_after": {**_or_null(_duration), "description": "how long a "
                                        "process tries to connect to its broker, at start or "
                                        "after losing it, before it exits with an error "
                                        "(default 5m; null: for ever)"},
                      "send_timeout": {**_duration, "description": "how long an outside send "
                                       "waits for the confirm of a broker it lost, then "
                                       "raises (default 30s)"}},
                     description="names on the broker, for amqp backends", **_quorum_overflow),
                 "journal": {"type": "string", "minLength": 1,
                             "description": "SQLite file recording unfinished spores and dead "
                                            "letters, so a crash loses none; relative to the "
                                            "organism file"},
                 "signing_key_env": {"type": "string", "pattern": ENV_NAME_PATTERN,
                                     "description": "environment variable holding the HMAC "
                                                    "key that signs and verifies spores "
                                                    "on the broker"},
                 "signing": SIGNING_SCHEMA,
                 "insecure": {"type": "boolean",
                              "description": "run unsigned over a broker that is not on "
                                             "this machine, where any of its clients can "
                                             "read spores and inject them as any agent "
                                             "(default false: such a start is refused)"},
                 "knowledge_store": {"type": "string", "pattern": r"^(memory|[\w.]+:[\w.]+)$",
                                     "description": "memory, or module:factory of a store "
                                                    "resolving knowledge_references"}},
            ),
            "channels": {"type": "object", "propertyNames": _name,
                         "additionalProperties": {"oneOf": [_channel, {"type": "null"}],
                                                  "x-write": "a mapping of settings, like "
                                                             "{capacity: 100}, or {}"}},
            "agents": {"type": "object", "propertyNames": _agent_name,
                       # An entry with `external` is another framework's agent; the loader
                       # checks those itself (config.external), before this schema.
                       "additionalProperties": {"if": {"required": ["external"]},
                                                "then": EXTERNAL_AGENT_SCHEMA,
                                                "else": _agent}},
            "limits": _limits,
            "sources": sources_schema(_name, _duration, ENV_NAME_PATTERN),
            "pipeline": _closed(
                {"stages": {"type": "array", "items": _closed(
                    {"use": {"type": "string", "pattern": HANDLER_PATTERN,
                             "description": "module:operator, an aiostream pipable operator "
                                            "over batches, beside this file or installed"},
                     "before": {"enum": list(STAGE_NAMES)},
                     "after": {"enum": list(STAGE_NAMES)},
                     "name": {"type": "string", "minLength": 1},
                     "options": {"type": "object",
                                 "description": "keyword arguments of the operator"}},
                    required=["use"])}},
                description="the user's own stages in the chain"),
        },
        required=["agents"],
    ),
}


def _finite_number(_checker: Any, instance: Any) -> bool:
    return _DRAFT.TYPE_CHECKER.is_type(instance, "number") and (
        instance.__class__ is not float or math.isfinite(instance))


# No number of the file is NaN or infinite: every comparison with NaN is false, so the
# schema's bounds would let it through, and a cost or a duration of NaN turns a limit off.
_DRAFT = jsonschema.Draft202012Validator
# A duration written with its unit is bounded as a number of seconds is, by the rule of
# parse_duration (a pattern cannot say "at most a year").
def _duration_within_bound(text: object) -> bool:
    parse_duration(text)  # type: ignore[arg-type]  # raises past a year
    return True  # "0s" too, which is 0.0


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks(DURATION_FORMAT, raises=ValueError)(_duration_within_bound)


ORGANISM_VALIDATOR = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    _DRAFT, type_checker=_DRAFT.TYPE_CHECKER.redefine("number", _finite_number),
)(ORGANISM_SCHEMA, format_checker=_FORMATS)
