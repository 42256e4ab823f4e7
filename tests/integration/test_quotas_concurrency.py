"""Quotas under concurrency (real Postgres and Redis): 200 reserve/settle callers against a hard limit never
overshoot it; a threshold crossed by concurrent ingest transactions fires exactly once."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool

from billing import quotas
from billing.db import CONNECT_OPTIONS
from billing.ingest import ingest_batch
from billing.settings import Settings
from producer.quota import QuotaClient, resv_keys
from tests.integration.ingest_util import event, text

LIMIT = 100_000
CALLERS = 200
ESTIMATE = 1200  # each call reserves its worst case: 1000 input + 200 output tokens


@pytest.mark.slow
def test_200_concurrent_reserve_settle_callers_never_overshoot_a_hard_limit(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    quotas.set_quota(conn, org_id="busy", kind="tokens", limit=Decimal(LIMIT), mode="hard", redis_client=rconn)
    assert quotas.rebuild_mirror(conn, rconn)
    # threads share a bounded pool and wait for a free connection (a plain pool raises when exhausted)
    pool64 = redis.BlockingConnectionPool.from_url(settings.redis_url, max_connections=64, timeout=10)
    client = QuotaClient(redis.Redis(connection_pool=pool64))
    start = threading.Barrier(CALLERS)
    rng = random.Random(7)
    actual_inputs = [rng.randint(400, 1000) for _ in range(CALLERS)]  # actual <= estimate
    admitted: list[int] = []
    lock = threading.Lock()
    occurred = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()

    with ConnectionPool(settings.database_url, min_size=4, max_size=8, kwargs={"options": CONNECT_OPTIONS}) as pool:

        def caller(i: int) -> None:
            start.wait()
            reservation = client.reserve("busy", ESTIMATE)
            if not reservation.allowed:
                return
            with lock:
                admitted.append(i)
            time.sleep(rng.random() * 0.01)  # the LLM call
            doc = event(
                f"c{i}",
                org_id="busy",
                occurred_at=occurred,
                input_tokens=actual_inputs[i],
                cached=0,
                reservation_id=reservation.id,
            )
            # the worker's path: one batch, commit, then refresh the mirror (which settles the reservation)
            with pool.connection() as c:
                result = ingest_batch(c, [text(doc)], settings=settings)
                quotas.refresh_mirror(c, rconn, result.org_months)

        with ThreadPoolExecutor(max_workers=CALLERS) as ex:
            list(ex.map(caller, range(CALLERS)))

    used = int(conn.execute("SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM events").fetchone()[0])
    [status] = quotas.quota_status(conn, "busy")
    assert status.used == used
    assert used <= LIMIT, f"overshoot by {used - LIMIT} tokens"
    # every admitted caller's usage is counted, and at least the guaranteed number were admitted
    assert int(conn.execute("SELECT count(*) FROM events").fetchone()[0]) == len(admitted)
    assert len(admitted) >= LIMIT // ESTIMATE
    assert len(admitted) < CALLERS  # the limit did deny some
    # every reservation was settled: nothing left reserved, the mirror equals Postgres
    month = datetime.now(UTC).strftime("%Y-%m")
    _, data, sums = resv_keys(month, "busy")
    assert rconn.hlen(data) == 0
    assert int(rconn.hget(sums, "t") or 0) == 0
    assert client.check("busy").remaining_tokens == LIMIT - used
    assert quotas.mirror_drift(conn, rconn) == []


def _add_usage(c: psycopg.Connection[Any], org: str, model: str, tokens: int, day: date) -> None:
    # what billing.aggregates writes for one event: its usage_daily row and its org's month
    c.execute(
        "INSERT INTO usage_daily (org_id, day, provider, model, events, input_tokens, output_tokens)"
        " VALUES (%s, %s, 'openai', %s, 1, %s, 0)",
        (org, day, model, tokens),
    )
    c.execute(
        "INSERT INTO usage_org_month AS t (org_id, month, events, input_tokens)"
        " VALUES (%s, date_trunc('month', %s::date)::date, 1, %s)"
        " ON CONFLICT (org_id, month) DO UPDATE SET events = t.events + 1,"
        " input_tokens = t.input_tokens + EXCLUDED.input_tokens",
        (org, day, tokens),
    )


def test_crossing_made_by_two_concurrent_transactions_fires_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Each batch alone stays under 50 %; together they cross it. The second check must not run while the
    first is uncommitted (it would see neither's usage, and the alert be lost): it waits, on the org's
    usage_org_month row or on the per-(org, month) lock."""
    quotas.set_quota(conn, org_id="x", kind="tokens", limit=Decimal(10_000), thresholds=[Decimal(50)])
    day = date(2026, 10, 15)
    t1 = psycopg.connect(database_url, options=CONNECT_OPTIONS)
    t2 = psycopg.connect(database_url, options=CONNECT_OPTIONS)
    try:
        _add_usage(t1, "x", "model-a", 4000, day)
        quotas.record_alerts(t1, [("x", day)])
        done = threading.Event()

        def second() -> None:
            _add_usage(t2, "x", "model-b", 4000, day)
            quotas.record_alerts(t2, [("x", day)])  # waits for t1
            t2.commit()
            done.set()

        worker = threading.Thread(target=second)
        worker.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_lock(conn):
            assert time.monotonic() < deadline, "the second check never waited for the first"
            time.sleep(0.02)
        assert not done.is_set()
        t1.commit()
        worker.join(10)
        assert done.is_set()
    finally:
        t1.close()
        t2.close()
    rows = conn.execute("SELECT threshold, used FROM alerts WHERE org_id = 'x'").fetchall()
    assert rows == [(Decimal(50), Decimal(8000))]


def _waiting_on_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE NOT l.granted AND a.datname = current_database()"
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.slow
def test_thresholds_fire_once_under_concurrent_ingest_workers(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    """8 workers ingest 160 single-model batches for one org at once: each threshold fires exactly once."""
    quotas.set_quota(
        conn, org_id="w", kind="tokens", limit=Decimal(100_000), thresholds=[Decimal(t) for t in (10, 25, 50, 80, 100)]
    )
    quotas.set_quota(conn, org_id="w", user_id="u1", kind="tokens", limit=Decimal(20_000), thresholds=[Decimal(50)])
    batches = [
        [text(event(f"w{b}", org_id="w", model=f"m{b % 5}", user_id=f"u{b % 3}"))] for b in range(160)
    ]  # 160 x 1200 = 192,000 tokens: every org threshold is crossed once

    with ConnectionPool(settings.database_url, min_size=8, max_size=8, kwargs={"options": CONNECT_OPTIONS}) as pool:

        def run(batch: list[str]) -> None:
            with pool.connection() as c:
                ingest_batch(c, batch, settings=settings)

        with ThreadPoolExecutor(max_workers=8) as ex:
            list(ex.map(run, batches))

    rows = conn.execute(
        "SELECT user_id, threshold, count(*) FROM alerts GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2"
    ).fetchall()
    assert rows == [(None, Decimal(t), 1) for t in (10, 25, 50, 80, 100)] + [("u1", Decimal(50), 1)]
