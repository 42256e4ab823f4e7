"""The naive baseline for bench_ingest: one rq job per event, row-by-row inserts and updates in Python."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import psycopg

from billing.db import CONNECT_OPTIONS
from producer.event import UsageEvent

_conn: psycopg.Connection[Any] | None = None


def _db() -> psycopg.Connection[Any]:
    global _conn  # noqa: PLW0603 - one connection per worker process, as a naive app would keep
    if _conn is None:
        _conn = psycopg.connect(os.environ["BENCH_NAIVE_DATABASE_URL"], options=CONNECT_OPTIONS)
    return _conn


def ingest_one(text: str) -> bool:
    """Validate one event, insert it, price it and update each aggregate row by row; commit."""
    ev = UsageEvent.model_validate_json(text)
    conn = _db()
    with conn.transaction():
        claimed = conn.execute(
            "INSERT INTO event_keys (event_id, payload_hash, occurred_at) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            (ev.event_id, ev.payload_hash(), ev.occurred_at),
        ).fetchone()
        if claimed is None:
            return False
        month = ev.occurred_at.date().replace(day=1)
        rate = conn.execute(
            "SELECT rate_id, price_input, coalesce(price_cached_input, price_input), price_output FROM rates"
            " WHERE provider = %s AND model = %s AND effective_from <= %s ORDER BY effective_from DESC LIMIT 1",
            (ev.provider, ev.model, ev.occurred_at),
        ).fetchone()
        u = ev.usage
        uncached = u.input_tokens - u.cached_input_tokens - u.cache_write_tokens
        cost = None
        if rate is not None:
            _, p_in, p_cached, p_out = rate
            c_in = Decimal(uncached) * p_in / 1_000_000
            c_cached = Decimal(u.cached_input_tokens) * p_cached / 1_000_000
            c_out = Decimal(u.output_tokens) * p_out / 1_000_000
            cost = c_in + c_cached + c_out
        conn.execute(
            "INSERT INTO events (event_id, org_id, user_id, provider, model, occurred_at, usage_month, billing_month,"
            " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, currency,"
            " rate_id, cost_total, priced_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, CASE WHEN %s::numeric IS NULL THEN NULL ELSE now() END)",
            (
                ev.event_id,
                ev.org_id,
                ev.user_id,
                ev.provider,
                ev.model,
                ev.occurred_at,
                month,
                month,
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                "USD" if cost is not None else None,
                rate[0] if rate else None,
                cost,
                cost,
            ),
        )
        conn.execute(
            "INSERT INTO usage_daily (org_id, day, user_id, provider, model, events, input_tokens, output_tokens, cost)"
            " VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s) ON CONFLICT (org_id, day, user_id, provider, model)"
            " DO UPDATE SET events = usage_daily.events + 1, input_tokens = usage_daily.input_tokens"
            " + EXCLUDED.input_tokens, output_tokens = usage_daily.output_tokens + EXCLUDED.output_tokens,"
            " cost = usage_daily.cost + EXCLUDED.cost",
            (
                ev.org_id,
                ev.occurred_at.date(),
                ev.user_id or "",
                ev.provider,
                ev.model,
                u.input_tokens,
                u.output_tokens,
                cost or 0,
            ),
        )
        if rate is not None:
            for category, price, qty, amount in (
                ("input", rate[1], uncached, c_in),
                ("cached_input", rate[2], u.cached_input_tokens, c_cached),
                ("output", rate[3], u.output_tokens, c_out),
            ):
                if qty:
                    conn.execute(
                        "INSERT INTO invoice_usage (org_id, billing_month, usage_month, model, category, unit_price,"
                        " currency, quantity, amount, events) VALUES (%s, %s, %s, %s, %s, %s, 'USD', %s, %s, 1)"
                        " ON CONFLICT (org_id, billing_month, usage_month, model, category, unit_price, currency)"
                        " DO UPDATE SET quantity = invoice_usage.quantity + EXCLUDED.quantity,"
                        " amount = invoice_usage.amount + EXCLUDED.amount, events = invoice_usage.events + 1",
                        (ev.org_id, month, month, ev.model, category, price, qty, amount),
                    )
    return True
