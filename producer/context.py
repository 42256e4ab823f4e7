"""Who a call is billed to: org, user, session, request type and tags, set explicitly or per scope."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class CallContext:
    """The billing context of an LLM call. `org_id` is required by the time an event is built."""

    org_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    request_type: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    reservation_id: str | None = None

    def merged(self, **overrides: Any) -> CallContext:
        """This context with the given non-None values on top (tags are merged, overrides win)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if "tags" in values:
            values["tags"] = {**self.tags, **values["tags"]}
        return replace(self, **values)


_current: ContextVar[CallContext] = ContextVar("usagebill_call_context", default=CallContext())  # noqa: B039


def current_context() -> CallContext:
    """The context of the running request scope (empty outside any `billing_context`)."""
    return _current.get()


@contextmanager
def billing_context(
    org_id: str | None = None,
    *,
    user_id: str | None = None,
    session_id: str | None = None,
    request_type: str | None = None,
    tags: Mapping[str, str] | None = None,
    reservation_id: str | None = None,
) -> Iterator[CallContext]:
    """Bill the LLM calls made inside this block (this thread or task) to the given org and user."""
    ctx = _current.get().merged(
        org_id=org_id,
        user_id=user_id,
        session_id=session_id,
        request_type=request_type,
        tags=dict(tags) if tags is not None else None,
        reservation_id=reservation_id,
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
