"""Load an organism: YAML (or a dict) in, an :class:`OrganismSpec` out, every problem at once.

Three passes, each adding located problems: the JSON Schema (shapes), the
cross references (names of agents and channels, with "did you mean"), and
the handler imports. Warnings (wiring that can only loop, agents nothing
reaches) never stop a load; ``check`` returns them.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema

from sporeflow.config.errors import ConfigError, Problem
from sporeflow.config.handlers import HandlerImportError, resolve_handler
from sporeflow.config.model import (
    BUILTIN_CHANNELS,
    AgentSpec,
    ChannelSpec,
    Emit,
    Limits,
    OrganismSpec,
    Retry,
)
from sporeflow.config.positions import Located, YamlSyntaxError, read_yaml
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.schema import ORGANISM_SCHEMA
from sporeflow.config.units import parse_duration, parse_size

__all__ = ["check_organism", "load_organism", "organism_from_dict"]

_VALIDATOR = jsonschema.Draft202012Validator(ORGANISM_SCHEMA)
_CALLABLE_PLACEHOLDER = "python:callable"


def load_organism(path: str | Path) -> OrganismSpec:
    """Read and validate an organism file; raise :class:`ConfigError` listing every problem."""
    spec, _ = check_organism(path)
    return spec


def check_organism(path: str | Path) -> tuple[OrganismSpec, list[Problem]]:
    """Like :func:`load_organism`, also returning the warnings."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        problem = Problem(str(file), 1, 1, "", f"cannot read the file: {exc.strerror}")
        raise ConfigError([problem]) from None
    except UnicodeDecodeError as exc:
        problem = Problem(str(file), 1, 1, "", f"the file is not UTF-8: {exc.reason}")
        raise ConfigError([problem]) from None
    try:
        located = read_yaml(text, str(file))
    except YamlSyntaxError as exc:
        raise ConfigError([exc.problem]) from None
    return _build(located, file.resolve().parent, source=file.resolve())


def organism_from_dict(
    data: Mapping[str, Any], *, base_dir: str | Path = ".", name: str = "<dict>"
) -> OrganismSpec:
    """Validate a plain dict as if it were an organism file; handlers may be callables."""
    spec, _ = _build(Located(data, name), Path(base_dir).resolve(), source=None)
    return spec


def _build(
    located: Located, base_dir: Path, source: Path | None
) -> tuple[OrganismSpec, list[Problem]]:
    data = located.data
    if data is None:
        data = located.data = {}
    callables = _take_callables(data)
    problems = list(located.duplicates)
    problems += _schema_problems(located, callables)
    if not isinstance(data, dict):
        raise ConfigError(_sorted(problems))
    # The name checks below skip whatever has the wrong shape: that is reported already.
    problems += _reference_problems(located)
    handlers = _resolve_handlers(located, base_dir, callables, problems)
    if [p for p in problems if not p.warning]:
        raise ConfigError(_sorted(problems))
    spec = _to_spec(data, handlers, base_dir, source)
    return spec, _sorted(problems + _warnings(located, spec))


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


# -- pass 1: shapes ------------------------------------------------------------


def _schema_problems(located: Located, callables: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for error in _VALIDATOR.iter_errors(located.data):
        path: DataPath = tuple(error.absolute_path)
        problems.extend(_describe(located, path, error))
    return problems


def _describe(located: Located, path: DataPath, error: Any) -> list[Problem]:
    instance, schema = error.instance, error.schema
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        return [
            located.problem(
                (*path, key),
                f"unknown key {key!r}{_hint(str(key), known)}; the keys here are "
                f"{', '.join(known)}",
                key=True,
            )
            for key in instance
            if key not in known
        ]
    if error.validator == "required":
        return [located.problem(path, f"{error.message}; add it")]
    if error.validator == "oneOf" and isinstance(instance, str | int | float):
        hint = schema.get("x-write", "a value of the documented form")
        return [located.problem(path, f"{instance!r} is not valid here; write {hint}")]
    if error.validator == "oneOf":
        return [located.problem(path, f"{_short(instance)} is not valid here; "
                                      f"expected a mapping of settings")]
    if error.validator == "pattern":
        return [located.problem(path, f"{instance!r} {_pattern_advice(path)}")]
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [located.problem(path, f"{_short(instance)} is a {_json_type(instance)}; "
                                      f"expected {'an' if expected[0] in 'aeiou' else 'a'} "
                                      f"{expected}")]
    if error.validator == "minProperties" or error.validator == "maxProperties":
        return [located.problem(path, f"{_short(instance)}: give exactly one of "
                                      f"'to' (an agent) or 'channel'")]
    if error.validator == "minimum":
        return [located.problem(path, f"{instance!r} is too small; use at least "
                                      f"{error.validator_value}")]
    if error.validator == "uniqueItems":
        return [located.problem(path, f"{_short(instance)} lists a name twice; list it once")]
    return [located.problem(path, f"{_short(instance)}: {error.message}")]


def _pattern_advice(path: DataPath) -> str:
    last = str(path[-1]) if path else ""
    if last == "handler":
        return "is not a handler reference; write module:function"
    if last == "backend":
        return "is not a backend; write memory or an amqp:// URL"
    return ("is not a valid name; use letters, digits, '_', '.', '-', "
            "starting with a letter or '_', at most 64 characters")


# -- pass 2: names -----------------------------------------------------------


def _reference_problems(located: Located) -> list[Problem]:
    data = located.data
    agents = _mapping(data.get("agents"))
    agents = {name: agent for name, agent in agents.items() if isinstance(agent, dict)}
    channels = {n: c for n, c in _mapping(data.get("channels")).items() if isinstance(c, dict)}
    channels.update({n: {} for n, c in _mapping(data.get("channels")).items() if c is None})
    channel_names = [*channels, *BUILTIN_CHANNELS]
    problems: list[Problem] = []

    def unknown_agent(path: DataPath, name: str) -> None:
        if name not in agents:
            problems.append(located.problem(
                path, f"unknown agent {name!r}{_hint(name, list(agents))}"))

    def unknown_channel(path: DataPath, name: str) -> bool:
        if name in channel_names:
            return False
        problems.append(located.problem(
            path, f"unknown channel {name!r}{_hint(name, channel_names)}; "
                  f"declare it under channels:"))
        return True

    for name, agent in agents.items():
        base: DataPath = ("agents", name)
        for i, channel in _names(agent.get("subscribe")):
            if unknown_channel((*base, "subscribe", i), channel):
                continue
            allowed = channels.get(channel, {}).get("subscribe")
            if allowed is not None and name not in allowed:
                problems.append(located.problem(
                    (*base, "subscribe", i),
                    f"agent {name!r} may not subscribe to {channel!r}: its subscribe list is "
                    f"{allowed!r}; add {name!r} there or remove this subscription"))
        emit = _mapping(agent.get("emit"))
        peers = agent.get("peers") if isinstance(agent.get("peers"), list) else None
        if isinstance(emit.get("to"), str):
            unknown_agent((*base, "emit", "to"), emit["to"])
            if peers is not None and emit["to"] not in peers:
                problems.append(located.problem(
                    (*base, "emit", "to"),
                    f"emit to {emit['to']!r} is forbidden by this agent's own peers "
                    f"{peers!r}; add it to peers or change emit"))
        if isinstance(emit.get("channel"), str) and not unknown_channel((*base, "emit", "channel"),
                                                     emit["channel"]):
            allowed = channels.get(emit["channel"], {}).get("publish")
            if allowed is not None and name not in allowed:
                problems.append(located.problem(
                    (*base, "emit", "channel"),
                    f"agent {name!r} may not publish on {emit['channel']!r}: its publish list "
                    f"is {allowed!r}; add {name!r} there or change emit"))
        for i, peer in _names(peers):
            unknown_agent((*base, "peers", i), peer)
    for cname, conf in channels.items():
        for key in ("publish", "subscribe"):
            for i, agent_name in _names(conf.get(key)):
                unknown_agent(("channels", cname, key, i), agent_name)
    return problems


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _names(value: Any) -> list[tuple[int, str]]:
    """The (index, name) pairs of a list of names, skipping what is not a string."""
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, str)]


def _resolve_handlers(
    located: Located, base_dir: Path, callables: Mapping[str, Callable[..., Any]],
    problems: list[Problem],
) -> dict[str, Callable[..., Any]]:
    handlers: dict[str, Callable[..., Any]] = dict(callables)
    for name, agent in _mapping(located.data.get("agents")).items():
        if name in handlers or not isinstance(agent, dict):
            continue
        if not isinstance(agent.get("handler"), str) or ":" not in agent["handler"]:
            continue  # reported by the schema pass
        try:
            handlers[name] = resolve_handler(agent["handler"], base_dir)
        except HandlerImportError as exc:
            problems.append(located.problem(("agents", name, "handler"), str(exc)))
    return handlers


# -- building the value objects ---------------------------------------------------


def _to_spec(
    data: Mapping[str, Any], handlers: Mapping[str, Callable[..., Any]],
    base_dir: Path, source: Path | None,
) -> OrganismSpec:
    head = data.get("organism") or {}
    channels = {
        name: ChannelSpec(
            name=name,
            capacity=conf.get("capacity", 1000),
            description=conf.get("description", ""),
            publish=_frozen(conf.get("publish")),
            subscribe=_frozen(conf.get("subscribe")),
        )
        for name, conf in ((n, _mapping(c)) for n, c in _mapping(data.get("channels")).items())
    }
    for builtin in BUILTIN_CHANNELS:
        channels.setdefault(builtin, ChannelSpec(name=builtin))
    agents = {name: _agent(name, conf, handlers[name]) for name, conf in data["agents"].items()}
    limits_conf = data.get("limits") or {}
    defaults = Limits()
    limits = Limits(
        max_spore_bytes=parse_size(limits_conf.get("max_spore_bytes", defaults.max_spore_bytes)),
        max_hops=limits_conf.get("max_hops", defaults.max_hops),
        max_in_flight=limits_conf.get("max_in_flight", defaults.max_in_flight),
        max_depth=limits_conf.get("max_depth", defaults.max_depth),
        max_dead_letters=limits_conf.get("max_dead_letters", defaults.max_dead_letters),
    )
    return OrganismSpec(
        name=head.get("name", source.stem if source else "organism"),
        description=head.get("description", ""),
        backend=head.get("backend", "memory"),
        agents=agents,
        channels=channels,
        limits=limits,
        source=source,
        base_dir=base_dir,
    )


def _agent(name: str, conf: Mapping[str, Any], handler: Callable[..., Any]) -> AgentSpec:
    emit = conf.get("emit")
    retry = conf.get("retry") or {}
    default_retry = Retry()
    timeout = conf.get("timeout")
    return AgentSpec(
        name=name,
        handler_ref=conf["handler"] if conf["handler"] != _CALLABLE_PLACEHOLDER
        else _qualname(handler),
        handler=handler,
        description=conf.get("description", ""),
        subscribe=tuple(conf.get("subscribe", ())),
        emit=Emit(to=emit.get("to"), channel=emit.get("channel")) if emit else None,
        peers=_frozen(conf.get("peers")),
        concurrency=conf.get("concurrency", 1),
        timeout=parse_duration(timeout) if timeout is not None else None,
        retry=Retry(
            attempts=retry.get("attempts", default_retry.attempts),
            backoff=parse_duration(retry.get("backoff", default_retry.backoff)),
            max_backoff=parse_duration(retry.get("max_backoff", default_retry.max_backoff)),
        ),
        boot=conf.get("boot"),
    )


# -- warnings ------------------------------------------------------------------


def _warnings(located: Located, spec: OrganismSpec) -> list[Problem]:
    warnings: list[Problem] = []
    emitted_to = {a.emit.to for a in spec.agents.values() if a.emit and a.emit.to}
    named_peers = {p for a in spec.agents.values() for p in (a.peers or ())}
    # Only an organism that drives itself (it has boot spores) can be judged for agents
    # nothing reaches: otherwise the entry points are fed from outside by design.
    self_driving = any(a.boot is not None for a in spec.agents.values())
    for agent in spec.agents.values():
        reached = (agent.subscribe or agent.boot is not None or agent.name in emitted_to
                   or agent.name in named_peers)
        if self_driving and not reached:
            warnings.append(located.problem(
                ("agents", agent.name),
                f"nothing in the organism reaches {agent.name!r} (no subscribe, no boot, "
                f"no emit or peers naming it): only outside sends will", warning=True))
        if agent.emit is not None or _returns_none(agent.handler):
            continue
        # Without emit, replies go back to the sender: a sender that emits here again loops.
        for other in spec.agents.values():
            target = other.emit
            if target is None or other.name == agent.name:
                continue
            if target.to == agent.name or (target.channel and target.channel in agent.subscribe):
                warnings.append(located.problem(
                    ("agents", agent.name),
                    f"{agent.name!r} has no emit, so its replies go back to {other.name!r}, "
                    f"which emits to it again: this can only loop until max_hops; give "
                    f"{agent.name!r} an emit or return None", warning=True))
    return warnings


# -- small helpers -----------------------------------------------------------------


def _hint(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _frozen(names: Iterable[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(names)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _returns_none(handler: Callable[..., Any]) -> bool:
    """True when the handler is annotated ``-> None``: it never replies, so cannot loop."""
    try:
        annotation = inspect.signature(handler).return_annotation
    except (TypeError, ValueError):
        return False
    return annotation is None or annotation == "None"


def _qualname(handler: Callable[..., Any]) -> str:
    return f"{getattr(handler, '__module__', '?')}:{getattr(handler, '__qualname__', handler)}"


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.warning, p.line, p.column))
