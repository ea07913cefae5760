"""The organism as validated, immutable value objects. The runtime reads only these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sporeflow.config.schemas import SchemaSpec
from sporeflow.config.secrets import Secret, redact_url
from sporeflow.config.signing_keys import SigningSpec

if TYPE_CHECKING:  # config.sources reads the channels declared here
    from sporeflow.config.sources import SourceSpec
    from sporeflow.config.typed import PayloadRoutes

__all__ = [
    "DEAD_LETTER_CHANNEL",
    "SYSTEM_SENDER",
    "DEFAULT_CAPACITY",
    "DEFAULT_CHANNEL",
    "DEFAULT_MAX_CRASHES",
    "AgentSpec",
    "BrokerSpec",
    "ChannelSpec",
    "Emit",
    "ExternalAgentSpec",
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
SYSTEM_SENDER = "system"  # the organism's own voice: its notices, an outside call unnamed
CLI_SENDER = "cli"  # `sporeflow send` and the control endpoint's sends
# The outside world's names: what is sent back to them is returned outside, never routed
# (so no agent may be named so).
OUTSIDE_SENDERS = frozenset({SYSTEM_SENDER, CLI_SENDER})
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


# A keyed agent's bounds: an idle key's instance is evicted (its state kept) after this
# long; past this many keys held, live or evicted with a state, a new key is refused.
DEFAULT_KEY_IDLE = 600.0
DEFAULT_MAX_KEYS = 10_000


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
    # Typed handlers (config.typed): the payload types it takes; its schema is made of them.
    payloads: PayloadRoutes | None = None
    max_crashes: int = DEFAULT_MAX_CRASHES  # deaths handling a spore before it is poison
    # Seconds: a spore whose id it handled this recently is dropped (None: all are handled).
    dedupe: float | None = None
    # A keyed agent: one instance and one state per value at this dotted path of a spore
    # (knowledge.user_id, thread_id, ...; see steps.keyed). None: one for the agent.
    key: str | None = None
    key_idle: float | None = DEFAULT_KEY_IDLE  # seconds before an idle key is evicted
    max_keys: int = DEFAULT_MAX_KEYS  # keys held, live or evicted with a state
    # What one spore it handles costs its conversation: charged, against
    # limits.max_cost_per_thread, as the spore passes the budget stage (None: nothing).
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class ExternalAgentSpec:
    """An agent of another framework (``kind``: praval) on the organism's broker, which
    sporeflow agents address; sporeflow hosts no handler and declares no queue for it
    (see ``config.external``)."""

    name: str
    kind: str = "praval"
    description: str = ""
    subscribe: tuple[str, ...] = ()  # our channels whose broadcasts it hears
    channel: str = DEFAULT_CHANNEL  # the channel its broadcasts are delivered on here


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
    # Dead letters kept in memory, by count and by their bytes as JSON (with their error
    # texts): the oldest are evicted first, counted.
    max_dead_letters: int = 10_000
    max_dead_letter_bytes: int = 64 * 1024 * 1024
    max_spores_per_thread: int | None = None
    max_cost_per_thread: float | None = None
    # Percentages of a per-thread limit at which a ThreadBudgetReached event is emitted
    # and logged, once per thread and limit; () for none.
    budget_warnings: tuple[float, ...] = (75.0, 90.0, 95.0)
    process_pool: int | None = None  # worker processes for cpu_bound agents; None: cpu count
    loop_stall_warning: float | None = 1.0  # seconds a handler may block the loop; 0/None: off
    # Senders that are no agent (outside callers, a broker's foreign agents), remembered so
    # that what goes back to them is returned: the least recently seen are forgotten first.
    max_outside_senders: int = 10_000
    # Dead letters a journal keeps, by count and by age (seconds; None: any age); the
    # oldest are dropped first, counted and logged.
    max_journal_dead_letters: int = 100_000
    max_journal_dead_letter_age: float | None = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """Names on the broker: the exchange (None: ``sporeflow.<organism>``), routing keys;
    and the bounds of its queues."""

    exchange: str | None = None
    direct_key: str = "agent.{agent}.{type}"  # Praval's layout
    broadcast_key: str = "channel.{channel}.{type}"
    # Each agent's queue and the dead-letter queue hold at most this many messages and
    # bytes (None: no bound); past it, ``overflow`` (RabbitMQ's x-overflow) decides:
    # reject-publish (the publisher's confirm is a nack: a dead letter here),
    # reject-publish-dlx, or drop-head (the oldest goes to the dead letters).
    max_length: int | None = 100_000
    max_length_bytes: int | None = 1024 ** 3
    overflow: str = "reject-publish"
    dead_letter_max_length: int | None = 100_000
    dead_letter_max_length_bytes: int | None = 1024 ** 3
    # classic: priorities (x-max-priority). quorum: replicated, no priorities, and RabbitMQ's
    # delivery-limit from each agent's max_crashes: a spore given back that often is
    # dead-lettered by the broker, read as poison by `dlq`. The dead-letter queue stays
    # classic: reading it gives its letters back, which a quorum queue would count.
    queue_type: str = "classic"
    # An outage, or a broker not there yet at start: a process tries to connect (publishing
    # waits) for at most give_up_after seconds (None: for ever), then fails stop; an
    # outside send() waits send_timeout for the broker's confirm while it is unreachable,
    # then raises BrokerError.
    give_up_after: float | None = 300.0
    send_timeout: float = 30.0


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
    backend: str = "memory"  # may hold a password: __repr__ masks it
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
    # Accept unsigned spores on a broker beyond this machine (the runtime refuses it else).
    insecure: bool = False
    stages: tuple[StageSpec, ...] = ()  # pipeline.stages: the user's stages in the chain
    signing: SigningSpec | None = field(default=None, repr=False)  # keys, window: signing_keys.py
    # The inputs it reads by itself (sources:), by name; see config.sources.
    sources: Mapping[str, SourceSpec] = field(default_factory=lambda: MappingProxyType({}))
    # Agents outside sporeflow on the same broker (agents: {pr: {external: praval}}).
    external: Mapping[str, ExternalAgentSpec] = field(
        default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Freeze the tables so that nobody mutates a loaded organism behind the runtime.
        object.__setattr__(self, "agents", MappingProxyType(dict(self.agents)))
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def __repr__(self) -> str:
        # As dataclass writes it, but with the backend URL's password masked: a spec
        # printed in a log, an error or a debugger shows no secret.
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["backend"] = redact_url(self.backend)
        return f"{type(self).__qualname__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def signs(self) -> bool:
        """True when spores on the broker are signed (and unsigned ones refused)."""
        return self.signing is not None

    def subscribers(self, channel: str) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents.values() if channel in a.subscribe)
