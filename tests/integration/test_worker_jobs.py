"""The rq ingest job run by the in-process worker: batches, retries, poison splitting, failed jobs."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
import rq.job
from rq import Queue
from rq.exceptions import StopRequested
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from billing import ingest
from billing.settings import Settings
from producer import jobspec
from tests.integration.ingest_util import add_rate, assert_consistent, event, ingest_queue, text, worker_resources
from worker import worker as proc
from worker.jobs import enqueue_batch


def _drain(res: proc.Resources) -> None:
    proc.make_worker(res.redis, [res.settings.queue]).work(burst=True, logging_level="WARNING")


def test_batches_with_duplicates_across_jobs(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    add_rate(conn)
    docs = [event(f"e{i}", user_id=f"u{i % 7}", input_tokens=100 + i) for i in range(300)]
    q = ingest_queue(res)
    jobs = [enqueue_batch(q, [text(d) for d in docs[i : i + 50]]) for i in range(0, 300, 50)]
    jobs.append(enqueue_batch(q, [text(d) for d in docs[::3]]))  # redelivered events, reordered
    _drain(res)
    results = [Job.fetch(j.id, connection=res.redis, serializer=JSONSerializer).return_value() for j in jobs]
    assert sum(r["inserted"] for r in results) == 300
    assert results[-1]["duplicates"] == 100
    got = assert_consistent(conn, docs)
    assert got["cost"] > 0
    job = Job.fetch(jobs[0].id, connection=res.redis, serializer=JSONSerializer)
    assert (job.timeout, job.failure_ttl, job.retries_left) == (
        jobspec.JOB_TIMEOUT,
        jobspec.FAILURE_TTL,
        jobspec.RETRY_MAX,
    )


def test_poison_event_is_isolated_by_splitting(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    # a valid event the database refuses (a data error): stands for any event-caused failure
    conn.execute("ALTER TABLE events ADD CONSTRAINT test_poison CHECK (model <> 'poison-model')")
    docs = [event(f"p{i}") for i in range(13)]
    poison = event("bad", model="poison-model")
    batch = [text(d) for d in docs[:6]] + [text(poison)] + [text(d) for d in docs[6:]]
    enqueue_batch(ingest_queue(res), batch)
    _drain(res)
    assert_consistent(conn, docs)
    rows = conn.execute("SELECT event_id, reason FROM rejected_events").fetchall()
    assert len(rows) == 1 and rows[0][0] == "bad" and "test_poison" in rows[0][1]
    failed = FailedJobRegistry(res.settings.queue, connection=res.redis)
    assert failed.count == 0


def test_oversized_batch_is_split(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    small = settings.model_copy(update={"batch_size": 4})
    res = proc.setup(small)
    try:
        docs = [event(f"s{i}") for i in range(10)]
        job = enqueue_batch(ingest_queue(res), [text(d) for d in docs])
        _drain(res)
        assert "split" in Job.fetch(job.id, connection=res.redis, serializer=JSONSerializer).return_value()
        assert_consistent(conn, docs)
    finally:
        proc.close()


def test_exhausted_job_is_kept_counted_and_requeued(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    docs = [event(f"f{i}") for i in range(5)]
    conn.execute("ALTER TABLE usage_daily RENAME TO usage_daily_away")  # not a data error: rq retries it
    q = ingest_queue(res)
    job = q.enqueue_call(  # no retries left, to exhaust it at once
        func=jobspec.INGEST_FUNC, args=([text(d) for d in docs],), failure_ttl=jobspec.FAILURE_TTL
    )
    _drain(res)
    counts = proc.job_counts(res.redis, [q.name])[0]
    assert (counts.failed, counts.queued, counts.started) == (1, 0, 0)
    failed = FailedJobRegistry(q.name, connection=res.redis)
    expires = failed.get_expiration_time(job)
    assert expires.timestamp() > time.time() + 5 * 365 * 24 * 3600  # kept, not expired after rq's one year
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    conn.execute("ALTER TABLE usage_daily_away RENAME TO usage_daily")
    assert proc.requeue_failed(res.redis, [q.name]) == 1
    _drain(res)
    assert proc.job_counts(res.redis, [q.name])[0].failed == 0
    assert_consistent(conn, docs)


def test_transient_failure_is_retried_by_rq(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    docs = [event(f"t{i}") for i in range(5)]
    # the job waits on a lock; its backend is terminated (57P01, as in a Postgres restart): transient
    q = ingest_queue(res)
    locker = psycopg.connect(res.settings.database_url, autocommit=False)
    try:
        locker.execute("LOCK TABLE usage_daily IN ACCESS EXCLUSIVE MODE")
        job = enqueue_batch(q, [text(d) for d in docs])

        def kill_waiters() -> None:
            time.sleep(1.0)
            with psycopg.connect(res.settings.database_url, autocommit=True) as admin:
                for _ in range(2):  # the job retries once at once on a fresh connection: kill that one too
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = 'usage_daily'::regclass"
                        " AND NOT granted"
                    )
                    time.sleep(1.0)
            locker.rollback()

        t = threading.Thread(target=kill_waiters)
        t.start()
        _drain(res)
        t.join()
    finally:
        locker.close()
    j = Job.fetch(job.id, connection=res.redis, serializer=JSONSerializer)
    assert j.get_status() == "scheduled" and j.retries_left == jobspec.RETRY_MAX - 1
    time.sleep(jobspec.RETRY_INTERVALS[0] + 0.2)
    assert proc.enqueue_due(q) == 1
    _drain(res)
    assert_consistent(conn, docs)


def test_redis_checks_and_queue_discovery(res: proc.Resources, rconn: redis.Redis) -> None:
    warnings = proc.redis_warnings(res.redis)
    conf = res.redis.config_get("appendonly")
    assert (conf.get("appendonly") == "yes") != any("appendonly" in w for w in warnings)
    enqueue_batch(Queue("usagebill-orgs-1", connection=res.redis, serializer=JSONSerializer), [])
    enqueue_batch(Queue("other", connection=res.redis, serializer=JSONSerializer), [])
    assert proc.queue_names(res.redis, res.settings) == ["usagebill", "usagebill-orgs-1"]
    assert proc.queue_names(res.redis, res.settings, ["x", "x"]) == ["x"]


def test_a_finished_job_is_saved_without_compressing_its_payload_again(
    res: proc.Resources, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [event(f"z{i}", input_tokens=100 + i) for i in range(200)]
    job = enqueue_batch(ingest_queue(res), [text(d) for d in docs])
    stored = res.redis.hget(job.key, "data")
    assert stored is not None
    payload = zlib.decompress(stored)
    sizes: list[int] = []
    real = rq.job.zlib.compress

    def counted(data: bytes, *args: Any) -> bytes:
        sizes.append(len(data))
        return real(data, *args)

    monkeypatch.setattr(rq.job.zlib, "compress", counted)
    _drain(res)
    monkeypatch.undo()
    assert max(sizes, default=0) < len(payload) // 10  # rq saved the job; the payload was not compressed again
    assert res.redis.hget(job.key, "data") == stored
    done = Job.fetch(job.id, connection=res.redis, serializer=JSONSerializer)
    assert done.get_status() == "finished" and list(done.args) == [[text(d) for d in docs]]
    assert done.return_value()["inserted"] == 200
    assert_consistent(conn, docs)
    # a loaded job whose payload is then changed is saved with the new payload
    changed = proc.IngestJob.fetch(job.id, connection=res.redis, serializer=JSONSerializer)
    assert len(changed.args[0]) == 200  # read, as rq does before it runs a job
    changed.args = (["x"],)
    assert JSONSerializer.loads(zlib.decompress(changed.to_dict()["data"]))[2] == [["x"]]


def test_worker_death_is_registered_after_a_signal_left_a_pipeline_open(res: proc.Resources) -> None:
    # rq's SIGTERM handler can interrupt one of its pipelines between MULTI and EXEC (rq issue #2175):
    # the connection goes back to the pool with the transaction open
    worker = proc.make_worker(res.redis, [res.settings.queue], prefetch=False)
    worker.register_birth()
    pool = res.redis.connection_pool
    dirty = pool.get_connection()
    dirty.send_command("MULTI")
    assert dirty.read_response() == b"OK"
    pool.release(dirty)
    worker.register_death()
    assert worker.name not in {w.name for w in proc.SimpleWorker.all(connection=res.redis)}


def _enqueue_as(q: Queue, job_id: str, texts: list[str]) -> None:
    # the same job id again: a job that runs a second time (its worker died after finishing its work)
    q.enqueue_call(func=jobspec.INGEST_FUNC, args=(texts,), job_id=job_id, result_ttl=jobspec.RESULT_TTL)


def _run_twice(res: proc.Resources, job_id: str, texts: list[str]) -> dict[str, Any]:
    # the same job run twice to its end; its second result
    for _ in range(2):
        _enqueue_as(ingest_queue(res), job_id, texts)
        _drain(res)
    result = Job.fetch(job_id, connection=res.redis, serializer=JSONSerializer).return_value()
    assert isinstance(result, dict)
    return result


def test_a_split_job_run_again_enqueues_the_same_halves(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    # its worker died after the split, before rq's bookkeeping: the halves it enqueues again (the same
    # ids) find their claims and park nothing twice
    with worker_resources(settings, batch_size=4) as res:
        q = ingest_queue(res)
        docs = [event(f"sp{i}") for i in range(8)]
        texts = [text(d) for d in docs] + ["not json"]
        _enqueue_as(q, "parent", texts)
        _drain(res)
        first = Job.fetch("parent", connection=res.redis, serializer=JSONSerializer).return_value()
        assert first["split"] == ["parent-h1", "parent-h2"]
        _enqueue_as(q, "parent", texts)
        _drain(res)
        again = Job.fetch("parent", connection=res.redis, serializer=JSONSerializer).return_value()
        assert again["split"] == first["split"]
        half = Job.fetch("parent-h1", connection=res.redis, serializer=JSONSerializer).return_value()
        assert half["already_committed"] and half["inserted"] == 4
        assert_consistent(conn, docs)
        assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (1,)  # parked once


def test_a_parked_job_run_again_parks_nothing_twice(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    conn.execute("ALTER TABLE events ADD CONSTRAINT test_poison CHECK (model <> 'poison-model')")
    result = _run_twice(res, "lonely", [text(event("bad", model="poison-model"))])
    assert result["already_committed"] and result["parked"] == 1
    assert conn.execute("SELECT event_id, job_id FROM rejected_events").fetchall() == [("bad", "lonely")]


def test_a_stop_swallowed_while_idle_is_honoured_before_the_next_dequeue(res: proc.Resources) -> None:
    worker = proc.make_worker(res.redis, [res.settings.queue], prefetch=False)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert not worker.should_run_maintenance_tasks or worker.last_cleaned_at is None
        with pytest.raises(StopRequested):  # rq raises it in an idle worker; say something swallowed it
            worker.request_stop(signal.SIGTERM, None)
        worker.last_cleaned_at = datetime.now(UTC)  # maintenance just ran: not due for 30 s
        assert worker.should_run_maintenance_tasks  # rq's loops ask before every dequeue
        with pytest.raises(StopRequested):
            worker.run_maintenance_tasks()
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])


def test_an_oversized_event_run_again_is_parked_once(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    with worker_resources(settings, batch_max_bytes=1024) as res:
        result = _run_twice(res, "big-one", [text(event("big", tags={"note": "x" * 2000}))])
        assert result["already_committed"] and result["parked"] == 1
        assert conn.execute("SELECT event_id, job_id FROM rejected_events").fetchall() == [("big", "big-one")]


@pytest.mark.parametrize(("commit_ahead", "ingesting"), [(True, 2), (False, 1)])
def test_the_connections_a_worker_ingests_on_are_ready_at_start(
    settings: Settings, conn: psycopg.Connection[Any], commit_ahead: bool, ingesting: int
) -> None:
    # its own and the one committing ahead: staging tables made and the statements run once, on an empty stage
    with worker_resources(settings, commit_ahead=commit_ahead) as res:
        with contextlib.ExitStack() as held:
            conns = [held.enter_context(res.pool.connection()) for _ in range(ingesting)]
            assert all(c in ingest._staged for c in conns)
            assert all(c.execute("SELECT to_regclass('pg_temp.ingest_stage')").fetchone() != (None,) for c in conns)
            for c in conns:
                c.rollback()
        assert res.pool.get_stats()["pool_size"] == ingesting
        # the first batch on them counts as any other
        add_rate(conn)
        docs = [event(f"w{i}") for i in range(3)]
        with res.pool.connection() as c:
            assert ingest.ingest_batch(c, [text(d) for d in docs], settings=res.settings).inserted == 3
        assert_consistent(conn, docs)
