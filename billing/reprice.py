"""Reprice: price unpriced events once a rate exists, and re-rate a month after a rate correction.

Never edits an invoice: changed events leave the aggregates at their old prices (a reversal) and come
back at the new ones (a re-bill) on the month that carries them now, which for a finalized month is
the earliest later open month, as lines with `original_month`. Running it again changes nothing: the
events then carry their new rate ids and prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg

from billing import aggregates, pricing
from billing.invoices import month_text
from billing.money import format_amount, format_quantity, format_unit_price
from billing.sqlfiles import query


@dataclass(frozen=True)
class RepriceLine:
    """One posting of a reprice: a reversal (quantity < 0, old price) or a re-bill (new price)."""

    org_id: str
    billing_month: date
    original_month: date
    model: str
    category: str
    unit_price: Decimal
    currency: str
    quantity: Decimal
    amount: Decimal  # exact; the invoice rounds its lines once

    def to_json(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "billing_month": month_text(self.billing_month),
            "original_month": month_text(self.original_month),
            "model": self.model,
            "category": self.category,
            "unit_price": format_unit_price(self.unit_price),
            "currency": self.currency,
            "quantity": int(format_quantity(self.quantity)),
            "amount": format_amount(self.amount, self.currency),
            "exact_amount": f"{self.amount.normalize():f}" if self.amount else "0",
        }


@dataclass(frozen=True)
class RepriceResult:
    events: int  # events whose pricing changed (or that got priced)
    newly_priced: int  # of which were unpriced before
    lines: tuple[RepriceLine, ...]
    applied: bool


def reprice(conn: psycopg.Connection[Any], *, month: date | None = None, dry_run: bool = False) -> RepriceResult:
    """Price every unpriced event (month None) or re-rate every event of a usage month, in one transaction.

    With `dry_run` the same work is done and rolled back: the result shows exactly what would be posted.
    """
    with conn.transaction(force_rollback=dry_run):
        conn.execute(query("invoices", "reprice_stage"))
        if month is None:
            conn.execute(query("invoices", "reprice_take_unpriced"))
        else:
            conn.execute(query("invoices", "reprice_take_month"), {"month": month})
        pricing.insert_priced(conn, "reprice_old", "reprice_new")
        conn.execute(query("invoices", "reprice_drop_unchanged"))
        conn.execute(query("invoices", "reprice_drop_old_unchanged"))
        current = [r[0] for r in conn.execute(query("invoices", "reprice_current_months")).fetchall()]
        if current:
            routes = dict(conn.execute(query("invoices", "reprice_route"), {"months": current}).fetchall())
            conn.execute(
                query("invoices", "reprice_set_months"),
                {"current": current, "routed": [routes[m] for m in current]},
            )
            conn.execute(query("invoices", "reprice_set_old_months"))
        lines = tuple(RepriceLine(*row) for row in conn.execute(query("invoices", "reprice_diff")).fetchall())
        summary = conn.execute(query("invoices", "reprice_summary")).fetchone()
        assert summary is not None
        if current and not dry_run:
            # old pricing out, new pricing in, one statement per table (usage_daily moves unpriced tokens
            # to priced cost)
            aggregates.move(conn, "reprice_old", "reprice_new")
            conn.execute(query("invoices", "reprice_apply"))
    return RepriceResult(int(summary[0]), int(summary[1]), lines, applied=bool(current) and not dry_run)
