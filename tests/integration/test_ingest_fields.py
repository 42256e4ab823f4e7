"""Every field of an event reaches `events` exactly as validated, whatever it holds; conflicts keep it too."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg

from billing.db import connect
from billing.ingest import ingest_batch
from billing.settings import Settings
from billing.sqlfiles import queries
from producer.event import UsageEvent
from tests.integration.ingest_util import event, text

HARD = ["tab\there", "new\nline", "cr\rhere", "back\\slash", 'q"uote', "ünï €😀", "del\x7f", "end\\", "\\N", "\\."]


def _ingest(settings: Settings, docs: list[Any]) -> Any:
    with connect(settings) as c:
        return ingest_batch(c, [text(d) for d in docs], settings=settings)


def test_every_field_is_stored_as_validated(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    docs = [
        event(
            f"h{i}",
            user_id=v,
            session_id=v,
            request_type=v,
            model=f"m-{v}",
            org_id=f"org-{v}",
            reservation_id=f"r-{v}",
            service_tier=f"t-{v}",
            tags={v: v, "k": v},
            latency_ms=i,
            estimated=bool(i % 2),
            status="error",
            future={"x": v},
        )
        for i, v in enumerate(HARD)
    ]
    docs.append(event("plain", session_id=None, tags={}))
    docs[-1]["usage"]["provider_cost"] = "0.000123456789012345678901"
    res = _ingest(settings, docs)
    assert (res.inserted, res.rejected) == (len(docs), 0)
    cols = (
        "event_id, org_id, user_id, session_id, request_type, provider, model, service_tier, status, estimated,"
        " latency_ms, reservation_id, tags, extra, occurred_at, input_tokens, cached_input_tokens,"
        " cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, provider_cost"
    )
    rows = {r[0]: r for r in conn.execute(f"SELECT {cols} FROM events")}
    keys = dict(conn.execute("SELECT event_id, payload_hash FROM event_keys").fetchall())
    for d in docs:
        ev = UsageEvent.model_validate_json(text(d))
        u = ev.usage
        want = (
            ev.event_id, ev.org_id, ev.user_id, ev.session_id, ev.request_type, ev.provider, ev.model,
            ev.service_tier, ev.status, ev.estimated, ev.latency_ms, ev.reservation_id, ev.tags,
            {k: v for k, v in d.items() if k == "future"} or None, ev.occurred_at, u.input_tokens,
            u.cached_input_tokens, u.cache_write_tokens, u.cache_write_1h_tokens, u.output_tokens,
            u.reasoning_tokens, u.provider_cost,
        )  # fmt: skip
        assert rows[ev.event_id] == want
        assert keys[ev.event_id] == ev.payload_hash()
    assert rows["plain"][-1] == Decimal("0.000123456789012345678901")


def test_conflict_payload_is_the_canonical_event(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    first = event("c1", user_id="a\tb")
    second = event("c1", user_id="a\\b\n")
    _ingest(settings, [first])
    res = _ingest(settings, [second])
    assert (res.inserted, res.conflicts) == (0, 1)
    payload, conflict_hash = conn.execute("SELECT payload, conflict_hash FROM event_conflicts").fetchone()  # type: ignore[misc]
    ev = UsageEvent.model_validate_json(text(second))
    assert payload == json.loads(ev.canonical()) and conflict_hash == ev.payload_hash()
    assert conn.execute("SELECT user_id FROM events").fetchall() == [("a\tb",)]


def test_the_ingest_writes_every_column_of_events(conn: psycopg.Connection[Any]) -> None:
    # insert_events names its columns (ingest_new also holds each event's staged position): a column
    # added to events and left out there would stay at its default for every ingested event
    statement = queries("ingest")["insert_events"]
    start = statement.index("INSERT INTO events (") + len("INSERT INTO events (")
    columns = {c.strip() for c in statement[start : statement.index(")", start)].split(",")}
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'events'::regclass AND attnum > 0 AND NOT attisdropped"
    ).fetchall()
    assert columns == {str(r[0]) for r in rows}
