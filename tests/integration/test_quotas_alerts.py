"""Quota alert delivery: outbox -> rq job -> signed webhook (a local HTTP server checks the HMAC) and the log;
retried on failure, never lost when the process dies between commit and delivery."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from billing import alerts, quotas
from billing.ingest import ingest_batch
from billing.settings import Settings
from tests.integration.ingest_util import event, text

SECRET = "s3cret-key"


class Hook:
    """A local webhook receiver: records each request; answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/usagebill"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def worker_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The delivery job reads its settings from the environment, as a worker process does."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("USAGEBILL_QUEUE", settings.queue)


def _work(settings: Settings, rconn: redis.Redis) -> None:
    queue = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    SimpleWorker([queue], connection=rconn, serializer=JSONSerializer).work(burst=True)


def _cross_half(settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis | None) -> Any:
    """Ingest 5 x 1200 tokens against a 10,000 limit (50 %): one alert; refresh as the worker does."""
    docs = [
        event(f"a{i}", org_id="hooked", occurred_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
        for i in range(5)
    ]
    with psycopg.connect(settings.database_url, options="-c TimeZone=UTC") as c:
        result = ingest_batch(c, [text(d) for d in docs], settings=settings)
    if rconn is not None:
        quotas.refresh_mirror(conn, rconn, result.org_months)
    return result


def _alert_row(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute("SELECT alert_id, delivered_at, attempts, last_error, enqueued_at FROM alerts").fetchone()
    assert row is not None
    return row


def test_alert_is_posted_signed_logged_and_marked_delivered(
    settings: Settings,
    conn: psycopg.Connection[Any],
    rconn: redis.Redis,
    hook: Hook,
    worker_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    quotas.set_quota(
        conn,
        org_id="hooked",
        kind="tokens",
        limit=Decimal(10_000),
        mode="hard",
        webhook_url=hook.url,
        webhook_secret=SECRET,
        redis_client=rconn,
    )
    _cross_half(settings, conn, rconn)
    with caplog.at_level(logging.WARNING, logger="usagebill.alerts"):
        _work(settings, rconn)
    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-usagebill-signature"], expected)
    payload = json.loads(body)
    assert headers["x-usagebill-timestamp"] == str(payload["sent_at"])
    alert_id, delivered_at, attempts, last_error, _ = _alert_row(conn)
    assert headers["x-usagebill-alert-id"] == str(alert_id)
    assert headers["content-type"] == "application/json"
    assert payload["alert_id"] == alert_id
    assert (payload["org_id"], payload["kind"], payload["mode"], payload["threshold"]) == (
        "hooked",
        "tokens",
        "hard",
        "50",
    )
    assert (payload["used"], payload["limit"], payload["percent"]) == ("6000", "10000", "60.00")
    assert payload["month"] == datetime.now(UTC).strftime("%Y-%m")
    assert delivered_at is not None and attempts == 1 and last_error is None
    assert any("quota alert" in r.getMessage() and "50" in r.getMessage() for r in caplog.records)
    # a tampered body does not verify
    forged = body.replace(b'"6000"', b'"1"')
    assert not hmac.compare_digest(headers["x-usagebill-signature"], alerts.sign(SECRET, forged))
    # delivered once: another sweep or refresh sends nothing more
    assert alerts.sweep_alerts(conn, rconn, settings.queue) == 0
    _cross_half(settings, conn, rconn)
    _work(settings, rconn)
    assert len(hook.requests) == 1


def test_failed_delivery_is_recorded_and_retried_with_backoff(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis, hook: Hook, worker_env: None
) -> None:
    quotas.set_quota(
        conn,
        org_id="hooked",
        kind="tokens",
        limit=Decimal(10_000),
        webhook_url=hook.url,
        webhook_secret=SECRET,
        redis_client=rconn,
    )
    hook.statuses = [500]
    _cross_half(settings, conn, rconn)
    _work(settings, rconn)
    alert_id, delivered_at, attempts, last_error, _ = _alert_row(conn)
    assert delivered_at is None and attempts == 1 and last_error == "webhook answered HTTP 500"
    # rq keeps the job for a retry after the first backoff interval
    queue = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    assert queue.scheduled_job_registry.count == 1
    job = queue.fetch_job(queue.scheduled_job_registry.get_job_ids()[0])
    assert job is not None and job.retries_left == len(alerts.RETRY_INTERVALS) - 1
    # the retry (run here at once rather than after the interval) delivers it
    assert alerts.deliver(conn, alert_id)
    assert len(hook.requests) == 2
    assert _alert_row(conn)[1] is not None
    assert not alerts.deliver(conn, alert_id)  # already delivered: nothing sent
    assert len(hook.requests) == 2


def test_alert_recorded_before_a_crash_is_delivered_by_the_sweep(
    settings: Settings, conn: psycopg.Connection[Any], rconn: redis.Redis, hook: Hook, worker_env: None
) -> None:
    quotas.set_quota(
        conn, org_id="hooked", kind="tokens", limit=Decimal(10_000), webhook_url=hook.url, webhook_secret=SECRET
    )
    _cross_half(settings, conn, None)  # committed, then the worker died before refresh_mirror
    _work(settings, rconn)
    assert hook.requests == []
    assert alerts.sweep_alerts(conn, rconn, settings.queue) == 1
    _work(settings, rconn)
    assert len(hook.requests) == 1 and _alert_row(conn)[1] is not None
    # an alert handed over whose job vanished (e.g. Redis lost it) is re-enqueued once it is stale
    conn.execute("UPDATE alerts SET delivered_at = NULL, enqueued_at = now() - interval '1 hour'")
    assert alerts.sweep_alerts(conn, rconn, settings.queue) == 1
    assert alerts.sweep_alerts(conn, rconn, settings.queue) == 0  # just handed over: not stale
    _work(settings, rconn)
    assert len(hook.requests) == 2


def test_alert_without_webhook_goes_to_the_log(
    settings: Settings,
    conn: psycopg.Connection[Any],
    rconn: redis.Redis,
    worker_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    quotas.set_quota(conn, org_id="hooked", kind="tokens", limit=Decimal(10_000), redis_client=rconn)
    _cross_half(settings, conn, rconn)
    with caplog.at_level(logging.WARNING, logger="usagebill.alerts"):
        _work(settings, rconn)
    assert _alert_row(conn)[1] is not None
    assert [r for r in caplog.records if r.name == "usagebill.alerts" and "org hooked" in r.getMessage()]
