"""Invoices: drafts computed live from the aggregates, the month close (numbers, snapshots), loading them back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg

from billing.errors import InputError, PermanentError
from billing.money import format_amount, format_quantity, format_unit_price, round_amount
from billing.sqlfiles import query

Status = Literal["draft", "finalized"]

#: the contract's category order within a model
CATEGORIES = ("input", "cached_input", "cache_write", "output", "reasoning")


class CloseRefused(PermanentError):
    """The month cannot be closed yet."""


class SnapshotCorrupted(PermanentError):
    """A stored invoice snapshot no longer matches its hash."""


# ---------------------------------------------------------------- months


def parse_month(text: str) -> date:
    """`YYYY-MM` as the first day of that month; anything else is an InputError."""
    try:
        parsed = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise InputError(f"invalid month {text!r}: expected YYYY-MM") from None
    if len(text) != 7:
        raise InputError(f"invalid month {text!r}: expected YYYY-MM")
    return parsed.date()


def month_text(month: date) -> str:
    """A month as `YYYY-MM`."""
    return f"{month.year:04d}-{month.month:02d}"


def month_end(month: date) -> datetime:
    """The instant a month ends: 00:00 UTC on the first day of the next month."""
    year, mon = (month.year + 1, 1) if month.month == 12 else (month.year, month.month + 1)
    return datetime(year, mon, 1, tzinfo=UTC)


def previous_month(instant: datetime) -> date:
    """The calendar month (UTC) before the one `instant` falls in."""
    first = instant.astimezone(UTC).date().replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


# ---------------------------------------------------------------- the invoice model


@dataclass(frozen=True)
class InvoiceLine:
    """One (model, category, unit price, original month) of an invoice; amount rounded once."""

    model: str
    category: str
    quantity: int
    unit_price: Decimal
    amount: Decimal
    exact_amount: Decimal
    original_month: date | None = None

    def to_json(self, currency: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "category": self.category,
            "quantity": self.quantity,
            "unit_price": format_unit_price(self.unit_price),
            "amount": format_amount(self.amount, currency),
            "original_month": month_text(self.original_month) if self.original_month else None,
        }


@dataclass(frozen=True)
class Invoice:
    """One org's invoice for one month, in the org's currency."""

    org_id: str
    month: date
    currency: str
    status: Status
    number: int | None
    lines: tuple[InvoiceLine, ...] = field(default_factory=tuple)

    @property
    def total(self) -> Decimal:
        """The sum of the rounded lines (never a rounding of the exact sum)."""
        return sum((line.amount for line in self.lines), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON object, keys in the contract's order."""
        return {
            "org_id": self.org_id,
            "month": month_text(self.month),
            "currency": self.currency,
            "status": self.status,
            "number": self.number,
            "lines": [line.to_json(self.currency) for line in self.lines],
            "total": format_amount(self.total, self.currency),
        }

    def canonical(self) -> str:
        """The canonical JSON text: contract key order, compact, ASCII only (stable bytes everywhere)."""
        return canonical_json(self.to_json())


def canonical_json(obj: Any) -> str:
    """Compact, ASCII-only JSON; key order as given (the contract's)."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- drafts


def compute_invoices(
    conn: psycopg.Connection[Any], month: date, org_id: str | None = None, *, status: Status = "draft"
) -> Iterator[Invoice]:
    """The month's invoices computed from the aggregates, one per org, in org order (numbers unset).

    Memory follows the number of lines (orgs x models x categories x prices), never the number of events.
    """
    with conn.cursor() as cur:
        cur.execute(query("invoices", "month_lines"), {"month": month, "org_id": org_id})
        current: str | None = None
        currency = ""
        lines: list[InvoiceLine] = []
        for org, cur_code, original, model, category, unit_price, quantity, exact in cur:
            if org != current:
                if current is not None:
                    yield Invoice(current, month, currency, status, None, tuple(lines))
                current, currency, lines = org, cur_code, []
            elif cur_code != currency:
                raise PermanentError(
                    f"org {org} has usage in two currencies ({currency}, {cur_code}) in {month_text(month)}: "
                    "one invoice per org and month is in one currency"
                )
            lines.append(
                InvoiceLine(
                    model=model,
                    category=category,
                    quantity=int(format_quantity(quantity)),
                    unit_price=unit_price,
                    amount=round_amount(exact, cur_code),
                    exact_amount=exact,
                    original_month=original,
                )
            )
        if current is not None:
            yield Invoice(current, month, currency, status, None, tuple(lines))


# ---------------------------------------------------------------- close


@dataclass(frozen=True)
class UnpricedUsage:
    """Unpriced usage of a month at close: reported, billed later once repriced."""

    provider: str
    model: str
    events: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class CloseResult:
    month: date
    already_closed: bool
    invoices: int = 0
    first_number: int | None = None
    last_number: int | None = None
    total_lines: int = 0
    unpriced: tuple[UnpricedUsage, ...] = ()


def month_status(conn: psycopg.Connection[Any], month: date) -> str:
    """`open` or `closed` (a month nothing has touched yet is open)."""
    row = conn.execute(query("invoices", "month_status"), {"month": month}).fetchone()
    return "open" if row is None else str(row[0])


def check_due(month: date, *, now: datetime, grace: timedelta) -> None:
    """Refuse (CloseRefused) while the month has not ended more than the grace period ago."""
    due = month_end(month) + grace
    if now < due:
        raise CloseRefused(
            f"month {month_text(month)} may close from {due.isoformat()} (its end plus the grace period of "
            f"{grace.total_seconds() / 3600:g} h); late usage is still expected: use --force to close it now"
        )


def unpriced_usage(conn: psycopg.Connection[Any], month: date) -> tuple[UnpricedUsage, ...]:
    rows = conn.execute(query("invoices", "unpriced_in_month"), {"month": month}).fetchall()
    return tuple(UnpricedUsage(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows)


def close_month(conn: psycopg.Connection[Any], month: date) -> CloseResult:
    """Finalize every org's invoice of the month in one transaction; a closed month is left alone.

    The caller checks the grace period and the queue backlog first (see `check_due`). The UPDATE of the
    month row waits for in-flight ingest transactions (they hold FOR SHARE on it), and a concurrent
    close waits on it too and then finds the month closed: no double finalization, no gap in numbers.
    """
    with conn.transaction():
        conn.execute(query("invoices", "ensure_month"), {"month": month})
        row = conn.execute(query("invoices", "close_month"), {"month": month}).fetchone()
        if row is None:
            return CloseResult(month, already_closed=True)
        closed_at: datetime = row[0]
        # read after the lock: READ COMMITTED takes a new snapshot per statement, so every batch that
        # committed before the lock was granted is in these aggregates
        invoices = list(compute_invoices(conn, month, status="finalized"))
        unpriced = unpriced_usage(conn, month)
        if not invoices:
            return CloseResult(month, already_closed=False, unpriced=unpriced)
        last = conn.execute(query("invoices", "take_numbers"), {"count": len(invoices)}).fetchone()
        assert last is not None
        first_number = int(last[0]) - len(invoices) + 1
        conn.execute(query("invoices", "create_stage"))
        line_count = 0
        with conn.cursor() as cur:
            with cur.copy(query("invoices", "copy_invoice_stage")) as copy:
                for offset, inv in enumerate(invoices):
                    numbered = Invoice(inv.org_id, month, inv.currency, "finalized", first_number + offset, inv.lines)
                    snapshot = numbered.canonical()
                    copy.write_row(
                        (inv.org_id, inv.currency, numbered.number, numbered.total, snapshot, sha256_hex(snapshot))
                    )
            with cur.copy(query("invoices", "copy_line_stage")) as copy:
                for inv in invoices:
                    for line_no, line in enumerate(inv.lines, start=1):
                        copy.write_row(
                            (
                                inv.org_id,
                                line_no,
                                line.original_month,
                                line.model,
                                line.category,
                                line.unit_price,
                                line.quantity,
                                line.amount,
                                line.exact_amount,
                            )
                        )
                        line_count += 1
            cur.execute(query("invoices", "insert_staged_invoices"), {"month": month})
            cur.execute(query("invoices", "insert_staged_lines"), {"month": month})
            cur.execute(query("invoices", "finalize_month"), {"month": month, "closed_at": closed_at})
        return CloseResult(
            month,
            already_closed=False,
            invoices=len(invoices),
            first_number=first_number,
            last_number=int(last[0]),
            total_lines=line_count,
            unpriced=unpriced,
        )


def open_months_ended_before(conn: psycopg.Connection[Any], before: datetime) -> list[date]:
    """Open months that ended before `before`, oldest first."""
    rows = conn.execute(query("invoices", "open_months_before"), {"before": before}).fetchall()
    return [r[0] for r in rows]


# ---------------------------------------------------------------- load


def invoice_texts(conn: psycopg.Connection[Any], month: date, org_id: str | None = None) -> Iterator[str]:
    """The canonical JSON text of each invoice of the month, in org order.

    A closed month yields its stored snapshots (verified against their hashes), byte for byte; an
    open month yields drafts computed live from the aggregates.
    """
    if month_status(conn, month) == "closed":
        with conn.cursor() as cur:
            cur.execute(query("invoices", "finalized_snapshots"), {"month": month, "org_id": org_id})
            for org, number, snapshot, digest in cur:
                if sha256_hex(snapshot) != digest:
                    raise SnapshotCorrupted(
                        f"invoice {number} of org {org} ({month_text(month)}): snapshot does not match its hash"
                    )
                yield snapshot
    else:
        for inv in compute_invoices(conn, month, org_id):
            yield inv.canonical()
