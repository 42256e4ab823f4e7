"""Pricing: resolve each event's rate and cost it exactly, set-based in SQL, with a pure-Python reference."""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from billing.sqlfiles import queries

#: one million, the unit of every price
MILLION = Decimal(1_000_000)
#: exact arithmetic for the reference: a rounding here would be a bug, so it traps instead
_EXACT = decimal.Context(prec=400, traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation])
#: pricing columns of the events table, filled by insert_priced
PRICING_COLUMNS = (
    "currency",
    "rate_id",
    "adjustment_pct",
    "price_input",
    "price_cached_input",
    "price_cache_write",
    "price_cache_write_1h",
    "price_output",
    "price_reasoning",
    "cost_input",
    "cost_cached_input",
    "cost_cache_write",
    "cost_cache_write_1h",
    "cost_output",
    "cost_reasoning",
    "cost_total",
    "priced_at",
)
#: invoice categories, in invoice order, with the 1-hour cache write as its own costed part
CATEGORIES = ("input", "cached_input", "cache_write", "cache_write_1h", "output", "reasoning")


def _table(name: str) -> sql.Identifier:
    # "schema.table" or "table"; each part quoted as an identifier, never interpolated
    return sql.Identifier(*name.split("."))


def _statement(block: str, table: str) -> sql.Composed:
    blocks = queries("pricing")
    return sql.SQL(blocks["cells"] + "\n" + blocks[block]).format(table=_table(table))


def priced_insert(keys: str, source: str, target: str, ctes: str = "", carry: Sequence[str] = ()) -> sql.Composed:
    """The statement that inserts every row of `source` into `target` (both shaped like events) priced.

    `keys` is the relation the rates are resolved for (org_id, provider, model, service_tier,
    occurred_at of the batch: `source` itself, or any superset of its keys). `ctes` are more CTEs
    (text, starting with a comma) placed between the resolution and the insert, so that `source` may be
    one of them: the ingest claims its keys and prices the claimed rows in one statement. `carry` are
    more columns of `source` copied as they are into `target`'s columns of the same names.
    """
    blocks = queries("pricing")
    text = blocks["cells"] + "\n" + ctes + "\n" + blocks["insert_priced"]
    return sql.SQL(text).format(
        table=_table(keys),
        source=_table(source),
        target=_table(target),
        carry=sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in carry),
        t_carry=sql.SQL("").join(sql.SQL(", t.{}").format(sql.Identifier(c)) for c in carry),
    )


def insert_priced(conn: psycopg.Connection[Any], source: str, target: str) -> int:
    """Insert every row of `source` into `target` with its pricing, in one statement; returns the row count.

    Fills currency, rate_id, adjustment_pct, the applied per-million unit prices, the exact cost per
    category, cost_total and priced_at; rows for which no rate resolves get none of them (unpriced).
    Runs in the caller's transaction.
    """
    with conn.cursor() as cur:
        cur.execute(priced_insert(source, source, target))
        return cur.rowcount


def price_rows(conn: psycopg.Connection[Any], table: str) -> None:
    """Price every row of `table` (a table LIKE events) in place, in one statement (`insert_priced`).

    Every row is replaced by its priced copy; a row for which no rate resolves comes out unpriced.
    Runs in the caller's transaction.
    """
    conn.execute(priced_insert(table, "unpriced_rows", table, queries("pricing")["take_rows"]))


def rate_key_rows(conn: psycopg.Connection[Any], table: str) -> list[dict[str, Any]]:
    """The resolution cells of `table`'s batch: per (org, provider, model, tier), time range and input
    range, the rate that wins and its applied unit prices. For tests and `rates explain`-style output."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_statement("cells_select", table))
        return cur.fetchall()


# --- the pure-Python reference of the rule (previews, property tests) --------------------------------


@dataclass(frozen=True)
class Rate:
    """A rate row as the rule sees it (prices per million tokens; None = the documented fallback)."""

    rate_id: int
    provider: str
    model: str
    effective_from: datetime
    price_input: Decimal
    price_output: Decimal
    price_cached_input: Decimal | None = None
    price_cache_write: Decimal | None = None
    price_cache_write_1h: Decimal | None = None
    price_reasoning: Decimal | None = None
    currency: str = "USD"
    service_tier: str | None = None
    min_input_tokens: int = 0
    org_id: str | None = None

    def matches(self, model: str) -> bool:
        if self.model.endswith("*"):
            return model.startswith(self.model[:-1])
        return model == self.model

    @property
    def exact(self) -> bool:
        return not self.model.endswith("*")

    @property
    def prefix_len(self) -> int:
        return len(self.model) - (0 if self.exact else 1)


@dataclass(frozen=True)
class Adjustment:
    """An org's effective-dated percentage on public unit prices (-10 = 10 % discount)."""

    org_id: str
    effective_from: datetime
    percent: Decimal


@dataclass(frozen=True)
class PricedEvent:
    """What pricing writes on an event: the rate used, applied unit prices and exact costs."""

    rate_id: int
    currency: str
    adjustment_pct: Decimal | None
    prices: dict[str, Decimal]
    costs: dict[str, Decimal]
    total: Decimal


def resolve_rate(
    rates: Iterable[Rate],
    *,
    org_id: str,
    provider: str,
    model: str,
    occurred_at: datetime,
    input_tokens: int,
    service_tier: str | None = None,
    currency: str = "USD",
) -> Rate | None:
    """The rate row that prices an event, by the six steps of DESIGN.md, or None (unpriced)."""
    # 1. in force at occurred_at, in the org's currency (and the provider and model match)
    live = [
        r
        for r in rates
        if r.provider == provider
        and r.currency == currency
        and r.effective_from <= occurred_at
        and r.matches(model)
        and (r.org_id is None or r.org_id == org_id)
    ]
    # 2. the org's custom rows when any of them matches the model, else the public rows
    custom = [r for r in live if r.org_id == org_id]
    pool = custom or [r for r in live if r.org_id is None]
    # 3. the event's tier exactly (a null-tier row serves null-tier events only)
    pool = [r for r in pool if r.service_tier == service_tier]
    # 5 (filter part). the threshold must be reached
    pool = [r for r in pool if r.min_input_tokens <= input_tokens]
    if not pool:
        return None
    # 4. exact over longest prefix; 5. largest threshold; 6. latest effective_from
    return max(pool, key=lambda r: (r.exact, r.prefix_len, r.min_input_tokens, r.effective_from))


def applied_prices(rate: Rate, percent: Decimal | None = None) -> dict[str, Decimal]:
    """Per-million unit prices as applied: the empty-price fallbacks, then an adjustment (if given)."""
    cache_write = rate.price_cache_write if rate.price_cache_write is not None else rate.price_input
    base = {
        "input": rate.price_input,
        "cached_input": rate.price_cached_input if rate.price_cached_input is not None else rate.price_input,
        "cache_write": cache_write,
        "cache_write_1h": rate.price_cache_write_1h if rate.price_cache_write_1h is not None else cache_write,
        "output": rate.price_output,
        "reasoning": rate.price_reasoning if rate.price_reasoning is not None else rate.price_output,
    }
    if percent is None:
        return base
    factor = _EXACT.divide(_EXACT.add(Decimal(100), percent), Decimal(100))
    return {k: _EXACT.multiply(v, factor) for k, v in base.items()}


def quantities(
    *,
    input_tokens: int,
    cached_input_tokens: int,
    cache_write_tokens: int,
    output_tokens: int,
    reasoning_tokens: int,
    cache_write_1h_tokens: int = 0,
) -> dict[str, int]:
    """The non-overlapping quantity of each category (the normalized usage parts are nested)."""
    return {
        "input": input_tokens - cached_input_tokens - cache_write_tokens,
        "cached_input": cached_input_tokens,
        "cache_write": cache_write_tokens - cache_write_1h_tokens,
        "cache_write_1h": cache_write_1h_tokens,
        "output": output_tokens - reasoning_tokens,
        "reasoning": reasoning_tokens,
    }


def price_event(
    rates: Sequence[Rate],
    *,
    org_id: str,
    provider: str,
    model: str,
    occurred_at: datetime,
    input_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    output_tokens: int = 0,
    reasoning_tokens: int = 0,
    service_tier: str | None = None,
    currency: str = "USD",
    adjustments: Sequence[Adjustment] = (),
) -> PricedEvent | None:
    """Price one event by the rule (the reference of `price_rows`); None when no rate resolves."""
    rate = resolve_rate(
        rates,
        org_id=org_id,
        provider=provider,
        model=model,
        occurred_at=occurred_at,
        input_tokens=input_tokens,
        service_tier=service_tier,
        currency=currency,
    )
    if rate is None:
        return None
    percent: Decimal | None = None
    if rate.org_id is None:
        live = [a for a in adjustments if a.org_id == org_id and a.effective_from <= occurred_at]
        if live:
            percent = max(live, key=lambda a: a.effective_from).percent
    prices = applied_prices(rate, percent)
    qty = quantities(
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_tokens=cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning_tokens,
    )
    costs = {k: _EXACT.divide(_EXACT.multiply(Decimal(qty[k]), prices[k]), MILLION) for k in CATEGORIES}
    total = Decimal(0)
    for k in CATEGORIES:
        total = _EXACT.add(total, costs[k])
    return PricedEvent(rate.rate_id, currency, percent, prices, costs, total)
