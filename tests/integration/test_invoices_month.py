"""A month end to end: mid-month price change, long-context tier, org discount, exact rounding, close,
byte-identical exports, database-enforced immutability, late usage after finalization."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from billing.settings import Settings
from tests.integration.invoices_util import add_rate, cli, ev, export, ingest, lines_by_key

JAN, FEB = "2026-01", "2026-02"


def _setup(conn: psycopg.Connection[Any], settings: Settings) -> None:
    add_rate(conn, price_in="2.5", cached="1.25", price_out="10")
    add_rate(conn, effective_from="2026-01-15", price_in="3", cached="1.5", price_out="12")  # mid-month change
    add_rate(conn, min_input_tokens=200_000, price_in="5", price_out="15")  # long-context tier
    conn.execute("INSERT INTO org_adjustments (org_id, effective_from, percent) VALUES ('acme', '2025-01-01', -10)")
    ingest(
        settings,
        [
            ev("a1", "2026-01-05T10:00:00Z", input_tokens=50_000, output=1_000),
            ev("a2", "2026-01-10T10:00:00Z", input_tokens=100_000, cached=20_000, output=5_000, reasoning=1_000),
            ev("a3", "2026-01-20T10:00:00Z", input_tokens=40_000, output=2_000),
            ev("a4", "2026-01-25T10:00:00Z", input_tokens=250_000, output=1_000),
            ev("b1", "2026-01-31T23:59:59Z", org_id="beta", input_tokens=1_000, output=1_000),
            ev("b2", "2026-02-01T00:00:00Z", org_id="beta", input_tokens=1_000, output=1_000),
        ],
    )


# acme, 10 % off public prices: before the 15th 2.25 / 1.125 / 9, from the 15th 2.7 / 10.8, the
# 200k-token tier 4.5 / 13.5. Exact sums are chosen on the half cent where half-even would differ.
ACME_JAN = [
    # (model, category, quantity, unit_price, amount)
    ("gpt-x", "input", 130_000, "2.25", "0.29"),  # 0.1125 + 0.18 = 0.2925
    ("gpt-x", "input", 40_000, "2.7", "0.11"),  # 0.108
    ("gpt-x", "input", 250_000, "4.5", "1.13"),  # 1.125: half up (half-even would say 1.12)
    ("gpt-x", "cached_input", 20_000, "1.125", "0.02"),  # 0.0225
    ("gpt-x", "output", 5_000, "9", "0.05"),  # 0.009 + 0.036 = 0.045: half up
    ("gpt-x", "output", 2_000, "10.8", "0.02"),  # 0.0216
    ("gpt-x", "output", 1_000, "13.5", "0.01"),  # 0.0135
    ("gpt-x", "reasoning", 1_000, "9", "0.01"),  # empty reasoning price: the output price; 0.009
]


def _expected_lines(rows: list[tuple[str, str, int, str, str]], original: str | None = None) -> list[dict[str, Any]]:
    return [
        {"model": m, "category": c, "quantity": q, "unit_price": p, "amount": a, "original_month": original}
        for m, c, q, p, a in rows
    ]


def test_month_lines_rounding_close_and_exports(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    _setup(conn, settings)

    draft = export(cli_env, JAN)
    assert [(i["org_id"], i["status"], i["number"]) for i in draft] == [
        ("acme", "draft", None),
        ("beta", "draft", None),
    ]
    acme = draft[0]
    assert acme["currency"] == "USD"
    assert acme["lines"] == _expected_lines(ACME_JAN)
    assert acme["total"] == "1.64"  # the sum of the rounded lines
    beta = draft[1]
    # after the 15th, no discount: input 0.003 -> 0.00, output 0.012 -> 0.01; Feb's event is not here
    assert beta["lines"] == _expected_lines(
        [("gpt-x", "input", 1_000, "3", "0.00"), ("gpt-x", "output", 1_000, "12", "0.01")]
    )
    assert beta["total"] == "0.01"

    closed = cli(cli_env, "invoice", "close", "--month", JAN)
    assert closed.stdout == b""
    assert b"2 invoice(s) finalized" in closed.stderr

    final = export(cli_env, JAN)
    assert [(i["org_id"], i["status"], i["number"]) for i in final] == [
        ("acme", "finalized", 1),
        ("beta", "finalized", 2),
    ]
    assert final[0]["lines"] == acme["lines"] and final[0]["total"] == "1.64"

    # exports of a finalized month are byte-identical, every format
    first = {
        fmt: cli(cli_env, "invoice", "export", "--month", JAN, "--format", fmt, "--org", "acme").stdout
        for fmt in ("json", "csv", "html")
    }
    csv_text = cli(cli_env, "invoice", "export", "--month", JAN, "--format", "csv").stdout.decode()
    assert csv_text.splitlines()[0].startswith("org_id,month,number,status,currency,line_no,original_month")
    assert len(csv_text.splitlines()) == 1 + len(ACME_JAN) + 2

    # a second close is a no-op (exit 0), numbers unchanged
    again = cli(cli_env, "invoice", "close", "--month", JAN)
    assert b"already closed" in again.stderr
    assert conn.execute("SELECT last_number FROM invoice_counter").fetchone() == (2,)

    # late usage for January: billed on February (still open) as a line naming its original month
    ingest(settings, [ev("a5", "2026-01-28T10:00:00Z", input_tokens=10_000, output=500)])
    feb = {i["org_id"]: i for i in export(cli_env, FEB)}
    late = lines_by_key(feb["acme"])
    assert late[(JAN, "gpt-x", "input", "2.7")] == {
        "model": "gpt-x",
        "category": "input",
        "quantity": 10_000,
        "unit_price": "2.7",
        "amount": "0.03",
        "original_month": JAN,
    }  # 0.027
    assert late[(JAN, "gpt-x", "output", "10.8")]["amount"] == "0.01"  # 0.0054
    assert feb["acme"]["status"] == "draft" and feb["acme"]["number"] is None
    assert [ln["original_month"] for ln in feb["beta"]["lines"]] == [None, None]
    assert conn.execute("SELECT billing_month FROM events WHERE event_id = 'a5'").fetchone() == (date(2026, 2, 1),)

    # the finalized month did not move
    for fmt, body in first.items():
        assert cli(cli_env, "invoice", "export", "--month", JAN, "--format", fmt, "--org", "acme").stdout == body
    stored = conn.execute("SELECT snapshot FROM invoices WHERE org_id = 'acme' AND month = '2026-01-01'").fetchone()
    assert stored is not None
    assert json.loads(first["json"])[0] == json.loads(stored[0])


def test_finalized_invoice_is_immutable_in_the_database(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    _setup(conn, settings)
    cli(cli_env, "invoice", "close", "--month", JAN)
    statements = [
        "UPDATE invoice_lines SET amount = 0 WHERE line_no = 1",
        "DELETE FROM invoice_lines",
        "UPDATE invoices SET total = 0",
        "DELETE FROM invoices WHERE org_id = 'beta'",
        "INSERT INTO invoice_lines (invoice_id, line_no, model, category, unit_price, quantity, amount, exact_amount)"
        " SELECT invoice_id, 99, 'x', 'input', 1, 1, 1, 1 FROM invoices LIMIT 1",
        "TRUNCATE invoice_lines, invoices",
        "UPDATE invoice_counter SET last_number = 0",
    ]
    for statement in statements:
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation) as info:
            conn.execute(statement)
        message = str(info.value)
        assert "immutable" in message or "counter" in message, message
    assert "finalized and immutable" in _error(conn, "UPDATE invoice_lines SET amount = 0 WHERE line_no = 1")
    assert "month 2026-01" in _error(conn, "UPDATE invoices SET total = 0 WHERE org_id = 'acme'")
    assert conn.execute("SELECT count(*), sum(total) FROM invoices").fetchone() == (2, Decimal("1.65"))


def _error(conn: psycopg.Connection[Any], statement: str) -> str:
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        return str(exc)
    raise AssertionError(f"{statement} was accepted")


def test_close_respects_the_grace_period(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    _setup(conn, settings)
    ingest(settings, [ev("now1", "2026-11-02T10:00:00Z", input_tokens=1_000, output=10)])
    current = conn.execute("SELECT to_char(now(), 'YYYY-MM')").fetchone()
    assert current is not None
    refused = cli(cli_env, "invoice", "close", "--month", current[0], check=False)
    assert refused.returncode == 1
    assert b"grace period" in refused.stderr and b"--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert conn.execute("SELECT status FROM billing_months WHERE month = date_trunc('month', now())").fetchone() == (
        "open",
    )
    # the grace setting is honoured: January ended long ago, but not 100 000 hours ago
    far = dict(cli_env, USAGEBILL_INVOICE_GRACE_HOURS="100000")
    assert cli(far, "invoice", "close", "--month", JAN, check=False).returncode == 1
    forced = cli(cli_env, "invoice", "close", "--month", current[0], "--force")
    assert b"finalized" in forced.stderr


def test_empty_month_and_bad_arguments(cli_env: dict[str, str]) -> None:
    assert cli(cli_env, "invoice", "export", "--month", "2024-03").stdout == b"[]\n"
    assert cli(cli_env, "invoice", "export", "--month", "2024-03", "--format", "csv").stdout.count(b"\n") == 1
    bad = cli(cli_env, "invoice", "export", "--month", "2024-3", check=False)
    assert bad.returncode == 1 and b"YYYY-MM" in bad.stderr and b"Traceback" not in bad.stderr
    fmt = cli(cli_env, "invoice", "export", "--month", "2024-03", "--format", "xml", check=False)
    assert fmt.returncode == 1 and b"xml" in fmt.stderr
    closed_empty = cli(cli_env, "invoice", "close", "--month", "2024-03")
    assert b"no usage" in closed_empty.stderr
    assert cli(cli_env, "invoice", "export", "--month", "2024-03").stdout == b"[]\n"


def test_invoice_in_the_orgs_currency_with_its_minor_unit(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str]
) -> None:
    conn.execute("INSERT INTO orgs (org_id, currency) VALUES ('tokyo', 'JPY')")
    add_rate(conn, price_in="375", price_out="1500", currency="JPY")
    add_rate(conn, price_in="2.5", price_out="10")  # the USD row never prices a JPY org
    # per line, not per event: input 0.375 + 1.125 = 1.5 JPY -> 2 (per event it would be 0 + 1)
    ingest(
        settings,
        [
            ev("t1", "2026-01-05T00:00:00Z", org_id="tokyo", input_tokens=1_000, output=1_000),
            ev("t2", "2026-01-06T00:00:00Z", org_id="tokyo", input_tokens=3_000, output=2_000),
        ],
    )
    cli(cli_env, "invoice", "close", "--month", JAN)
    [inv] = export(cli_env, JAN, "--org", "tokyo")
    assert inv["currency"] == "JPY"
    assert [(ln["category"], ln["quantity"], ln["unit_price"], ln["amount"]) for ln in inv["lines"]] == [
        ("input", 4_000, "375", "2"),  # 1.5 exact: rounded once per line, half up
        ("output", 3_000, "1500", "5"),  # 4.5
    ]
    assert inv["total"] == "7"


def test_export_to_a_file_matches_standard_output(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    _setup(conn, settings)
    cli(cli_env, "invoice", "close", "--month", JAN)
    for fmt in ("json", "csv"):
        target = tmp_path / f"jan.{fmt}"
        written = cli(cli_env, "invoice", "export", "--month", JAN, "--format", fmt, "--output", str(target))
        assert written.stdout == b""
        assert target.read_bytes() == cli(cli_env, "invoice", "export", "--month", JAN, "--format", fmt).stdout
    many = cli(cli_env, "invoice", "export", "--month", JAN, "--format", "html", check=False)
    assert many.returncode == 1 and b"--output DIR" in many.stderr
    one = cli(cli_env, "invoice", "export", "--month", JAN, "--format", "html", "--org", "beta").stdout
    assert one.startswith(b"<!DOCTYPE html>") and b"beta" in one
