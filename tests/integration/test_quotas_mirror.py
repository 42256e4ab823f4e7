"""Quota alerts recorded in the ingest transaction and the Redis mirror refreshed after commit (real services)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import redis

from billing import quotas
from billing.ingest import ingest_batch
from billing.settings import Settings
from producer.quota import READY_KEY, QuotaClient, used_key
from tests.integration.ingest_util import add_rate, event, text


def _ingest(settings: Settings, docs: list[dict[str, Any]]) -> Any:
    with psycopg.connect(settings.database_url, options="-c TimeZone=UTC") as c:
        return ingest_batch(c, [text(d) for d in docs], settings=settings)


def _alerts(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT org_id, user_id, threshold, month FROM alerts ORDER BY month, threshold").fetchall()


def _now_iso(delta: timedelta = timedelta(minutes=-1)) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def test_record_alerts_fires_each_threshold_once(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    quotas.set_quota(conn, org_id="org-a", kind="tokens", limit=Decimal(10_000), mode="hard")
    # 1000 input + 200 output = 1200 tokens per event; the ingest path calls record_alerts in its transaction
    _ingest(settings, [event(f"e{i}") for i in range(5)])  # 6000: 50 %
    assert _alerts(conn) == [("org-a", None, Decimal(50), date(2026, 10, 1))]
    _ingest(settings, [event(f"e{i}") for i in range(5)])  # a re-run inserts nothing and fires nothing
    _ingest(settings, [event(f"e{i}") for i in range(5, 7)])  # 8400: 80 %
    assert [a[2] for a in _alerts(conn)] == [50, 80]
    _ingest(settings, [event(f"e{i}") for i in range(7, 12)])  # 14400: 100 % (past it: fired once)
    _ingest(settings, [event(f"e{i}") for i in range(12, 14)])
    assert [a[2] for a in _alerts(conn)] == [50, 80, 100]
    # another month starts from zero
    _ingest(settings, [event("nov1", occurred_at="2026-11-01T00:00:00+00:00", input_tokens=5000, cached=0)])
    assert [(a[2], a[3]) for a in _alerts(conn)][-1] == (Decimal(50), date(2026, 11, 1))


def test_user_quota_and_money_alert_counts_unpriced_conservatively(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    quotas.set_quota(conn, org_id="org-m", kind="money", limit=Decimal(1), thresholds=[Decimal(50)])
    quotas.set_quota(conn, org_id="org-m", user_id="bob", kind="tokens", limit=Decimal(2000), thresholds=[Decimal(100)])
    # no rate: unpriced; 20k input * 15/M + 0 output = 0.30 -> 30 %, below 50
    _ingest(settings, [event("m1", org_id="org-m", user_id="alice", input_tokens=20_000, cached=0, output=0)])
    assert _alerts(conn) == []
    # another 20k input + 2000 output for bob: 0.60 + 0.15 = 0.75 in all -> 75 %; bob: 22000 tokens > 2000
    _ingest(settings, [event("m2", org_id="org-m", user_id="bob", input_tokens=20_000, cached=0, output=2000)])
    got = conn.execute("SELECT user_id, kind, threshold, used FROM alerts ORDER BY kind").fetchall()
    assert got == [(None, "money", Decimal(50), Decimal("0.75")), ("bob", "tokens", Decimal(100), Decimal(22000))]


def test_refresh_mirror_writes_absolute_totals(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    add_rate(conn)  # gpt-4o: 2.5 in, 1.25 cached, 10 out per million
    quotas.set_quota(conn, org_id="org-a", kind="money", limit=Decimal("0.05"), mode="hard", redis_client=rconn)
    quotas.set_quota(conn, org_id="org-a", kind="tokens", limit=Decimal(100_000), mode="soft", redis_client=rconn)
    assert quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    before = client.check("org-a")
    assert before.allowed and before.remaining_tokens == 100_000 and before.remaining_money == Decimal("0.05")
    docs = [event(f"r{i}", occurred_at=_now_iso()) for i in range(3)]
    result = _ingest(settings, docs)
    # (900 * 2.5 + 100 * 1.25 + 200 * 10) / 1e6 = 0.004375 per event
    quotas.refresh_mirror(conn, rconn, result.org_months)
    after = client.check("org-a")
    assert after.remaining_tokens == 100_000 - 3600
    assert after.remaining_money == Decimal("0.05") - 3 * Decimal("0.004375")
    # a re-run inserts nothing: the refresh writes the same absolute totals (a delta would add 0 or double)
    result2 = _ingest(settings, docs)
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert result2.inserted == 0
    assert client.check("org-a").remaining_tokens == 100_000 - 3600
    # a mirror knocked wrong (e.g. a lost write) is put right by the next refresh: absolute values
    month = datetime.now(UTC).strftime("%Y-%m")
    rconn.hset(used_key(month, "org-a"), "t", 5)
    rconn.hdel(used_key(month, "org-a"), "stamp")
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert client.check("org-a").remaining_tokens == 100_000 - 3600
    assert quotas.mirror_drift(conn, rconn) == []


def test_older_read_never_overwrites_newer(conn: psycopg.Connection[Any], rconn: redis.Redis) -> None:
    key = used_key("2026-11", "org-x")
    quotas.write_totals(rconn, [("org-x", date(2026, 11, 1), None, "500", "7", "1000")])
    quotas.write_totals(rconn, [("org-x", date(2026, 11, 1), None, "300", "5", "999")])  # an older snapshot
    assert rconn.hget(key, "t") == b"500"
    quotas.write_totals(rconn, [("org-x", date(2026, 11, 1), None, "200", "9", "1000")])  # same: keep larger
    assert rconn.hmget(key, ["t", "n"]) == [b"500", b"9"]
    quotas.write_totals(rconn, [("org-x", date(2026, 11, 1), None, "100", "1", "1001")])  # newer: lower is fine
    assert rconn.hmget(key, ["t", "n"]) == [b"100", b"1"]


def test_mirror_rebuilt_after_redis_flush(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    quotas.set_quota(conn, org_id="org-f", kind="tokens", limit=Decimal(5000), mode="hard", redis_client=rconn)
    quotas.set_quota(conn, org_id="org-f", user_id="u1", kind="tokens", limit=Decimal(3000), redis_client=rconn)
    assert quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    result = _ingest(settings, [event(f"f{i}", org_id="org-f", occurred_at=_now_iso()) for i in range(2)])
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert client.check("org-f", "u1").remaining_tokens == 3000 - 2400
    rconn.flushdb()
    # without the mirror, a hard limit fails closed (default) rather than letting calls through unchecked
    degraded = QuotaClient(rconn).check("org-f")
    assert degraded.degraded and not degraded.allowed
    assert next(d.key for d in quotas.mirror_drift(conn, rconn)) == READY_KEY
    assert quotas.ensure_mirror(conn, rconn)
    assert quotas.mirror_drift(conn, rconn) == []
    again = client.check("org-f", "u1")
    assert again.remaining_tokens == 600 and again.allowed and again.hard
    assert client.check("org-f").remaining_tokens == 5000 - 2400
    # the next refresh after a flush rebuilds on its own
    rconn.flushdb()
    result = _ingest(settings, [event("f9", org_id="org-f", occurred_at=_now_iso())])
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert rconn.exists(READY_KEY)
    assert client.check("org-f").remaining_tokens == 5000 - 3600


def test_refresh_settles_reservations_of_counted_events(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    quotas.set_quota(conn, org_id="org-s", kind="tokens", limit=Decimal(10_000), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    r1 = client.reserve("org-s", 4000)
    r2 = client.reserve("org-s", 4000)
    assert r1.allowed and r2.allowed and r2.remaining_tokens == 2000
    assert not client.reserve("org-s", 2001).allowed
    # r1's call used 1200 tokens; its event carries reservation_id and settles it after the refresh
    result = _ingest(settings, [event("s1", org_id="org-s", occurred_at=_now_iso(), reservation_id=r1.id)])
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert client.check("org-s").remaining_tokens == 10_000 - 1200 - 4000
    # a refresh that inserted nothing leaves it alone; r2's event arrives later and settles r2
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert client.check("org-s").remaining_tokens == 10_000 - 1200 - 4000
    result = _ingest(settings, [event("s2", org_id="org-s", occurred_at=_now_iso(), reservation_id=r2.id)])
    quotas.refresh_mirror(conn, rconn, result.org_months)
    assert client.check("org-s").remaining_tokens == 10_000 - 2400
    assert client.release(r1.id or "") is False  # already settled
