"""Helpers for the invoice tests: events through the real ingest path, rates, exact expected amounts."""

from __future__ import annotations

import json
import subprocess
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg

from billing.db import connect
from billing.ingest import IngestResult, ingest_batch
from billing.settings import Settings

MILLION = Decimal(1_000_000)


def ev(
    event_id: str,
    occurred_at: str,
    *,
    org_id: str = "acme",
    model: str = "gpt-x",
    provider: str = "openai",
    input_tokens: int = 0,
    cached: int = 0,
    output: int = 0,
    reasoning: int = 0,
) -> dict[str, Any]:
    """One wire-format v1 event."""
    return {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "org_id": org_id,
        "provider": provider,
        "model": model,
        "usage": {
            "input_tokens": input_tokens,
            "cached_input_tokens": cached,
            "cache_write_tokens": 0,
            "output_tokens": output,
            "reasoning_tokens": reasoning,
        },
    }


def ingest(settings: Settings, events: list[dict[str, Any]]) -> IngestResult:
    """Events through the real ingest path (one batch, one transaction)."""
    with connect(settings) as conn:
        result = ingest_batch(conn, [json.dumps(e) for e in events], settings=settings)
    assert result.rejected == 0, result
    return result


def add_rate(
    conn: psycopg.Connection[Any],
    *,
    model: str = "gpt-x",
    effective_from: str = "2025-01-01",
    price_in: str,
    price_out: str,
    cached: str | None = None,
    min_input_tokens: int = 0,
    org_id: str | None = None,
    currency: str = "USD",
) -> int:
    row = conn.execute(
        "INSERT INTO rates (org_id, provider, model, effective_from, currency, min_input_tokens, price_input,"
        " price_cached_input, price_output, source) VALUES (%s, 'openai', %s, %s, %s, %s, %s, %s, %s, 'test')"
        " RETURNING rate_id",
        (org_id, model, effective_from, currency, min_input_tokens, price_in, cached, price_out),
    ).fetchone()
    assert row is not None
    return int(row[0])


def cost(quantity: int, price: str) -> Decimal:
    return Decimal(quantity) * Decimal(price) / MILLION


def money(exact: Decimal) -> str:
    return str(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["usagebill", *args], check=False, env=env, capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"usagebill {' '.join(args)} -> {proc.returncode}: {proc.stderr.decode()}")
    return proc


def export(env: dict[str, str], month: str, *extra: str) -> list[dict[str, Any]]:
    out = cli(env, "invoice", "export", "--month", month, "--format", "json", *extra).stdout
    data = json.loads(out)
    assert isinstance(data, list)
    return data


def lines_by_key(invoice: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(ln["original_month"], ln["model"], ln["category"], ln["unit_price"]): ln for ln in invoice["lines"]}
