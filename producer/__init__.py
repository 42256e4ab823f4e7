"""usagebill's producer: what app code imports to capture LLM usage and publish usage events."""

from producer.build import build_event, new_event_id
from producer.context import CallContext, billing_context, current_context
from producer.event import UsageEvent, repair_usage
from producer.extract import UsageAccumulator, extract_model, extract_service_tier, extract_usage
from producer.publisher import (
    AsyncPublisher,
    Publisher,
    PublisherConfig,
    configure,
    emit,
    get_publisher,
    publish_async,
)
from producer.usage import Usage

__all__ = [
    "AsyncPublisher",
    "CallContext",
    "Publisher",
    "PublisherConfig",
    "Usage",
    "UsageAccumulator",
    "UsageEvent",
    "billing_context",
    "build_event",
    "configure",
    "current_context",
    "emit",
    "extract_model",
    "extract_service_tier",
    "extract_usage",
    "get_publisher",
    "new_event_id",
    "publish_async",
    "repair_usage",
]
