"""Load an organism: YAML (or a dict) in, an :class:`OrganismSpec` out, every problem at once.

Passes, each adding located problems: the JSON Schema (shapes), the
cross references (names of agents and channels, with "did you mean"),
the handler imports (:mod:`sporeflow.config.resolve`), and the agents' message
schemas (compiled once here).
Warnings (wiring that can only loop, agents nothing reaches) never stop a
load; ``check`` returns them.

Scale: a file over ``DEFAULT_MAX_ORGANISM_BYTES`` (8 MiB; the environment variable
``SPOREFLOW_MAX_ORGANISM_BYTES`` sets another cap) is refused from its size, before it
is read or parsed (:mod:`sporeflow.config.size_cap`). Every pass is linear in the
agents (or n log n, sorting the problems); "did you mean" compares an unknown name with
every known one, so past a few hints a file with thousands of unknown names gets its
problems without hints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sporeflow.config.declared_knowledge import declared_knowledge_problems
from sporeflow.config.errors import ConfigError, Problem
from sporeflow.config.external import take_external
from sporeflow.config.limits import limits_of
from sporeflow.config.model import (
    BUILTIN_CHANNELS,
    DEFAULT_CAPACITY,
    DEFAULT_KEY_IDLE,
    DEFAULT_MAX_CRASHES,
    DEFAULT_MAX_KEYS,
    AgentSpec,
    BrokerSpec,
    ChannelSpec,
    Emit,
    GatherSpec,
    OrganismSpec,
    Retry,
    SequenceSpec,
)
from sporeflow.config.positions import Located, YamlSyntaxError, read_yaml
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.reasons import did_you_mean
from sporeflow.config.references import mapping, reference_problems
from sporeflow.config.resolve import (
    qualname,
    resolve_handlers,
    resolve_stages,
    resolve_store,
)
from sporeflow.config.schema import ORGANISM_VALIDATOR
from sporeflow.config.schemas import SchemaFileError, SchemaSpec, load_schema
from sporeflow.config.secrets import redact_text
from sporeflow.config.shape_hints import pattern_hint, shape_hint
from sporeflow.config.signing_keys import read_signing
from sporeflow.config.size_cap import (
    DEFAULT_MAX_ORGANISM_BYTES,
    MAX_ORGANISM_BYTES_ENV,
    capped_text,
    read_capped,
)
from sporeflow.config.sources import read_sources
from sporeflow.config.typed import PayloadRoutes, read_payloads
from sporeflow.config.unit_hints import bare_duration_warnings
from sporeflow.config.units import (
    DURATION_PATTERN,
    duration_mistake,
    parse_duration,
    parse_size,
)
from sporeflow.config.wiring_checks import wiring_warnings
from sporeflow.config.words import with_article

__all__ = [
    "DEFAULT_MAX_ORGANISM_BYTES",
    "MAX_ORGANISM_BYTES_ENV",
    "check_organism",
    "load_organism",
    "organism_from_dict",
    "organism_from_text",
]

_VALIDATOR = ORGANISM_VALIDATOR
_CALLABLE_PLACEHOLDER = "python:callable"
_logger = logging.getLogger("sporeflow.config")


def load_organism(path: str | Path, *, signs: bool = True) -> OrganismSpec:
    """Read and validate an organism file; raise :class:`ConfigError` listing every problem.

    Its warnings are logged (on ``sporeflow.config``): a load that runs the organism
    shows them too; :func:`check_organism` returns them instead. ``signs=False``: for
    what signs no spore, an unset signing key's variable is a warning, the key left out.
    """
    spec, warnings = check_organism(path, signs=signs)
    for warning in warnings:
        _logger.warning("%s", warning)
    return spec


def check_organism(path: str | Path, *,
                   signs: bool = True) -> tuple[OrganismSpec, list[Problem]]:
    """Like :func:`load_organism`, also returning the warnings."""
    file = Path(path)
    text = read_capped(file)
    try:
        located = read_yaml(text, str(file))
    except YamlSyntaxError as exc:
        raise ConfigError([exc.problem]) from None
    return _build(located, file.resolve().parent, source=file.resolve(), signs=signs)


def organism_from_dict(
    data: Mapping[str, Any], *, base_dir: str | Path = ".", name: str = "<dict>"
) -> OrganismSpec:
    """Validate a plain dict as if it were an organism file; handlers may be callables.

    The caller's dict is left as it was, so that one dict can build several organisms."""
    # The loader replaces top-level entries (callables, external agents), never edits
    # inner ones in place: a copy of the top level keeps the caller's whole.
    data = dict(data) if isinstance(data, Mapping) else data
    spec, _ = _build(Located(data, name), Path(base_dir).resolve(), source=None)
    return spec


def organism_from_text(
    text: str | bytes, *, base_dir: str | Path = ".", name: str = "<text>"
) -> OrganismSpec:
    """Validate YAML text as if it were an organism file named ``name``.

    Any input gives a spec or a :class:`ConfigError`; nothing else escapes.
    """
    text = capped_text(text, name)
    try:
        located = read_yaml(text, name)
    except YamlSyntaxError as exc:
        raise ConfigError([exc.problem]) from None
    spec, _ = _build(located, Path(base_dir).resolve(), source=None)
    return spec


def _build(
    located: Located, base_dir: Path, source: Path | None, *, signs: bool = True
) -> tuple[OrganismSpec, list[Problem]]:
    data = located.data
    if data is None:
        data = located.data = {}
    problems = list(located.duplicates)
    external = take_external(data, lambda path, message: problems.append(
        located.problem(path, message))) if isinstance(data, dict) else {}
    callables = _take_callables(data)
    listed_callables = _take_listed_callables(data)
    problems += _schema_problems(located, callables)
    if not isinstance(data, dict):
        raise ConfigError(_sorted(problems))
    # The name checks below skip whatever has the wrong shape: that is reported already.
    problems += (reference_problems(located, external) + bare_duration_warnings(located)
                 + declared_knowledge_problems(located))
    from_file = source is not None  # else base_dir is the one given to from_dict or text
    handlers, listed = resolve_handlers(located, base_dir, callables, listed_callables,
                                        problems, from_file=from_file)
    payloads = read_payloads(located, handlers, listed, problems)
    stages = resolve_stages(located, base_dir, problems, from_file=from_file)
    store = resolve_store(located, base_dir, problems, from_file=from_file)
    schemas = _compile_schemas(located, base_dir, problems)
    sources = read_sources(located, base_dir, problems)
    signing = read_signing(mapping(data.get("organism")), mapping(data.get("agents")),
                           lambda path, message: problems.append(located.problem(path,
                                                                                 message)),
                           external=external, unset=None if signs else (
                               lambda path, message: problems.append(located.problem(
                                   path, message, warning=True))))
    if [p for p in problems if not p.warning]:
        raise ConfigError(_sorted(problems))
    handlers = {**handlers, **{name: routes.routes[0].handler
                               for name, routes in payloads.items()}}
    spec = _with_schemas(_to_spec(data, handlers, base_dir, source, store), schemas, payloads)
    spec = dataclasses.replace(spec, stages=stages, sources=sources, external=external)
    if signing is not None:
        spec = dataclasses.replace(spec, signing=signing, signing_key=signing.shared_key,
                                   signing_key_env=_shared_key_env(data))
    warned = {problem.path for problem in problems}  # one warning per place at most
    return spec, _sorted(problems + [warning for warning in wiring_warnings(located, spec)
                                     if warning.path not in warned])


def _take_callables(data: Any) -> dict[str, Callable[..., Any]]:
    """Swap callables given through the Python API for a placeholder the schema accepts."""
    agents = data.get("agents") if isinstance(data, dict) else None
    found: dict[str, Callable[..., Any]] = {}
    if isinstance(agents, dict):
        for name, agent in agents.items():
            if isinstance(agent, dict) and callable(agent.get("handler")):
                found[name] = agent["handler"]
        if found:
            data["agents"] = {
                name: ({**agent, "handler": _CALLABLE_PLACEHOLDER} if name in found else agent)
                for name, agent in agents.items()
            }
    return found


def _take_listed_callables(data: Any) -> dict[str, dict[int, Callable[..., Any]]]:
    """As :func:`_take_callables`, for the callables in an agent's ``handlers`` list."""
    agents = data.get("agents") if isinstance(data, dict) else None
    found: dict[str, dict[int, Callable[..., Any]]] = {}
    if not isinstance(agents, dict):
        return found
    for name, agent in agents.items():
        listed = agent.get("handlers") if isinstance(agent, dict) else None
        given = {i: ref for i, ref in enumerate(listed or ()) if callable(ref)}
        if isinstance(listed, list) and given:
            found[name] = given
    if found:  # a new mapping, as above: the caller's dicts stay as they were
        data["agents"] = {name: ({**agent, "handlers": [
            _CALLABLE_PLACEHOLDER if callable(ref) else ref for ref in agent["handlers"]]}
            if name in found else agent) for name, agent in agents.items()}
    return found


# -- pass 1: shapes ------------------------------------------------------------


def _schema_problems(located: Located, callables: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for error in _VALIDATOR.iter_errors(located.data):
        path: DataPath = tuple(error.absolute_path)
        # A message quotes the bad value: hide the password of a URL it holds.
        problems.extend(dataclasses.replace(p, message=redact_text(p.message))
                        for p in _describe(located, path, error))
    return problems


def _describe(located: Located, path: DataPath, error: Any) -> list[Problem]:
    instance, schema = error.instance, error.schema
    if "propertyNames" in error.absolute_schema_path and isinstance(instance, str):
        # A key's name is wrong: at that key, not at its mapping's first one.
        advice = (pattern_hint(path, error.validator_value) if error.validator == "pattern"
                  else schema["x-why"] if isinstance(schema, dict) and "x-why" in schema
                  else f"is not a valid name here: {error.message}")
        return [located.problem((*path, instance), f"{instance!r} {advice}", key=True)]
    if error.validator == "pattern" and isinstance(schema, dict) and "x-checked-by" in schema:
        return []  # told where it is checked, in its words
    if isinstance(schema, dict) and "x-why" in schema:  # a rule the schema explains itself
        return [located.problem(path, f"{_short(instance)}: {schema['x-why']}")]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        return [
            located.problem(
                (*path, key),
                f"unknown key {key!r}{did_you_mean(str(key), known)}; the keys here are "
                f"{', '.join(known)}",
                key=True,
            )
            for key in instance
            if key not in known
        ]
    if error.validator == "required":
        return [located.problem(path, f"{error.message}; add it")]
    if isinstance(schema, dict) and "x-expect" in schema and error.validator in (
            "type", "minimum"):
        return [located.problem(path, f"expected {schema['x-expect']}, got {_short(instance)}"
                                      f"{shape_hint(path, instance, schema.get('type'))}")]
    if error.validator == "oneOf" and isinstance(instance, dict) and (
            inner := _mapping_branch_errors(error)):
        # The value is a mapping, as one branch wants: say what is wrong inside it.
        return [p for e in inner for p in _describe(located, tuple(e.absolute_path), e)]
    if error.validator == "oneOf" and isinstance(instance, str | int | float):
        hint = schema.get("x-write", "a value of the documented form")
        kinds = [branch.get("type") for branch in error.validator_value]
        durations = any(branch.get("pattern") == DURATION_PATTERN
                        for branch in error.validator_value)
        mistake = duration_mistake(instance) if durations else ""
        return [located.problem(path, f"{instance!r} is not valid here; write {hint}"
                                      f"{mistake or shape_hint(path, instance, kinds)}")]
    if error.validator == "oneOf":
        return [located.problem(path, f"{_short(instance)} is not valid here; "
                                      f"expected a mapping of settings")]
    if error.validator == "pattern":
        return [located.problem(path, f"{instance!r} "
                                      f"{pattern_hint(path, error.validator_value)}")]
    if error.validator == "type" and instance.__class__ is float and not math.isfinite(
            instance):
        return [located.problem(path, f"{instance!r} is no finite number; write one like 5 "
                                      f"or 2.5")]
    if error.validator == "type":
        kinds = error.validator_value
        expected = " or ".join(kinds) if isinstance(kinds, list) else kinds
        return [located.problem(path, f"{_short(instance)} is "
                                      f"{with_article(_json_type(instance))}; expected "
                                      f"{with_article(expected)}"
                                      f"{shape_hint(path, instance, kinds)}")]
    if error.validator == "minProperties" or error.validator == "maxProperties":
        return [located.problem(path, f"{_short(instance)}: give exactly one of "
                                      f"'to' (an agent) or 'channel'")]
    if error.validator == "minimum":
        return [located.problem(path, f"{instance!r} is too small; use at least "
                                      f"{error.validator_value}")]
    if error.validator == "uniqueItems":  # names, or numbers (budget_warnings)
        twice = next((item for i, item in enumerate(instance) if item in instance[:i]), None)
        return [located.problem(path, f"{_short(instance)} lists {twice!r} twice; list it "
                                      f"once")]
    return [located.problem(path, f"{_short(instance)}: {error.message}")]


def _mapping_branch_errors(error: Any) -> list[Any]:
    """The errors of a ``oneOf`` error's branch that accepts a mapping (none: no such branch)."""
    branches = error.validator_value
    return [e for e in error.context or ()
            if e.relative_schema_path and isinstance(branches[e.relative_schema_path[0]], dict)
            and branches[e.relative_schema_path[0]].get("type") == "object"]


# -- pass 3: signing and message schemas ----------------------------------------


def _shared_key_env(data: dict[str, Any]) -> str | None:
    organism = mapping(data.get("organism"))
    name = organism.get("signing_key_env") or mapping(organism.get("signing")).get("key_env")
    return name if isinstance(name, str) else None


def _compile_schemas(located: Located, base_dir: Path,
                     problems: list[Problem]) -> dict[str, SchemaSpec]:
    """Each agent's ``schema`` file, compiled once (a reload loads them afresh)."""
    compiled: dict[str, SchemaSpec] = {}
    for name, agent in mapping(located.data.get("agents")).items():
        ref = mapping(agent).get("schema")
        if not isinstance(ref, str) or not ref:
            continue  # absent, or reported by the schema pass
        try:
            compiled[name] = load_schema(base_dir / ref)
        except SchemaFileError as exc:
            problems.append(located.problem(("agents", name, "schema"), str(exc)))
    return compiled


def _with_schemas(spec: OrganismSpec, schemas: Mapping[str, SchemaSpec],
                  payloads: Mapping[str, PayloadRoutes]) -> OrganismSpec:
    """Each agent's schema: its file's, or the one generated from its payload types."""
    if not schemas and not payloads:
        return spec
    agents = {name: dataclasses.replace(agent, schema=schemas[name]) if name in schemas
              else dataclasses.replace(agent, schema=payloads[name].schema_spec(),
                                       payloads=payloads[name],
                                       handler_ref=payloads[name].refs()) if name in payloads
              else agent for name, agent in spec.agents.items()}
    return dataclasses.replace(spec, agents=agents)


# -- building the value objects ---------------------------------------------------


def _to_spec(
    data: Mapping[str, Any], handlers: Mapping[str, Callable[..., Any]],
    base_dir: Path, source: Path | None, store: Callable[[], Any] | None = None,
) -> OrganismSpec:
    head = data.get("organism") or {}
    channels = {
        name: ChannelSpec(
            name=name,
            capacity=conf.get("capacity", DEFAULT_CAPACITY),
            description=conf.get("description", ""),
            publish=_frozen(conf.get("publish")),
            subscribe=_frozen(conf.get("subscribe")),
        )
        for name, conf in ((n, mapping(c)) for n, c in mapping(data.get("channels")).items())
    }
    for builtin in BUILTIN_CHANNELS:
        channels.setdefault(builtin, ChannelSpec(name=builtin))
    agents = {name: _agent(name, conf, handlers.get(name, _orchestrated))
              for name, conf in data["agents"].items()}
    limits = limits_of(data.get("limits") or {})
    return OrganismSpec(
        name=head.get("name", source.stem if source else "organism"),
        description=head.get("description", ""),
        backend=head.get("backend", "memory"),
        broker=_broker(head.get("broker") or {}),
        agents=agents,
        channels=channels,
        limits=limits,
        source=source,
        base_dir=base_dir,
        knowledge_store=head.get("knowledge_store", "memory"),
        knowledge_store_factory=store,
        journal=base_dir / head["journal"] if head.get("journal") else None,
        insecure=head.get("insecure", False),
    )


def _broker(conf: Mapping[str, Any]) -> BrokerSpec:
    units: dict[str, Callable[[Any], Any]] = {
        "max_length_bytes": parse_size, "dead_letter_max_length_bytes": parse_size,
        "give_up_after": parse_duration, "send_timeout": parse_duration}
    return BrokerSpec(**{key: units[key](value) if key in units and value is not None
                         else value for key, value in conf.items()})  # null: no bound, never


def _agent(name: str, conf: Mapping[str, Any], handler: Callable[..., Any]) -> AgentSpec:
    emit = conf.get("emit")
    retry = conf.get("retry") or {}
    default_retry = Retry()
    timeout = conf.get("timeout")
    ref = conf.get("handler", "handlers" if "handlers" in conf else
                   "gather" if "gather" in conf else "sequence")
    return AgentSpec(
        name=name,
        handler_ref=ref if ref != _CALLABLE_PLACEHOLDER else qualname(handler),
        handler=handler,
        description=conf.get("description", ""),
        subscribe=tuple(conf.get("subscribe", ())),
        emit=Emit(to=emit.get("to"), channel=emit.get("channel")) if emit else None,
        peers=_frozen(conf.get("peers")),
        concurrency=conf.get("concurrency", 1),
        # 0 is off, as for dedupe and key_idle: a deadline of now would fail every call.
        timeout=(parse_duration(timeout) or None) if timeout is not None else None,
        retry=Retry(
            attempts=retry.get("attempts", default_retry.attempts),
            backoff=parse_duration(retry.get("backoff", default_retry.backoff)),
            max_backoff=parse_duration(retry.get("max_backoff", default_retry.max_backoff)),
        ),
        boot=conf.get("boot"),
        max_crashes=conf.get("max_crashes", DEFAULT_MAX_CRASHES),
        dedupe=parse_duration(conf.get("dedupe") or 0) or None,  # 0: off
        key=conf.get("key"),
        key_idle=parse_duration(conf.get("key_idle", DEFAULT_KEY_IDLE) or 0) or None,  # 0: never
        max_keys=conf.get("max_keys", DEFAULT_MAX_KEYS),
        cost=conf.get("cost"),
        lazy=conf.get("lazy", True),
        cpu_bound=conf.get("cpu_bound", False),
        gather=_gather(conf.get("gather")),
        sequence=_sequence(conf.get("sequence")),
    )


def _gather(conf: Mapping[str, Any] | None) -> GatherSpec | None:
    if conf is None:
        return None
    to = conf.get("to")
    return GatherSpec(to=tuple(to) if to is not None else None, channel=conf.get("channel"),
                      timeout=parse_duration(conf.get("timeout", GatherSpec().timeout)))


def _sequence(conf: list[str] | Mapping[str, Any] | None) -> SequenceSpec | None:
    if conf is None:
        return None
    if isinstance(conf, list):
        return SequenceSpec(steps=tuple(conf))
    return SequenceSpec(steps=tuple(conf["steps"]),
                        timeout=parse_duration(conf.get("timeout", SequenceSpec(()).timeout)))


def _orchestrated(spore: Any, ctx: Any) -> None:
    """The handler slot of a gather or sequence agent: the runtime runs those itself."""
    raise NotImplementedError("gather and sequence agents are run by the organism")


def _frozen(names: Iterable[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(names)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.warning, p.line, p.column))
