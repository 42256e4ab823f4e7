"""An event priced under the name its provider's prices are published as (gemini -> google rows)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg

from billing.db import connect
from billing.ingest import ingest_batch
from billing.settings import Settings


def ev(i: int, provider: str) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"al-{i}",
            "occurred_at": "2026-10-15T12:00:00Z",
            "org_id": "acme",
            "provider": provider,
            "model": "gemini-2.5-flash",
            "usage": {
                "input_tokens": 1_000_000,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 0,
                "reasoning_tokens": 0,
            },
        }
    )


def rate(conn: psycopg.Connection[Any], provider: str, price: str) -> int:
    row = conn.execute(
        "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_output, source) "
        "VALUES (%s, 'gemini-2.5-flash', '2026-01-01', 'USD', %s, 2.5, 'test') RETURNING rate_id",
        (provider, Decimal(price)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_alias_prices_and_own_name_wins(conn: psycopg.Connection[Any], settings: Settings) -> None:
    google = rate(conn, "google", "0.30")
    with connect(settings) as db:
        ingest_batch(db, [ev(1, "gemini"), ev(2, "vertex"), ev(3, "some-gateway")], settings=settings)
    rows = dict(conn.execute("SELECT event_id, cost_total FROM events").fetchall())
    assert rows == {"al-1": Decimal("0.30"), "al-2": Decimal("0.30"), "al-3": None}  # no alias: unpriced

    own = rate(conn, "gemini", "0.25")  # a row under the event's own provider name wins over the alias's
    with connect(settings) as db:
        ingest_batch(db, [ev(4, "gemini")], settings=settings)
    assert conn.execute("SELECT rate_id, cost_total FROM events WHERE event_id = 'al-4'").fetchone() == (
        own,
        Decimal("0.25"),
    )
    assert conn.execute("SELECT rate_id FROM events WHERE event_id = 'al-2'").fetchone() == (google,)
