"""The organism as validated, immutable value objects. The runtime reads only these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEAD_LETTER_CHANNEL",
    "DEFAULT_CHANNEL",
    "AgentSpec",
    "ChannelSpec",
    "Emit",
    "Limits",
    "OrganismSpec",
    "Retry",
]

DEFAULT_CHANNEL = "main"
DEAD_LETTER_CHANNEL = "dead-letter"
BUILTIN_CHANNELS = (DEFAULT_CHANNEL, DEAD_LETTER_CHANNEL)


@dataclass(frozen=True, slots=True)
class Emit:
    """Where returned knowledge goes: exactly one of an agent or a channel."""

    to: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 1
    backoff: float = 0.1
    max_backoff: float = 10.0


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    handler_ref: str
    handler: Callable[..., Any] = field(compare=False)
    description: str = ""
    subscribe: tuple[str, ...] = ()
    emit: Emit | None = None
    peers: frozenset[str] | None = None
    concurrency: int = 1
    timeout: float | None = None
    retry: Retry = Retry()
    boot: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    capacity: int = 1000
    description: str = ""
    publish: frozenset[str] | None = None
    subscribe: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_spore_bytes: int = 1024 * 1024
    max_hops: int = 32
    max_in_flight: int = 10_000
    max_depth: int = 32
    max_dead_letters: int = 10_000


@dataclass(frozen=True, slots=True)
class OrganismSpec:
    name: str
    agents: Mapping[str, AgentSpec]
    channels: Mapping[str, ChannelSpec]
    limits: Limits = Limits()
    backend: str = "memory"
    description: str = ""
    source: Path | None = None
    base_dir: Path = Path(".")

    def __post_init__(self) -> None:
        # Freeze the tables so that nobody mutates a loaded organism behind the runtime.
        object.__setattr__(self, "agents", MappingProxyType(dict(self.agents)))
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def subscribers(self, channel: str) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents.values() if channel in a.subscribe)
