"""The worker's look-ahead: a batch validated ahead of its job ingests exactly as one validated in the job."""

from __future__ import annotations

import sys
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from billing import ingest
from billing.db import connect
from billing.settings import Settings
from producer import jobspec
from tests.integration.ingest_util import add_rate, assert_consistent, event, ingest_queue, text
from worker import worker as proc
from worker.jobs import enqueue_batch
from worker.prefetch import SWITCH_INTERVAL, Prefetcher


def _mixed_batch(tag: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Two new events, a re-send, a conflict, an invalid event: (texts, the distinct valid docs)."""
    a, b = event(f"{tag}-a", input_tokens=500), event(f"{tag}-b", user_id="u2")
    texts = [text(a), text(b), text(a), text(event(f"{tag}-b", output=999)), '{"schema_version": 1']
    return texts, [a, b]


def test_prepared_batch_ingests_like_a_batch_validated_in_the_job(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    add_rate(conn)
    inline_texts, inline_docs = _mixed_batch("inline")
    ahead_texts, ahead_docs = _mixed_batch("ahead")
    with connect(settings) as c:
        inline = ingest.ingest_batch(c, inline_texts, settings=settings)
        prepared = ingest.prepare(ahead_texts)
        ahead = ingest.ingest_batch(c, ahead_texts, settings=settings, prepared=prepared)
    counts = (ahead.inserted, ahead.duplicates, ahead.conflicts, ahead.rejected, ahead.unpriced)
    assert counts == (inline.inserted, inline.duplicates, inline.conflicts, inline.rejected, inline.unpriced)
    assert counts == (2, 1, 1, 1, 0)
    assert_consistent(conn, inline_docs + ahead_docs)
    # the same stored values, event for event
    cols = "org_id, user_id, model, input_tokens, output_tokens, cost_total, tags, extra"
    rows = {
        r[0]: r[1:]
        for r in conn.execute(f"SELECT split_part(event_id, '-', 2), {cols} FROM events WHERE event_id LIKE 'inline-%'")
    }
    assert rows == {
        r[0]: r[1:]
        for r in conn.execute(f"SELECT split_part(event_id, '-', 2), {cols} FROM events WHERE event_id LIKE 'ahead-%'")
    }
    conflicts = conn.execute("SELECT event_id FROM event_conflicts ORDER BY 1").fetchall()
    assert conflicts == [("ahead-b",), ("inline-b",)]
    reasons = conn.execute("SELECT reason FROM rejected_events ORDER BY id").fetchall()
    assert len(reasons) == 2 and reasons[0] == reasons[1]


def test_the_clock_check_runs_when_the_batch_runs(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    # prepared ahead, the event was in time; by the time the batch runs it is too far ahead of the clock
    ahead_at = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    docs = [event("t-0"), event("t-1", occurred_at=ahead_at), event("t-2")]
    texts = [text(d) for d in docs]
    prepared = ingest.prepare(texts)
    assert [r[0] for r in prepared.rows] == [0, 1, 2]
    strict = settings.model_copy(update={"future_tolerance_seconds": 0})
    with connect(settings) as c:
        result = ingest.ingest_batch(c, texts, settings=strict, prepared=prepared)
    assert (result.inserted, result.rejected) == (2, 1)
    [(event_id, reason)] = conn.execute("SELECT event_id, reason FROM rejected_events").fetchall()
    assert event_id == "t-1" and reason.startswith("occurred_at: ") and "0 s ahead of the server clock" in reason
    assert_consistent(conn, [docs[0], docs[2]])


def test_prepared_rows_of_another_batch_are_refused(settings: Settings) -> None:
    texts = [text(event("x-1"))]
    prepared = ingest.prepare(texts)
    with connect(settings) as c, pytest.raises(RuntimeError, match="another batch"):
        ingest.ingest_batch(c, list(texts), settings=settings, prepared=prepared)


def _wait_ready(prefetcher: Prefetcher, job_id: str) -> None:
    deadline = time.monotonic() + 10
    while job_id not in prefetcher.ready_ids():
        assert time.monotonic() < deadline, "the look-ahead did not prepare the job"
        time.sleep(0.005)


def _prefetcher(res: proc.Resources, q: Queue, **kw: Any) -> Prefetcher:
    return Prefetcher(res.redis, [q.key], max_events=1000, max_bytes=4_000_000, **kw)


def _stored(res: proc.Resources, job: Job) -> bytes:
    data = res.redis.hget(Job.key_for(job.id), "data")
    assert isinstance(data, bytes)
    return data


def test_look_ahead_prepares_the_job_at_the_head_of_the_queue(res: proc.Resources) -> None:
    q = ingest_queue(res)
    texts = [text(event(f"h{i}")) for i in range(20)] + ["not json"]
    job = enqueue_batch(q, texts)
    prefetcher = _prefetcher(res, q)
    prefetcher.ahead("the-job-running-now")
    _wait_ready(prefetcher, job.id)
    assert q.job_ids == [job.id]  # a read: the job is still queued, for whichever worker takes it
    prepared = prefetcher.take(job.id, _stored(res, job))
    assert prepared is not None and prepared.events == texts
    assert prepared.rows == ingest.prepare(texts).rows and [r.pos for r in prepared.rejected] == [20]
    assert prefetcher.take(job.id, _stored(res, job)) is None  # taken once
    assert (prefetcher.hits, prefetcher.misses) == (1, 1)


def test_a_job_loaded_from_the_prepared_payload_is_the_same_job(res: proc.Resources) -> None:
    q = ingest_queue(res)
    texts = [text(event(f"r{i}")) for i in range(5)]
    job = enqueue_batch(q, texts)
    stored = _stored(res, job)
    prefetcher = _prefetcher(res, q)
    proc_prefetcher, proc._prefetcher = proc._prefetcher, prefetcher
    try:
        prefetcher.ahead("current")
        _wait_ready(prefetcher, job.id)
        loaded = proc.IngestJob.fetch(job.id, connection=res.redis, serializer=JSONSerializer)
        # rq did not decode it: the look-ahead's decoded payload, equal to what rq would have made
        assert loaded.args == [texts] and loaded.func_name == jobspec.INGEST_FUNC and loaded.kwargs == {}
        assert loaded.stored_payload() == stored
        again = proc.IngestJob.fetch(job.id, connection=res.redis, serializer=JSONSerializer)  # decodes itself
        assert again.args == [texts] and again.args[0] is not loaded.args[0]
        loaded.save()
        assert _stored(res, job) == stored  # saved back as the very bytes it was loaded from
        assert prefetcher.payload(job.id, stored) is None  # handed out once only
        prepared = prefetcher.take(job.id, loaded.stored_payload())
        assert prepared is not None and prepared.events is loaded.args[0]
    finally:
        proc._prefetcher = proc_prefetcher


def test_payload_never_waits_and_skips_uncompressed_jobs(res: proc.Resources) -> None:
    q = ingest_queue(res)
    texts = [text(event(f"u{i}")) for i in range(3)]
    job = enqueue_batch(q, texts)
    plain = zlib.decompress(_stored(res, job))
    res.redis.hset(Job.key_for(job.id), "data", plain)  # as rq stores a payload it could not compress
    release = threading.Event()

    def slow(events: list[Any]) -> ingest.Prepared:
        release.wait(10)
        return ingest.prepare(events)

    prefetcher = _prefetcher(res, q, prepare=slow)
    prefetcher.ahead("current")
    deadline = time.monotonic() + 10
    while prefetcher._busy != job.id:  # the thread is validating this job
        assert time.monotonic() < deadline
        time.sleep(0.005)
    started = time.monotonic()
    assert prefetcher.payload(job.id, plain) is None  # rq decodes it itself rather than wait
    assert time.monotonic() - started < 0.5
    release.set()
    _wait_ready(prefetcher, job.id)
    assert prefetcher.payload(job.id, plain) is None  # stored uncompressed: nothing to save rq
    prepared = prefetcher.take(job.id, plain)
    assert prepared is not None and prepared.events == texts


def test_look_ahead_of_another_payload_is_not_used(res: proc.Resources) -> None:
    q = ingest_queue(res)
    job = enqueue_batch(q, [text(event("o1")), text(event("o2"))])
    prefetcher = _prefetcher(res, q)
    prefetcher.ahead("current")
    _wait_ready(prefetcher, job.id)
    # the same job id loaded from other bytes (rewritten in between) does not get the prepared batch
    other = enqueue_batch(q, [text(event("o1"))])
    assert prefetcher.take(job.id, _stored(res, other)) is None
    assert prefetcher.take(job.id, None) is None
    prefetcher.ahead(job.id)  # the head is the running job itself: passed over, the job after it prepared
    _wait_ready(prefetcher, other.id)
    assert prefetcher.ready_ids() == [other.id]


def test_look_ahead_leaves_oversized_jobs_to_the_job(res: proc.Resources) -> None:
    q = ingest_queue(res)
    big = enqueue_batch(q, [text(event(f"b{i}")) for i in range(12)])
    prefetcher = Prefetcher(res.redis, [q.key], max_events=10, max_bytes=4_000_000)
    prefetcher.ahead("current")
    time.sleep(0.2)
    assert prefetcher.ready_ids() == [] and prefetcher.take(big.id, _stored(res, big)) is None


def test_look_ahead_survives_a_failure(res: proc.Resources) -> None:
    q = ingest_queue(res)
    calls: list[int] = []

    def flaky(events: list[Any]) -> ingest.Prepared:
        calls.append(len(events))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return ingest.prepare(events)

    first = enqueue_batch(q, [text(event("f1"))])
    prefetcher = _prefetcher(res, q, prepare=flaky)
    prefetcher.ahead("current")
    deadline = time.monotonic() + 10
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert prefetcher.take(first.id, _stored(res, first)) is None  # the failed one: validated in the job
    q.remove(first.id)
    second = enqueue_batch(q, [text(event("f2"))])
    prefetcher.ahead(first.id)
    _wait_ready(prefetcher, second.id)
    assert prefetcher.alive() and prefetcher.take(second.id, _stored(res, second)) is not None


def test_switch_interval_is_lowered_only_while_active(res: proc.Resources) -> None:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    prefetcher = _prefetcher(res, ingest_queue(res))
    try:
        prefetcher.activate(True)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL, abs=2e-6)  # microsecond resolution
        prefetcher.activate(False)
        assert sys.getswitchinterval() == pytest.approx(0.005, abs=2e-6)
    finally:
        sys.setswitchinterval(before)


def test_worker_ingests_with_its_look_ahead(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    add_rate(conn)
    docs = [event(f"w{i}", user_id=f"u{i % 5}", input_tokens=100 + i) for i in range(1200)]
    q = ingest_queue(res)
    for i in range(0, len(docs), 200):
        enqueue_batch(q, [text(d) for d in docs[i : i + 200]] + [text(docs[i])])  # and a re-send
    worker = proc.make_worker(res.redis, [res.settings.queue])
    assert worker.prefetcher is not None
    hits, misses, merged = worker.prefetcher.hits, worker.prefetcher.misses, worker.prefetcher.merged
    ahead = worker.prefetcher.committed_ahead
    worker.work(burst=True, logging_level="WARNING")
    assert_consistent(conn, docs)
    # the first job has no job before it; every later one was prepared while a job before it ran, and
    # either ran with its prepared batch, was carried by the transaction of a job before it, or was
    # committed ahead of rq (worker/prefetch.py)
    p = worker.prefetcher
    assert p.misses - misses == 1
    assert (p.hits - hits) + (p.merged - merged) + (p.committed_ahead - ahead) == 5


def test_worker_with_another_worker_on_its_queue_does_not_look_ahead(
    res: proc.Resources, conn: psycopg.Connection[Any]
) -> None:
    q = ingest_queue(res)
    other = SimpleWorker([q], connection=res.redis, serializer=JSONSerializer)
    other.register_birth()
    try:
        docs = [event(f"c{i}") for i in range(60)]
        for i in range(0, 60, 20):
            enqueue_batch(q, [text(d) for d in docs[i : i + 20]])
        worker = proc.make_worker(res.redis, [res.settings.queue])
        assert worker.prefetcher is not None
        before = (worker.prefetcher.hits, worker.prefetcher.misses)
        worker.work(burst=True, logging_level="WARNING")
        assert (worker.prefetcher.hits, worker.prefetcher.misses) == (before[0], before[1] + 3)
        assert_consistent(conn, docs)
    finally:
        other.register_death()


def test_look_ahead_can_be_turned_off(res: proc.Resources) -> None:
    assert proc.make_worker(res.redis, [res.settings.queue], prefetch=False).prefetcher is None
    assert Settings(USAGEBILL_PREFETCH="false").prefetch is False
