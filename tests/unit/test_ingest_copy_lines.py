"""Ingest validation: each valid event becomes one COPY text line of ingest_stage holding exactly its validated
fields (its canonical JSON beside it, not staged); `prepare` (the worker's look-ahead) makes the same lines and
leaves the clock's check for later."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing import ingest
from billing.sqlfiles import query
from producer.event import UsageEvent

NOW = datetime(2026, 10, 20, tzinfo=UTC)
TOL = timedelta(seconds=300)
COLUMNS = re.search(r"\((.*)\)", " ".join(query("ingest", "copy_stage").as_string(None).split()))
NAMES = [c.strip() for c in COLUMNS.group(1).split(",")] if COLUMNS else []
UNESCAPE = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
HARD = ["tab\there", "new\nline", "cr\rhere", "back\\slash", 'q"uote', "ünï €😀", "del\x7f", "end\\"]


def doc(i: int, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema_version": 1,
        "event_id": f"e-{i}",
        "occurred_at": "2026-10-15T12:00:00.123456+02:00",
        "org_id": "acme",
        "user_id": f"user-{i}",
        "provider": "openai",
        "model": "gpt-4o",
        "service_tier": "default",
        "tags": {"b": "2", "a": "x"},
        "usage": {
            "input_tokens": 100 + i,
            "cached_input_tokens": 1,
            "cache_write_tokens": 0,
            "output_tokens": 5,
            "reasoning_tokens": 0,
            "provider_cost": 0.1,
        },
    }
    d.update(over)
    return d


def decode(line: str) -> dict[str, str | None]:
    """A COPY text line back to its column values (None for \\N), as Postgres reads it."""
    assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
    values = line[:-1].split("\t")
    assert len(values) == len(NAMES)
    out: dict[str, str | None] = {}
    for name, raw in zip(NAMES, values, strict=True):
        out[name] = None if raw == "\\N" else re.sub(r"\\.", lambda m: UNESCAPE[m.group(0)], raw)
    return out


def expected(pos: int, text: str) -> dict[str, Any]:
    event = UsageEvent.model_validate_json(text)
    u = event.usage
    return {
        "pos": str(pos),
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        "payload_hash": "\\x" + event.payload_hash().hex(),
        "org_id": event.org_id,
        "user_id": event.user_id,
        "session_id": event.session_id,
        "request_type": event.request_type,
        "provider": event.provider,
        "model": event.model,
        "service_tier": event.service_tier,
        "status": event.status,
        "estimated": "t" if event.estimated else "f",
        "latency_ms": _opt(event.latency_ms),
        "reservation_id": event.reservation_id,
        "tags": event.tags,
        "input_tokens": str(u.input_tokens),
        "cached_input_tokens": str(u.cached_input_tokens),
        "cache_write_tokens": str(u.cache_write_tokens),
        "cache_write_1h_tokens": str(u.cache_write_1h_tokens),
        "output_tokens": str(u.output_tokens),
        "reasoning_tokens": str(u.reasoning_tokens),
        "provider_cost": _opt(u.provider_cost),
    }


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def check(pos: int, row: ingest.Row, text: str) -> dict[str, str | None]:
    # the row's line holds exactly the event's fields; the canonical JSON (what a conflict stores) is beside it
    assert row[3] == UsageEvent.model_validate_json(text).canonical()
    got = decode(row[2])
    want = expected(pos, text)
    at = got.pop("occurred_at")
    assert at is not None and datetime.fromisoformat(at) == want.pop("occurred_at")
    assert json.loads(got.pop("tags") or "null") == want.pop("tags")
    extra = got.pop("extra")
    assert got == want
    return {"extra": extra}


def test_columns_are_read_from_the_copy_statement() -> None:
    assert NAMES[:5] == ["pos", "event_id", "occurred_at", "payload_hash", "extra"] and len(NAMES) == 24


def test_plain_events_make_lines_with_exactly_their_fields() -> None:
    texts = [json.dumps(doc(i)) for i in range(5)]
    texts.append(json.dumps(doc(5, latency_ms=12, session_id="s", request_type="chat", estimated=True, tags={})))
    texts.append(json.dumps(doc(6, reservation_id="r-1", service_tier="flex", status="error")))
    parsed = ingest.parse(texts, now=NOW, future_tolerance=TOL)
    assert parsed.rejected == [] and len(parsed.rows) == len(texts)
    for pos, (row, text) in enumerate(zip(parsed.rows, texts, strict=True)):
        assert row[0] == pos and row[1] == UsageEvent.model_validate_json(text).occurred_at
        assert check(pos, row, text) == {"extra": None}


@pytest.mark.parametrize("value", HARD)
def test_values_that_need_escaping_round_trip(value: str) -> None:
    text = json.dumps(
        doc(
            1,
            user_id=value,
            session_id=value,
            request_type=value,
            model=f"m{value}",
            tags={value: value, "k": value},
            future={"x": value},
        )
    )
    parsed = ingest.parse([text], now=NOW, future_tolerance=TOL)
    assert parsed.rejected == []
    extra = check(0, parsed.rows[0], text)["extra"]
    assert extra is not None and json.loads(extra) == {"future": {"x": value}}


def test_escape_in_extra_only_still_escapes_extra() -> None:
    text = json.dumps(doc(1, future="a\tb\\c"))
    row = ingest.parse([text], now=NOW, future_tolerance=TOL).rows[0]
    extra = check(0, row, text)["extra"]
    assert extra is not None and json.loads(extra) == {"future": "a\tb\\c"}


def test_invalid_and_future_events_are_rejected_with_position_and_reason() -> None:
    texts: list[Any] = [json.dumps(doc(i)) for i in range(4)]
    texts[1] = json.dumps(doc(1, usage={"input_tokens": "x"}))
    texts.append(12345)
    texts.append(json.dumps(doc(9, occurred_at="2026-10-21T00:00:00Z")))
    parsed = ingest.parse(texts, now=NOW, future_tolerance=TOL)
    assert [decode(row[2])["pos"] for row in parsed.rows] == ["0", "2", "3"]
    assert [(r.pos, r.event_id) for r in parsed.rejected] == [(1, "e-1"), (4, None), (5, "e-9")]
    reasons = [r.reason for r in parsed.rejected]
    assert "usage.input_tokens" in reasons[0] and "not a JSON text" in reasons[1] and "ahead" in reasons[2]


def test_hash_is_the_sha256_of_the_canonical_json() -> None:
    text = json.dumps(doc(3, future_field=1))
    row = ingest.parse([text], now=NOW, future_tolerance=TOL).rows[0]
    got = decode(row[2])
    assert got["payload_hash"] == "\\x" + hashlib.sha256(row[3]).hexdigest()
    assert got["payload_hash"] == "\\x" + UsageEvent.model_validate_json(text).payload_hash().hex()


def test_prepare_makes_the_same_lines_as_one_block_and_leaves_the_clock_check() -> None:
    texts: list[Any] = [json.dumps(doc(i)) for i in range(3)]
    texts.append("{not json")
    texts.append(json.dumps(doc(9, occurred_at="2026-10-21T00:00:00Z")))  # ahead of NOW + TOL
    prepared = ingest.prepare(texts)
    assert prepared.events is texts
    # the clock is not read yet: the future event is a row, and only the invalid one is rejected
    assert [r[0] for r in prepared.rows] == [0, 1, 2, 4]
    assert [(r.pos, "invalid JSON" in r.reason) for r in prepared.rejected] == [(3, True)]
    assert prepared.block == "".join(r[2] for r in prepared.rows)
    assert prepared.latest == datetime(2026, 10, 21, tzinfo=UTC)
    parsed = ingest.parse(texts, now=NOW, future_tolerance=TOL)
    assert [r[2] for r in parsed.rows] == [r[2] for r in prepared.rows[:3]]


def test_prepare_of_nothing_valid() -> None:
    prepared = ingest.prepare(["[]", 7])
    assert prepared.rows == [] and prepared.block == "" and prepared.latest is None
    assert [r.pos for r in prepared.rejected] == [0, 1]


def test_the_copy_line_carries_every_field_of_the_event() -> None:
    # a field added to the event model must reach ingest_stage too (and so the fast path's texts tuple)
    fields = set(UsageEvent.model_fields) - {"schema_version", "usage"}
    usage = set(UsageEvent.model_fields["usage"].annotation.model_fields)  # type: ignore[union-attr]
    assert fields | usage <= set(NAMES)
