"""The stream stages: aiostream operators over batches of spores, and what they share.

Stages see spores and plain options only: no YAML, no broker, no globals.
"""

from sporeflow.steps.backoff import backoff_delay
from sporeflow.steps.buckets import PriorityBuckets
from sporeflow.steps.dispatch import dispatch
from sporeflow.steps.envelope import payload_from_xml
from sporeflow.steps.expire import (
    ExpiresIn,
    expire_filter,
    expiry_after,
    timeout_seconds,
    utc_now,
)
from sporeflow.steps.lanes import AgentLane, LanePolicy
from sporeflow.steps.mailbox import queued_in, redelivery
from sporeflow.steps.replies import reply_spore, shape_replies
from sporeflow.steps.route import (
    RoutingTable,
    no_agent_error,
    permission_error,
    route,
    unheard_error,
    unroutable,
)
from sporeflow.steps.runners import RunnerPool
from sporeflow.steps.schemagate import (
    check_schemas,
    knowledge_element,
    schema_check,
    schema_refusal,
)
from sporeflow.steps.signing import (
    SIGNATURE_FIELD,
    BadSignature,
    Replayed,
    ReplayGuard,
    sign,
    signature_check,
    signed,
    signing_bytes,
    verify,
)
from sporeflow.steps.spore import (
    DEFAULT_CHANNEL,
    PRIORITY_MAX,
    PRIORITY_MIN,
    JSONObject,
    Spore,
    SporeType,
    mark_of,
    new_spore,
    new_spore_id,
    set_checked,
    set_mark,
    spore_from_values,
    spore_from_xml,
    spore_to_xml,
    spore_values,
)
from sporeflow.steps.types import Batch, Delivery, Reject, SchemaCheck
from sporeflow.steps.validate import check_spore, forget_checked, json_size_bound, validate

__all__ = [
    "DEFAULT_CHANNEL",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "SIGNATURE_FIELD",
    "AgentLane",
    "BadSignature",
    "Batch",
    "Delivery",
    "ExpiresIn",
    "JSONObject",
    "LanePolicy",
    "PriorityBuckets",
    "Reject",
    "ReplayGuard",
    "Replayed",
    "RoutingTable",
    "RunnerPool",
    "SchemaCheck",
    "Spore",
    "SporeType",
    "backoff_delay",
    "check_schemas",
    "check_spore",
    "dispatch",
    "expire_filter",
    "forget_checked",
    "expiry_after",
    "json_size_bound",
    "knowledge_element",
    "new_spore",
    "new_spore_id",
    "payload_from_xml",
    "queued_in",
    "redelivery",
    "no_agent_error",
    "permission_error",
    "reply_spore",
    "route",
    "schema_check",
    "schema_refusal",
    "shape_replies",
    "timeout_seconds",
    "sign",
    "signature_check",
    "signed",
    "signing_bytes",
    "spore_values",
    "mark_of",
    "set_checked",
    "set_mark",
    "spore_from_values",
    "spore_from_xml",
    "spore_to_xml",
    "unheard_error",
    "unroutable",
    "utc_now",
    "validate",
    "verify",
]
