"""The runtime: organisms, their context for handlers, dead letters, and the CLI."""

from sporeflow.config.errors import (
    BrokerError,
    ConfigError,
    DeliveryError,
    HandlerError,
    LimitExceeded,
    NotAPeer,
    OrganismStateError,
    RequestTimeout,
    SporeError,
    SporeflowError,
)
from sporeflow.pipeline.amqp_codec import spore_from_amqp, spore_to_amqp
from sporeflow.pipeline.backend import (
    Backend,
    BackendStatistics,
    Inbound,
    Topology,
    open_backend,
    resolve_backend_url,
)
from sporeflow.pipeline.bridge import Bridge
from sporeflow.pipeline.context import Context
from sporeflow.pipeline.deadletters import DeadLetter, DeadLetterStore
from sporeflow.pipeline.events import (
    AgentStateChanged,
    Event,
    EventBus,
    EventStream,
    OrganismReloaded,
    OrganismStateChanged,
    SporeAdmitted,
    SporeDeadLettered,
    SporeEvent,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)
from sporeflow.pipeline.graph import (
    Wiring,
    WiringEdge,
    WiringNode,
    render_dot,
    render_mermaid,
    wiring,
)
from sporeflow.pipeline.journal import Journal, JournalError, JournalFile, StoredDeadLetter
from sporeflow.pipeline.knowledge import KnowledgeStore, MemoryKnowledgeStore
from sporeflow.pipeline.live import LiveView
from sporeflow.pipeline.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.orchestration import Gathered
from sporeflow.pipeline.organism import Organism
from sporeflow.pipeline.procpool import ProcessContext
from sporeflow.pipeline.prometheus import MetricsServer, StatsCollector
from sporeflow.pipeline.reload import ReloadReport, SpecDiff, diff_specs
from sporeflow.pipeline.stopping import StopCondition, parse_condition
from sporeflow.pipeline.summary import render_summary
from sporeflow.pipeline.tracing import SporeTracer, extract_trace_context, inject_trace_context
from sporeflow.pipeline.watch import watch_changes
from sporeflow.steps.spore import Spore, SporeType

__all__ = [
    "AgentStateChanged",
    "Backend",
    "BackendStatistics",
    "Bridge",
    "BrokerError",
    "ConfigError",
    "Context",
    "DeadLetter",
    "DeadLetterStore",
    "DeliveryError",
    "Event",
    "EventBus",
    "EventStream",
    "Gathered",
    "HandlerError",
    "Inbound",
    "Journal",
    "JournalError",
    "JournalFile",
    "KnowledgeStore",
    "LimitExceeded",
    "LiveView",
    "MemoryBackend",
    "MemoryBroker",
    "MemoryKnowledgeStore",
    "MetricsServer",
    "NotAPeer",
    "Organism",
    "OrganismReloaded",
    "OrganismStateChanged",
    "OrganismStateError",
    "ProcessContext",
    "ReloadReport",
    "RequestTimeout",
    "Spore",
    "SpecDiff",
    "SporeAdmitted",
    "SporeDeadLettered",
    "SporeError",
    "SporeEvent",
    "SporeExpired",
    "SporeFailed",
    "SporeHandled",
    "SporeTracer",
    "SporeType",
    "SporeflowError",
    "StatsCollector",
    "StopCondition",
    "StoredDeadLetter",
    "Topology",
    "Wiring",
    "WiringEdge",
    "WiringNode",
    "diff_specs",
    "extract_trace_context",
    "inject_trace_context",
    "open_backend",
    "parse_condition",
    "render_dot",
    "render_mermaid",
    "render_summary",
    "resolve_backend_url",
    "spore_from_amqp",
    "spore_to_amqp",
    "watch_changes",
    "wiring",
]
