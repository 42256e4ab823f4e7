"""Wire format v1: what is accepted, what is rejected (with a reason naming the field), the repair rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from billing.ingest import parse
from producer import Usage, UsageEvent, build_event, repair_usage
from producer.errors import InvalidEventError


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "ev-1",
        "occurred_at": "2026-10-31T23:59:59+02:00",
        "org_id": "acme",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {
            "input_tokens": 100,
            "cached_input_tokens": 40,
            "cache_write_tokens": 10,
            "output_tokens": 50,
            "reasoning_tokens": 20,
        },
    }
    for key, value in over.items():
        if key.startswith("usage_"):
            base["usage"][key[6:]] = value
        elif value is ...:
            base.pop(key)
        else:
            base[key] = value
    return base


def reason(payload: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        UsageEvent.model_validate_json(json.dumps(payload))
    return str(info.value)


def test_minimal_event_defaults_and_utc() -> None:
    ev = UsageEvent.model_validate_json(json.dumps(event()))
    assert ev.occurred_at.isoformat() == "2026-10-31T21:59:59+00:00"
    assert (ev.status, ev.estimated, ev.tags, ev.service_tier, ev.user_id) == ("ok", False, {}, None, None)
    assert ev.usage.cache_write_1h_tokens == 0
    assert ev.usage.provider_cost is None


def test_unknown_fields_are_ignored() -> None:
    ev = UsageEvent.model_validate_json(json.dumps(event(colour="blue")))
    assert "colour" not in ev.model_dump()


@pytest.mark.parametrize("tier", ["default", "standard", "auto", "DEFAULT"])
def test_default_service_tiers_mean_null(tier: str) -> None:
    assert UsageEvent.model_validate(event(service_tier=tier)).service_tier is None


def test_batch_tier_is_kept() -> None:
    assert UsageEvent.model_validate(event(service_tier="batch")).service_tier == "batch"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"event_id": ...}, "event_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"org_id": ...}, "org_id"),
        ({"org_id": ""}, "org_id"),
        ({"occurred_at": "2026-10-31T23:59:59"}, "occurred_at"),
        ({"usage_input_tokens": -1}, "input_tokens"),
        ({"usage_input_tokens": 2**63}, "input_tokens"),
        ({"usage_input_tokens": 1.5}, "input_tokens"),
        ({"usage_input_tokens": "100"}, "input_tokens"),
        ({"usage_output_tokens": True}, "output_tokens"),
        ({"status": "weird"}, "status"),
        ({"org_id": "a\x00b"}, "NUL"),
        ({"usage_provider_cost": "NaN"}, "provider_cost"),
        ({"usage_provider_cost": "-1"}, "provider_cost"),
    ],
)
def test_rejections_name_the_problem(over: dict[str, Any], field: str) -> None:
    assert field in reason(event(**over))


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01"])
def test_occurred_at_beyond_the_utc_range_is_a_rejection_not_a_crash(occurred_at: str) -> None:
    assert "occurred_at" in reason(event(occurred_at=occurred_at))
    text = json.dumps(event(occurred_at=occurred_at))
    parsed = parse([text], now=datetime(2026, 11, 1, tzinfo=UTC), future_tolerance=timedelta(minutes=5))
    assert parsed.rows == []
    assert [r.reason for r in parsed.rejected] == [
        "occurred_at: Value error, is out of the datetime range once converted to UTC"
    ]


def test_subset_rules() -> None:
    assert "exceed input_tokens" in reason(event(usage_cached_input_tokens=95))
    assert "reasoning_tokens (60) exceed output_tokens (50)" in reason(event(usage_reasoning_tokens=60))
    assert "cache_write_1h_tokens" in reason(event(usage_cache_write_1h_tokens=11))


def test_provider_cost_keeps_decimal_text() -> None:
    ev = UsageEvent.model_validate_json(json.dumps(event(usage_provider_cost=0.00219855)))
    assert ev.usage.provider_cost == Decimal("0.00219855")
    assert UsageEvent.model_validate(event(usage_provider_cost="0.1")).usage.provider_cost == Decimal("0.1")


def test_canonical_is_sorted_json_and_stable() -> None:
    a = UsageEvent.model_validate(event(tags={"b": "2", "a": "1"}))
    b = UsageEvent.model_validate_json(json.dumps(event(tags={"a": "1", "b": "2"}, extra_field=1)))
    assert a.canonical() == b.canonical()
    parsed = json.loads(a.canonical())
    assert list(parsed) == sorted(parsed)
    assert list(parsed["usage"]) == sorted(parsed["usage"])
    assert a.payload_hash() != UsageEvent.model_validate(event(usage_output_tokens=51)).payload_hash()


def test_repair_caps_cache_write_and_reasoning_and_keeps_originals() -> None:
    # one real provider reports cache reads + writes above its prompt count
    usage = Usage(
        input_tokens=3329, cached_input_tokens=3211, cache_write_tokens=3211, output_tokens=5, reasoning_tokens=9
    )
    counts, tags = repair_usage(usage)
    assert counts["cache_write_tokens"] == 3329 - 3211
    assert counts["reasoning_tokens"] == 5
    assert tags == {
        "usagebill.original_cache_write_tokens": "3211",
        "usagebill.original_reasoning_tokens": "9",
    }


def test_build_event_needs_an_org() -> None:
    with pytest.raises(InvalidEventError, match="org_id"):
        build_event(provider="openai", model="gpt-4o", usage=Usage(input_tokens=1, output_tokens=1))


def test_build_event_is_valid_wire_format() -> None:
    ev = build_event(provider="openai", model="gpt-4o", usage=Usage(input_tokens=5, output_tokens=7), org_id="o")
    again = UsageEvent.model_validate_json(ev.model_dump_json())
    assert again == ev
