"""Hostile and broken input: each bad event is rejected with its reason and kept; the valid ones count."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from billing.db import connect
from billing.ingest import ingest_batch
from billing.settings import Settings

INJECTIONS = [
    "'; DROP TABLE events; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM invoice_usage; --",
    "$$; TRUNCATE event_keys; $$",
    "\\'; COPY events TO '/tmp/x'; --",
]


def good(i: int, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "schema_version": 1,
        "event_id": f"good-{i}",
        "occurred_at": "2026-10-15T12:00:00Z",
        "org_id": "acme",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {
            "input_tokens": 10,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 5,
            "reasoning_tokens": 0,
        },
    }
    ev.update(over)
    return ev


def usage(**over: Any) -> dict[str, Any]:
    u: dict[str, Any] = {
        "input_tokens": 10,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 0,
    }
    u.update(over)
    return u


def bad_cases() -> list[tuple[str, str, str]]:
    """(name, raw text, a word the rejection reason must contain)."""
    cases: list[tuple[str, str, str]] = [
        ("malformed json", '{"schema_version": 1, "event_id": "x1", ', "json"),
        ("not an object", "[1, 2, 3]", "object"),
        ("empty", "", "json"),
        ("string count", json.dumps(good(0, event_id="b-str", usage=usage(input_tokens="10"))), "input_tokens"),
        ("float count", json.dumps(good(0, event_id="b-flt", usage=usage(output_tokens=5.5))), "output_tokens"),
        ("negative count", json.dumps(good(0, event_id="b-neg", usage=usage(input_tokens=-1))), "input_tokens"),
        ("beyond 64-bit", json.dumps(good(0, event_id="b-big", usage=usage(input_tokens=2**64))), "input_tokens"),
        ("exactly 2^63", json.dumps(good(0, event_id="b-263", usage=usage(output_tokens=2**63))), "output_tokens"),
        (
            "NaN",
            '{"schema_version":1,"event_id":"b-nan","occurred_at":"2026-10-15T12:00:00Z","org_id":"a",'
            '"provider":"p","model":"m","usage":{"input_tokens":NaN,"cached_input_tokens":0,'
            '"cache_write_tokens":0,"output_tokens":1,"reasoning_tokens":0}}',
            "input_tokens",
        ),
        (
            "Infinity cost",
            '{"schema_version":1,"event_id":"b-inf","occurred_at":"2026-10-15T12:00:00Z",'
            '"org_id":"a","provider":"p","model":"m","usage":{"input_tokens":1,"cached_input_tokens":0,'
            '"cache_write_tokens":0,"output_tokens":1,"reasoning_tokens":0,"provider_cost":Infinity}}',
            "provider_cost",
        ),
        (
            "cached above input",
            json.dumps(good(0, event_id="b-sub", usage=usage(cached_input_tokens=11))),
            "exceed input_tokens",
        ),
        (
            "reasoning above output",
            json.dumps(good(0, event_id="b-rsn", usage=usage(reasoning_tokens=6))),
            "exceed output_tokens",
        ),
        ("unknown schema version", json.dumps(good(0, event_id="b-ver", schema_version=2)), "schema_version"),
        ("missing org", json.dumps({k: v for k, v in good(0, event_id="b-org").items() if k != "org_id"}), "org_id"),
        ("missing event id", json.dumps({k: v for k, v in good(0).items() if k != "event_id"}), "event_id"),
        ("NUL in org", json.dumps(good(0, event_id="b-nul", org_id="ac\x00me")), "NUL"),
        (
            "lone surrogate",
            '{"schema_version":1,"event_id":"b-sur","occurred_at":"2026-10-15T12:00:00Z",'
            '"org_id":"a\\udc80","provider":"p","model":"m","usage":{"input_tokens":1,"cached_input_tokens":0,'
            '"cache_write_tokens":0,"output_tokens":1,"reasoning_tokens":0}}',
            "surrogate",
        ),
        ("1 MB model", json.dumps(good(0, event_id="b-1mb", model="m" * 1_000_000)), "model"),
        ("naive timestamp", json.dumps(good(0, event_id="b-tz", occurred_at="2026-10-15T12:00:00")), "occurred_at"),
        (
            "far future",
            json.dumps(good(0, event_id="b-fut", occurred_at="2999-01-01T00:00:00Z")),
            "ahead of the server clock",
        ),
        ("injection in event id", json.dumps(good(0, event_id=INJECTIONS[0])), "event_id"),
    ]
    return cases


@pytest.fixture
def db(settings: Settings) -> psycopg.Connection[Any]:
    return connect(settings)


def test_every_bad_input_is_rejected_with_its_reason_and_the_valid_ones_count(
    db: psycopg.Connection[Any], settings: Settings
) -> None:
    cases = bad_cases()
    batch: list[str] = []
    for i, (_, raw, _) in enumerate(cases):
        batch.append(json.dumps(good(i)))
        batch.append(raw)
    with db:
        ingest_batch(db, batch, settings=settings, job_id="bad-input")
        rows = db.execute("SELECT reason, raw FROM rejected_events ORDER BY id").fetchall()
        assert len(rows) == len(cases), [r[0] for r in rows]
        for (name, raw, word), (reason, stored) in zip(cases, rows, strict=True):
            assert word.lower() in reason.lower(), f"{name}: reason {reason!r} lacks {word!r}"
            assert len(stored) >= min(len(raw), 1000), name  # the raw payload is kept for inspection
        count, tokens = db.execute("SELECT count(*), sum(input_tokens) FROM events").fetchone()  # type: ignore[misc]
        assert count == len(cases)
        assert tokens == 10 * len(cases)
        # the aggregates saw exactly the valid events
        agg = db.execute("SELECT sum(events), sum(input_tokens) FROM usage_daily").fetchone()
        assert agg == (len(cases), 10 * len(cases))


def test_injection_strings_are_data(db: psycopg.Connection[Any], settings: Settings) -> None:
    batch = [
        json.dumps(
            good(
                i,
                org_id=s,
                user_id=s,
                session_id=s,
                request_type=s,
                provider=s,
                model=s,
                tags={s: s},
                service_tier=s,
                reservation_id=s.replace("\\", ""),
            )
        )
        for i, s in enumerate(INJECTIONS)
    ]
    with db:
        ingest_batch(db, batch, settings=settings, job_id="inject")
        stored = db.execute("SELECT org_id, user_id, model, tags FROM events ORDER BY event_id").fetchall()
        assert [r[0] for r in stored] == INJECTIONS
        assert all(r[0] == r[1] == r[2] and r[3] == {r[0]: r[0]} for r in stored)
        assert db.execute("SELECT count(*) FROM event_keys").fetchone() == (len(INJECTIONS),)
        assert db.execute("SELECT count(*) FROM rejected_events").fetchone() == (0,)
