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
from sporeflow.config.loader import (
    check_organism,
    load_organism,
    organism_from_dict,
    organism_from_text,
)
from sporeflow.config.model import (
    AgentSpec,
    BrokerSpec,
    ChannelSpec,
    Emit,
    GatherSpec,
    Limits,
    OrganismSpec,
    Retry,
    SequenceSpec,
)
from sporeflow.config.schema import ORGANISM_SCHEMA
from sporeflow.config.schemas import SchemaSpec, SchemaViolation, load_schema
from sporeflow.config.secrets import (
    Secret,
    SecretFilter,
    mask_in_logs,
    read_secret_env,
    redact_text,
    redact_url,
    url_password,
)
from sporeflow.config.units import parse_duration, parse_size

__all__ = [
    "ORGANISM_SCHEMA",
    "AgentSpec",
    "BrokerError",
    "BrokerSpec",
    "ChannelSpec",
    "ConfigError",
    "DeliveryError",
    "Emit",
    "GatherSpec",
    "HandlerError",
    "LimitExceeded",
    "Limits",
    "NotAPeer",
    "OrganismSpec",
    "OrganismStateError",
    "Problem",
    "RequestTimeout",
    "Retry",
    "SchemaSpec",
    "SchemaViolation",
    "Secret",
    "SecretFilter",
    "SequenceSpec",
    "SporeError",
    "SporeflowError",
    "check_organism",
    "load_organism",
    "load_schema",
    "mask_in_logs",
    "organism_from_dict",
    "organism_from_text",
    "parse_duration",
    "parse_size",
    "read_secret_env",
    "redact_text",
    "redact_url",
    "url_password",
]
