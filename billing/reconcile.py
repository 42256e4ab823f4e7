"""Reconciliation: raw events, aggregates, finalized invoice lines and the Redis quota mirror agree exactly."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from redis import Redis
from redis.exceptions import RedisError

from billing import quotas
from billing.db import connect
from billing.settings import Settings
from billing.sqlfiles import query

_log = logging.getLogger("usagebill.reconcile")

#: the database checks, in the order they are reported
CHECKS = (
    "events_vs_usage_daily",
    "events_vs_usage_org_month",
    "events_vs_invoice_usage",
    "invoices_vs_invoice_usage",
)


@dataclass(frozen=True)
class Drift:
    """One disagreement: `expected` is what the events (or, for invoices, the aggregates) say."""

    org_id: str
    month: str  # YYYY-MM, or "" for the quota mirror's whole state
    what: str
    expected: str
    found: str

    def to_json(self) -> dict[str, str]:
        return {
            "org_id": self.org_id,
            "month": self.month,
            "what": self.what,
            "expected": self.expected,
            "found": self.found,
        }


@dataclass(frozen=True)
class Report:
    drifts: tuple[Drift, ...]
    mirror_checked: bool
    mirror_repaired: bool = False

    @property
    def clean(self) -> bool:
        return not self.drifts


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral_value() else format(value, "f")
    return "" if value is None else str(value)


def check_database(conn: psycopg.Connection[Any], month: date | None = None) -> list[Drift]:
    """Every database disagreement, in one repeatable-read snapshot so concurrent ingestion cannot
    make a consistent state look drifted."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("check_database needs a connection outside any transaction (it takes its own snapshot)")
    drifts: list[Drift] = []
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for name in CHECKS:
            for org_id, m, what, expected, found in conn.execute(query("reconcile", name), {"month": month}):
                drifts.append(Drift(str(org_id), m.strftime("%Y-%m"), str(what), _text(expected), _text(found)))
    return drifts


def check_mirror(conn: psycopg.Connection[Any], redis_client: Redis) -> list[Drift]:
    """The quota mirror against Postgres (limits and current-month totals, as the quota area defines them)."""
    return [
        Drift(
            d.key,
            "",
            f"mirror {d.key} {d.field}".strip(),
            str(d.database),
            "missing" if d.mirror is None else str(d.mirror),
        )
        for d in quotas.mirror_drift(conn, redis_client)
    ]


def reconcile(
    conn: psycopg.Connection[Any], redis_client: Redis | None, month: date | None = None, *, repair_mirror: bool = False
) -> Report:
    """Check everything; with `repair_mirror`, rebuild a drifted mirror from Postgres and check again."""
    drifts = check_database(conn, month)
    if redis_client is None:
        return Report(tuple(drifts), mirror_checked=False)
    mirror = check_mirror(conn, redis_client)
    repaired = False
    if mirror and repair_mirror:
        repaired = quotas.rebuild_mirror(conn, redis_client)
        mirror = check_mirror(conn, redis_client)
    return Report(tuple(drifts + mirror), mirror_checked=True, mirror_repaired=repaired)


def run_periodic() -> int:
    """Scheduler job: reconcile everything, log any drift, repair the mirror. Returns the drift count."""
    settings = Settings()  # a periodic job runs in a worker: settings from the environment
    client = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        with connect(settings) as conn:
            try:
                report = reconcile(conn, client, repair_mirror=True)
            except RedisError as exc:
                _log.warning("reconcile: Redis unavailable (%s); checking the database only", exc)
                report = reconcile(conn, None)
    finally:
        client.close()
    for d in report.drifts:
        _log.error(
            "reconcile drift: org=%s month=%s %s expected=%s found=%s", d.org_id, d.month, d.what, d.expected, d.found
        )
    if report.mirror_repaired:
        _log.warning("reconcile: quota mirror rebuilt from Postgres")
    return len(report.drifts)
