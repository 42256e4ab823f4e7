"""The live event model against the frozen old one: same accepted set, same canonical bytes, same errors.

The canonical bytes' sha256 is the stored conflict hash: for any event the old model accepted, the live
one must produce the very same bytes, or a re-sent old event would become a conflict. Each input is
validated from JSON (as the worker does, unknown fields kept as extras like billing.ingest._Incoming)
and, when it is a JSON object, from Python (as build_event and `usagebill ingest` do).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from producer.event import UsageEvent
from tests.unit import event_v1_frozen


class _NewIncoming(UsageEvent):
    model_config = ConfigDict(frozen=True, extra="allow")


class _OldIncoming(event_v1_frozen.UsageEvent):
    model_config = ConfigDict(frozen=True, extra="allow")


Outcome = tuple[Any, ...]


def _outcome(model: type[BaseModel], validate: Any) -> Outcome:
    """What a validation gave: the canonical bytes and normalised values, or the errors (type, loc, msg)."""
    try:
        event = validate(model)
    except ValidationError as exc:
        return ("rejected", [(e["type"], e["loc"], e["msg"]) for e in exc.errors(include_url=False)])
    except OverflowError:  # the old model's UTC conversion of a datetime at the ends of the calendar
        return ("overflow",)
    extra = event.model_extra or {}
    canonical = event.model_dump_json(exclude=set(extra)) if extra else event.model_dump_json()
    occurred_at = event.occurred_at
    return (
        "accepted",
        canonical,
        json.dumps(extra, sort_keys=True, default=repr),
        occurred_at.isoformat(),
        occurred_at.tzinfo is not None and occurred_at.utcoffset().total_seconds() == 0,
        type(occurred_at.tzinfo).__name__,
        list(event.tags),
    )


def assert_same(doc: Any) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False)
    pairs: list[tuple[type[BaseModel], type[BaseModel]]] = [
        (_OldIncoming, _NewIncoming),
        (event_v1_frozen.UsageEvent, UsageEvent),
    ]
    for old, new in pairs:
        want = _outcome(old, lambda m: m.model_validate_json(text))
        got = _outcome(new, lambda m: m.model_validate_json(text))
        _assert_same_outcome(got, want, (new.__name__, "json", text))
        if isinstance(doc, dict):
            want = _outcome(old, lambda m: m.model_validate(doc))
            got = _outcome(new, lambda m: m.model_validate(doc))
            _assert_same_outcome(got, want, (new.__name__, "python", doc))


def _assert_same_outcome(got: Outcome, want: Outcome, where: Any) -> None:
    if want == ("overflow",):
        # the one intended difference: where the old model raised OverflowError (failing the whole
        # batch), the live one rejects the event with a reason on occurred_at
        assert got[0] == "rejected", where
        assert ("value_error", ("occurred_at",)) in [(t, loc) for t, loc, _ in got[1]], where
    else:
        assert got == want, where


def base(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "ev-1",
        "occurred_at": "2026-10-31T23:59:59+02:00",
        "org_id": "acme",
        "provider": "openai",
        "model": "gpt-4o",
        "user_id": "u1",
        "session_id": "s1",
        "request_type": "chat",
        "reservation_id": "r1",
        "service_tier": "batch",
        "latency_ms": 120,
        "tags": {"feature": "chat"},
        "usage": {
            "input_tokens": 100,
            "cached_input_tokens": 40,
            "cache_write_tokens": 10,
            "cache_write_1h_tokens": 5,
            "output_tokens": 50,
            "reasoning_tokens": 20,
            "provider_cost": "0.0012",
        },
    }
    for key, value in over.items():
        if key.startswith("usage_"):
            if value is ...:
                doc["usage"].pop(key[6:])
            else:
                doc["usage"][key[6:]] = value
        elif value is ...:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


TEXT_FIELDS = ["model", "org_id", "provider", "request_type", "reservation_id", "service_tier", "session_id", "user_id"]
TEXT_VALUES = [
    "a\x00b",
    "\x00",
    "ok",
    "",
    " ",
    "x" * 256,
    "x" * 257,
    "x" * 4096,
    "x" * 4097,
    "é\u2028\U0001f600",
    "a\ud800b",  # a lone surrogate: JSON text can only carry it as an escape (json.dumps writes one)
    "\udc80",
    None,
    5,
    True,
    ["a"],
]
DATETIMES = [
    "2026-10-31T23:59:59+02:00",
    "2026-10-31T23:59:59-05:30",
    "2026-10-31T23:59:59Z",
    "2026-10-31T23:59:59+00:00",
    "2026-10-31T23:59:59.123456+01:00",
    "2026-10-31T23:59:59.1234567+01:00",
    "2026-10-31T23:59:59",
    "2026-10-31",
    "2026-10-31 23:59:59+02:00",
    "2026-02-30T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "not a date",
    "",
    1793491199,
    1793491199.5,
    0,
    -1,
    True,
    None,
]
TIERS: list[Any] = [
    "default",
    "standard",
    "auto",
    "on_demand",
    "",
    "  ",
    " Default ",
    "STANDARD",
    "On_Demand",
    "batch",
    "flex",
]
TIERS += ["priority", "x" * 256, "x" * 257, "a\x00", "default\x00", 5, 0, False, None, [], {}]
COSTS: list[Any] = ["0.1", "0.10", "1e-7", "1E+3", " 0.5 ", "1_000", "-1", "-0", "0", "NaN", "nan", "Infinity", "-inf"]
COSTS += ["1" * 40, "1" * 41, "0." + "1" * 39, "0." + "1" * 40, "abc", "", 0.1, 0.00219855, 1e-7, 1e300, -0.0, -0.1]
COSTS += [0, 1, 10**40, 10**41, -1, True, False, None, [], {}, {"a": 1}]
# around the bounds of the float fast path in producer.event._cost
COSTS += [1e-20, 1.2345678901234567e-20, 9.99e-21, 1e-36, 1e-45, 5e-324, 9.999999999999999e19, 1e20, 1e25, 1e39, 1e41]
COUNTS: list[Any] = [0, 1, 2**63 - 1, 2**63, 2**64, 10**30, -1, 1.0, 1.5, "1", True, False, None, [], 1e3]


def _table() -> list[Any]:
    cases: list[Any] = [base(), base(tags={}), base(tags=...), base(usage_provider_cost=...)]
    for field in TEXT_FIELDS:
        cases += [base(**{field: v}) for v in TEXT_VALUES]
        cases.append(base(**{field: ...}))
    for v in TEXT_VALUES:
        if isinstance(v, str):
            cases += [base(tags={v: "x"}), base(tags={"k": v}), base(tags={"b": "1", v: v})]
        else:
            cases.append(base(tags={"k": v}))
    cases += [
        base(tags={"b": "2", "a": "1", "c": "3"}),
        base(tags={"z": "1", "a\x00": "2", "m": "x" * 5000}),
        base(tags={"k" * 300: "v", "b": "\x00"}),
        base(tags={f"k{i}": str(i) for i in range(50, 0, -1)}),
        base(tags=["a"]),
        base(tags="a"),
        base(tags=None),
    ]
    cases += [base(occurred_at=v) for v in DATETIMES]
    cases += [base(service_tier=v) for v in TIERS]
    cases += [base(usage_provider_cost=v) for v in COSTS]
    counts = ["input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens"]
    for field in [*counts, "output_tokens", "reasoning_tokens"]:
        cases += [base(**{f"usage_{field}": v}) for v in COUNTS]
        cases.append(base(**{f"usage_{field}": ...}))
    cases += [base(latency_ms=v) for v in COUNTS]
    cases += [
        base(usage_cached_input_tokens=50, usage_cache_write_tokens=50),  # == input: fine
        base(usage_cached_input_tokens=51, usage_cache_write_tokens=50),
        base(usage_reasoning_tokens=50),
        base(usage_reasoning_tokens=51),
        base(usage_cache_write_1h_tokens=10),
        base(usage_cache_write_1h_tokens=11),
        base(usage_cached_input_tokens=100, usage_reasoning_tokens=60, usage_cache_write_1h_tokens=11),
        base(usage_reasoning_tokens=60, org_id="", usage_input_tokens=-1),  # several errors at once
        base(usage_cache_write_1h_tokens=..., usage_cache_write_tokens=0),
        base(usage_extra_count=5, colour="blue", nested={"a": [1, "\x00"]}),
        base(estimated=True),
        base(estimated="true"),
        base(estimated=1),
        base(estimated=2),
        base(estimated=None),
        base(status="error"),
        base(status="aborted"),
        base(status="OK"),
        base(schema_version=1.0),
        base(schema_version="1"),
        base(schema_version=True),
        base(schema_version=2),
        base(event_id="a" * 128),
        base(event_id="a" * 129),
        base(event_id="a:b.c_d-e"),
        base(event_id="a b"),
        base(event_id="a\x00"),
        base(event_id=""),
        base(event_id=1),
        base(usage=None),
        base(usage=[]),
        "not json",
        "[]",
        "null",
        '{"schema_version": 1}',
        json.dumps(base())[:-1],
    ]
    return cases


TABLE = _table()


@pytest.mark.parametrize("doc", TABLE, ids=range(len(TABLE)))
def test_table_same_outcome_as_the_old_model(doc: Any) -> None:
    assert_same(doc)


def test_table_covers_both_outcomes() -> None:
    # the table is only a comparison if both sides of the line are well represented
    kinds = [
        _outcome(_OldIncoming, lambda m, d=d: m.model_validate_json(d if isinstance(d, str) else json.dumps(d)))[0]
        for d in TABLE
    ]
    assert kinds.count("accepted") > 80
    assert kinds.count("rejected") > 150


def test_canonical_bytes_of_a_known_event_are_pinned() -> None:
    # the stored conflict hashes depend on these exact bytes
    event = UsageEvent.model_validate_json(json.dumps(base(tags={"b": "2", "a": "1"}, service_tier=" Default ")))
    assert event.canonical() == (
        b'{"estimated":false,"event_id":"ev-1","latency_ms":120,"model":"gpt-4o",'
        b'"occurred_at":"2026-10-31T21:59:59Z","org_id":"acme","provider":"openai","request_type":"chat",'
        b'"reservation_id":"r1","schema_version":1,"service_tier":null,"session_id":"s1","status":"ok",'
        b'"tags":{"a":"1","b":"2"},"usage":{"cache_write_1h_tokens":5,"cache_write_tokens":10,'
        b'"cached_input_tokens":40,"input_tokens":100,"output_tokens":50,"provider_cost":"0.0012",'
        b'"reasoning_tokens":20},"user_id":"u1"}'
    )


# --- property: random mutations of a valid event ------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["\x00", " ", "a"]), max_size=12)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
    st.sampled_from([*TEXT_VALUES[:10], *DATETIMES[:12], *TIERS[:11], *COSTS[:20], "x" * 4097]),
)
_value = st.one_of(_scalar, st.dictionaries(_text, _scalar, max_size=4), st.lists(_scalar, max_size=2))
_top_keys = [*base(), "estimated", "status", "schema_version", "extra_field"]
_usage_keys = [*base()["usage"], "extra_count"]


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = base()
    if draw(st.booleans()):
        doc["usage"].pop("provider_cost")
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        target = draw(st.sampled_from(["top", "usage", "tags"]))
        if target == "tags":
            doc["tags"] = draw(st.dictionaries(_text, _text | _scalar, max_size=5))
            continue
        keys = _top_keys if target == "top" else _usage_keys
        where = doc if target == "top" else doc.get("usage")
        if not isinstance(where, dict):  # usage itself was replaced or removed
            continue
        key = draw(st.sampled_from(keys))
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            where.pop(key, None)
        elif target == "usage" and key != "provider_cost" and draw(st.booleans()):
            where[key] = draw(st.integers(min_value=-2, max_value=200))  # near the subset bounds
        else:
            where[key] = draw(_value)
    return doc


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_property_same_outcome_as_the_old_model(doc: dict[str, Any]) -> None:
    assert_same(doc)
