"""Quota checks and reservations on the real Redis mirror: soft vs hard, tokens vs money, UTC month rollover,
expiry, and what happens when Redis cannot answer."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis

from billing import quotas
from billing.ingest import ingest_batch
from billing.settings import Settings
from producer.quota import Estimate, QuotaClient, QuotaConfig
from tests.integration.ingest_util import add_rate, event, text


def _ingest(settings: Settings, docs: list[dict[str, Any]]) -> Any:
    with psycopg.connect(settings.database_url, options="-c TimeZone=UTC") as c:
        return ingest_batch(c, [text(d) for d in docs], settings=settings)


def _ingest_and_refresh(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis, docs: list[dict[str, Any]]
) -> None:
    result = _ingest(settings, docs)
    quotas.refresh_mirror(conn, rconn, result.org_months)


def _recent() -> str:
    return (datetime.now(UTC) - timedelta(seconds=30)).isoformat()


def test_soft_limit_allows_past_it_and_hard_limit_denies(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    quotas.set_quota(conn, org_id="soft", kind="tokens", limit=Decimal(2000), mode="soft", redis_client=rconn)
    quotas.set_quota(conn, org_id="hard", kind="tokens", limit=Decimal(2000), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    # 2 x 1200 tokens each: both orgs end 400 over their limit (usage is counted whatever the mode)
    for org in ("soft", "hard"):
        _ingest_and_refresh(
            settings, conn, rconn, [event(f"{org}{i}", org_id=org, occurred_at=_recent()) for i in (1, 2)]
        )
    soft = client.check("soft")
    assert soft.allowed and soft.soft_exceeded and not soft.hard and soft.remaining_tokens == -400
    assert client.reserve("soft", 500).allowed
    hard = client.check("hard")
    assert not hard.allowed and hard.hard and hard.remaining_tokens == -400
    assert hard.reason == "hard limit reached (tokens, org)"
    denied = client.reserve("hard", 1)
    assert not denied.allowed and denied.id is None
    # an org without a quota is not limited
    free = client.check("nobody")
    assert free.allowed and free.remaining_tokens is None and free.remaining_money is None


def test_hard_limit_boundary_is_exact(conn: psycopg.Connection[Any], rconn: redis.Redis) -> None:
    quotas.set_quota(conn, org_id="o", kind="tokens", limit=Decimal(1000), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    assert client.reserve("o", 600).allowed
    assert not client.reserve("o", 401).allowed
    last = client.reserve("o", 400)  # exactly up to the limit
    assert last.allowed and last.remaining_tokens == 0
    assert not client.check("o").allowed  # nothing left
    assert client.release(last.id or "")
    assert client.check("o").remaining_tokens == 400


def test_money_limit_counts_priced_cost_and_unpriced_usage_conservatively(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis
) -> None:
    add_rate(conn)  # gpt-4o: 2.5 in, 1.25 cached, 10 out per million; its highest prices are the floor's rivals
    quotas.set_quota(conn, org_id="m", kind="money", limit=Decimal("0.10"), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    _ingest_and_refresh(settings, conn, rconn, [event("p1", org_id="m", occurred_at=_recent())])
    priced = Decimal("0.004375")  # (900 * 2.5 + 100 * 1.25 + 200 * 10) / 1e6
    assert client.check("m").remaining_money == Decimal("0.10") - priced
    # an unknown model is unpriced: charged at the conservative floor (15 in / 75 out per million)
    _ingest_and_refresh(
        settings, conn, rconn, [event("u1", org_id="m", model="mystery-1", occurred_at=_recent(), cached=0)]
    )
    unpriced = (Decimal(1000) * 15 + Decimal(200) * 75) / 1_000_000  # 0.03
    assert client.check("m").remaining_money == Decimal("0.10") - priced - unpriced
    [status] = quotas.quota_status(conn, "m")
    assert status.used == priced + unpriced and status.unpriced_tokens == 1200
    # a token estimate does not reserve money; a money estimate does, and is denied past the limit
    assert client.reserve("m", 10**9).allowed
    assert not client.reserve("m", Estimate(money=Decimal("0.07"))).allowed
    ok = client.reserve("m", Estimate(tokens=10, money=Decimal("0.06")))
    assert ok.allowed and ok.remaining_money == Decimal("0.10") - priced - unpriced - Decimal("0.06")
    # a higher floor raises what unpriced usage costs against the limit
    quotas.set_unpriced_rate(conn, input_per_million=Decimal(30), output_per_million=Decimal(150))
    [status] = quotas.quota_status(conn, "m")
    assert status.used == priced + 2 * unpriced


def test_user_limit_and_org_limit_both_apply(conn: psycopg.Connection[Any], rconn: redis.Redis) -> None:
    quotas.set_quota(conn, org_id="o", kind="tokens", limit=Decimal(10_000), mode="hard", redis_client=rconn)
    quotas.set_quota(
        conn, org_id="o", user_id="bob", kind="tokens", limit=Decimal(3000), mode="hard", redis_client=rconn
    )
    quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    assert client.reserve("o", 3000, user_id="bob").allowed
    denied = client.reserve("o", 1, user_id="bob")
    assert not denied.allowed and denied.reason == "hard limit reached (tokens, user bob)"
    assert client.reserve("o", 7000, user_id="alice").allowed  # the org has 7000 left, alice no own limit
    assert not client.reserve("o", 1, user_id="alice").allowed  # the org limit is reached


def test_month_rollover_at_utc_midnight(settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis) -> None:
    quotas.set_quota(conn, org_id="r", kind="tokens", limit=Decimal(2000), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    # the last millisecond of September (UTC) and the first of October: +02:00 offsets change nothing
    docs = [
        event("late", org_id="r", occurred_at="2026-10-01T01:59:59.999+02:00"),
        event("early", org_id="r", occurred_at="2026-10-01T00:00:00+00:00", input_tokens=500, cached=0, output=0),
    ]
    _ingest_and_refresh(settings, conn, rconn, docs)
    before = QuotaClient(rconn, clock=lambda: datetime(2026, 9, 30, 23, 59, 59, 999000, tzinfo=UTC))
    after = QuotaClient(rconn, clock=lambda: datetime(2026, 10, 1, 0, 0, tzinfo=UTC))
    assert before.check("r").remaining_tokens == 2000 - 1200
    assert after.check("r").remaining_tokens == 2000 - 500
    # reservations belong to their month too
    assert not before.reserve("r", 801).allowed
    assert after.reserve("r", 1500).allowed
    assert before.check("r").remaining_tokens == 800
    rows = conn.execute("SELECT month, total_tokens FROM usage_monthly WHERE org_id = 'r' ORDER BY month").fetchall()
    assert [(m.isoformat(), int(t)) for m, t in rows] == [("2026-09-01", 1200), ("2026-10-01", 500)]


def test_abandoned_reservation_expires(conn: psycopg.Connection[Any], rconn: redis.Redis) -> None:
    quotas.set_quota(conn, org_id="e", kind="tokens", limit=Decimal(1000), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    client = QuotaClient(rconn)
    assert client.reserve("e", 1000, ttl=0.2).allowed
    assert not client.reserve("e", 1).allowed
    time.sleep(0.3)
    again = client.reserve("e", 1000)  # the script purged the expired reservation first
    assert again.allowed and again.remaining_tokens == 0


def test_redis_unreachable_soft_fails_open_hard_as_configured(
    conn: psycopg.Connection[Any], rconn: redis.Redis, redis_url: str
) -> None:
    quotas.set_quota(conn, org_id="s", kind="tokens", limit=Decimal(10), mode="soft", redis_client=rconn)
    quotas.set_quota(conn, org_id="h", kind="tokens", limit=Decimal(10), mode="hard", redis_client=rconn)
    quotas.rebuild_mirror(conn, rconn)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.05, socket_timeout=0.05)
    app_redis = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url))
    client = QuotaClient(app_redis)
    assert client.check("s").allowed and client.check("h").allowed  # learns which scopes are hard
    app_redis.connection_pool = dead.connection_pool  # Redis goes away under the running client
    soft = client.check("s")
    assert soft.degraded and soft.allowed
    hard = client.reserve("h", 1)
    assert hard.degraded and not hard.allowed and hard.id is None
    unknown = client.check("never-seen")
    assert unknown.degraded and not unknown.allowed  # nothing known: treated as possibly hard (closed)
    open_client = QuotaClient(dead, config=QuotaConfig(hard_fail_open=True))
    assert open_client.check("h").allowed and open_client.check("h").degraded


def test_estimate_rejects_floats_and_negatives() -> None:
    with pytest.raises(TypeError):
        QuotaClient(redis.Redis(port=1)).reserve("o", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Estimate(tokens=-1)
