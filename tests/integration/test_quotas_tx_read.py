"""The mirror totals an ingest batch reads inside its own transaction (with its alerts) and writes after commit."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import redis

from billing import alerts, quotas
from billing.db import CONNECT_OPTIONS
from billing.ingest import ingest_batch
from billing.settings import Settings
from producer.quota import QuotaClient, used_key
from tests.integration.ingest_util import event, text


def _ingest(settings: Settings, docs: list[dict[str, Any]]) -> Any:
    with psycopg.connect(settings.database_url, options=CONNECT_OPTIONS) as c:
        return ingest_batch(c, [text(d) for d in docs], settings=settings)


def _now_iso() -> str:
    return (datetime.now(UTC) - timedelta(minutes=1)).isoformat()


def _waiting_on_advisory_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return bool(row and row[0])


def test_a_late_refresh_of_an_earlier_batch_does_not_move_the_mirror_back(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    """Batch A commits, its worker stalls; batch B commits and refreshes; then A's refresh writes what A's
    transaction read (without B): its stamp is older, so the mirror keeps B's totals."""
    quotas.set_quota(conn, org_id="org-l", kind="tokens", limit=Decimal(100_000), mode="hard", redis_client=rconn)
    assert quotas.rebuild_mirror(conn, rconn)
    a_committed, b_refreshed = threading.Event(), threading.Event()
    used_in_tx_read: list[bool] = []

    def batch_a() -> None:
        result = _ingest(settings, [event("l1", org_id="org-l", occurred_at=_now_iso())])
        read = quotas._tx_reads.last
        used_in_tx_read.append(read is not None and read.org_months is result.org_months)
        a_committed.set()
        assert b_refreshed.wait(10)
        quotas.refresh_mirror(conn_a, rconn, result.org_months)

    with psycopg.connect(settings.database_url, autocommit=True, options=CONNECT_OPTIONS) as conn_a:
        stalled = threading.Thread(target=batch_a)
        stalled.start()
        assert a_committed.wait(10)
        b = _ingest(settings, [event("l2", org_id="org-l", occurred_at=_now_iso())])
        quotas.refresh_mirror(conn, rconn, b.org_months)
        b_refreshed.set()
        stalled.join(10)
    assert used_in_tx_read == [True]  # A's refresh wrote its transaction's read, not a new one
    assert QuotaClient(rconn).check("org-l").remaining_tokens == 100_000 - 2 * 1200
    assert quotas.mirror_drift(conn, rconn) == []


def test_a_mirror_read_waits_for_an_ingest_transaction_between_its_read_and_commit(
    database_url: str, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    """A read outside ingest (here `sync_org`) that ran between a batch's read and its commit would miss
    the batch yet carry a newer stamp, and the batch's own write would then be refused: it waits instead."""
    quotas.set_quota(conn, org_id="org-w", kind="tokens", limit=Decimal(10_000), redis_client=rconn)
    assert quotas.rebuild_mirror(conn, rconn)
    today = datetime.now(UTC).date()
    t1 = psycopg.connect(database_url, options=CONNECT_OPTIONS)
    done = threading.Event()

    def sync() -> None:
        with psycopg.connect(database_url, autocommit=True, options=CONNECT_OPTIONS) as c:
            quotas.sync_org(c, rconn, "org-w")
        done.set()

    try:
        t1.execute(
            "INSERT INTO usage_daily (org_id, day, provider, model, events, input_tokens, output_tokens)"
            " VALUES ('org-w', %s, 'openai', 'm', 1, 4000, 0)",
            (today,),
        )
        t1.execute(  # as billing.aggregates writes both
            "INSERT INTO usage_org_month (org_id, month, events, input_tokens)"
            " VALUES ('org-w', date_trunc('month', %s::date)::date, 1, 4000)",
            (today,),
        )
        quotas.record_alerts(t1, [("org-w", today)])  # holds the (org, month) lock until commit
        reader = threading.Thread(target=sync)
        reader.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_advisory_lock(conn):
            assert time.monotonic() < deadline, "the mirror read never waited for the ingest transaction"
            time.sleep(0.02)
        assert not done.is_set()
        t1.commit()
        reader.join(10)
        assert done.is_set()
    finally:
        t1.close()
    assert QuotaClient(rconn).check("org-w").remaining_tokens == 10_000 - 4000
    assert rconn.hget(used_key(today.strftime("%Y-%m"), "org-w"), "t") == b"4000"


def test_a_batch_that_fired_no_alert_leaves_older_ones_to_the_sweep(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    quotas.set_quota(conn, org_id="org-k", kind="tokens", limit=Decimal(10_000), thresholds=[Decimal(50)])
    _ingest(settings, [event(f"k{i}", org_id="org-k", occurred_at=_now_iso()) for i in range(5)])  # 6000: 50 %
    # that worker died before its refresh; the next batch crosses nothing: its refresh hands over nothing
    nxt = _ingest(settings, [event("k9", org_id="org-k", occurred_at=_now_iso())])
    quotas.refresh_mirror(conn, rconn, nxt.org_months)
    assert conn.execute("SELECT count(*) FROM alerts WHERE enqueued_at IS NULL").fetchone() == (1,)
    assert QuotaClient(rconn).check("org-k").remaining_tokens == 10_000 - 7200
    assert alerts.sweep_alerts(conn, rconn, settings.queue) == 1
    assert conn.execute("SELECT count(*) FROM alerts WHERE enqueued_at IS NULL").fetchone() == (0,)
