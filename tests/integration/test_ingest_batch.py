"""ingest_batch on the real Postgres: dedup, reordering, rejections, conflicts, pricing, routing, aggregates."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from billing import aggregates, ingest
from billing.db import connect
from billing.ingest import ingest_batch
from billing.settings import Settings
from producer.event import UsageEvent
from tests.integration.ingest_util import add_rate, assert_consistent, event, text


def _ingest(settings: Settings, docs: list[Any], job_id: str | None = None) -> Any:
    with connect(settings) as c:
        return ingest_batch(c, [d if isinstance(d, str) else text(d) for d in docs], settings=settings, job_id=job_id)


def test_duplicates_in_one_batch_and_across_batches_count_once(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    add_rate(conn)
    docs = [event(f"e{i}", input_tokens=1000 + i) for i in range(10)]
    first = _ingest(settings, docs + docs[:3])
    assert (first.received, first.inserted, first.duplicates, first.conflicts) == (13, 10, 3, 0)
    again = _ingest(settings, list(reversed(docs)))  # reordered redelivery
    assert (again.inserted, again.duplicates) == (0, 10)
    got = assert_consistent(conn, docs)
    # 10 events at 900 uncached input (2.5/M), 100 cached (1.25/M), 200 output (10/M), input varying by i
    want = sum(
        (Decimal(900 + i) * Decimal("2.5") + 100 * Decimal("1.25") + 200 * Decimal(10)) / 1_000_000 for i in range(10)
    )
    assert got["cost"] == want


def test_mixed_valid_and_invalid_events(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    good = [event("ok1"), event("ok2", user_id=None)]
    bad_subset = event("bad1", input_tokens=10, cached=20)
    no_org = event("bad2")
    del no_org["org_id"]
    future = event("bad3", occurred_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    batch = [text(good[0]), text(bad_subset), "{not json", text(no_org), text(good[1]), text(future), "\x00raw"]
    res = _ingest(settings, batch, job_id="job-1")
    assert (res.received, res.inserted, res.rejected) == (7, 2, 5)
    rows = conn.execute("SELECT event_id, org_id, reason, raw, job_id FROM rejected_events ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["bad1", None, "bad2", "bad3", None]
    assert "cached_input_tokens" in rows[0][2] and rows[0][1] == "org-a"
    assert rows[1][2].startswith("invalid JSON") and rows[1][3] == "{not json"
    assert rows[2][2].startswith("org_id:")
    assert rows[3][2].startswith("occurred_at:") and "ahead of the server clock" in rows[3][2]
    assert rows[4][3] == "\\u0000raw"
    assert {r[4] for r in rows} == {"job-1"}
    assert_consistent(conn, good)


def test_conflict_is_recorded_and_never_counted(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    original = event("c1", input_tokens=500)
    changed = event("c1", input_tokens=900)
    res = _ingest(settings, [original, changed])  # same batch: the first by position wins
    assert (res.inserted, res.conflicts, res.duplicates) == (1, 1, 0)
    res2 = _ingest(settings, [changed, original])  # later batch: the stored copy wins, changed conflicts again
    assert (res2.inserted, res2.conflicts, res2.duplicates) == (0, 1, 1)
    rows = conn.execute("SELECT event_id, payload->'usage'->>'input_tokens' FROM event_conflicts").fetchall()
    assert rows == [("c1", "900")]  # recorded once per distinct payload
    assert_consistent(conn, [original])


def test_unpriced_events_are_counted_in_tokens_not_money(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    add_rate(conn)
    docs = [event("p1"), event("n1", model="no-such-model"), event("n2", model="no-such-model", user_id=None)]
    res = _ingest(settings, docs)
    assert (res.inserted, res.unpriced) == (3, 2)
    row = conn.execute(
        "SELECT sum(unpriced_events), sum(unpriced_input_tokens), sum(events) FROM usage_daily"
    ).fetchone()
    assert row == (2, 2000, 3)
    assert conn.execute("SELECT count(*) FROM invoice_usage WHERE model = 'no-such-model'").fetchone() == (0,)
    assert_consistent(conn, docs)


def test_invoice_usage_lines_by_category_and_unit_price(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_cached_input,"
        " price_cache_write, price_cache_write_1h, price_output, price_reasoning, source)"
        " VALUES ('openai', 'm', '2020-01-01', 'USD', 3, 0.3, 3.75, 6, 15, NULL, 'test')"
    )
    docs = [
        event(
            "l1", model="m", input_tokens=1000, cached=100, cache_write=300, cache_write_1h=100, output=50, reasoning=20
        ),
        event("l2", model="m", input_tokens=10, cached=0, cache_write=0, output=0, reasoning=0),
    ]
    _ingest(settings, docs)
    lines = conn.execute(
        "SELECT category, unit_price, quantity, amount, events FROM invoice_usage ORDER BY category, unit_price"
    ).fetchall()
    assert [(c, p, q, e) for c, p, q, _, e in lines] == [
        ("cache_write", Decimal("3.75"), 200, 1),
        ("cache_write", Decimal("6"), 100, 1),
        ("cached_input", Decimal("0.3"), 100, 1),
        ("input", Decimal(3), 610, 2),
        ("output", Decimal(15), 30, 1),
        ("reasoning", Decimal(15), 20, 1),
    ]
    for _, price, qty, amount, _ in lines:
        assert amount == price * qty / 1_000_000
    assert_consistent(conn, docs)


def test_closed_month_routes_to_the_next_open_month(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO billing_months (month, status, closed_at) VALUES ('2026-09-01', 'closed', now())")
    conn.execute("INSERT INTO billing_months (month, status, closed_at) VALUES ('2026-10-01', 'closed', now())")
    docs = [event("late", occurred_at="2026-09-30T23:59:59+00:00"), event("now", occurred_at="2026-11-01T00:00:00Z")]
    _ingest(settings, docs)
    rows = conn.execute("SELECT event_id, usage_month, billing_month FROM events ORDER BY event_id").fetchall()
    assert rows == [("late", date(2026, 9, 1), date(2026, 11, 1)), ("now", date(2026, 11, 1), date(2026, 11, 1))]
    assert conn.execute("SELECT * FROM route_billing_months(ARRAY['2026-10-05'::date])").fetchall() == [
        (date(2026, 10, 1), date(2026, 11, 1))
    ]


def test_unknown_fields_kept_as_extra_and_canonical_hash(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    doc = event("x1", tags={"b": "2", "a": "1"}, future_field={"k": [1, 2]}, service_tier="default")
    _ingest(settings, [doc])
    extra, tags, tier = conn.execute("SELECT extra, tags, service_tier FROM events").fetchone()  # type: ignore[misc]
    assert extra == {"future_field": {"k": [1, 2]}} and tags == {"a": "1", "b": "2"} and tier is None
    # the same event with another unknown field is the same canonical payload: a duplicate, not a conflict
    res = _ingest(settings, [dict(doc, other="x")])
    assert (res.duplicates, res.conflicts) == (1, 0)
    stored = conn.execute("SELECT payload_hash FROM event_keys").fetchone()
    assert stored == (UsageEvent.model_validate_json(json.dumps(doc)).payload_hash(),)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_or_all_rejected_batch_commits(settings: Settings, conn: psycopg.Connection[Any], n: int) -> None:
    res = _ingest(settings, ["nope"] * n)
    assert (res.received, res.rejected, res.inserted) == (n, n, 0)
    assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (n,)


def test_equal_cache_write_prices_make_one_line(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_cache_write,"
        " price_output, source) VALUES ('openai', 'm2', '2020-01-01', 'USD', 3, 3.75, 15, 'test')"
    )
    docs = [
        event("w1", model="m2", input_tokens=1000, cached=0, cache_write=300, cache_write_1h=100, output=10),
        event("w2", model="m2", input_tokens=1000, cached=0, cache_write=50, cache_write_1h=50, output=10),
        event("w3", model="m2", input_tokens=1000, cached=0, cache_write=70, cache_write_1h=0, output=10),
    ]
    _ingest(settings, docs)
    lines = conn.execute(
        "SELECT unit_price, quantity, amount, events FROM invoice_usage WHERE category = 'cache_write'"
    ).fetchall()
    assert lines == [(Decimal("3.75"), 420, Decimal("3.75") * 420 / 1_000_000, 3)]
    assert_consistent(conn, docs)


def test_aggregates_add_with_sign_minus_one_reverses(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    add_rate(conn)
    docs = [event(f"r{i}", user_id=f"u{i % 2}", model=("gpt-4o" if i % 3 else "unpriced-m")) for i in range(12)]
    _ingest(settings, docs)
    with connect(settings) as c, c.transaction():
        c.execute("CREATE TEMP TABLE reversal ON COMMIT DROP AS SELECT * FROM events")
        aggregates.add(c, "reversal", sign=-1)
    assert conn.execute("SELECT sum(quantity), sum(amount), sum(events) FROM invoice_usage").fetchone() == (0, 0, 0)
    row = conn.execute("SELECT sum(events), sum(unpriced_events), sum(input_tokens), sum(cost) FROM usage_daily")
    assert row.fetchone() == (0, 0, 0, 0)
    with pytest.raises(ValueError):
        aggregates.add(conn, "events", sign=2)  # type: ignore[arg-type]


def test_a_session_with_staging_tables_of_an_older_shape_gets_them_made_again(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    # a session handed over by a pooler keeps its temp tables: here an ingest_stage from before the canonical
    # JSON left it (a NOT NULL doc column the COPY no longer fills); the first batch of this process drops it
    add_rate(conn)
    with connect(settings) as c:
        c.execute("CREATE TEMP TABLE ingest_stage (pos integer NOT NULL, doc text NOT NULL, event_id text NOT NULL)")
        c.commit()
        result = ingest_batch(c, [text(event("s1")), text(event("s2"))], settings=settings)
        assert (result.inserted, result.rejected) == (2, 0)
    assert_consistent(conn, [event("s1"), event("s2")])


def test_the_result_names_each_org_month_and_the_reservations_its_inserted_events_settle(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    sept, octo = "2026-09-30T23:59:00+00:00", "2026-10-01T00:00:00+00:00"
    first = _ingest(settings, [event("r0", org_id="o-b", reservation_id="res-0")])
    docs = [
        event("r1", org_id="o-b", reservation_id="res-2", occurred_at=octo),
        event("r2", org_id="o-a", reservation_id="res-1", occurred_at=sept),
        event("r3", org_id="o-a", reservation_id="res-1", occurred_at=octo),
        event("r4", org_id="o-a", occurred_at=octo),
        event("r0", org_id="o-b", reservation_id="res-0"),  # a duplicate: settles nothing again
    ]
    res = _ingest(settings, docs)
    assert first.reservation_ids == ["res-0"]
    assert res.reservation_ids == ["res-1", "res-2"]
    assert res.org_months == [("o-a", date(2026, 9, 1)), ("o-a", date(2026, 10, 1)), ("o-b", date(2026, 10, 1))]
    assert conn.execute("SELECT org_id FROM orgs ORDER BY 1").fetchall() == [("o-a",), ("o-b",)]


def test_a_month_the_worker_did_not_route_fails_the_batch_instead_of_dropping_its_events(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    # the worker routes the usage months of the rows it stages; an event of a month left out must not vanish
    docs = [
        event("m1", occurred_at="2026-09-15T00:00:00+00:00"),
        event("m2", occurred_at="2026-10-01T01:00:00+02:00"),  # 30 Sep 23:00 UTC: September
        event("m3", occurred_at="2026-10-15T00:00:00+00:00"),
    ]
    batch = [text(d) for d in docs]
    prepared = ingest.prepare(batch)
    assert prepared.months == {date(2026, 9, 1), date(2026, 10, 1)}
    wrong = dataclasses.replace(prepared, months=frozenset({date(2026, 10, 1)}))
    with connect(settings) as c, pytest.raises(RuntimeError, match="usage month was not routed"):
        ingest_batch(c, batch, settings=settings, prepared=wrong)
    assert conn.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_keys)").fetchone() == (0, 0)
    with connect(settings) as c:
        c.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14: the months are UTC's whatever the session's
        res = ingest_batch(c, batch, settings=settings, prepared=prepared)
    assert res.inserted == 3
    months = conn.execute("SELECT event_id, usage_month, billing_month FROM events ORDER BY 1").fetchall()
    sept, octo = date(2026, 9, 1), date(2026, 10, 1)
    assert months == [("m1", sept, sept), ("m2", sept, sept), ("m3", octo, octo)]
    assert_consistent(conn, docs)


@pytest.mark.parametrize(
    ("table", "operation"),
    [("usage_daily", "INSERT"), ("ingest_jobs", "UPDATE")],  # in the statements sent after the claim, and the last
)
def test_a_statement_failing_in_a_round_trip_of_several_fails_the_batch_whole_with_its_own_error(
    settings: Settings, conn: psycopg.Connection[Any], table: str, operation: str
) -> None:
    # the statements sent together (psycopg's pipeline mode) fail as one would alone: the database's own
    # error (what the worker's retry and split decide on), and nothing of the batch behind; the same
    # connection then ingests on, its statements prepared before the failure (psycopg prepares a statement
    # at its sixth run) and after
    add_rate(conn)
    before = [event(f"b{i}") for i in range(12)]
    docs = [event(f"p{i}") for i in range(5)]
    left = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_keys), (SELECT count(*) FROM ingest_jobs)"
    with connect(settings) as worker_conn:
        for i in range(6):
            ingest_batch(worker_conn, [text(d) for d in before[2 * i : 2 * i + 2]], settings=settings, job_id=f"b{i}")
        conn.execute(
            "CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure'; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER fail_once BEFORE {operation} ON {table} FOR EACH ROW EXECUTE FUNCTION fail_once()"
        )
        conn.commit()
        batch = [text(d) for d in docs + docs[:1]]
        with pytest.raises(psycopg.errors.SerializationFailure, match="injected"):
            ingest_batch(worker_conn, batch, settings=settings, job_id="job-p")
        assert conn.execute(left).fetchone() == (12, 12, 6)
        conn.execute(f"DROP TRIGGER fail_once ON {table}")
        conn.commit()
        res = ingest_batch(worker_conn, batch, settings=settings, job_id="job-p")
        assert (res.inserted, res.duplicates) == (5, 1)
        again = ingest_batch(worker_conn, [text(d) for d in docs], settings=settings, job_id="job-q")
        assert (again.inserted, again.duplicates) == (0, 5)
    assert conn.execute(left).fetchone() == (17, 17, 8)
    assert_consistent(conn, before + docs)
