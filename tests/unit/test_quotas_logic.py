"""Pure quota logic: thresholds, nano-units, months, mirror fields, the alert body and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.alerts import alert_body, sign
from billing.errors import InputError
from billing.quotas import parse_thresholds, plain_decimal
from producer.quota import Estimate, field, month_of, to_nanos


def test_thresholds_are_sorted_distinct_percents() -> None:
    assert parse_thresholds("100, 50,80,50") == [Decimal(50), Decimal(80), Decimal(100)]
    assert parse_thresholds("12.5") == [Decimal("12.5")]
    for bad in ("", "0", "-5", "1001", "50,x", "nan", "inf"):
        with pytest.raises(InputError):
            parse_thresholds(bad)


def test_money_to_nanos_rounds_up() -> None:
    assert to_nanos(Decimal("0.004375")) == 4_375_000
    assert to_nanos(Decimal("1.0000000001")) == 1_000_000_001  # never under-counted
    assert to_nanos(Decimal("250")) == 250 * 10**9
    assert to_nanos(Decimal(0)) == 0


def test_month_is_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert month_of(datetime(2026, 10, 1, 1, 59, 59, tzinfo=plus2)) == "2026-09"
    assert month_of(datetime(2026, 10, 1, 0, 0, tzinfo=UTC)) == "2026-10"
    assert month_of(datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == "2026-12"


def test_mirror_fields_keep_org_and_users_apart() -> None:
    assert field("t", None) == "t" and field("n", "") == "n"
    assert field("t", "bob") == "t:bob" and field("n", "a:b") == "n:a:b"


def test_estimate_is_never_negative() -> None:
    with pytest.raises(ValueError):
        Estimate(money=Decimal("-0.01"))
    assert Estimate(tokens=5).money == 0


def test_plain_decimal_has_no_exponent() -> None:
    assert plain_decimal(Decimal("2.5E+2")) == "250"
    assert plain_decimal(Decimal("0.004375000")) == "0.004375"
    assert plain_decimal(Decimal(0)) == "0"
    assert plain_decimal(Decimal("1E-9")) == "0.000000001"


def test_alert_body_is_signed_exactly() -> None:
    row = {
        "alert_id": 7,
        "org_id": "acme",
        "user_id": None,
        "quota_id": 3,
        "kind": "money",
        "mode": "hard",
        "month": date(2026, 11, 1),
        "threshold": Decimal(80),
        "used": Decimal("8.004"),
        "quota_limit": Decimal(10),
        "currency": "USD",
        "fired_at": datetime(2026, 11, 22, 14, 5, tzinfo=UTC),
    }
    body = alert_body(row, 1763820309)
    doc = json.loads(body)
    assert doc["percent"] == "80.04" and doc["used"] == "8.004" and doc["limit"] == "10"
    assert doc["month"] == "2026-11" and doc["sent_at"] == 1763820309
    assert body == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign("k", body + b" ") != sign("k", body)
