"""The organism as validated, immutable value objects. The runtime reads only these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sporeflow.config.schemas import SchemaSpec
from sporeflow.config.secrets import Secret

__all__ = [
    "DEAD_LETTER_CHANNEL",
    "DEFAULT_CAPACITY",
    "DEFAULT_CHANNEL",
    "DEFAULT_MAX_CRASHES",
    "AgentSpec",
    "BrokerSpec",
    "ChannelSpec",
    "Emit",
    "GatherSpec",
    "Limits",
    "OrganismSpec",
    "Retry",
    "SequenceSpec",
    "StageSpec",
]

STAGE_NAMES = ("validate", "expire", "budget", "route", "schema", "dispatch")
"""The chain's own stages, in order; a user stage goes before or after one of them
(``budget`` is in the chain only with a per-thread limit)."""

DEFAULT_CHANNEL = "main"
DEAD_LETTER_CHANNEL = "dead-letter"
BUILTIN_CHANNELS = (DEFAULT_CHANNEL, DEAD_LETTER_CHANNEL)
# With a journal: process deaths while an agent handles a spore before the spore is
# dead-lettered ``poison`` rather than replayed (RabbitMQ's delivery-limit).
DEFAULT_MAX_CRASHES = 3


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
class GatherSpec:
    """A built-in agent: ask agents ``to`` (or a channel's subscribers), combine the answers."""

    to: tuple[str, ...] | None = None
    channel: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """A built-in agent: pass knowledge through ``steps`` in order, each a request."""

    steps: tuple[str, ...]
    timeout: float = 30.0


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
    lazy: bool = True  # a class handler is instantiated on its first spore, else at start
    cpu_bound: bool = False  # run the (sync) handler in the organism's process pool
    gather: GatherSpec | None = None
    sequence: SequenceSpec | None = None
    schema: SchemaSpec | None = None  # what knowledge sent to it must satisfy
    max_crashes: int = DEFAULT_MAX_CRASHES  # deaths handling a spore before it is poison


# Outside spores a channel queues before senders wait. Small on purpose: a short queue
# keeps the spores in flight in the CPU caches and young for the garbage collector;
# with a larger one, throughput on one process drops by ~15% (see BENCHMARKS.md).
DEFAULT_CAPACITY = 256


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    capacity: int = DEFAULT_CAPACITY
    description: str = ""
    publish: frozenset[str] | None = None
    subscribe: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_spore_bytes: int = 1024 * 1024
    max_hops: int = 32
    max_in_flight: int = 10_000
    max_in_memory: int = 20_000  # spores held in memory; handler output past it is paged out
    max_depth: int = 32
    # XML a handler returns (or `send --xml`): elements and attributes in all, checked
    # while scanning, before lxml builds anything.
    max_xml_elements: int = 100_000
    max_xml_attributes: int = 50_000
    max_dead_letters: int = 10_000
    max_spores_per_thread: int | None = None
    max_cost_per_thread: float | None = None
    process_pool: int | None = None  # worker processes for cpu_bound agents; None: cpu count
    loop_stall_warning: float | None = 1.0  # seconds a handler may block the loop; 0/None: off


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """Names on the broker: the exchange (None: ``sporeflow.<organism>``), routing keys."""

    exchange: str | None = None
    direct_key: str = "agent.{agent}.{type}"  # Praval's layout
    broadcast_key: str = "channel.{channel}.{type}"


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A stage of the user's in the chain: ``operator`` is an aiostream pipable operator
    over batches, called with ``reject=`` and ``options`` as keywords; it goes ``before``
    or ``after`` the named stage (``validate``, ``expire``, ``route``, ``schema``,
    ``dispatch``, ...)."""

    operator: Any
    before: str | None = None
    after: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def label(self) -> str:
        return self.name or getattr(self.operator, "__qualname__", repr(self.operator))


@dataclass(frozen=True, slots=True)
class OrganismSpec:
    name: str
    agents: Mapping[str, AgentSpec]
    channels: Mapping[str, ChannelSpec]
    limits: Limits = Limits()
    backend: str = "memory"
    broker: BrokerSpec = BrokerSpec()
    description: str = ""
    source: Path | None = None
    base_dir: Path = Path(".")
    knowledge_store: str = "memory"  # or module:factory
    knowledge_store_factory: Callable[[], Any] | None = field(default=None, compare=False)
    # The HMAC key of signed spores, read from the variable signing_key_env names.
    signing_key_env: str | None = None
    signing_key: Secret | None = field(default=None, repr=False)
    journal: Path | None = None  # the durable journal's file, resolved against base_dir
    stages: tuple[StageSpec, ...] = ()  # pipeline.stages: the user's stages in the chain

    def __post_init__(self) -> None:
        # Freeze the tables so that nobody mutates a loaded organism behind the runtime.
        object.__setattr__(self, "agents", MappingProxyType(dict(self.agents)))
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def subscribers(self, channel: str) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents.values() if channel in a.subscribe)
