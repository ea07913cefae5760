"""Declared sources: the inputs an organism reads by itself, as ``sources:`` declares them.

    sources:
      api:   {kind: http, port: 8080, token_env: SPOREFLOW_HTTP_TOKEN, to: triage}
      tick:  {kind: timer, every: 30s, knowledge: {job: sweep}, count: 10, to: sweeper}
      log:   {kind: lines, path: events.jsonl, json: true, follow: true, channel: events}
      inbox: {kind: folder, path: inbox, pattern: "*.pdf", existing: true, to: reader}

Each feeds one agent (``to``) or channel (``channel``); an ``http`` source's target is
only the default of a body that names none. The spores a source sends come from the
source's name, as from any outside sender (so no agent may have that name, and no
channel with a ``publish`` list can take them). The runtime is
``sporeflow.pipeline.sources``; this module turns the YAML into frozen specs and reports
each mistake located, with "did you mean".

An http source's token is read from ``token_env`` when the source starts
(``pipeline.sources.runner``), not here: loading (``check``, ``graph``, tests that start
no source) only warns that the variable is unset now.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from sporeflow.config.errors import Problem
from sporeflow.config.hosts import is_loopback
from sporeflow.config.model import BUILTIN_CHANNELS
from sporeflow.config.positions import Located
from sporeflow.config.reasons import did_you_mean
from sporeflow.config.secrets import Secret
from sporeflow.config.units import parse_duration

__all__ = [
    "DEFAULT_HOST",
    "KINDS",
    "STDIN",
    "FolderSource",
    "HttpSource",
    "LinesSource",
    "SourceSpec",
    "StartAt",
    "TimerSource",
    "read_sources",
    "sources_schema",
]

KINDS = ("http", "timer", "lines", "folder")
StartAt = Literal["beginning", "end"]
_START_AT: tuple[StartAt, ...] = ("beginning", "end")
DEFAULT_HOST = "127.0.0.1"
STDIN = "-"  # a lines source's path that reads standard input
# Defaults, named here: a slotted dataclass's class attribute is no default value.
_REQUEST_TIMEOUT, _ADMISSION_WAIT, _LINES_POLL, _FOLDER_POLL = 30.0, 1.0, 0.5, 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Source:
    name: str
    to: str | None = None  # the agent it feeds, or
    channel: str | None = None  # the channel it broadcasts on
    kind: ClassVar[str]

    @property
    def ends(self) -> bool:
        """Whether it ends by itself (``run --until-idle`` waits for those only)."""
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSource(_Source):
    """HTTP ingress: ``POST /spores``, ``POST /requests``, ``GET /openapi.json``,
    ``GET /healthz``. ``token_env`` None: no token asked (a loopback host, ``insecure``).
    ``token`` is None as loaded; the runner reads ``token_env`` into it at start."""

    kind: ClassVar[str] = "http"
    host: str = DEFAULT_HOST
    port: int = 0
    token: Secret | None = field(default=None, repr=False)
    token_env: str | None = None
    # Where token_env is written (a Problem with no message): a start without the
    # variable names that place.
    token_env_at: Problem | None = field(default=None, repr=False, compare=False)
    request_timeout: float = _REQUEST_TIMEOUT  # the longest a POST /requests waits
    admission_wait: float = _ADMISSION_WAIT  # a POST's wait for room before it answers 429


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerSource(_Source):
    """A spore every ``every`` seconds (the first after one interval), ``count`` in all."""

    kind: ClassVar[str] = "timer"
    every: float
    knowledge: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    count: int | None = None  # None: until the organism stops

    @property
    def ends(self) -> bool:
        return self.count is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class LinesSource(_Source):
    """A spore per line of a file (``path`` None: standard input)."""

    kind: ClassVar[str] = "lines"
    path: Path | None
    follow: bool = False  # at the end, wait for lines appended (as tail -f does)
    json: bool = False  # each line is a JSON object, sent as the knowledge
    poll: float = _LINES_POLL  # while following: how often the end of the file is read again
    # Where a start reads from: "end" skips what the file holds (a followed log read
    # again at each restart would be handled twice). Standard input: always its start.
    start_at: StartAt = "beginning"

    @property
    def ends(self) -> bool:
        return not self.follow or self.path is None  # standard input ends at its end


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderSource(_Source):
    """A spore per file appearing in ``path`` whose name matches ``pattern``."""

    kind: ClassVar[str] = "folder"
    path: Path
    pattern: str = "*"
    existing: bool = False  # also the files there at start
    poll: float = _FOLDER_POLL  # how often the folder is listed


SourceSpec = HttpSource | TimerSource | LinesSource | FolderSource


def sources_schema(name: Mapping[str, Any], duration: Mapping[str, Any],
                   env_name: str) -> dict[str, Any]:
    """The JSON Schema of ``sources:``, made of the organism schema's own fragments for a
    name, a duration and an environment variable's name."""
    def closed(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "required": required,
                "properties": properties}

    flag = {"type": "boolean"}
    path = {"type": "string", "minLength": 1}
    common = {
        "kind": {}, "description": {"type": "string"},
        "to": {**name, "description": "the agent it feeds"},
        "channel": {**name, "description": "the channel it broadcasts on"},
    }
    kinds: dict[str, dict[str, Any]] = {
        "http": closed({
            **common,
            "host": {"type": "string", "minLength": 1,
                     "description": f"address to listen on (default {DEFAULT_HOST})"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535,
                     "description": "TCP port; 0 picks a free one"},
            "token_env": {"type": "string", "pattern": env_name,
                          "description": "environment variable holding the bearer token"},
            "insecure": {**flag, "description": "serve without a token: loopback hosts only"},
            "request_timeout": {**duration, "description": "the longest a POST /requests "
                                "waits for its response (default 30s)"},
            "admission_wait": {**duration, "description": "how long a POST waits for room in "
                               "a full organism before it answers 429 (default 1s)"},
        }, ["kind", "port"]),
        "timer": closed({
            **common,
            "every": {**duration, "description": "the interval; the first spore after one"},
            "knowledge": {"type": "object", "description": "sent each time, with the tick's "
                          "number and time added"},
            "count": {"type": "integer", "minimum": 1, "description": "spores in all "
                      "(default: until the organism stops)"},
        }, ["kind", "every"]),
        "lines": closed({
            **common,
            "path": {**path, "description": "a file, relative to the organism file, or - "
                     "for standard input"},
            "follow": {**flag, "description": "at the end, wait for appended lines"},
            "json": {**flag, "description": "each line is a JSON object, sent as knowledge"},
            "poll": {**duration, "description": "while following, how often the end of the "
                     "file is read again (default 500ms)"},
            "start_at": {"enum": list(_START_AT), "x-why": "is not a place to start; write "
                         "beginning or end", "description": "where each start reads from "
                         "(default: end with follow, else beginning; stdin: its start)"},
        }, ["kind", "path"]),
        "folder": closed({
            **common,
            "path": {**path, "description": "the folder, relative to the organism file"},
            "pattern": {"type": "string", "minLength": 1,
                        "description": "glob the file names match (default *)"},
            "existing": {**flag, "description": "also send the files there at start"},
            "poll": {**duration, "description": "how often the folder is listed (default 1s)"},
        }, ["kind", "path"]),
    }
    source = {
        "type": "object", "required": ["kind"],
        "properties": {"kind": {"enum": list(KINDS), "x-why": f"is not a kind of source; "
                                f"write one of {', '.join(KINDS)}"}},
        "allOf": [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                   "then": schema} for kind, schema in kinds.items()],
    }
    return {"type": "object", "propertyNames": name, "additionalProperties": source,
            "description": "inputs the organism reads by itself, each feeding an agent or "
                           "a channel"}


def read_sources(located: Located, base_dir: Path,
                 problems: list[Problem]) -> Mapping[str, SourceSpec]:
    """The sources ``located`` declares; each mistake is added to ``problems`` located
    (a shape the schema pass refused already is skipped here)."""
    data = located.data
    declared = data.get("sources")
    if not isinstance(declared, dict):
        return MappingProxyType({})
    reader = _Reader(located, base_dir, problems)
    shapes = [p.path for p in problems if not p.warning and p.path.startswith("sources.")]
    sources = {}
    for name, conf in declared.items():
        where = f"sources.{name}"
        if any(path == where or path.startswith(f"{where}.") for path in shapes):
            continue  # the schema pass refused its shape
        if isinstance(conf, dict) and conf.get("kind") in KINDS:
            spec = reader.read(str(name), conf)
            if spec is not None:
                sources[str(name)] = spec
    return MappingProxyType(sources)


class _Reader:
    def __init__(self, located: Located, base_dir: Path, problems: list[Problem]) -> None:
        self.located, self.base_dir, self.problems = located, base_dir, problems
        data = located.data
        agents = data.get("agents")
        self.agents = [str(a) for a in agents] if isinstance(agents, dict) else []
        channels = data.get("channels")
        self.channels = dict(channels) if isinstance(channels, dict) else {}
        self.channel_names = [*map(str, self.channels), *BUILTIN_CHANNELS]

    def problem(self, path: tuple[str | int, ...], message: str, *, key: bool = False,
                warning: bool = False) -> None:
        self.problems.append(self.located.problem(path, message, key=key, warning=warning))

    def read(self, name: str, conf: dict[str, Any]) -> SourceSpec | None:
        where = ("sources", name)
        kind = conf["kind"]
        count = len(self.problems)
        if name in self.agents:
            self.problem(where, f"source {name!r} has the name of an agent: the replies to "
                                f"its spores would go to that agent; rename the source",
                         key=True)
        self._target(where, conf, required=kind != "http")
        durations = self._durations(where, conf)
        if len(self.problems) > count:
            return None
        target: dict[str, Any] = {"name": name, "to": conf.get("to"),
                                  "channel": conf.get("channel")}
        if kind == "http":
            return self._http(where, conf, target, durations)
        if kind == "timer":
            return TimerSource(**target, every=durations["every"],
                               knowledge=MappingProxyType(dict(conf.get("knowledge") or {})),
                               count=conf.get("count"))
        if kind == "lines":
            return self._lines(where, conf, target, durations)
        return self._folder(where, conf, target, durations)

    def _target(self, where: tuple[str, ...], conf: dict[str, Any], *, required: bool) -> None:
        to, channel = conf.get("to"), conf.get("channel")
        if to is not None and channel is not None or required and to is None and channel is None:
            what = "exactly one" if required else "at most one"
            self.problem(where, f"give {what} of 'to' (an agent) or 'channel' as the "
                                f"source's target")
            return
        if isinstance(to, str) and to not in self.agents:
            self.problem((*where, "to"), f"unknown agent {to!r}"
                                         f"{did_you_mean(to, self.agents)}")
        if not isinstance(channel, str):
            return
        if channel not in self.channel_names:
            self.problem((*where, "channel"), f"unknown channel {channel!r}"
                         f"{did_you_mean(channel, self.channel_names)}; declare it under "
                         f"channels:")
            return
        settings = self.channels.get(channel)  # not a mapping: reported by the schema
        publish = settings.get("publish") if isinstance(settings, dict) else None
        if isinstance(publish, list):
            self.problem((*where, "channel"), f"channel {channel!r} takes broadcasts from "
                         f"its publish list {publish!r} only, which names agents; target an "
                         f"agent that broadcasts there, or drop the publish list")

    def _durations(self, where: tuple[str, ...], conf: dict[str, Any]) -> dict[str, float]:
        found: dict[str, float] = {}
        for key in ("every", "poll", "request_timeout", "admission_wait"):
            if key not in conf:
                continue
            try:
                found[key] = parse_duration(conf[key])
            except ValueError as exc:
                self.problem((*where, key), str(exc))
                continue
            if found[key] == 0 and key != "admission_wait":
                self.problem((*where, key), f"{key} must be more than 0; write a duration "
                                            f"like 250ms or 5s")
        return found

    def _http(self, where: tuple[str, ...], conf: dict[str, Any], target: dict[str, Any],
              durations: dict[str, float]) -> HttpSource | None:
        host = conf.get("host", DEFAULT_HOST)
        env, insecure = conf.get("token_env"), conf.get("insecure", False)
        count = len(self.problems)
        if env is not None and insecure:
            self.problem((*where, "insecure"), "give token_env or insecure: true, not both; "
                                               "with a token, drop insecure")
        elif env is None and not insecure:
            self.problem(where, "an http source needs token_env: the environment variable "
                                "holding the bearer token its callers send; or, on a "
                                "loopback host only, insecure: true to serve without one")
        elif env is None and not is_loopback(host):  # insecure
            self.problem((*where, "insecure"), f"insecure: true serves without a token, so "
                         f"only on a loopback host (127.0.0.1, ::1, localhost), not on "
                         f"{host!r}; set token_env to listen there")
        if len(self.problems) > count:
            return None
        if env is not None and not os.environ.get(env, "").strip():
            # Read at start, not now: check, graph and tests that start no source need no
            # secret. Only a warning: the variable may well be set where it runs.
            self.problem((*where, "token_env"), f"environment variable {env!r} is not set "
                         f"(or empty) now; the source fails at start unless it holds the "
                         f"token then", warning=True)
        return HttpSource(
            **target, host=host, port=conf["port"], token_env=env,
            token_env_at=None if env is None else self.located.problem((*where, "token_env"), ""),
            request_timeout=durations.get("request_timeout", _REQUEST_TIMEOUT),
            admission_wait=durations.get("admission_wait", _ADMISSION_WAIT))

    def _lines(self, where: tuple[str, ...], conf: dict[str, Any], target: dict[str, Any],
               durations: dict[str, float]) -> LinesSource | None:
        path = None if conf["path"] == STDIN else self.base_dir / conf["path"]
        follow = bool(conf.get("follow"))
        if path is None and "start_at" in conf:
            self.problem((*where, "start_at"), "standard input is read from its start, "
                         "whatever start_at says; remove start_at or read a file")
            return None
        # A named pipe or a device is read as a file is: only what is not there, or a
        # folder, fails the start.
        if path is not None and not follow and not (path.exists() and not path.is_dir()):
            self.problem((*where, "path"), f"no file {str(path)!r} (yet); the source "
                         f"fails at start unless it is there then", warning=True)
        start_at = conf.get("start_at", "end" if follow and path is not None else "beginning")
        return LinesSource(**target, path=path, follow=follow, json=bool(conf.get("json")),
                           poll=durations.get("poll", _LINES_POLL), start_at=start_at)

    def _folder(self, where: tuple[str, ...], conf: dict[str, Any], target: dict[str, Any],
                durations: dict[str, float]) -> FolderSource | None:
        pattern = conf.get("pattern", "*")
        if "/" in pattern or "\\" in pattern:
            self.problem((*where, "pattern"), f"pattern {pattern!r} matches file names in "
                                              f"the folder, not paths; remove the separator")
            return None
        path = self.base_dir / conf["path"]
        if not path.is_dir():
            self.problem((*where, "path"), f"no folder {str(path)!r} (yet); the source "
                                           f"fails at start unless it is there then",
                         warning=True)
        return FolderSource(**target, path=path, pattern=pattern,
                            existing=bool(conf.get("existing")),
                            poll=durations.get("poll", _FOLDER_POLL))
