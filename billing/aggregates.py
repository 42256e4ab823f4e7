"""Add, remove or move sets of events in the aggregates that invoices and quotas read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from psycopg import sql

from billing.sqlfiles import query

#: the aggregate tables, in the order every writer updates them (one lock order for all workers)
TABLES = ("invoice_usage", "usage_daily", "usage_org_month")

#: how rows are weighted: {n} counts them, {w} prefixes a summed value (see sql/queries/aggregates.sql);
#: adding keeps count(*) and plain sums, the cheapest forms, for the ingest
_ADD = {"n": sql.SQL("count(*)"), "w": sql.SQL("")}
_REMOVE = {"n": sql.SQL("-count(*)"), "w": sql.SQL("-")}
_MOVE = {"n": sql.SQL("sum(e.sign)"), "w": sql.SQL("e.sign * ")}


def add(conn: psycopg.Connection[Any], table: str, sign: Literal[1, -1] = 1) -> None:
    """Add the rows of `table` (shaped like events, billing_month set) to invoice_usage, usage_daily and
    usage_org_month; `sign=-1` subtracts them.

    Runs in the caller's transaction: call it in the same transaction that inserted the events, so the
    aggregates move with them.
    """
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    _apply(conn, sql.Identifier(table), _ADD if sign == 1 else _REMOVE)


def move(conn: psycopg.Connection[Any], removed: str, added: str) -> None:
    """Take the rows of `removed` out of the aggregates and put the rows of `added` in (a reprice: the
    same events at their old and their new pricing), with one statement per aggregate table.

    One statement per table keeps the order every writer takes row locks in (the tables in TABLES
    order, each in key order): subtracting all, then adding all, would lock one table's rows twice,
    out of order, and could deadlock with a concurrent ingest.
    """
    source = sql.SQL("(SELECT *, -1 AS sign FROM {removed} UNION ALL SELECT *, 1 AS sign FROM {added})").format(
        removed=sql.Identifier(removed), added=sql.Identifier(added)
    )
    _apply(conn, source, _MOVE)


def _apply(conn: psycopg.Connection[Any], source: sql.Composable, weight: Mapping[str, sql.Composable]) -> None:
    for name in TABLES:
        conn.execute(query("aggregates", f"add_{name}").format(table=source, **weight))
