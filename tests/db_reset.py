"""Reset a test database to its just-migrated state in place (faster than cloning one per example)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

#: kept: the migration ledger and the rows migrations seed (the invoice counter's single row, reset to 0
#: below; the default conservative rate of unpriced usage for quotas)
KEEP = ("usagebill_migrations", "invoice_counter", "quota_unpriced_rates")


def truncate_all(conn: psycopg.Connection[Any]) -> None:
    """Empty every usagebill table but the ones in KEEP; set the invoice counter back to 0.

    Finalized invoices refuse TRUNCATE and a counter moved back by their triggers (0004). Those guards
    protect production data; a test database is reset as the `replica` session role, under which
    ordinary triggers do not fire (superuser only, so never available to the worker role).
    """
    tables = [
        sql.Identifier(name)
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND c.relname <> ALL(%s) ORDER BY 1",
            (list(KEEP),),
        )
    ]
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join(tables)))
        conn.execute("UPDATE invoice_counter SET last_number = 0")
