"""usagebill's producer: what app code imports to capture LLM usage and publish usage events."""

from producer.asgi import UsageMiddleware
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
from producer.quota import Estimate, QuotaCheck, QuotaClient, QuotaConfig, Reservation, check_quota, release, reserve
from producer.sse import track_sse_lines
from producer.streams import instrument, track_response, track_stream
from producer.tokens import count_messages, count_prompt, count_text
from producer.usage import Usage

__all__ = [
    "AsyncPublisher",
    "CallContext",
    "Estimate",
    "Publisher",
    "PublisherConfig",
    "QuotaCheck",
    "QuotaClient",
    "QuotaConfig",
    "Reservation",
    "Usage",
    "UsageAccumulator",
    "UsageEvent",
    "UsageMiddleware",
    "billing_context",
    "build_event",
    "check_quota",
    "configure",
    "count_messages",
    "count_prompt",
    "count_text",
    "current_context",
    "emit",
    "extract_model",
    "extract_service_tier",
    "extract_usage",
    "get_publisher",
    "instrument",
    "new_event_id",
    "publish_async",
    "release",
    "repair_usage",
    "reserve",
    "track_response",
    "track_sse_lines",
    "track_stream",
]
