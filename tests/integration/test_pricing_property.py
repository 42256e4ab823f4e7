"""Property: `price_rows` (SQL) and the pure-Python reference agree on random events, rates, tiers and discounts.

Two implementations of one reading of the rule prove little alone (the hand-computed vectors are the
oracle); this catches the set-based resolution (cells, boundaries, fallbacks) drifting from the plain rule.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.pricing import CATEGORIES, Adjustment, Rate, price_event, price_rows
from tests.pricing_vectors import load_adjustments, load_batch, load_rates, read_batch

T0 = datetime(2025, 3, 1, tzinfo=UTC)
#: instants around a few boundaries: the same day, midnight, a microsecond before
MOMENTS = [T0 + timedelta(days=d, hours=h) for d in range(4) for h in (0, 6)] + [
    T0 + timedelta(days=2) - timedelta(microseconds=1)
]
ORGS = {"a": "USD", "b": "EUR", "c": None}  # c has no orgs row: USD

prices = st.decimals(min_value=0, max_value=100, places=7, allow_nan=False, allow_infinity=False)
maybe_price = st.none() | prices


@st.composite
def rate(draw: Any) -> Rate:
    # half of the rows are one family (p, m, public, standard tier, USD) so that several rows compete
    # for the same events at the threshold and date steps; the rest vary every part of the key
    family = draw(st.booleans())
    return Rate(
        rate_id=0,
        provider="p" if family else draw(st.sampled_from(["p", "p", "q"])),
        model="m" if family else draw(st.sampled_from(["m", "m*", "m-1", "m-1*", "*"])),
        effective_from=draw(st.sampled_from(MOMENTS)),
        price_input=draw(prices),
        price_output=draw(prices),
        price_cached_input=draw(maybe_price),
        price_cache_write=draw(maybe_price),
        price_cache_write_1h=draw(maybe_price),
        price_reasoning=draw(maybe_price),
        currency="USD" if family else draw(st.sampled_from(["USD", "USD", "EUR"])),
        service_tier=None if family else draw(st.sampled_from([None, "batch"])),
        min_input_tokens=draw(st.sampled_from([0, 0, 100, 1000])),
        org_id=None if family else draw(st.sampled_from([None, "a", "b"])),
    )


@st.composite
def event(draw: Any, rates: list[Rate]) -> dict[str, Any]:
    """An event, most often aimed at one of the rates (its provider, tier, a model it matches, after it)."""
    inp = draw(st.integers(0, 2000))
    cached = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - cached))
    out = draw(st.integers(0, 3000))
    base = {
        "org_id": draw(st.sampled_from(sorted(ORGS))),
        "provider": draw(st.sampled_from(["p", "p", "p", "q"])),
        "model": draw(st.sampled_from(["m", "m", "m-1", "m-12", "x"])),
        "occurred_at": draw(st.sampled_from(MOMENTS)) + timedelta(seconds=draw(st.sampled_from([0, 0, 1, 3600]))),
        "service_tier": draw(st.sampled_from([None, None, "batch"])),
    }
    if rates and draw(st.integers(0, 3)):
        target = draw(st.sampled_from(rates))
        model = (
            target.model[:-1] + draw(st.sampled_from(["", "-1", "-12"])) if target.model.endswith("*") else target.model
        )
        base.update(provider=target.provider, model=model, service_tier=target.service_tier)
        if target.org_id:
            base["org_id"] = target.org_id
        base["occurred_at"] = max(base["occurred_at"], target.effective_from)
    return base | {
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "cache_write_tokens": write,
        "cache_write_1h_tokens": draw(st.integers(0, write)),
        "output_tokens": out,
        "reasoning_tokens": draw(st.integers(0, out)),
    }


adjustment = st.builds(
    Adjustment,
    org_id=st.sampled_from(["a", "b", "c"]),
    effective_from=st.sampled_from(MOMENTS),
    percent=st.decimals(min_value=-100, max_value=100, places=3, allow_nan=False, allow_infinity=False),
)


def _unique(items: list[Any], key: Any) -> list[Any]:
    seen: dict[Any, Any] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rates=st.lists(rate(), min_size=2, max_size=16),
    adjustments=st.lists(adjustment, max_size=3),
    data=st.data(),
)
def test_sql_agrees_with_reference(
    conn: psycopg.Connection[Any], rates: list[Rate], adjustments: list[Adjustment], data: st.DataObject
) -> None:
    conn.execute("DELETE FROM rates")
    conn.execute("DELETE FROM org_adjustments")
    conn.execute("DELETE FROM orgs")
    conn.execute("INSERT INTO orgs (org_id, currency) VALUES ('a', 'USD'), ('b', 'EUR')")
    keyed = _unique(
        rates,
        lambda r: (r.org_id, r.provider, r.model, r.service_tier, r.min_input_tokens, r.currency, r.effective_from),
    )
    numbered = [Rate(**{**r.__dict__, "rate_id": i}) for i, r in enumerate(keyed, start=1)]
    adjustments = _unique(adjustments, lambda a: (a.org_id, a.effective_from))
    events = data.draw(st.lists(event(numbered), min_size=1, max_size=25))
    load_rates(conn, numbered)
    load_adjustments(conn, adjustments)
    load_batch(conn, events)
    price_rows(conn, "batch")
    for e, row in zip(events, read_batch(conn), strict=True):
        currency = ORGS[e["org_id"]] or "USD"
        expected = price_event(numbered, currency=currency, adjustments=adjustments, **e)
        if expected is None:
            assert row["rate_id"] is None and row["cost_total"] is None, (e, row)
            continue
        assert row["rate_id"] == expected.rate_id, (e, row)
        assert row["currency"] == currency
        assert row["adjustment_pct"] == expected.adjustment_pct
        for category in CATEGORIES:
            assert row[f"price_{category}"] == expected.prices[category], category
            assert row[f"cost_{category}"] == expected.costs[category], category
        assert row["cost_total"] == expected.total
        assert row["cost_total"] == sum((row[f"cost_{c}"] for c in CATEGORIES), Decimal(0))
