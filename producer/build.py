"""Turn one LLM call's captured usage into a usage event (wire format v1), repair rule applied."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from producer.context import CallContext, current_context
from producer.errors import InvalidEventError
from producer.event import UsageEvent, repair_usage
from producer.usage import Usage


def new_event_id() -> str:
    """A fresh idempotency key: the same call re-published keeps its id, so it never counts twice."""
    return f"ev_{uuid.uuid4().hex}"


def build_event(
    *,
    provider: str,
    model: str,
    usage: Usage,
    status: str = "ok",
    estimated: bool = False,
    latency_ms: int | None = None,
    service_tier: str | None = None,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    context: CallContext | None = None,
    tags: Mapping[str, str] | None = None,
    **overrides: Any,
) -> UsageEvent:
    """A validated event for one call. Context comes from `billing_context` unless given.

    `overrides` may set org_id, user_id, session_id, request_type, reservation_id explicitly.
    Raises InvalidEventError naming the problem (e.g. no org_id in scope).
    """
    ctx = (context or current_context()).merged(**overrides)
    if not ctx.org_id:
        raise InvalidEventError("no org_id: pass org_id= or call inside producer.billing_context(org_id=...)")
    counts, repair_tags = repair_usage(usage)
    all_tags = {**ctx.tags, **(tags or {}), **repair_tags}
    payload = {
        "schema_version": 1,
        "event_id": event_id or new_event_id(),
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "org_id": ctx.org_id,
        "user_id": ctx.user_id,
        "session_id": ctx.session_id,
        "request_type": ctx.request_type,
        "reservation_id": ctx.reservation_id,
        "provider": provider,
        "model": model,
        "service_tier": service_tier,
        "status": status,
        "estimated": estimated,
        "latency_ms": latency_ms,
        "tags": all_tags,
        "usage": counts,
    }
    try:
        return UsageEvent.model_validate(payload)
    except ValueError as exc:
        raise InvalidEventError(f"invalid usage event: {exc}") from exc
