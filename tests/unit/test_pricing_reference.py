"""The pure-Python pricing reference against the hand-computed vectors (each trap of issue 4)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from billing.pricing import CATEGORIES, Rate, applied_prices, price_event, resolve_rate
from tests.pricing_vectors import GPT_4O, VECTORS, Vector, at


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_worked_vector(vector: Vector) -> None:
    priced = price_event(vector.rates, adjustments=vector.adjustments, currency=vector.currency, **vector.event)
    if vector.total is None:
        assert priced is None
        return
    assert priced is not None
    assert priced.rate_id == vector.rate_id
    assert priced.total == vector.total
    assert vector.costs is not None
    for category in CATEGORIES:
        assert priced.costs[category] == vector.costs.get(category, Decimal(0)), category
    assert sum(priced.costs.values()) == priced.total


def test_fallback_prices() -> None:
    rate = Rate(
        1,
        "anthropic",
        "x",
        at("2025-01-01T00:00:00+00:00"),
        Decimal("3"),
        Decimal("15"),
        price_cache_write=Decimal("3.75"),
    )
    prices = applied_prices(rate)
    # empty cached -> input; empty 1h write -> the cache-write price; empty reasoning -> output
    assert prices == {
        "input": Decimal("3"),
        "cached_input": Decimal("3"),
        "cache_write": Decimal("3.75"),
        "cache_write_1h": Decimal("3.75"),
        "output": Decimal("15"),
        "reasoning": Decimal("15"),
    }
    no_write = applied_prices(replace(rate, price_cache_write=None))
    assert no_write["cache_write_1h"] == Decimal("3")


def test_adjustment_is_exact() -> None:
    # -12.5 % on 0.3 per million: 0.3 * 0.875 = 0.2625 exactly
    prices = applied_prices(replace(GPT_4O, price_input=Decimal("0.3")), Decimal("-12.5"))
    assert prices["input"] == Decimal("0.2625")


def test_custom_rows_win_over_public_even_by_prefix() -> None:
    custom = Rate(20, "openai", "gpt-4*", at("2025-01-01T00:00:00+00:00"), Decimal("1"), Decimal("2"), org_id="acme")
    rates = [GPT_4O, custom]
    kwargs = {
        "provider": "openai",
        "model": "gpt-4o",
        "occurred_at": at("2025-02-01T00:00:00+00:00"),
        "input_tokens": 10,
    }
    assert resolve_rate(rates, org_id="acme", **kwargs) == custom
    assert resolve_rate(rates, org_id="other", **kwargs) == GPT_4O
    # before the custom row is in force the public row prices it
    early = dict(kwargs, occurred_at=at("2024-12-31T23:59:59+00:00"))
    assert resolve_rate(rates, org_id="acme", **early) == GPT_4O


def test_currency_must_match() -> None:
    eur = replace(GPT_4O, rate_id=30, currency="EUR", price_input=Decimal("2.3"))
    kwargs = {
        "org_id": "acme",
        "provider": "openai",
        "model": "gpt-4o",
        "occurred_at": at("2025-02-01T00:00:00+00:00"),
        "input_tokens": 10,
    }
    assert resolve_rate([GPT_4O, eur], currency="EUR", **kwargs) == eur
    assert resolve_rate([GPT_4O], currency="EUR", **kwargs) is None
