"""The runtime: organisms, their context for handlers, dead letters, and the CLI.

Each name loads its home module on first use: importing this package loads only what
a program touches (an organism without a journal never imports SQLite).
"""

from __future__ import annotations

import typing

from sporeflow.config import lazy_names

if typing.TYPE_CHECKING:
    from sporeflow.config.errors import (
        BrokerError,
        ConfigError,
        DeliveryError,
        HandlerError,
        JournalError,
        LimitExceeded,
        NotAPeer,
        OrganismFull,
        OrganismStateError,
        RequestTimeout,
        SporeError,
        SporeflowError,
    )
    from sporeflow.pipeline.agents.context import Context
    from sporeflow.pipeline.agents.knowledge import KnowledgeStore, MemoryKnowledgeStore
    from sporeflow.pipeline.agents.orchestration import Gathered
    from sporeflow.pipeline.agents.procpool import ProcessContext
    from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp
    from sporeflow.pipeline.broker.backend import (
        Backend,
        BackendStatistics,
        Inbound,
        Topology,
        resolve_backend_url,
    )
    from sporeflow.pipeline.broker.bridge import Bridge
    from sporeflow.pipeline.broker.factory import open_backend
    from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
    from sporeflow.pipeline.core.deadletters import DeadLetter, DeadLetterStore
    from sporeflow.pipeline.journal.offline import JournalFile
    from sporeflow.pipeline.journal.sqlite import StoredDeadLetter
    from sporeflow.pipeline.journal.store import Journal
    from sporeflow.pipeline.observe.events import (
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
        ThreadBudgetReached,
    )
    from sporeflow.pipeline.observe.graph import (
        Wiring,
        WiringEdge,
        WiringNode,
        render_dot,
        render_mermaid,
        wiring,
    )
    from sporeflow.pipeline.observe.live import LiveView
    from sporeflow.pipeline.observe.prometheus import MetricsServer, StatsCollector
    from sporeflow.pipeline.observe.stopping import StopCondition, parse_condition
    from sporeflow.pipeline.observe.summary import render_summary
    from sporeflow.pipeline.observe.tracing import (
        SporeTracer,
        extract_trace_context,
        inject_trace_context,
    )
    from sporeflow.pipeline.organism import Organism
    from sporeflow.pipeline.reload.diff import ReloadReport, SpecDiff, diff_specs
    from sporeflow.pipeline.reload.watch import watch_changes
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
    "OrganismFull",
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
    "ThreadBudgetReached",
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

_HOMES = lazy_names.homes_of({
    "sporeflow.config.errors": "BrokerError ConfigError DeliveryError HandlerError JournalError "
    "LimitExceeded NotAPeer OrganismFull OrganismStateError RequestTimeout SporeError "
    "SporeflowError",
    "sporeflow.pipeline.agents.context": "Context",
    "sporeflow.pipeline.agents.knowledge": "KnowledgeStore MemoryKnowledgeStore",
    "sporeflow.pipeline.agents.orchestration": "Gathered",
    "sporeflow.pipeline.agents.procpool": "ProcessContext",
    "sporeflow.pipeline.broker.amqp_codec": "spore_from_amqp spore_to_amqp",
    "sporeflow.pipeline.broker.backend": "Backend BackendStatistics Inbound Topology "
    "resolve_backend_url",
    "sporeflow.pipeline.broker.bridge": "Bridge",
    "sporeflow.pipeline.broker.factory": "open_backend",
    "sporeflow.pipeline.broker.memory_backend": "MemoryBackend MemoryBroker",
    "sporeflow.pipeline.core.deadletters": "DeadLetter DeadLetterStore",
    "sporeflow.pipeline.journal.offline": "JournalFile",
    "sporeflow.pipeline.journal.sqlite": "StoredDeadLetter",
    "sporeflow.pipeline.journal.store": "Journal",
    "sporeflow.pipeline.observe.events": "AgentStateChanged Event EventBus EventStream "
    "OrganismReloaded OrganismStateChanged SporeAdmitted SporeDeadLettered SporeEvent "
    "SporeExpired SporeFailed SporeHandled ThreadBudgetReached",
    "sporeflow.pipeline.observe.graph": "Wiring WiringEdge WiringNode render_dot "
    "render_mermaid wiring",
    "sporeflow.pipeline.observe.live": "LiveView",
    "sporeflow.pipeline.observe.prometheus": "MetricsServer StatsCollector",
    "sporeflow.pipeline.observe.stopping": "StopCondition parse_condition",
    "sporeflow.pipeline.observe.summary": "render_summary",
    "sporeflow.pipeline.observe.tracing": "SporeTracer extract_trace_context "
    "inject_trace_context",
    "sporeflow.pipeline.organism": "Organism",
    "sporeflow.pipeline.reload.diff": "ReloadReport SpecDiff diff_specs",
    "sporeflow.pipeline.reload.watch": "watch_changes",
    "sporeflow.steps.spore": "Spore SporeType",
})
_NAMES = lazy_names.LazyNames(__name__, globals(), _HOMES)
__getattr__ = _NAMES.attribute
__dir__ = _NAMES.names
