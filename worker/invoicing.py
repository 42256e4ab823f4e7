"""Closing a month from the command line or the scheduler: grace period, queue backlog, then the close."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import redis
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from billing import invoices
from billing.db import connect, translated
from billing.errors import RedisUnavailable
from billing.invoices import CloseRefused, CloseResult, month_end, month_text
from billing.settings import Settings, redact
from producer.jobspec import INGEST_FUNC

_log = logging.getLogger(__name__)

#: job ids fetched per round trip when scanning a queue for old ingest jobs
_SCAN_CHUNK = 500


@dataclass(frozen=True)
class Backlog:
    """Ingest jobs enqueued before an instant and not finished yet (queued, running or awaiting retry)."""

    jobs: int
    oldest: datetime | None


def ingest_backlog(conn: redis.Redis, queue_names: Iterable[str], before: datetime) -> Backlog:
    """Count the ingest jobs enqueued before `before` still in the queues, started or scheduled registries."""
    count = 0
    oldest: datetime | None = None
    for name in queue_names:
        queue = Queue(name, connection=conn, serializer=JSONSerializer)
        id_lists = (
            queue.get_job_ids(),
            StartedJobRegistry(queue=queue).get_job_ids(),
            ScheduledJobRegistry(queue=queue).get_job_ids(),  # type: ignore[no-untyped-call]
        )
        for ids in id_lists:
            for start in range(0, len(ids), _SCAN_CHUNK):
                jobs = Job.fetch_many(ids[start : start + _SCAN_CHUNK], connection=conn, serializer=JSONSerializer)
                for job in jobs:
                    if job is None or job.enqueued_at is None or job.func_name != INGEST_FUNC:
                        continue
                    enqueued = (
                        job.enqueued_at.replace(tzinfo=UTC) if job.enqueued_at.tzinfo is None else job.enqueued_at
                    )
                    if enqueued < before:
                        count += 1
                        oldest = enqueued if oldest is None or enqueued < oldest else oldest
    return Backlog(count, oldest)


def close(settings: Settings, month: date, *, force: bool = False, now: datetime | None = None) -> CloseResult:
    """Close one month: refuse (unless forced) before its end plus the grace period or while the queue
    holds ingest jobs enqueued before that instant, so a backlog is billed on its own month."""
    now = now or datetime.now(UTC)
    with translated(settings), connect(settings) as conn:
        if invoices.month_status(conn, month) == "closed":
            conn.rollback()
            return CloseResult(month, already_closed=True)
        conn.rollback()  # the close below runs in a transaction of its own
        if not force:
            invoices.check_due(month, now=now, grace=settings.invoice_grace)
            cutoff = month_end(month) + settings.invoice_grace
            backlog = _backlog(settings, cutoff)
            if backlog.jobs:
                raise CloseRefused(
                    f"month {month_text(month)}: the queue {settings.queue!r} still holds {backlog.jobs} ingest "
                    f"job(s) enqueued before {cutoff.isoformat()} (oldest {backlog.oldest}); let the workers "
                    "drain them so they are billed on their own month, or use --force"
                )
        return invoices.close_month(conn, month)


def _backlog(settings: Settings, cutoff: datetime) -> Backlog:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        return ingest_backlog(client, [settings.queue], cutoff)
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f"cannot check the ingest backlog: Redis unreachable at {redact(settings.redis_url)} ({exc}); "
            "use --force to close without that check"
        ) from exc
    finally:
        client.close()


def close_due(settings: Settings, *, now: datetime | None = None) -> list[CloseResult]:
    """Close every open month whose grace period is over (the scheduler's job). A month refused for its
    backlog is left open and tried again at the next run; later months wait for it (months close in order)."""
    now = now or datetime.now(UTC)
    with translated(settings), connect(settings, autocommit=True) as conn:
        candidates = invoices.open_months_ended_before(conn, now - settings.invoice_grace)
        previous = invoices.previous_month(now)
        if previous not in candidates and month_end(previous) + settings.invoice_grace <= now:
            candidates.append(previous)  # a month nothing was ingested for still closes (no invoices)
    results: list[CloseResult] = []
    for month in sorted(candidates):
        try:
            results.append(close(settings, month, now=now))
        except CloseRefused as exc:
            _log.warning("not closing %s yet: %s", month_text(month), exc)
            break
    return results
