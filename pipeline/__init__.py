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
from sporeflow.pipeline.context import Context
from sporeflow.pipeline.deadletters import DeadLetter, DeadLetterStore
from sporeflow.pipeline.organism import Organism
from sporeflow.steps.spore import Spore, SporeType

__all__ = [
    "BrokerError",
    "ConfigError",
    "Context",
    "DeadLetter",
    "DeadLetterStore",
    "DeliveryError",
    "HandlerError",
    "LimitExceeded",
    "NotAPeer",
    "Organism",
    "OrganismStateError",
    "RequestTimeout",
    "Spore",
    "SporeError",
    "SporeType",
    "SporeflowError",
]
