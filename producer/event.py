"""The usage event, wire format v1 (DESIGN.md contract): validation, repair and canonical form."""

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
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from producer.usage import Usage

SCHEMA_VERSION = 1
MAX_COUNT = 2**63 - 1
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: service tiers that mean "the standard tier": stored as null (DESIGN.md); Groq reports its standard
#: tier as "on_demand", which would otherwise find no null-tier rate
DEFAULT_TIERS = frozenset({"default", "standard", "auto", "on_demand", ""})


# The checks below run on the fields of every ingested event (issue 5, bench/bench_validate.py), so
# each is a plain function doing as little as its rule allows. They stay in Python on purpose: a
# pydantic-core `pattern` excluding NUL measured as costly as the Python check (~0.1 us a string) and
# loses the reason (behind a custom error it costs more), and the cross-field rules and the UTC /
# sorted-tags normalisation have no pydantic-core form.


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL; reject it here with a clear reason instead of failing the batch.
    # A lone surrogate never gets here: the JSON parser rejects a "\udc80" escape, and every str this
    # runs on has a length constraint, which makes pydantic-core reject one (string_unicode).
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


Text = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]
Ident = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_nul)]
TagKey = Annotated[str, Field(max_length=256), AfterValidator(_no_nul)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


def _tier(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in DEFAULT_TIERS:
        return None
    return value


def _cost(value: Any, check: ValidatorFunctionWrapHandler) -> Any:
    # A float from JSON keeps its decimal text: 0.1 becomes Decimal("0.1"), never 0.1000000000000000055.
    if type(value) is float and 1e-20 <= value < 1e20:
        # finite, > 0, at most 17 significant digits and 36 places: the constraints cannot fail, and
        # skipping them (pydantic-core calls back into `decimal` for each) halves the cost of the field
        return Decimal(repr(value))
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, bool):
        raise ValueError("provider_cost must be a decimal string or number, not a boolean")
    return check(value)


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        # e.g. 0001-01-01T00:00:00+01:00: a rejection with its reason, not an exception that fails the batch
        raise ValueError("is out of the datetime range once converted to UTC") from exc


def _sorted_tags(value: dict[str, str]) -> dict[str, str]:
    # the canonical dump keeps dict order; most events carry 0 or 1 tag: nothing to sort
    return dict(sorted(value.items())) if len(value) > 1 else value


class EventUsage(BaseModel):
    """The counts of an event. Fields are in alphabetical order: the canonical dump is sorted JSON."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cache_write_1h_tokens: Count = 0
    cache_write_tokens: Count
    cached_input_tokens: Count
    input_tokens: Count
    output_tokens: Count
    provider_cost: Annotated[
        Annotated[Decimal, Field(allow_inf_nan=False, ge=0, max_digits=40)] | None, WrapValidator(_cost)
    ] = None
    reasoning_tokens: Count

    @model_validator(mode="after")
    def _subsets(self) -> EventUsage:
        # one test on the instance dict first (cheaper than six attribute reads); the reasons only on failure
        d = self.__dict__
        if (
            d["cached_input_tokens"] + d["cache_write_tokens"] <= d["input_tokens"]
            and d["reasoning_tokens"] <= d["output_tokens"]
            and d["cache_write_1h_tokens"] <= d["cache_write_tokens"]
        ):
            return self
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
    occurred_at: Annotated[AwareDatetime, AfterValidator(_utc)]
    org_id: Ident
    provider: Ident
    request_type: Text | None = None
    reservation_id: Ident | None = None
    schema_version: Literal[1]
    service_tier: Annotated[Ident | None, BeforeValidator(_tier)] = None
    session_id: Text | None = None
    status: Literal["ok", "error", "aborted"] = "ok"
    tags: Annotated[dict[TagKey, Text], AfterValidator(_sorted_tags)] = Field(default_factory=dict)
    usage: EventUsage
    user_id: Text | None = None

    def canonical(self) -> bytes:
        """The validated event as sorted JSON: what dedup compares for conflicts."""
        return self.model_dump_json().encode()

    def payload_hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()


def repair_usage(usage: Usage) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply the one documented repair when usage becomes an event (DESIGN.md).

    Returns the event's usage dict and tags recording the original values it changed. A paid call is
    never rejected for a provider's inconsistent counts, and never priced at a negative count.
    """
    tags: dict[str, str] = {}
    inp = max(usage.input_tokens, 0)
    cached = min(max(usage.cached_input_tokens, 0), inp)
    if cached != usage.cached_input_tokens:
        tags["usagebill.original_cached_input_tokens"] = str(usage.cached_input_tokens)
    write = min(max(usage.cache_write_tokens, 0), inp - cached)
    if write != usage.cache_write_tokens:
        tags["usagebill.original_cache_write_tokens"] = str(usage.cache_write_tokens)
    write_1h = min(max(usage.cache_write_1h_tokens, 0), write)
    if write_1h != usage.cache_write_1h_tokens:
        tags["usagebill.original_cache_write_1h_tokens"] = str(usage.cache_write_1h_tokens)
    out = max(usage.output_tokens, 0)
    reasoning = min(max(usage.reasoning_tokens, 0), out)
    if reasoning != usage.reasoning_tokens:
        tags["usagebill.original_reasoning_tokens"] = str(usage.reasoning_tokens)
    return (
        {
            "input_tokens": inp,
            "cached_input_tokens": cached,
            "cache_write_tokens": write,
            "cache_write_1h_tokens": write_1h,
            "output_tokens": out,
            "reasoning_tokens": reasoning,
            "provider_cost": None if usage.provider_cost is None else str(usage.provider_cost),
        },
        tags,
    )
