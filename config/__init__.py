"""The declaration: organism files to validated, immutable value objects."""

from sporeflow.config.errors import (
    BrokerError,
    ConfigError,
    DeliveryError,
    HandlerError,
    LimitExceeded,
    NotAPeer,
    OrganismStateError,
    Problem,
    RequestTimeout,
    SporeError,
    SporeflowError,
)
from sporeflow.config.loader import check_organism, load_organism, organism_from_dict
from sporeflow.config.model import (
    AgentSpec,
    ChannelSpec,
    Emit,
    Limits,
    OrganismSpec,
    Retry,
)
from sporeflow.config.schema import ORGANISM_SCHEMA
from sporeflow.config.units import parse_duration, parse_size

__all__ = [
    "ORGANISM_SCHEMA",
    "AgentSpec",
    "BrokerError",
    "ChannelSpec",
    "ConfigError",
    "DeliveryError",
    "Emit",
    "HandlerError",
    "LimitExceeded",
    "Limits",
    "NotAPeer",
    "OrganismSpec",
    "OrganismStateError",
    "Problem",
    "RequestTimeout",
    "Retry",
    "SporeError",
    "SporeflowError",
    "check_organism",
    "load_organism",
    "organism_from_dict",
    "parse_duration",
    "parse_size",
]
