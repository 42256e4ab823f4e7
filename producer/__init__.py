"""usagebill's producer: what app code imports to capture LLM usage and publish usage events."""

from producer.build import build_event, new_event_id
from producer.context import CallContext, billing_context, current_context
from producer.event import UsageEvent, repair_usage
from producer.usage import Usage

__all__ = [
    "CallContext",
    "Usage",
    "UsageEvent",
    "billing_context",
    "build_event",
    "current_context",
    "new_event_id",
    "repair_usage",
]
