"""`price_rows` on real Postgres: the hand-computed vectors, each precedence level, currency, exactness."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from billing import db
from billing.pricing import CATEGORIES, Adjustment, Rate, price_rows, priced_insert, rate_key_rows
from billing.settings import Settings
from tests.pricing_vectors import (
    GPT_4O,
    MISTRAL_MEDIUM,
    VECTORS,
    Vector,
    at,
    ev,
    load_adjustments,
    load_batch,
    load_rates,
    read_batch,
)

D = Decimal
Conn = psycopg.Connection[Any]


def _price(conn: Conn, rates: Any, events: list[dict[str, Any]], adjustments: Any = ()) -> list[dict[str, Any]]:
    load_rates(conn, rates)
    load_adjustments(conn, adjustments)
    load_batch(conn, events)
    price_rows(conn, "batch")
    return read_batch(conn)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_worked_vector(conn: Conn, vector: Vector) -> None:
    [row] = _price(conn, vector.rates, [vector.event], vector.adjustments)
    if vector.total is None:
        assert row["rate_id"] is None
        assert row["cost_total"] is None and row["priced_at"] is None and row["currency"] is None
        return
    assert row["rate_id"] == vector.rate_id
    assert row["currency"] == "USD"
    assert row["cost_total"] == vector.total
    assert vector.costs is not None
    for category in CATEGORIES:
        assert row[f"cost_{category}"] == vector.costs.get(category, D(0)), category
    assert row["priced_at"] is not None
    expected_pct = vector.adjustments[0].percent if vector.adjustments and vector.total != D("3.5") else None
    assert row["adjustment_pct"] == expected_pct


def test_all_vectors_in_one_batch(conn: Conn) -> None:
    # a batch mixing every vector, each for its own org so the adjustments stay apart
    rates = {r.rate_id: r for v in VECTORS for r in v.rates}
    events, adjustments = [], []
    for i, v in enumerate(VECTORS):
        events.append(dict(v.event, org_id=f"org{i}"))
        adjustments += [replace(a, org_id=f"org{i}") for a in v.adjustments]
    rows = _price(conn, rates.values(), events, adjustments)
    assert [r["cost_total"] for r in rows] == [v.total for v in VECTORS]
    assert [r["rate_id"] for r in rows] == [v.rate_id for v in VECTORS]


def test_applied_unit_prices_and_fallbacks(conn: Conn) -> None:
    sonnet = Rate(
        1, "anthropic", "claude-x", at("2025-01-01T00:00:00+00:00"), D("3"), D("15"), price_cache_write=D("3.75")
    )
    [row] = _price(conn, [sonnet], [ev("claude-x", "2025-02-01T00:00:00+00:00", "anthropic", input_tokens=10)])
    assert (
        row["price_input"],
        row["price_cached_input"],
        row["price_cache_write"],
        row["price_cache_write_1h"],
        row["price_output"],
        row["price_reasoning"],
    ) == (D("3"), D("3"), D("3.75"), D("3.75"), D("15"), D("15"))


def test_org_currency(conn: Conn) -> None:
    eur = replace(GPT_4O, rate_id=2, currency="EUR", price_input=D("2.3"), price_cached_input=None)
    conn.execute("INSERT INTO orgs (org_id, currency) VALUES ('eu', 'EUR'), ('gb', 'GBP')")
    e = ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000)
    rows = _price(conn, [GPT_4O, eur], [e, dict(e, org_id="eu"), dict(e, org_id="gb")])
    assert [(r["rate_id"], r["currency"], r["cost_total"]) for r in rows] == [
        (1, "USD", D("2.5")),  # no orgs row: USD
        (2, "EUR", D("2.3")),
        (None, None, None),  # GBP org, no GBP row: unpriced, never the USD price
    ]


def test_custom_rows(conn: Conn) -> None:
    # acme's custom 'gpt-4*' row (net 1 / 2) wins over the public exact row, from its effective date on
    custom = Rate(2, "openai", "gpt-4*", at("2025-02-01T00:00:00+00:00"), D("1"), D("2"), org_id="acme")
    other = Rate(3, "openai", "o3", at("2025-01-01T00:00:00+00:00"), D("9"), D("9"), org_id="acme")
    e = ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000)
    rows = _price(
        conn,
        [GPT_4O, custom, other],
        [e, dict(e, occurred_at=at("2025-01-31T23:59:59+00:00")), dict(e, org_id="zeta")],
        # the discount applies to public rows only: custom rows are net prices
        [replace_adj("acme", "-50"), replace_adj("zeta", "-50")],
    )
    assert [(r["rate_id"], r["cost_total"], r["adjustment_pct"]) for r in rows] == [
        (2, D("1"), None),
        (1, D("1.25"), D("-50")),
        (1, D("1.25"), D("-50")),
    ]


def replace_adj(org: str, pct: str) -> Any:
    return Adjustment(org, at("2024-01-01T00:00:00+00:00"), D(pct))


def test_custom_row_of_another_tier_still_hides_public_rows(conn: Conn) -> None:
    # step 2 precedes step 3: acme has a custom gpt-4o row for 'batch' only, so its standard-tier
    # events find no custom standard row and stay unpriced rather than falling back to public prices
    custom_batch = Rate(
        2, "openai", "gpt-4o", at("2025-01-01T00:00:00+00:00"), D("1"), D("4"), org_id="acme", service_tier="batch"
    )
    e = ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000)
    rows = _price(conn, [GPT_4O, custom_batch], [e, dict(e, service_tier="batch")])
    assert [r["rate_id"] for r in rows] == [None, 2]


def test_service_tier(conn: Conn) -> None:
    batch = replace(GPT_4O, rate_id=2, service_tier="batch", price_input=D("1.25"), price_output=D("5"))
    e = ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000)
    rows = _price(conn, [GPT_4O, batch], [e, dict(e, service_tier="batch"), dict(e, service_tier="flex")])
    assert [(r["rate_id"], r["cost_total"]) for r in rows] == [(1, D("2.5")), (2, D("1.25")), (None, None)]


def test_exact_over_longest_prefix(conn: Conn) -> None:
    short = Rate(2, "openai", "gpt-*", at("2025-01-01T00:00:00+00:00"), D("7"), D("7"))
    longer = Rate(3, "openai", "gpt-4o*", at("2025-01-01T00:00:00+00:00"), D("8"), D("8"))
    # the exact row is older than both patterns, and still wins
    exact = replace(GPT_4O, effective_from=at("2024-01-01T00:00:00+00:00"))
    e = ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=10)
    rows = _price(
        conn,
        [exact, short, longer],
        [e, dict(e, model="gpt-4o-mini"), dict(e, model="gpt-5"), dict(e, model="o3"), dict(e, provider="azure")],
    )
    assert [r["rate_id"] for r in rows] == [1, 3, 2, None, None]


def test_threshold_and_latest(conn: Conn) -> None:
    base = Rate(1, "google", "g", at("2025-01-01T00:00:00+00:00"), D("1"), D("1"))
    long_ = Rate(2, "google", "g", at("2025-01-01T00:00:00+00:00"), D("2"), D("2"), min_input_tokens=100)
    newer = Rate(3, "google", "g", at("2025-03-01T00:00:00+00:00"), D("0.5"), D("0.5"))
    e = ev("g", "2025-02-01T00:00:00+00:00", "google", input_tokens=99)
    rows = _price(
        conn,
        [base, long_, newer],
        [
            e,
            dict(e, input_tokens=100),
            dict(e, occurred_at=at("2025-03-01T00:00:00+00:00")),
            # step 5 before step 6: the 100-token row (older) beats the newer 0-threshold row
            dict(e, occurred_at=at("2025-03-01T00:00:00+00:00"), input_tokens=150),
            dict(e, occurred_at=at("2024-12-31T23:59:59.999999+00:00")),
        ],
    )
    assert [r["rate_id"] for r in rows] == [1, 2, 3, 2, None]


def test_unknown_model_later_priced(conn: Conn) -> None:
    e = ev("mistral-medium-2508", "2025-10-01T00:00:00+00:00", "mistral", input_tokens=10_000, output_tokens=2_000)
    [row] = _price(conn, [GPT_4O], [e])
    assert row["rate_id"] is None and row["cost_total"] is None
    # stored unpriced: visible in the view, counted in tokens
    conn.execute("INSERT INTO events SELECT * FROM batch")
    view = conn.execute("SELECT provider, model, events, tokens FROM unpriced_usage").fetchall()
    assert view == [("mistral", "mistral-medium-2508", 1, 12_000)]
    # once a rate exists the same rows price (10,000 * 0.4 + 2,000 * 2 = 0.008)
    load_rates(conn, [MISTRAL_MEDIUM])
    price_rows(conn, "batch")
    [row] = read_batch(conn)
    assert (row["rate_id"], row["cost_total"]) == (10, D("0.008"))


def test_rate_rows_are_immutable(conn: Conn) -> None:
    _price(conn, [GPT_4O], [ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=10)])
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        conn.execute("UPDATE rates SET price_input = 1 WHERE rate_id = 1")
    conn.execute("UPDATE rates SET source = 'renamed' WHERE rate_id = 1")  # provenance may be annotated
    conn.execute("INSERT INTO events SELECT * FROM batch")
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        conn.execute("DELETE FROM rates WHERE rate_id = 1")
    conn.execute("DELETE FROM events")
    conn.execute("DELETE FROM rates WHERE rate_id = 1")  # never used: may go


def test_statement_count_is_constant(conn: Conn) -> None:
    # one statement whatever the batch size, and the cells are per key, not per event
    events = [ev("gpt-4o", f"2025-02-{1 + i % 28:02d}T00:00:00+00:00", "openai", input_tokens=i) for i in range(500)]
    load_rates(conn, [GPT_4O])
    load_batch(conn, events)
    cells = rate_key_rows(conn, "batch")
    assert [(c["model"], c["rate_id"], c["to_at"]) for c in cells] == [("gpt-4o", 1, None)]
    price_rows(conn, "batch")
    assert conn.execute("SELECT count(*) FROM batch WHERE rate_id = 1").fetchone() == (500,)


def test_a_large_catalogue_is_read_by_index(conn: Conn) -> None:
    # The genai-prices catalogue is thousands of rows (45 providers): a batch must look up its few models'
    # candidates, exact and by prefix, through rates_lookup and rates_key, never read every rate row.
    start = at("2024-01-01T00:00:00+00:00")
    catalogue = [
        Rate(10_000 + i, f"prov{i % 40}", f"model-{i}{'*' if i % 7 == 0 else ''}", start, D("1"), D("2"))
        for i in range(4000)
    ]
    catalogue += [
        Rate(20_000 + i, f"prov{i % 40}", f"model-{i}", start, D("5"), D("6"), org_id=f"org{i % 50}")
        for i in range(300)
    ]
    wanted = [
        GPT_4O,
        Rate(2, "openai", "gpt-4*", start, D("7"), D("8")),  # a pattern among the many
        Rate(3, "openai", "*", start, D("9"), D("9")),  # the empty prefix matches every model
        Rate(4, "acme-cloud", "big-model", start, D("3"), D("4"), org_id="org1"),
    ]
    load_rates(conn, catalogue + wanted)
    conn.execute("VACUUM ANALYZE rates")
    events = [
        ev("gpt-4o", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000),
        ev("gpt-4.1", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000),
        ev("o3", "2025-02-01T00:00:00+00:00", "openai", input_tokens=1_000_000),
        dict(ev("big-model", "2025-02-01T00:00:00+00:00", "acme-cloud", input_tokens=1_000_000), org_id="org1"),
        ev("model-3", "2025-02-01T00:00:00+00:00", "prov3", input_tokens=1_000_000),
    ]
    load_batch(conn, events)
    conn.execute("ANALYZE batch")
    plan = "\n".join(
        r[0] for r in conn.execute(b"EXPLAIN " + priced_insert("batch", "batch", "batch").as_bytes(conn)).fetchall()
    )
    assert "Seq Scan on rates" not in plan, plan
    price_rows(conn, "batch")
    assert [(r["rate_id"], r["cost_input"]) for r in read_batch(conn)] == [
        (1, D("2.50")),
        (2, D("7")),
        (3, D("9")),
        (4, D("3")),
        (10_003, D("1")),
    ]


def test_sessions_run_in_utc_without_jit(settings: Settings) -> None:
    # A large batch has no statistics (temp table) and the pricing statement is wide: with JIT on, a
    # 100k-event batch crossed jit_optimize_above_cost and compiled for 3.2 s to run for 0.26 s.
    with db.connect(settings) as c:
        assert c.execute("SELECT current_setting('TimeZone'), current_setting('jit')").fetchone() == ("UTC", "off")
    with db.make_pool(settings) as pool, pool.connection() as c:
        assert c.execute("SELECT current_setting('TimeZone'), current_setting('jit')").fetchone() == ("UTC", "off")
