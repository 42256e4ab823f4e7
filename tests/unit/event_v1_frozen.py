"""Frozen copy of the wire format v1 model as it was before its checks moved into pydantic-core.

Kept only as the reference for tests/unit/test_event_equivalence.py and bench/bench_validate.py: the
live model (producer/event.py) must accept and reject exactly the same events, with the same
canonical bytes. Do not edit it to follow the live model.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_COUNT = 2**63 - 1
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: service tiers that mean "the standard tier": stored as null (DESIGN.md); Groq reports its standard
#: tier as "on_demand", which would otherwise find no null-tier rate
DEFAULT_TIERS = frozenset({"default", "standard", "auto", "on_demand", ""})


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL; reject it here with a clear reason instead of failing the batch.
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from a JSON "\udc80" escape
        raise ValueError("is not valid Unicode (lone surrogate)") from exc
    return value


Text = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]
Ident = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_nul)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


def _tier(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in DEFAULT_TIERS:
        return None
    return value


def _cost(value: Any) -> Any:
    # A float from JSON keeps its decimal text: 0.1 becomes Decimal("0.1"), never 0.1000000000000000055.
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, bool):
        raise ValueError("provider_cost must be a decimal string or number, not a boolean")
    return value


class EventUsage(BaseModel):
    """The counts of an event. Fields are in alphabetical order: the canonical dump is sorted JSON."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cache_write_1h_tokens: Count = 0
    cache_write_tokens: Count
    cached_input_tokens: Count
    input_tokens: Count
    output_tokens: Count
    provider_cost: Annotated[
        Annotated[Decimal, Field(allow_inf_nan=False, ge=0, max_digits=40)] | None, BeforeValidator(_cost)
    ] = None
    reasoning_tokens: Count

    @model_validator(mode="after")
    def _subsets(self) -> EventUsage:
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cached_input_tokens + cache_write_tokens "
                f"({self.cached_input_tokens} + {self.cache_write_tokens}) exceed input_tokens ({self.input_tokens})"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(f"reasoning_tokens ({self.reasoning_tokens}) exceed output_tokens ({self.output_tokens})")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                f"cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceed "
                f"cache_write_tokens ({self.cache_write_tokens})"
            )
        return self


class UsageEvent(BaseModel):
    """One LLM call, as published. Fields are in alphabetical order so `canonical()` is sorted JSON."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)

    estimated: bool = False
    event_id: Annotated[str, Field(pattern=EVENT_ID_RE.pattern)]
    latency_ms: Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)] | None = None
    model: Ident
    occurred_at: AwareDatetime
    org_id: Ident
    provider: Ident
    request_type: Text | None = None
    reservation_id: Ident | None = None
    schema_version: Literal[1]
    service_tier: Annotated[Ident | None, BeforeValidator(_tier)] = None
    session_id: Text | None = None
    status: Literal["ok", "error", "aborted"] = "ok"
    tags: dict[Annotated[str, Field(max_length=256), AfterValidator(_no_nul)], Text] = Field(default_factory=dict)
    usage: EventUsage
    user_id: Text | None = None

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("tags")
    @classmethod
    def _sorted_tags(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(sorted(value.items()))

    def canonical(self) -> bytes:
        """The validated event as sorted JSON: what dedup compares for conflicts."""
        return self.model_dump_json().encode()

    def payload_hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()
