"""Whole-file validation of rates CSVs: errors name the line and the column, nothing passes half-checked."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.errors import InputError
from billing.rates import REQUIRED_COLUMNS, RateRow, builtin_text, check_duplicates, parse_csv

HEADER = ",".join(REQUIRED_COLUMNS)


def test_good_rows_and_fallbacks() -> None:
    text = (
        HEADER + ",cache_write_1h\n"
        "openai,gpt-4o,2024-08-06,USD,2.50,1.25,,10,,,0,\n"
        "anthropic,claude-sonnet-4*,2025-05-22T00:00:00Z,USD,3,0.30,3.75,15,,standard,,6\n"
        "google,gemini-2.5-pro,2025-06-17,USD,2.50,,,15,,batch,200001,\n"
    )
    rows = parse_csv(text, where="t.csv")
    assert [line for line, _ in rows] == [2, 3, 4]
    gpt, claude, gemini = (r for _, r in rows)
    assert gpt.effective_from == datetime(2024, 8, 6, tzinfo=UTC)  # a date means 00:00 UTC
    assert gpt.cached_input == Decimal("1.25") and gpt.cache_write is None and gpt.reasoning is None
    assert claude.service_tier is None  # 'standard' is the null tier
    assert claude.min_input_tokens == 0 and claude.cache_write_1h == Decimal("6")
    assert gemini.service_tier == "batch" and gemini.min_input_tokens == 200_001


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("openai,gpt-4o,2024-08-06,USD,2.5,abc,,10,,,0", "line 3, column cached_input: not a decimal: 'abc'"),
        ("openai,gpt-4o,2024-08-06,USD,,,,10,,,0", "line 3, column input: required"),
        ("openai,gpt-4o,2024-08-06,USD,2.5,,,-1,,,0", "line 3, column output: must be >= 0: '-1'"),
        ("openai,gpt-4o,2024-08-06,USD,NaN,,,1,,,0", "line 3, column input: not a finite decimal"),
        ("openai,gpt-4o,06/08/2024,USD,2.5,,,10,,,0", "line 3, column effective_from: not a date (YYYY-MM-DD)"),
        ("openai,gpt-4o,2024-08-06T10:00:00,USD,2.5,,,10,,,0", "line 3, column effective_from: a time needs an offset"),
        ("openai,gpt-4o,2024-08-06,usd,2.5,,,10,,,0", "line 3, column currency: not a 3-letter upper-case"),
        ("openai,gpt-*4o,2024-08-06,USD,2.5,,,10,,,0", "line 3, column model: a model is an exact name or a prefix"),
        ("openai,gpt-4o,2024-08-06,USD,2.5,,,10,,,1.5", "line 3, column min_input_tokens: not a non-negative integer"),
        (",gpt-4o,2024-08-06,USD,2.5,,,10,,,0", "line 3, column provider: required"),
        ("openai,gpt-4o,2024-08-06,USD,2.5,,,10,,0", "line 3: 10 cells, the header has 11"),
    ],
)
def test_bad_cell_names_line_and_column(row: str, message: str) -> None:
    text = f"{HEADER}\nopenai,gpt-4o-mini,2024-07-18,USD,0.15,0.075,,0.6,,,0\n{row}\n"
    with pytest.raises(InputError) as info:
        parse_csv(text, where="f.csv")
    assert message in str(info.value)
    assert str(info.value).startswith("f.csv: nothing imported: ")


def test_every_bad_line_is_reported() -> None:
    text = f"{HEADER}\nopenai,a,2024-01-01,USD,x,,,1,,,0\nopenai,b,2024-01-01,USD,1,,,y,,,0\n"
    with pytest.raises(InputError) as info:
        parse_csv(text)
    assert "line 2, column input" in str(info.value) and "line 3, column output" in str(info.value)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "provider,model,effective_from,currency,input,cached_input,cache_write,output,reasoning,service_tier",
            "missing column(s) min_input_tokens",
        ),
        (HEADER + ",colour", "unknown column(s) colour"),
        ("", "empty file"),
    ],
)
def test_bad_header(header: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_csv(header + "\n")
    assert message in str(info.value)


def test_duplicate_key_in_one_file() -> None:
    same = f"{HEADER}\nopenai,a,2024-01-01,USD,1,,,2,,,0\nopenai,a,2024-01-01,USD,1.0,,,2.00,,,0\n"
    assert len(check_duplicates(parse_csv(same), "f")) == 1  # the same prices twice: harmless
    other = f"{HEADER}\nopenai,a,2024-01-01,USD,1,,,2,,,0\nopenai,a,2024-01-01,USD,1,,,3,,,0\n"
    with pytest.raises(InputError, match="line 3: openai/a USD from 2024-01-01 00:00:00Z repeats line 2"):
        check_duplicates(parse_csv(other), "f")


def test_builtin_list_is_valid_dated_and_covers_the_major_providers() -> None:
    rows = [r for _, r in parse_csv(builtin_text(), where="builtin")]
    check_duplicates(list(enumerate(rows)), "builtin")
    assert {"openai", "anthropic", "google", "deepseek", "qwen", "moonshot", "mistral", "xai"} <= {
        r.provider for r in rows
    }
    # every shipped price says where it comes from and as of when
    assert all(r.source and r.source.startswith("https://") and r.source_date for r in rows)


def test_rate_row_key() -> None:
    row = RateRow.model_validate(
        {"provider": "p", "model": "m", "effective_from": "2025-01-01", "currency": "EUR", "input": "1", "output": "2"}
    )
    assert row.key == (None, "p", "m", None, 0, "EUR", datetime(2025, 1, 1, tzinfo=UTC))
