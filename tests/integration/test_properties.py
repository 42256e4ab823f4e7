"""Property: random event streams conserve money and events through ingestion, month closes and late usage.

Streams mix duplicates (same id, same payload), conflicts (same id, other tokens: the first copy in
stream order wins), reorderings, price changes at midnight UTC, events at and around month
boundaries, month closes at random points (later events of a closed month are late usage) and
arbitrary batch splits. They go through `billing.ingest.ingest_batch` and `billing.invoices.close_month`
on the real database; a plain Python model (Decimal, the DESIGN.md formula) says what must come out:
every accepted event counted once, in the right billing month, at the right cost; usage_daily and
invoice_usage equal to the model; the exact amounts of all invoice lines (finalized and draft) equal
to the sum of the event costs; each line rounded once, half up; `reconcile` clean.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from billing.ingest import ingest_batch
from billing.invoices import close_month, compute_invoices
from billing.reconcile import reconcile
from billing.settings import Settings
from tests.db_reset import truncate_all

MONTHS = [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)]
#: midnights (UTC) where a price may change: month starts and a few days inside the months
MIDNIGHTS = [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 15, 31)] + [
    datetime(2026, 2, 1, tzinfo=UTC),
    datetime(2026, 2, 10, tzinfo=UTC),
    datetime(2026, 3, 1, tzinfo=UTC),
]
#: instants events happen at: each midnight, a microsecond before it, and a little after
MOMENTS = sorted(
    {m + delta for m in MIDNIGHTS for delta in (timedelta(0), -timedelta(microseconds=1), timedelta(hours=5))}
)
CATEGORIES = ("input", "cached_input", "cache_write", "output", "reasoning")
MILLION = Decimal(1_000_000)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Price:
    model: str
    effective_from: datetime
    input: Decimal
    cached: Decimal | None
    cache_write: Decimal | None
    output: Decimal
    reasoning: Decimal | None


prices = st.decimals(min_value=0, max_value=60, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def price_list(draw: Any) -> list[Price]:
    """Model m: a price since 2020 and up to 3 changes at midnights; n: priced only from a drawn midnight;
    z: never priced."""
    out = []
    starts = [datetime(2020, 1, 1, tzinfo=UTC), *draw(st.lists(st.sampled_from(MIDNIGHTS), max_size=3, unique=True))]
    for start in starts:
        out.append(Price("m", start, draw(prices), draw(st.none() | prices), draw(st.none() | prices), draw(prices),
                         draw(st.none() | prices)))  # fmt: skip
    out.append(Price("n", draw(st.sampled_from(MIDNIGHTS)), draw(prices), None, None, draw(prices), None))
    return out


@st.composite
def usage(draw: Any) -> dict[str, int]:
    inp = draw(st.integers(0, 5000))
    cached = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - cached))
    out = draw(st.integers(0, 5000))
    return {
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "cache_write_tokens": write,
        "cache_write_1h_tokens": 0,
        "output_tokens": out,
        "reasoning_tokens": draw(st.integers(0, out)),
    }


@st.composite
def stream(draw: Any) -> tuple[list[Price], list[Any]]:
    """Rates, and a list of operations: ("batch", [event texts]) and ("close", month)."""
    rates = draw(price_list())
    n = draw(st.integers(1, 30))
    copies: list[dict[str, Any]] = []
    for i in range(n):
        doc = {
            "schema_version": 1,
            "event_id": f"e{i}",
            "occurred_at": draw(st.sampled_from(MOMENTS)).isoformat(),
            "org_id": draw(st.sampled_from(["a", "b"])),
            "user_id": draw(st.sampled_from([None, "u1", "u2"])),
            "provider": "p",
            "model": draw(st.sampled_from(["m", "m", "n", "z"])),
            "usage": draw(usage()),
        }
        copies.append(doc)
        for _ in range(draw(st.integers(0, 2))):  # duplicates: the very same payload again
            copies.append(doc)
        if draw(st.integers(0, 5)) == 0:  # a conflict: same id, other usage
            copies.append(dict(doc, usage=draw(usage())))
    order = draw(st.permutations(range(len(copies))))
    texts = [json.dumps(copies[k]) for k in order]
    # month closes at random points, batches of random sizes in between
    closes = draw(st.lists(st.tuples(st.integers(0, len(texts)), st.sampled_from(MONTHS)), max_size=3))
    ops: list[Any] = []
    cut = 0
    for at, month in sorted(closes, key=lambda c: c[0]):
        ops += [("batch", b) for b in _split(draw, texts[cut:at])]
        ops.append(("close", month))
        cut = max(cut, at)
    ops += [("batch", b) for b in _split(draw, texts[cut:])]
    return rates, ops


def _split(draw: Any, texts: list[str]) -> list[list[str]]:
    out = []
    while texts:
        k = draw(st.integers(1, len(texts)))
        out.append(texts[:k])
        texts = texts[k:]
    return out


def cost(doc: dict[str, Any], rates: list[Price]) -> tuple[Decimal, dict[str, tuple[int, Decimal]]] | None:
    """(total cost, {category: (quantity, unit price)}) by the DESIGN.md rule, or None when unpriced."""
    at = datetime.fromisoformat(doc["occurred_at"])
    rows = [r for r in rates if r.model == doc["model"] and r.effective_from <= at]
    if not rows:
        return None
    r = max(rows, key=lambda x: x.effective_from)
    u = doc["usage"]
    unit = {
        "input": r.input,
        "cached_input": r.input if r.cached is None else r.cached,
        "cache_write": r.input if r.cache_write is None else r.cache_write,
        "output": r.output,
        "reasoning": r.output if r.reasoning is None else r.reasoning,
    }
    qty = {
        "input": u["input_tokens"] - u["cached_input_tokens"] - u["cache_write_tokens"],
        "cached_input": u["cached_input_tokens"],
        "cache_write": u["cache_write_tokens"],
        "output": u["output_tokens"] - u["reasoning_tokens"],
        "reasoning": u["reasoning_tokens"],
    }
    with localcontext() as ctx:
        ctx.prec = 60  # exact: far more digits than these products and quotients have
        total = sum((qty[c] * unit[c] for c in CATEGORIES), Decimal(0)) / MILLION
    return total, {c: (qty[c], unit[c]) for c in CATEGORIES}


def load_rates(conn: psycopg.Connection[Any], rates: list[Price]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_cached_input,"
            " price_cache_write, price_output, price_reasoning, source) VALUES ('p', %s, %s, 'USD', %s, %s, %s, %s, %s,"
            " 'property test')",
            [(r.model, r.effective_from, r.input, r.cached, r.cache_write, r.output, r.reasoning) for r in rates],
        )


def _next_open(month: date, closed: set[date]) -> date:
    while month in closed:
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return month


def _month_of(doc: dict[str, Any]) -> date:
    at = datetime.fromisoformat(doc["occurred_at"]).astimezone(UTC)
    return date(at.year, at.month, 1)


@hsettings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=stream())
def test_streams_conserve_events_and_money(
    conn: psycopg.Connection[Any], settings: Settings, case: tuple[list[Price], list[Any]]
) -> None:
    rates, ops = case
    truncate_all(conn)
    load_rates(conn, rates)

    # the model: the first copy of each id in stream order wins; its billing month is its month unless
    # that month was closed before it arrived, then the earliest later open month
    closed: set[date] = set()
    kept: dict[str, dict[str, Any]] = {}
    billing: dict[str, date] = {}
    conflicted: set[str] = set()
    finalized_cost: dict[date, Decimal] = defaultdict(Decimal)
    for kind, arg in ops:
        if kind == "close":
            close_month(conn, arg)
            if arg not in closed:
                closed.add(arg)
                finalized_cost[arg] = sum(
                    (c[0] for e, d in kept.items() if billing[e] == arg and (c := cost(d, rates)) is not None),
                    Decimal(0),
                )
            continue
        result = ingest_batch(conn, arg, settings=settings)
        assert result.rejected == 0
        for text in arg:
            doc = json.loads(text)
            eid = doc["event_id"]
            if eid not in kept:
                kept[eid] = doc
                billing[eid] = _next_open(_month_of(doc), closed)
            elif doc != kept[eid]:
                conflicted.add(eid)

    # every accepted event once, with the first copy's usage, in its billing month, at its cost
    stored = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT event_id, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,"
            " reasoning_tokens, billing_month, cost_total FROM events"
        )
    }
    assert set(stored) == set(kept)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (len(kept),)
    want_total = Decimal(0)
    for eid, doc in kept.items():
        u = doc["usage"]
        priced = cost(doc, rates)
        want_total += priced[0] if priced else 0
        assert stored[eid] == (
            u["input_tokens"],
            u["cached_input_tokens"],
            u["cache_write_tokens"],
            u["output_tokens"],
            u["reasoning_tokens"],
            billing[eid],
            priced[0] if priced else None,
        ), eid
    conflicts = {r[0] for r in conn.execute("SELECT DISTINCT event_id FROM event_conflicts")}
    assert conflicts == conflicted

    # usage_daily: per org and UTC day, events, tokens and cost equal the model
    want_daily: dict[tuple[str, date], list[Any]] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for doc in kept.values():
        day = datetime.fromisoformat(doc["occurred_at"]).astimezone(UTC).date()
        agg = want_daily[(doc["org_id"], day)]
        agg[0] += 1
        agg[1] += doc["usage"]["input_tokens"]
        agg[2] += doc["usage"]["output_tokens"]
        agg[3] += priced[0] if (priced := cost(doc, rates)) else 0
    got_daily = {
        (r[0], r[1]): [int(r[2]), int(r[3]), int(r[4]), r[5]]
        for r in conn.execute(
            "SELECT org_id, day, sum(events), sum(input_tokens), sum(output_tokens), sum(cost)"
            " FROM usage_daily GROUP BY org_id, day"
        )
    }
    assert got_daily == dict(want_daily)

    # invoice lines: finalized at each close, drafts for the months still open; the exact amounts add
    # up to the event costs, per month and overall; each line rounded once, half up
    final_lines = conn.execute(
        "SELECT i.month, i.total, l.quantity, l.unit_price, l.amount, l.exact_amount, i.invoice_id"
        " FROM invoices i JOIN invoice_lines l USING (invoice_id)"
    ).fetchall()
    exact_by_month: dict[date, Decimal] = defaultdict(Decimal)
    totals: dict[int, tuple[Decimal, Decimal]] = {}
    for month, total, _qty, _unit, amount, exact, invoice_id in final_lines:
        assert amount == exact.quantize(CENT, rounding=ROUND_HALF_UP)
        exact_by_month[month] += exact
        running = totals.get(invoice_id, (total, Decimal(0)))
        totals[invoice_id] = (total, running[1] + amount)
    assert all(total == rounded for total, rounded in totals.values())
    for month in closed:
        assert exact_by_month.get(month, Decimal(0)) == finalized_cost[month], month
    open_months = {billing[e] for e in kept} - closed
    draft_exact = Decimal(0)
    for month in open_months:
        for invoice in compute_invoices(conn, month):
            assert invoice.total == sum((line.amount for line in invoice.lines), Decimal(0))
            for line in invoice.lines:
                assert line.amount == line.exact_amount.quantize(CENT, rounding=ROUND_HALF_UP)
                draft_exact += line.exact_amount
    assert sum(exact_by_month.values(), Decimal(0)) + draft_exact == want_total
    usage_sum = conn.execute("SELECT coalesce(sum(amount), 0) FROM invoice_usage").fetchone()
    assert usage_sum == (want_total,)

    report = reconcile(conn, None)
    assert report.clean, report.drifts
