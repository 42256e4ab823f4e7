"""Quota alert delivery: rq jobs that take alerts from the outbox to the log and to a signed webhook.

An alert row is written once, in the ingest transaction that crossed its threshold (billing.quotas).
After commit, `enqueue_alerts` marks rows handed over (`enqueued_at`) and enqueues one `deliver_alert`
job each; `sweep_alerts` (run it periodically, e.g. from the scheduler, or `usagebill quota
deliver-alerts`) re-enqueues rows never handed over or stuck for longer than `STALE`, so a kill between
commit and delivery delays an alert but never loses it. Delivery is at least once: receivers dedup by
`alert_id`.

The webhook gets an HTTP POST of a JSON body, with headers
`X-Usagebill-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the quota's secret>`,
`X-Usagebill-Timestamp: <unix seconds>` (the body's `sent_at` carries the same moment, so it is signed)
and `X-Usagebill-Alert-Id`. A non-2xx answer or a network error fails the job; rq retries it with
backoff (`RETRY_INTERVALS`), and after `MAX_ATTEMPTS` attempts in all the alert stays parked with its
last error (visible in the alerts table).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from redis import Redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from billing.db import connect
from billing.quotas import plain_decimal
from billing.settings import Settings
from billing.sqlfiles import query
from producer import jobspec

logger = logging.getLogger("usagebill.alerts")

DELIVER_FUNC = "billing.alerts.deliver_alert"
#: rq retry delays (seconds) of one delivery job
RETRY_INTERVALS = (5, 30, 120, 600, 1800)
#: attempts in all (across jobs and sweeps) before an alert is parked for a human
MAX_ATTEMPTS = 20
#: a handed-over alert still undelivered after this long is enqueued again by the sweep
STALE = "15 minutes"
#: seconds a webhook may take to answer
HTTP_TIMEOUT = 10.0


class DeliveryError(Exception):
    """A webhook did not accept an alert (retried by rq)."""


def _queue(redis_client: Redis, queue_name: str | None) -> Queue:
    return Queue(queue_name or jobspec.queue_name(), connection=redis_client, serializer=JSONSerializer)


def enqueue_alerts(
    conn: psycopg.Connection[Any],
    redis_client: Redis,
    *,
    org_months: Sequence[tuple[str, date]] | None = None,
    queue_name: str | None = None,
) -> int:
    """Hand undelivered alerts to the delivery queue: new ones of these (org, month) pairs, or (None)
    every one never handed over or stale. Returns how many jobs were enqueued."""
    if org_months is not None and not org_months:
        return 0
    org_ids = None if org_months is None else [o for o, _ in org_months]
    months = None if org_months is None else [date(m.year, m.month, 1) for _, m in org_months]
    with conn.transaction():
        rows = conn.execute(
            query("quotas", "claim_alerts"),
            {"org_ids": org_ids, "months": months, "max_attempts": MAX_ATTEMPTS, "stale": STALE},
        ).fetchall()
    if not rows:
        return 0
    queue = _queue(redis_client, queue_name)
    queue.enqueue_many(
        [
            Queue.prepare_data(
                DELIVER_FUNC,
                args=(int(r[0]),),
                retry=Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
                timeout=int(HTTP_TIMEOUT * 3),
                result_ttl=600,
                description=f"deliver quota alert {r[0]}",
            )
            for r in rows
        ]
    )
    return len(rows)


def sweep_alerts(conn: psycopg.Connection[Any], redis_client: Redis, queue_name: str | None = None) -> int:
    """Re-enqueue every undelivered alert never handed over or stuck (periodic; safe to run anywhere)."""
    return enqueue_alerts(conn, redis_client, org_months=None, queue_name=queue_name)


def alert_body(row: dict[str, Any], sent_at: int) -> bytes:
    """The exact bytes posted (and signed) for an alert."""

    def num(value: Decimal | None) -> str | None:
        return None if value is None else plain_decimal(value)

    percent = (row["used"] * 100 / row["quota_limit"]).quantize(Decimal("0.01"))
    payload = {
        "type": "quota.threshold",
        "alert_id": row["alert_id"],
        "org_id": row["org_id"],
        "user_id": row["user_id"],
        "quota_id": row["quota_id"],
        "kind": row["kind"],
        "mode": row["mode"],
        "month": row["month"].strftime("%Y-%m"),
        "threshold": num(row["threshold"]),
        "used": num(row["used"]),
        "limit": num(row["quota_limit"]),
        "percent": str(percent),
        "currency": row["currency"].strip() if row["currency"] else None,
        "fired_at": row["fired_at"].isoformat(),
        "sent_at": sent_at,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, body: bytes) -> str:
    """The X-Usagebill-Signature value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(conn: psycopg.Connection[Any], alert_id: int) -> bool:
    """Deliver one alert (log line, then the webhook if any) and mark it delivered. False when there was
    nothing to do (already delivered, or another delivery of it is running). Raises DeliveryError."""
    with conn.transaction(), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(query("quotas", "alert_for_delivery"), {"alert_id": alert_id}).fetchone()
        if row is None:
            return False
        body = alert_body(row, int(time.time()))
        logger.warning(
            "quota alert %s: org %s%s %s %s%% of the %s limit reached in %s (used %s of %s)",
            row["alert_id"],
            row["org_id"],
            f" user {row['user_id']}" if row["user_id"] else "",
            row["mode"],
            row["threshold"],
            row["kind"],
            row["month"].strftime("%Y-%m"),
            row["used"],
            row["quota_limit"],
        )
        error = None
        if row["webhook_url"]:
            error = _post(row["webhook_url"], row["webhook_secret"] or "", body, alert_id)
        if error is None:
            cur.execute(query("quotas", "mark_delivered"), {"alert_id": alert_id})
            return True
    # record the failure in its own transaction (the row lock above is released), then let rq retry
    with conn.transaction():
        conn.execute(query("quotas", "mark_failed"), {"alert_id": alert_id, "error": error[:1000]})
    raise DeliveryError(f"alert {alert_id}: {error}")


def _post(url: str, secret: str, body: bytes, alert_id: int) -> str | None:
    sent_at = json.loads(body)["sent_at"]
    request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s) when the quota is set
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "usagebill-alerts/1",
            "X-Usagebill-Signature": sign(secret, body),
            "X-Usagebill-Timestamp": str(sent_at),
            "X-Usagebill-Alert-Id": str(alert_id),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"webhook unreachable: {exc}"
    return None if 200 <= status < 300 else f"webhook answered HTTP {status}"


def deliver_alert(alert_id: int) -> bool:
    """rq job: deliver one alert (settings from the worker's environment)."""
    with connect(Settings(), autocommit=True) as conn:
        return deliver(conn, alert_id)


def deliver_pending() -> int:
    """Periodic job (the scheduler's): re-enqueue undelivered alerts never handed over or stuck."""
    settings = Settings()
    client = Redis.from_url(settings.redis_url)
    try:
        with connect(settings, autocommit=True) as conn:
            return sweep_alerts(conn, client, settings.queue)
    finally:
        client.close()
