"""The rq ingest job: one job = one batch = one transaction on the worker's pool; done only after commit."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import psycopg
import redis
from psycopg_pool import PoolTimeout
from rq import Queue, Retry, get_current_job
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import BaseTimeoutException

from billing import ingest
from billing.db import first_line, is_transient
from billing.errors import AlreadyCommitted, InputError, PermanentError, TransientError
from producer import jobspec
from worker import observability
from worker import worker as proc

log = logging.getLogger("usagebill.jobs")

#: errors that come from the data of a batch: split the batch to isolate the event that causes them
#: (SQLSTATE classes 22 data exception and 23 integrity violation, invalid input, text that cannot
#: be encoded). Other errors (a missing table, a bug) are retried by rq, then kept as failed jobs:
#: splitting would park valid events for a fault of ours.
DATA_ERRORS: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError, InputError, ValueError)


def enqueue_batch(queue: Queue, events: Sequence[str], *, pipeline: Any = None, job_id: str | None = None) -> Job:
    """Enqueue one ingest job for `events` (each one event's JSON text) with the agreed rq options."""
    return queue.enqueue_call(
        func=jobspec.INGEST_FUNC,
        args=(list(events),),
        retry=Retry(max=jobspec.RETRY_MAX, interval=list(jobspec.RETRY_INTERVALS)),
        pipeline=pipeline,
        job_id=job_id,
        **jobspec.job_options(events),
    )


def ingest_batch(events: list[str]) -> dict[str, Any]:
    """rq job: ingest `events` in one transaction and return its counts once committed (see `_ingest_job`);
    each finished job is counted in the worker's metrics and logged as one structured line."""
    started = time.perf_counter()
    result = _ingest_job(events)
    observability.record_batch(result, time.perf_counter() - started)
    return result


def _ingest_job(events: list[str]) -> dict[str, Any]:
    """Ingest `events` in one transaction and return its counts once committed.

    Transient failures (database or Redis unreachable, serialization failure, deadlock) are raised
    so rq's Retry runs the job again later. A failure caused by the data splits the batch in halves,
    each a new job with its own retries; a single event that still fails is parked in rejected_events
    with the reason. An oversized batch (events or bytes) is split the same way before it runs.
    """
    res = proc.resources()
    settings = res.settings
    job = get_current_job()
    job_id = job.id if job is not None else None
    done = proc.merged_into(job)
    if done is not None:
        # its batch was committed by the transaction of a job queued before it (worker/prefetch.py): its
        # own counts, and which job carried it
        return done
    size = jobspec.batch_bytes(events)
    if len(events) > 1 and (len(events) > settings.batch_size or size > settings.batch_max_bytes):
        return _split(job, events, f"batch of {len(events)} events / {size} bytes exceeds the bounds")
    if len(events) == 1 and size > settings.batch_max_bytes:
        return _park(res, events, f"event of {size} bytes exceeds USAGEBILL_BATCH_MAX_BYTES", job_id)
    # the look-ahead may have validated this batch while the previous job ran (worker/prefetch.py)
    prepared = proc.prepared_for(job)
    # prepared jobs waiting right after this one go in the same transaction (a backlog drains in fewer,
    # larger transactions); asked before the look-ahead, which then prepares the jobs after them
    riders = proc.riders_for(job, len(events), size)
    proc.look_ahead(job_id)  # the next jobs' validation runs while this one is in Postgres
    try:
        result = _ingest_carrying(res, events, job_id, prepared, riders) if riders else None
        if result is None:
            result = _ingest_once(res, events, job_id, prepared)
    except AlreadyCommitted as already:
        return _already(already)
    except DATA_ERRORS as exc:
        reason = f"ingest failed: {type(exc).__name__}: {first_line(exc)}"
        if len(events) > 1:
            return _split(job, events, reason)
        return _park(res, events, reason, job_id)
    proc.go_ahead()  # the next prepared jobs may commit while rq does its bookkeeping of this one
    ingest.test_pause("after_commit")
    _refresh_mirror(res, result.org_months, result.reservation_ids)
    return _result(result)


def _already(already: AlreadyCommitted) -> dict[str, Any]:
    # its batch committed before (an earlier run of it that died after its commit, a transaction that
    # carried it, or its event was parked): what that run stored for it, nothing done again
    log.warning("job %s had already committed its batch: its stored result stands", already.job_id)
    return {"org_months": [], "reservation_ids": [], "merged": [], **already.result, "already_committed": True}


def _result(result: ingest.IngestResult) -> dict[str, Any]:
    # the job's result as rq stores it (JSON): its counts, and the ids of the jobs it carried
    out = asdict(result)
    out["org_months"] = [[org, month.isoformat()] for org, month in result.org_months]
    out["merged"] = list(result.merged)
    return out


def _ingest_carrying(
    res: proc.Resources,
    events: list[str],
    job_id: str | None,
    prepared: ingest.Prepared | None,
    riders: list[ingest.Rider],
) -> ingest.IngestResult | None:
    """The job's batch and its riders' in one transaction; None when that failed (nothing of it was
    committed): then the job runs alone, with its own error handling, and the riders on their own."""
    try:
        result = _ingest_once(res, events, job_id, prepared, riders)
    except (BaseTimeoutException, AlreadyCommitted, StopRequested):  # rq's timeout or stop, or the job is done
        proc.merge_dropped()
        raise
    except Exception as exc:  # whatever it was, each job meets it again on its own (split, retry, park)
        proc.merge_dropped()
        log.warning(
            "transaction of job %s carrying %d waiting job(s) failed, each runs on its own: %s: %s",
            job_id,
            len(riders),
            type(exc).__name__,
            first_line(exc),
        )
        return None
    # each carried job, when rq hands it over to this worker, finishes with its own counts (any other
    # run of it finds them in ingest_jobs); a rider another transaction committed first was left out
    proc.merge_committed({rider: {**_result(counts), "merged_into": job_id} for rider, counts in result.merged.items()})
    return result


def commit_ahead(
    lead_id: str, prepared: ingest.Prepared, riders: list[ingest.Rider]
) -> tuple[dict[str, dict[str, Any]], Callable[[], None]]:
    """The look-ahead's transaction ahead of rq (worker/prefetch.py, `Prefetcher.commit_ahead`): the job
    `lead_id`'s prepared batch and its riders, committed as that job's own run would (its claim).
    Returns what each job it committed returns when rq hands it over, and the quota mirror's refresh
    (run once they are handed out). Any failure propagates: each job then runs on its own, with the
    error handling above."""
    res = proc.resources()
    result = _ingest_once(res, prepared.events, lead_id, prepared, riders)
    out = {lead_id: _result(result)}
    out.update({rider: {**_result(counts), "merged_into": lead_id} for rider, counts in result.merged.items()})
    # the refresh runs in another thread (the next transaction does not wait for it): it is handed what the
    # transaction read for it, which this thread holds
    take = ingest.quota_hook("take_tx_read")
    tx_read = take(result.org_months) if take is not None and result.org_months else None
    return out, functools.partial(_refresh_mirror, res, result.org_months, result.reservation_ids, tx_read=tx_read)


def _ingest_once(
    res: proc.Resources,
    events: Sequence[Any],
    job_id: str | None,
    prepared: ingest.Prepared | None = None,
    riders: Sequence[ingest.Rider] = (),
) -> ingest.IngestResult:
    # A pooled connection may have died with a Postgres restart: the pool drops it, so try once more
    # at once on a fresh one before letting rq's Retry (seconds later) take over.
    for attempt in (1, 2):
        try:
            with res.pool.connection() as conn:
                batch = prepared.events if prepared is not None else events  # equal; prepared rows are for it
                return ingest.ingest_batch(
                    conn, batch, settings=res.settings, job_id=job_id, prepared=prepared, riders=riders
                )
        except (psycopg.Error, PoolTimeout, TransientError) as exc:
            if not _transient(exc):
                raise
            if attempt == 2:
                raise TransientError(f"transient database failure: {first_line(exc)}") from exc
            log.warning("transient database failure, retrying once on a fresh connection: %s", first_line(exc))
    raise AssertionError("unreachable")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, PoolTimeout) or is_transient(exc)


def _split(job: Job | None, events: list[str], reason: str) -> dict[str, Any]:
    """Enqueue the two halves of `events` as new jobs (each with its own retries) on the job's queue.

    The halves' ids derive from the job's (`<id>-h1`, `<id>-h2`): a job that runs again after its split
    (its worker died before rq's bookkeeping) enqueues the same two jobs again, and a half that already
    ran finds its id claimed in ingest_jobs and returns its stored result, so no rejection is parked
    twice. The job itself claims nothing: its split is only as durable as Redis, and a re-run after Redis
    lost the halves must split again.
    """
    if job is None:
        raise PermanentError(f"cannot split a batch outside an rq job: {reason}")
    queue = Queue(job.origin, connection=job.connection, serializer=JSONSerializer)
    mid = len(events) // 2
    try:
        with job.connection.pipeline() as pipe:
            halves = [
                enqueue_batch(queue, events[:mid], pipeline=pipe, job_id=f"{job.id}-h1"),
                enqueue_batch(queue, events[mid:], pipeline=pipe, job_id=f"{job.id}-h2"),
            ]
            pipe.execute()
    except redis.RedisError as exc:
        raise TransientError(f"Redis unreachable while splitting a batch: {exc}") from exc
    log.warning("split batch of %d events into jobs %s: %s", len(events), [h.id for h in halves], reason)
    return {"received": len(events), "split": [h.id for h in halves], "reason": reason}


def _park(res: proc.Resources, events: list[str], reason: str, job_id: str | None) -> dict[str, Any]:
    """Park a single event that cannot be ingested: rejected_events with the reason (never dropped)."""
    try:
        with res.pool.connection() as conn, conn.transaction():
            result = ingest.park_job(conn, [ingest.rejection(0, events[0], reason)], job_id=job_id)
    except AlreadyCommitted as already:
        return _already(already)
    except (psycopg.Error, PoolTimeout) as exc:
        if _transient(exc):
            raise TransientError(f"transient database failure while parking an event: {first_line(exc)}") from exc
        raise
    log.warning("parked 1 event of job %s: %s", job_id, reason)
    return dict(result)


def _refresh_mirror(res: proc.Resources, org_months: list[Any], reservation_ids: list[str], tx_read: Any = ...) -> None:
    # After commit: the quota mirror is rebuilt from Postgres, so a failure here never fails the job.
    # `tx_read`: what the transaction read for it, when the refresh runs in another thread than the
    # transaction (commit_ahead); `...`: the refresh takes it in this thread (quotas.refresh_mirror's default).
    if not org_months:
        return
    hook = ingest.quota_hook("refresh_mirror")
    if hook is None:
        return
    try:
        with res.pool.connection() as conn:
            hook(conn, res.redis, org_months, reservation_ids, tx_read=tx_read)
    except Exception as exc:  # logged: the mirror is rebuilt from Postgres later
        log.warning("quota mirror refresh failed (the job still succeeded): %s", first_line(exc))
