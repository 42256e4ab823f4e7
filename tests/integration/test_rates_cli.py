"""`usagebill rates ...` and `usagebill org ...` as a user runs them, against the real database."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from billing.pricing import price_rows
from billing.rates import REQUIRED_COLUMNS
from tests.pricing_vectors import ev, load_batch, read_batch

HEADER = ",".join(REQUIRED_COLUMNS)
GOOD = f"""{HEADER}
openai,gpt-4o,2024-08-06,USD,2.50,1.25,,10,,,0
openai,gpt-4o-mini,2024-07-18,USD,0.15,0.075,,0.60,,,0
openai,o4-mini,2025-04-16,USD,1.10,0.275,,4.40,,,0
anthropic,claude-sonnet-4*,2025-05-22,USD,3,0.30,3.75,15,,,0
"""


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rate_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM rates").fetchone()
    assert row is not None
    return int(row[0])


def test_import_list_and_reimport(conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, "prices.csv", GOOD)
    out = cli(cli_env, "rates", "import", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # progress goes to standard error
    assert "4 rate(s) added, 0 already present" in out.stderr
    # an identical re-import is a no-op
    again = cli(cli_env, "rates", "import", str(path))
    assert again.returncode == 0 and "0 rate(s) added, 4 already present" in again.stderr
    assert rate_count(conn) == 4

    listed = cli(cli_env, "rates", "list", "--model", "claude-sonnet-4-20250514", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["provider"], row["model"], row["input"], row["cache_write"], row["source"]) == (
        "anthropic",
        "claude-sonnet-4*",
        "3",
        "3.75",
        "csv:prices.csv",
    )
    assert row["effective_from"] == "2025-05-22T00:00:00Z"
    table = cli(cli_env, "rates", "list")
    assert table.returncode == 0
    assert table.stdout.count("gpt-4o") == 2 and "o4-mini" in table.stdout


def test_bad_file_names_line_and_column_and_imports_nothing(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    bad = GOOD + "openai,gpt-4.1,2025-04-14,USD,2.00,abc,,8.00,,,0\n"
    out = cli(cli_env, "rates", "import", str(write(tmp_path, "bad.csv", bad)))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "line 6, column cached_input: not a decimal: 'abc'" in out.stderr
    assert "nothing imported" in out.stderr
    assert rate_count(conn) == 0  # the four good rows were not imported either


def test_conflicting_reimport_is_an_error_and_atomic(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli(cli_env, "rates", "import", str(write(tmp_path, "a.csv", GOOD))).returncode == 0
    # same key as line 2 of GOOD with another price, plus a new row that must not land either
    changed = f"{HEADER}\nopenai,gpt-4.1,2025-04-14,USD,2.00,0.50,,8.00,,,0\nopenai,gpt-4o,2024-08-06,USD,5,,,15,,,0\n"
    out = cli(cli_env, "rates", "import", str(write(tmp_path, "b.csv", changed)))
    assert out.returncode == 1
    assert "line 3: openai/gpt-4o USD from 2024-08-06 00:00:00Z exists already" in out.stderr
    assert rate_count(conn) == 4
    assert conn.execute("SELECT price_input FROM rates WHERE model = 'gpt-4o'").fetchone() == (Decimal("2.50"),)


def test_usage_errors_exit_2(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert cli(cli_env, "rates", "import").returncode == 2
    path = str(write(tmp_path, "a.csv", GOOD))
    assert cli(cli_env, "rates", "import", path, "--builtin").returncode == 2
    assert cli(cli_env, "rates", "list", "--format", "xml").returncode == 2


def test_missing_lists_unpriced_usage(conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    events = [
        ev("mistral-medium-2508", "2025-10-01T00:00:00+00:00", "mistral", input_tokens=10_000, output_tokens=2_000),
        ev("mistral-medium-2508", "2025-10-02T00:00:00+00:00", "mistral", input_tokens=5, output_tokens=1),
        ev("gpt-4o", "2025-10-01T00:00:00+00:00", "openai", input_tokens=7, output_tokens=3),
    ]
    load_batch(conn, events)
    price_rows(conn, "batch")  # no rates at all: every row stays unpriced
    assert all(r["rate_id"] is None for r in read_batch(conn))
    conn.execute("INSERT INTO events SELECT * FROM batch")
    out = cli(cli_env, "rates", "missing", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["provider"], r["model"], r["events"], r["tokens"]) for r in rows] == [
        ("mistral", "mistral-medium-2508", 2, "12006"),
        ("openai", "gpt-4o", 1, "10"),
    ]


def test_org_currency_discount_custom_rates(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli(cli_env, "org", "set-currency", "acme", "EUR").returncode == 0
    assert conn.execute("SELECT currency FROM orgs WHERE org_id = 'acme'").fetchone() == ("EUR",)
    bad = cli(cli_env, "org", "set-currency", "acme", "euro")
    assert bad.returncode == 1 and "currency code" in bad.stderr

    assert cli(cli_env, "org", "discount", "acme", "-10", "--from", "2025-03-01").returncode == 0
    again = cli(cli_env, "org", "discount", "acme", "-10", "--from", "2025-03-01")
    assert again.returncode == 0 and "already recorded" in again.stderr
    clash = cli(cli_env, "org", "discount", "acme", "-20", "--from", "2025-03-01")
    assert clash.returncode == 1 and "later --from" in clash.stderr

    custom = write(tmp_path, "acme.csv", f"{HEADER}\nopenai,gpt-4*,2025-01-01,EUR,1.90,,,7.50,,,0\n")
    out = cli(cli_env, "org", "rate", "acme", str(custom))
    assert out.returncode == 0, out.stderr
    shown = cli(cli_env, "org", "show", "acme", "--format", "json")
    info = json.loads(shown.stdout)
    assert info["currency"] == "EUR"
    assert [(a["percent"], a["effective_from"]) for a in info["adjustments"]] == [("-10", "2025-03-01T00:00:00Z")]
    assert [(r["org_id"], r["model"], r["currency"]) for r in info["custom_rates"]] == [("acme", "gpt-4*", "EUR")]

    # and pricing follows: EUR custom row, net (no discount on custom rows)
    load_batch(conn, [ev("gpt-4o", "2025-04-01T00:00:00+00:00", "openai", input_tokens=1_000_000)])
    price_rows(conn, "batch")
    [row] = read_batch(conn)
    assert (row["currency"], row["cost_total"], row["adjustment_pct"]) == ("EUR", Decimal("1.90"), None)


def test_builtin_import_is_explicit_and_dated(conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    assert rate_count(conn) == 0  # nothing is priced from a list nobody imported
    out = cli(cli_env, "rates", "import", "--builtin")
    assert out.returncode == 0, out.stderr
    providers = {r[0] for r in conn.execute("SELECT DISTINCT provider FROM rates")}
    assert {"openai", "anthropic", "google", "deepseek", "qwen", "moonshot", "mistral", "xai"} <= providers
    assert conn.execute("SELECT count(*) FROM rates WHERE source_date IS NULL OR source = ''").fetchone() == (0,)
    # the shipped list prices the hand-computed o4-mini vector: 1,000 * 1.10 + 5,000 * 4.40 = 0.0231
    load_batch(
        conn,
        [
            ev(
                "o4-mini",
                "2025-06-01T00:00:00+00:00",
                "openai",
                input_tokens=1_000,
                output_tokens=5_000,
                reasoning_tokens=4_000,
            )
        ],
    )
    price_rows(conn, "batch")
    assert read_batch(conn)[0]["cost_total"] == Decimal("0.0231")


def test_genai_prices_import(conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    pytest.importorskip("genai_prices")
    out = cli(cli_env, "rates", "import", "--genai-prices", "--provider", "anthropic", "--since", "2026-01-01")
    assert out.returncode == 0, out.stderr
    rows = conn.execute("SELECT DISTINCT provider, source, effective_from >= '2026-01-01' FROM rates").fetchall()
    assert len(rows) == 1
    provider, source, dated = rows[0]
    assert provider == "anthropic" and source.startswith("genai-prices ") and dated
    again = cli(cli_env, "rates", "import", "--genai-prices", "--provider", "anthropic", "--since", "2026-01-01")
    assert again.returncode == 0 and " 0 rate(s) added" in again.stderr
