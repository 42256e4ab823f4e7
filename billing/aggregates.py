"""Add (or, for re-rating, remove) a set of events to the aggregates that invoices and quotas read."""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import sql

from billing.sqlfiles import query

#: the aggregate tables, in the order every writer updates them (one lock order for all workers)
TABLES = ("invoice_usage", "usage_daily", "usage_org_month")


def add(conn: psycopg.Connection[Any], table: str, sign: Literal[1, -1] = 1) -> None:
    """Add the rows of `table` (shaped like events, billing_month set) to invoice_usage, usage_daily and
    usage_org_month.

    `sign=-1` subtracts them (a reprice reversal). Runs in the caller's transaction: call it in the
    same transaction that inserted (or re-priced) the events, so the aggregates move with them.
    """
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    ident = sql.Identifier(table)
    for name in TABLES:
        conn.execute(query("aggregates", f"add_{name}").format(table=ident), {"sign": sign})
