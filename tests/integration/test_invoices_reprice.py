"""Reprice: unpriced usage billed once a rate exists (late lines after a close), and the re-rating of a
finalized month after a rate correction (dry run first, reversal + re-bill, a second run is a no-op)."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import psycopg

from billing.db import connect, is_transient
from billing.ingest import ingest_batch
from billing.invoices import parse_month
from billing.reprice import reprice
from billing.settings import Settings
from tests.integration.invoices_util import add_rate, cli, ev, export, ingest, lines_by_key

JAN, FEB = "2026-01", "2026-02"


def _invoice_usage(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM invoice_usage ORDER BY 1, 2, 3, 4, 5, 6").fetchall()


def test_unpriced_usage_is_reported_at_close_and_billed_once_priced(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    add_rate(conn, price_in="2", price_out="8")
    ingest(
        settings,
        [
            ev("p1", "2026-01-10T00:00:00Z", input_tokens=10_000, output=1_000),
            ev("u1", "2026-01-11T00:00:00Z", model="mystery-1", input_tokens=30_000, output=3_000),
            ev("u2", "2026-01-12T00:00:00Z", model="mystery-1", input_tokens=20_000, output=2_000),
        ],
    )
    draft = export(cli_env, JAN)
    assert {ln["model"] for ln in draft[0]["lines"]} == {"gpt-x"}  # never a $0 line for unpriced usage

    closed = cli(cli_env, "invoice", "close", "--month", JAN)
    assert b"2 unpriced event(s) of openai/mystery-1" in closed.stderr
    assert b"50000 input" in closed.stderr

    nothing = cli(cli_env, "reprice")  # no rate yet: nothing changes
    assert json.loads(nothing.stdout) == []
    assert conn.execute("SELECT count(*) FROM events WHERE rate_id IS NULL").fetchone() == (2,)

    add_rate(conn, model="mystery-1", price_in="1", price_out="4")
    preview = json.loads(cli(cli_env, "reprice", "--dry-run").stdout)
    assert conn.execute("SELECT count(*) FROM events WHERE rate_id IS NULL").fetchone() == (2,)
    done = cli(cli_env, "reprice")
    assert json.loads(done.stdout) == preview
    assert b"2 event(s) changed, 2 of them previously unpriced" in done.stderr
    assert preview == [
        {
            "org_id": "acme", "billing_month": FEB, "original_month": JAN, "model": "mystery-1",
            "category": "input", "unit_price": "1", "currency": "USD", "quantity": 50_000, "amount": "0.05",
            "exact_amount": "0.05",
        },
        {
            "org_id": "acme", "billing_month": FEB, "original_month": JAN, "model": "mystery-1",
            "category": "output", "unit_price": "4", "currency": "USD", "quantity": 5_000, "amount": "0.02",
            "exact_amount": "0.02",
        },
    ]  # fmt: skip
    feb = export(cli_env, FEB)[0]
    assert feb["status"] == "draft"
    lines = lines_by_key(feb)
    assert lines[(JAN, "mystery-1", "input", "1")]["amount"] == "0.05"
    assert lines[(JAN, "mystery-1", "output", "4")]["quantity"] == 5_000
    # quotas see the cost now, the unpriced tokens are gone
    daily = conn.execute(
        "SELECT sum(unpriced_events), sum(unpriced_input_tokens), sum(cost) FROM usage_daily WHERE model = 'mystery-1'"
    ).fetchone()
    assert daily == (0, 0, Decimal("0.07"))
    assert json.loads(cli(cli_env, "reprice").stdout) == []  # a second run finds nothing


def test_unpriced_usage_of_an_open_month_is_billed_on_that_month(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    ingest(settings, [ev("u1", "2026-03-11T00:00:00Z", model="late-rate", input_tokens=1_000_000, output=0)])
    assert export(cli_env, "2026-03") == []
    add_rate(conn, model="late-rate", price_in="0.5", price_out="1")
    cli(cli_env, "reprice")
    march = export(cli_env, "2026-03")
    assert march[0]["lines"] == [
        {"model": "late-rate", "category": "input", "quantity": 1_000_000, "unit_price": "0.5", "amount": "0.50",
         "original_month": None}
    ]  # fmt: skip


def test_rerating_a_finalized_month_posts_reversal_and_rebill(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    add_rate(conn, effective_from="2025-12-01", price_in="2.5", price_out="10")
    ingest(
        settings,
        [
            ev("a1", "2026-01-05T00:00:00Z", input_tokens=100_000, output=10_000),
            ev("a2", "2026-01-20T00:00:00Z", input_tokens=50_000, output=5_000),
            ev("b1", "2026-01-20T00:00:00Z", org_id="beta", input_tokens=1_000, output=100),
            ev("f1", "2026-02-03T00:00:00Z", input_tokens=1_000, output=100),
        ],
    )
    cli(cli_env, "invoice", "close", "--month", JAN)
    jan_before = cli(cli_env, "invoice", "export", "--month", JAN).stdout
    # the January price was wrong: a correction row (a later effective_from, still before January)
    add_rate(conn, effective_from="2025-12-15", price_in="2", price_out="8")

    usage_before = _invoice_usage(conn)
    preview = cli(cli_env, "reprice", "--month", JAN, "--dry-run")
    assert b"dry run: nothing written" in preview.stderr
    assert _invoice_usage(conn) == usage_before  # nothing written
    assert conn.execute("SELECT count(DISTINCT rate_id) FROM events").fetchone() == (1,)
    posted = json.loads(preview.stdout)
    acme = [(p["category"], p["unit_price"], p["quantity"], p["amount"]) for p in posted if p["org_id"] == "acme"]
    assert acme == [
        ("input", "2", 150_000, "0.30"),
        ("input", "2.5", -150_000, "-0.38"),  # -0.375: half away from zero
        ("output", "8", 15_000, "0.12"),
        ("output", "10", -15_000, "-0.15"),
    ]
    assert {p["billing_month"] for p in posted} == {FEB} and {p["original_month"] for p in posted} == {JAN}

    applied = cli(cli_env, "reprice", "--month", JAN)
    assert json.loads(applied.stdout) == posted
    feb = {i["org_id"]: i for i in export(cli_env, FEB)}
    acme_feb = lines_by_key(feb["acme"])
    assert acme_feb[(JAN, "gpt-x", "input", "2.5")]["quantity"] == -150_000
    assert acme_feb[(JAN, "gpt-x", "input", "2.5")]["amount"] == "-0.38"
    assert acme_feb[(JAN, "gpt-x", "input", "2")]["amount"] == "0.30"
    # February's own usage (priced at the corrected rate at ingest) is untouched, first in order
    assert feb["acme"]["lines"][0]["original_month"] is None
    assert feb["beta"]["lines"] and all(ln["original_month"] == JAN for ln in feb["beta"]["lines"])
    # the finalized January is exactly as it was
    assert cli(cli_env, "invoice", "export", "--month", JAN).stdout == jan_before
    # quotas: usage_daily carries the corrected cost
    cost = conn.execute("SELECT sum(cost) FROM usage_daily WHERE day < '2026-02-01'").fetchone()
    assert cost == (Decimal("0.42") + Decimal("0.0028"),)  # 150k x 2 + 15k x 8, and beta
    # a second run is a no-op: the events carry the new rate
    again = cli(cli_env, "reprice", "--month", JAN)
    assert json.loads(again.stdout) == []
    assert b"0 event(s) changed" in again.stderr


def test_rerating_an_open_month_changes_its_own_lines(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    add_rate(conn, effective_from="2025-12-01", price_in="2.5", price_out="10")
    ingest(settings, [ev("a1", "2026-01-05T00:00:00Z", input_tokens=100_000, output=10_000)])
    add_rate(conn, effective_from="2025-12-15", price_in="2", price_out="8")
    cli(cli_env, "reprice", "--month", JAN)
    jan = export(cli_env, JAN)[0]
    assert [(ln["category"], ln["unit_price"], ln["quantity"], ln["original_month"]) for ln in jan["lines"]] == [
        ("input", "2", 100_000, None),
        ("output", "8", 10_000, None),
    ]
    assert jan["total"] == "0.28"


def test_rerating_while_ingesting_keeps_the_aggregates_exact(conn: psycopg.Connection[Any], settings: Settings) -> None:
    add_rate(conn, effective_from="2025-12-01", price_in="2.5", price_out="10")
    ingest(
        settings,
        [ev(f"s{i}", "2026-01-05T00:00:00Z", org_id=f"o{i % 3}", input_tokens=1000 + i, output=10) for i in range(200)],
    )
    add_rate(conn, effective_from="2025-12-15", price_in="2", price_out="8")
    errors: list[BaseException] = []

    def retrying(fn: Any) -> None:
        for _ in range(20):
            try:
                fn()
                return
            except psycopg.Error as exc:
                if not is_transient(exc):
                    errors.append(exc)
                    return
        errors.append(RuntimeError("gave up"))

    def ingest_more(worker: int) -> None:
        for batch in range(5):
            docs = [
                json.dumps(
                    ev(f"w{worker}-{batch}-{i}", "2026-01-06T00:00:00Z", org_id=f"o{i % 3}", input_tokens=500, output=5)
                )
                for i in range(20)
            ]

            def once(docs: list[str] = docs) -> None:
                with connect(settings) as c:
                    ingest_batch(c, docs, settings=settings)

            retrying(once)

    def rerate() -> None:
        def once() -> None:
            with connect(settings) as c:
                reprice(c, month=parse_month(JAN))

        retrying(once)

    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    before = conn.execute(deadlocks).fetchone()
    threads = [threading.Thread(target=ingest_more, args=(w,)) for w in range(3)] + [threading.Thread(target=rerate)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    # the re-rate moves aggregate rows in the ingest's lock order (one statement per table): no deadlock
    conn.execute("SELECT pg_stat_clear_snapshot()")
    assert conn.execute(deadlocks).fetchone() == before
    rerate()  # whatever raced with the first re-rate is at the new price now
    assert not errors
    # every event at the corrected rate, and the aggregates equal the events, to the last digit
    assert conn.execute("SELECT count(*) FROM events WHERE price_input <> 2").fetchone() == (0,)
    per_org = conn.execute("SELECT org_id, sum(cost_total) FROM events GROUP BY org_id ORDER BY org_id").fetchall()
    aggregated = conn.execute(
        "SELECT org_id, sum(amount) FROM invoice_usage WHERE billing_month = '2026-01-01'"
        " GROUP BY org_id ORDER BY org_id"
    ).fetchall()
    assert per_org == aggregated
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (200 + 3 * 5 * 20,)
