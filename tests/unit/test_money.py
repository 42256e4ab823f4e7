"""Money rules: minor units, half away from zero (never half-even), formatting; invoice totals."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing.errors import InputError
from billing.invoices import Invoice, InvoiceLine, month_end, parse_month, previous_month
from billing.money import format_amount, format_quantity, format_unit_price, minor_units, round_amount


@pytest.mark.parametrize(("code", "digits"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("CLF", 4)])
def test_minor_units(code: str, digits: int) -> None:
    assert minor_units(code) == digits


def test_minor_units_rejects_garbage() -> None:
    with pytest.raises(InputError):
        minor_units("US")


@pytest.mark.parametrize(
    ("exact", "currency", "expected"),
    [
        ("0.125", "USD", "0.13"),  # half-even would give 0.12
        ("0.135", "USD", "0.14"),
        ("0.124999999", "USD", "0.12"),
        ("-0.125", "USD", "-0.13"),  # away from zero for negatives too
        ("-0.124", "USD", "-0.12"),
        ("-0.004", "USD", "0.00"),  # never "-0.00"
        ("2.5", "JPY", "3"),
        ("-2.5", "JPY", "-3"),
        ("1.0005", "KWD", "1.001"),
        ("12", "USD", "12.00"),
        ("0.00000000000000000001", "USD", "0.00"),
    ],
)
def test_round_and_format(exact: str, currency: str, expected: str) -> None:
    assert format_amount(Decimal(exact), currency) == expected
    assert str(round_amount(Decimal(exact), currency)) == expected


def test_unit_price_is_exact_without_trailing_zeros() -> None:
    assert format_unit_price(Decimal("2.500000")) == "2.5"
    assert format_unit_price(Decimal("10")) == "10"
    assert format_unit_price(Decimal("1E+1")) == "10"
    assert format_unit_price(Decimal("0.000000123456789")) == "0.000000123456789"
    assert format_unit_price(Decimal("0.00")) == "0"


def test_quantity_is_an_integer() -> None:
    assert format_quantity(Decimal("1200.000")) == "1200"
    assert format_quantity(Decimal("-50")) == "-50"
    with pytest.raises(InputError):
        format_quantity(Decimal("1.5"))


def test_total_is_the_sum_of_rounded_lines() -> None:
    # three lines of 0.005 each: the rounded lines sum to 0.03, the rounded exact sum would be 0.02
    line = InvoiceLine("m", "input", 2000, Decimal("2.5"), round_amount(Decimal("0.005"), "USD"), Decimal("0.005"))
    lines = (line, InvoiceLine("m", "output", 500, Decimal("10"), Decimal("0.01"), Decimal("0.005")), line)
    inv = Invoice("acme", date(2026, 1, 1), "USD", "draft", None, lines)
    assert inv.to_json()["total"] == "0.03"
    assert round_amount(sum((x.exact_amount for x in lines), Decimal(0)), "USD") == Decimal("0.02")


def test_json_shape_and_key_order() -> None:
    line = InvoiceLine("m", "input", 10, Decimal("1.50"), Decimal("-1.00"), Decimal("-1"), date(2025, 12, 1))
    obj = Invoice("acme", date(2026, 1, 1), "USD", "finalized", 7, (line,)).to_json()
    assert list(obj) == ["org_id", "month", "currency", "status", "number", "lines", "total"]
    assert obj["lines"] == [
        {
            "model": "m",
            "category": "input",
            "quantity": 10,
            "unit_price": "1.5",
            "amount": "-1.00",
            "original_month": "2025-12",
        }
    ]
    assert obj["total"] == "-1.00"
    assert obj["month"] == "2026-01"


def test_months() -> None:
    assert parse_month("2026-01") == date(2026, 1, 1)
    for bad in ("2026-1", "2026-13", "26-01", "2026-01-01", ""):
        with pytest.raises(InputError):
            parse_month(bad)
    assert month_end(date(2026, 12, 1)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert previous_month(datetime(2026, 1, 3, tzinfo=UTC)) == date(2025, 12, 1)
