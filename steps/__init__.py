"""The stream stages: aiostream operators over batches of spores, and what they share.

Stages see spores and plain options only: no YAML, no broker, no globals.
"""

from sporeflow.steps.buckets import PriorityBuckets
from sporeflow.steps.dispatch import AgentLane, LanePolicy, backoff_delay, dispatch
from sporeflow.steps.expire import expire_filter, utc_now
from sporeflow.steps.replies import reply_spore, shape_replies
from sporeflow.steps.route import RoutingTable, permission_error, route
from sporeflow.steps.spore import DEFAULT_CHANNEL, JSONObject, Spore, SporeType, new_spore_id
from sporeflow.steps.types import Batch, Delivery, Reject
from sporeflow.steps.validate import check_spore, validate

__all__ = [
    "DEFAULT_CHANNEL",
    "AgentLane",
    "Batch",
    "Delivery",
    "JSONObject",
    "LanePolicy",
    "PriorityBuckets",
    "Reject",
    "RoutingTable",
    "Spore",
    "SporeType",
    "backoff_delay",
    "check_spore",
    "dispatch",
    "expire_filter",
    "new_spore_id",
    "permission_error",
    "reply_spore",
    "route",
    "shape_replies",
    "utc_now",
    "validate",
]
