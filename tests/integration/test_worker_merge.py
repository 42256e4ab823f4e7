"""Merging waiting jobs: one transaction carries the prepared jobs queued behind a job, each counted as its own."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from billing import ingest, quotas
from billing.db import connect
from billing.errors import AlreadyCommitted
from billing.settings import Settings
from producer import jobspec
from producer.quota import QuotaClient
from tests.integration.ingest_util import (
    add_rate,
    assert_consistent,
    event,
    ingest_queue,
    run_burst,
    start_paused,
    text,
    wait_for_pause,
    worker_resources,
)
from worker import worker as proc
from worker.jobs import commit_ahead, enqueue_batch
from worker.prefetch import Prefetcher

LATE = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def _jobs(tag: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Three batches as three queued jobs would carry them: (their texts, the distinct valid docs).

    Across the jobs: re-sends, a conflict with an earlier job's copy, two copies of one event_id with
    different payloads in two later jobs (the earlier job's copy wins), invalid events, and an event too
    far ahead of the clock in the last one.
    """
    a, b, c = event(f"{tag}-a", input_tokens=500), event(f"{tag}-b", user_id="u2"), event(f"{tag}-c", org_id="org-b")
    x1, x2 = event(f"{tag}-x", output=11), event(f"{tag}-x", output=22)
    late = event(f"{tag}-late", occurred_at=LATE)
    first = [text(a), text(b), text(a), '{"schema_version": 1']
    second = [text(c), text(event(f"{tag}-a", input_tokens=999)), text(x1), "not json"]
    third = [text(c), text(x2), text(late), text(b)]
    return [first, second, third], [a, b, c, x1]


def _counts(r: ingest.IngestResult) -> tuple[int, ...]:
    return (r.received, r.inserted, r.duplicates, r.conflicts, r.rejected, r.unpriced)


def test_a_transaction_carrying_jobs_stores_and_counts_what_they_would_alone(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    add_rate(conn)
    alone_batches, alone_docs = _jobs("alone")
    merged_batches, merged_docs = _jobs("merged")
    with connect(settings) as c:
        alone = [
            ingest.ingest_batch(c, batch, settings=settings, job_id=f"alone-{i}")
            for i, batch in enumerate(alone_batches)
        ]
        head, *rest = merged_batches
        carried = ingest.ingest_batch(
            c,
            head,
            settings=settings,
            job_id="merged-0",
            prepared=ingest.prepare(head),
            riders=[ingest.Rider(f"merged-{i}", ingest.prepare(b)) for i, b in enumerate(rest, start=1)],
        )
    assert [_counts(r) for r in alone] == [(4, 2, 1, 0, 1, 0), (4, 2, 0, 1, 1, 0), (4, 0, 2, 1, 1, 0)]
    assert list(carried.merged) == ["merged-1", "merged-2"]
    assert [_counts(carried), *map(_counts, carried.merged.values())] == [_counts(r) for r in alone]
    assert_consistent(conn, alone_docs + merged_docs)
    cols = "org_id, user_id, model, input_tokens, output_tokens, cost_total"
    stored = {
        tag: {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT split_part(event_id, '-', 2), {cols} FROM events WHERE event_id LIKE %s", (f"{tag}-%",)
            )
        }
        for tag in ("alone", "merged")
    }
    assert stored["merged"] == stored["alone"]
    # the first copy in queue order wins: the first job's `a`, the second job's `x`
    assert stored["merged"]["a"][3] == 500 and stored["merged"]["x"][4] == 11
    # each conflict kept with its own copy's payload (the worker's, found by the copy's position in its part)
    conflicts = conn.execute(
        "SELECT event_id, payload->>'event_id', payload->'usage'->>'input_tokens', payload->'usage'->>'output_tokens'"
        " FROM event_conflicts ORDER BY 1"
    ).fetchall()
    assert [c[0] for c in conflicts] == ["alone-a", "alone-x", "merged-a", "merged-x"]
    assert all(c[0] == c[1] for c in conflicts)
    assert [c[2:] for c in conflicts[2:]] == [c[2:] for c in conflicts[:2]] and conflicts[2][2] == "999"
    assert conflicts[3][3] == "22"
    # each rejection under the job that brought it
    rejected = conn.execute("SELECT job_id, reason FROM rejected_events ORDER BY id").fetchall()
    by_job = {t: sorted((j.split("-")[1], r) for j, r in rejected if j.startswith(t)) for t in ("alone", "merged")}
    assert by_job["merged"] == by_job["alone"] and [j for j, _ in by_job["merged"]] == ["0", "1", "2"]
    assert any("ahead of the server clock" in r for _, r in by_job["merged"])


def test_each_carried_job_routes_the_months_of_the_rows_it_stages(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    # the worker routes the usage months of the rows it stages, job by job: a rider of another month, one
    # with an event too far ahead of the clock (its rows go through the clock's check, its month is not
    # routed), and the lead of a third month
    aug, sep, octo = (f"2026-{m}-15T12:00:00+00:00" for m in ("08", "09", "10"))
    lead = [text(event("mo-a", occurred_at=aug))]
    plain = [text(event("mo-b", occurred_at=sep))]
    checked = [text(event("mo-c", occurred_at=octo)), text(event("mo-late", occurred_at=LATE))]
    with connect(settings) as c:
        res = ingest.ingest_batch(
            c,
            lead,
            settings=settings,
            job_id="mo-0",
            prepared=ingest.prepare(lead),
            riders=[ingest.Rider("mo-1", ingest.prepare(plain)), ingest.Rider("mo-2", ingest.prepare(checked))],
        )
    assert [_counts(r) for r in (res, *res.merged.values())] == [
        (1, 1, 0, 0, 0, 1),
        (1, 1, 0, 0, 0, 1),
        (2, 1, 0, 0, 1, 1),
    ]
    stored = conn.execute("SELECT event_id, usage_month, billing_month FROM events ORDER BY 1").fetchall()
    months = [date(2026, m, 1) for m in (8, 9, 10)]
    assert stored == [(f"mo-{x}", m, m) for x, m in zip("abc", months, strict=True)]
    assert [r[0] for r in conn.execute("SELECT month FROM billing_months ORDER BY 1")] == months


def test_each_conflict_keeps_its_own_payload_when_dropped_rows_come_before_it(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    # the conflicting copies' payloads are found by staged position: rows dropped before them (by the clock,
    # by validation) must not shift them, in the job's prepared batch nor in a rider's
    add_rate(conn)
    with connect(settings) as c:
        ingest.ingest_batch(c, [text(event("d-a")), text(event("d-x"))], settings=settings, job_id="d-0")
        own = [text(event("d-t0")), text(event("d-late", occurred_at=LATE)), text(event("d-a", input_tokens=777))]
        rider = ['{"schema_version": 1', text(event("d-x", output=33))]
        carried = ingest.ingest_batch(
            c,
            own,
            settings=settings,
            job_id="d-1",
            prepared=ingest.prepare(own),
            riders=[ingest.Rider("d-2", ingest.prepare(rider))],
        )
    assert _counts(carried) == (3, 1, 0, 1, 1, 0) and _counts(carried.merged["d-2"]) == (2, 0, 0, 1, 1, 0)
    stored = conn.execute(
        "SELECT event_id, payload->'usage'->>'input_tokens', payload->'usage'->>'output_tokens'"
        " FROM event_conflicts ORDER BY 1"
    ).fetchall()
    assert stored == [("d-a", "777", "200"), ("d-x", "1000", "33")]


def test_a_job_committed_by_an_open_transaction_waits_for_it_and_returns_its_result(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    # another worker took a job while the transaction carrying it is still open
    texts = [text(event(f"w{i}")) for i in range(3)] + ["not json"]
    with connect(settings) as carrier:
        carrier.execute(
            "INSERT INTO ingest_jobs (job_id, result) VALUES ('job-w', %s)",
            ('{"received": 4, "inserted": 3, "rejected": 1, "merged_into": "job-v"}',),
        )
        outcome: list[Any] = []

        def run_it() -> None:
            with connect(settings) as c:
                try:
                    outcome.append(ingest.ingest_batch(c, texts, settings=settings, job_id="job-w"))
                except AlreadyCommitted as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=run_it)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive() and not outcome  # waiting for the carrying transaction
        carrier.commit()
        thread.join(10)
    [done] = outcome
    assert isinstance(done, AlreadyCommitted) and done.result["merged_into"] == "job-v"
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)  # nothing ingested twice
    assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (0,)  # nor parked twice


def test_a_rider_committed_elsewhere_is_left_out(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    batches = [[text(event(f"l{j}-{i}")) for i in range(3)] for j in range(3)]
    conn.execute("INSERT INTO ingest_jobs (job_id, result) VALUES ('job-1', '{}')")
    with connect(settings) as c:
        result = ingest.ingest_batch(
            c,
            batches[0],
            settings=settings,
            job_id="job-0",
            riders=[ingest.Rider(f"job-{j}", ingest.prepare(batches[j])) for j in (1, 2)],
        )
    assert list(result.merged) == ["job-2"] and result.inserted == 3 and result.merged["job-2"].inserted == 3
    ids = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    assert ids == {f"l{j}-{i}" for j in (0, 2) for i in range(3)}
    stored = dict(conn.execute("SELECT job_id, result FROM ingest_jobs").fetchall())
    assert stored["job-0"]["merged"] == ["job-2"] and stored["job-2"]["merged_into"] == "job-0"
    assert stored["job-2"]["inserted"] == 3 and stored["job-1"] == {}


def _prepare_all(worker: proc.UsagebillWorker, jobs: list[Job]) -> None:
    """Have the look-ahead prepare every queued job before the worker starts (a backlog, prepared)."""
    assert worker.prefetcher is not None
    worker.prefetcher.ahead("not-a-queued-job")
    deadline = time.monotonic() + 10
    while not {j.id for j in jobs} <= set(worker.prefetcher.ready_ids()):
        assert time.monotonic() < deadline, "the look-ahead did not prepare the jobs"
        time.sleep(0.005)


def _result(res: proc.Resources, job: Job) -> dict[str, Any]:
    value = Job.fetch(job.id, connection=res.redis, serializer=JSONSerializer).return_value()
    assert isinstance(value, dict)
    return value


def test_worker_carries_the_prepared_jobs_waiting_behind_its_job(
    res: proc.Resources, conn: psycopg.Connection[Any]
) -> None:
    add_rate(conn)
    docs = [event(f"m{i}", user_id=f"u{i % 4}", input_tokens=100 + i) for i in range(300)]
    q = ingest_queue(res)
    jobs = [enqueue_batch(q, [text(d) for d in docs[i : i + 50]] + ["not json"]) for i in range(0, 300, 50)]
    jobs.append(enqueue_batch(q, [text(d) for d in docs[::3]]))  # re-sends, in a later job
    worker = proc.make_worker(res.redis, [res.settings.queue])
    assert worker.prefetcher is not None
    _prepare_all(worker, jobs)
    merged = worker.prefetcher.merged
    worker.work(burst=True, logging_level="WARNING")
    assert_consistent(conn, docs)
    # the first job carried all the others (7 x ~50 events, within USAGEBILL_MERGE_MAX_EVENTS)
    assert worker.prefetcher.merged - merged == 6
    results = [_result(res, j) for j in jobs]
    assert results[0]["merged"] == [j.id for j in jobs[1:]] and "merged_into" not in results[0]
    assert all(r["merged_into"] == jobs[0].id and r["merged"] == [] for r in results[1:])
    # every job reports its own counts: they add up to what the transaction did
    assert [r["inserted"] for r in results] == [50] * 6 + [0]
    assert [r["rejected"] for r in results] == [1] * 6 + [0]
    assert results[-1]["duplicates"] == 100 and results[-1]["received"] == 100
    assert FinishedJobRegistry(q.name, connection=res.redis).count == len(jobs) and q.count == 0
    # their rejections are parked under their own job ids
    parked = conn.execute("SELECT job_id, count(*) FROM rejected_events GROUP BY 1").fetchall()
    assert dict(parked) == {j.id: 1 for j in jobs[:6]}


@pytest.mark.parametrize("bound", ["events", "bytes"])
def test_riders_stay_within_the_transaction_bounds(bound: str, res: proc.Resources) -> None:
    q = ingest_queue(res)
    batches = [[text(event(f"b{j}-{i}")) for i in range(10)] for j in range(4)]
    jobs = [enqueue_batch(q, b) for b in batches]
    size = jobspec.batch_bytes(batches[0])
    # room for the job's own batch and one more: 25 events, or 2.5 batches' bytes
    bounds = (
        {"max_bytes": 10 * size, "merge_events": 25}
        if bound == "events"
        else {"max_bytes": size * 5 // 2, "merge_events": 1000}
    )
    prefetcher = Prefetcher(res.redis, [q.key], max_events=10, **bounds)
    deadline = time.monotonic() + 10
    for ready in (2, 4):  # a round prepares what one transaction can hold: 2 jobs within 25 events
        prefetcher.ahead("current")
        while len(prefetcher.ready_ids()) < ready:
            assert time.monotonic() < deadline, "the look-ahead did not prepare the jobs"
            time.sleep(0.005)
        if bound == "events" and ready == 2:
            time.sleep(0.2)
            assert len(prefetcher.ready_ids()) == 2  # the round stopped before a job that does not fit
    assert prefetcher.ready_ids() == [j.id for j in jobs]
    head = jobs[0]
    q.remove(head.id)  # taken by the worker
    assert prefetcher.take(head.id, res.redis.hget(Job.key_for(head.id), "data")) is not None
    riders = prefetcher.riders(head.id, q.job_ids, 10, size)
    assert [r.job_id for r in riders] == [jobs[1].id] and riders[0].prepared.events == batches[1]
    prefetcher.committed({jobs[1].id: {"inserted": 10}})
    packed = res.redis.hget(Job.key_for(jobs[1].id), "data")
    assert prefetcher.merged_into(jobs[1].id, packed) == {"inserted": 10}
    assert prefetcher.merged_into(jobs[1].id, packed) is None  # once
    # the very payload only: a job loaded from other bytes runs itself (and finds its claim, if committed)
    riders = prefetcher.riders("other", [jobs[2].id], 10, size)
    assert [r.job_id for r in riders] == [jobs[2].id]
    prefetcher.committed({jobs[2].id: {"inserted": 10}})
    assert prefetcher.merged_into(jobs[2].id, b"other bytes") is None
    assert prefetcher.merged_into(jobs[2].id, res.redis.hget(Job.key_for(jobs[2].id), "data")) is None


def test_merging_can_be_turned_off(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    assert Settings(USAGEBILL_MERGE_MAX_EVENTS="0").merge_max_events == 0
    with worker_resources(settings, merge_max_events=0) as res:
        docs = [event(f"n{i}") for i in range(60)]
        q = ingest_queue(res)
        jobs = [enqueue_batch(q, [text(d) for d in docs[i : i + 20]]) for i in range(0, 60, 20)]
        worker = proc.make_worker(res.redis, [res.settings.queue])
        assert worker.prefetcher is not None
        _prepare_all(worker, jobs)
        p = worker.prefetcher
        before = (p.hits + p.committed_ahead, p.merged)
        worker.work(burst=True, logging_level="WARNING")
        # each job in a transaction of its own: run by its job (with its prepared batch), or committed ahead
        # of rq after the previous one (worker/prefetch.py), never carried by another job's
        assert (p.hits + p.committed_ahead - before[0], p.merged - before[1]) == (3, 0)
        assert all("merged_into" not in _result(res, j) for j in jobs)
        assert_consistent(conn, docs)


def test_a_job_no_longer_queued_is_not_carried(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    docs = [event(f"g{i}") for i in range(30)]
    q = ingest_queue(res)
    jobs = [enqueue_batch(q, [text(d) for d in docs[i : i + 10]]) for i in range(0, 30, 10)]
    worker = proc.make_worker(res.redis, [res.settings.queue])
    _prepare_all(worker, jobs)
    q.remove(jobs[1].id)  # prepared, then taken off the queue (by another worker, or an operator)
    worker.work(burst=True, logging_level="WARNING")
    assert_consistent(conn, docs[:10] + docs[20:])
    assert _result(res, jobs[0])["merged"] == [jobs[2].id]
    assert Job.fetch(jobs[1].id, connection=res.redis, serializer=JSONSerializer).get_status() == "queued"


def test_a_failed_transaction_leaves_each_job_to_run_alone(
    res: proc.Resources, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # a valid event the database refuses (a data error), in a carried job: the transaction fails, each
    # job then runs on its own and the event is isolated in its own job (split, then parked)
    conn.execute("ALTER TABLE events ADD CONSTRAINT test_poison CHECK (model <> 'poison-model')")
    docs = [event(f"q{i}") for i in range(20)]
    q = ingest_queue(res)
    jobs = [
        enqueue_batch(q, [text(d) for d in docs[:10]]),
        enqueue_batch(q, [text(d) for d in docs[10:15]] + [text(event("bad", model="poison-model"))]),
        enqueue_batch(q, [text(d) for d in docs[15:]]),
    ]
    worker = proc.make_worker(res.redis, [res.settings.queue])
    assert worker.prefetcher is not None
    _prepare_all(worker, jobs)
    merged = worker.prefetcher.merged
    with caplog.at_level(logging.WARNING, logger="usagebill.jobs"):
        worker.work(burst=True, logging_level="WARNING")
    assert any("carrying 2 waiting job(s) failed, each runs on its own" in r.message for r in caplog.records)
    assert_consistent(conn, docs)
    rows = conn.execute("SELECT event_id, reason FROM rejected_events").fetchall()
    assert len(rows) == 1 and rows[0][0] == "bad" and "test_poison" in rows[0][1]
    assert "merged" not in _result(res, jobs[0]) or _result(res, jobs[0])["merged"] == []
    assert "split" in _result(res, jobs[1])
    # the job after the poisoned one may be carried by a later transaction: it is never lost or doubled
    assert worker.prefetcher.merged - merged <= 1
    assert FailedJobRegistry(q.name, connection=res.redis).count == 0


def _three_jobs(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], tag: str
) -> tuple[list[dict[str, Any]], Queue, list[Job]]:
    """A rate, and three queued jobs of 20 valid events (ids `<tag><n>`) and one invalid each."""
    add_rate(conn)
    docs = [event(f"{tag}{i}", user_id=f"u{i % 3}") for i in range(60)]
    q = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    return docs, q, [enqueue_batch(q, [text(d) for d in docs[i : i + 20]] + ["not json"]) for i in range(0, 60, 20)]


def _rerun_counts_each_once(
    cli_env: dict[str, str],
    rconn: redis.Redis,
    conn: psycopg.Connection[Any],
    docs: list[dict[str, Any]],
    q: Queue,
    jobs: list[Job],
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """After a killed worker (`_three_jobs`): a burst worker drains the queue; every event counted once,
    each job's rejection parked once under its own id, and each job reporting its own counts. Returns the
    burst run and each job's result."""
    rerun = run_burst(cli_env)
    assert rerun.returncode == 0, rerun.stderr
    assert q.count == 0 and StartedJobRegistry(q.name, connection=rconn).count == 0
    assert_consistent(conn, docs)
    parked = conn.execute("SELECT job_id, count(*) FROM rejected_events GROUP BY 1").fetchall()
    assert dict(parked) == {j.id: 1 for j in jobs}
    results = [Job.fetch(j.id, connection=rconn, serializer=JSONSerializer).return_value() for j in jobs]
    assert [(r["inserted"], r["rejected"]) for r in results] == [(20, 1)] * 3
    return rerun, results


@pytest.mark.parametrize("step", ["in_tx", "after_commit"])
def test_sigkill_during_a_transaction_carrying_jobs_then_rerun_counts_once(
    step: str,
    settings: Settings,
    rconn: redis.Redis,
    conn: psycopg.Connection[Any],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    docs, q, jobs = _three_jobs(settings, rconn, conn, "k")
    marker = tmp_path / "marker"
    # every transaction pauses 2 s at `step`; the first job's: the look-ahead prepares the others meanwhile.
    # The second job carries the third in its own run, not committed ahead (see the test below)
    env = dict(cli_env, USAGEBILL_COMMIT_AHEAD="false")
    worker = start_paused(env, step, marker, burst=True, seconds=2)
    marker.unlink()
    wait_for_pause(worker, step, marker)  # the second job's, carrying the third
    carrying = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
    ).fetchone()
    if step == "in_tx":
        # the open transaction holds the third job's keys: inserting one waits for it
        with connect(settings, autocommit=True) as probe:
            probe.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                probe.execute(
                    "INSERT INTO event_keys (event_id, payload_hash, occurred_at) VALUES ('k55', '\\x00', now())"
                    " ON CONFLICT DO NOTHING"
                )
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=10)
    committed = conn.execute("SELECT count(*) FROM events").fetchone()
    if step == "in_tx":
        assert carrying == (1,) and committed == (20,)  # the carrying transaction rolled back
    else:
        assert carrying == (0,) and committed == (60,)  # committed, its jobs not finished yet
    assert q.job_ids == [jobs[2].id]  # the carried job was still queued: nothing is lost
    assert StartedJobRegistry(q.name, connection=rconn).count == 1
    _, results = _rerun_counts_each_once(cli_env, rconn, conn, docs, q, jobs)
    if step == "after_commit":
        # the carried job and its carrier ran again: they found their stored results
        assert results[1]["already_committed"] and results[1]["merged"] == [jobs[2].id]
        assert results[2]["already_committed"] and results[2]["merged_into"] == jobs[1].id


def _ahead_of(res: proc.Resources, q: Queue, jobs: list[Job], merge_events: int) -> Prefetcher:
    """A look-ahead on `q` that commits ahead, once it has prepared every job of `jobs`."""
    prefetcher = Prefetcher(res.redis, [q.key], max_events=100, max_bytes=10**6, merge_events=merge_events)
    prefetcher.activate(True)
    prefetcher.commit_ahead(commit_ahead)
    prefetcher.ahead("current")
    _wait(lambda: prefetcher.ready_ids() == [j.id for j in jobs], "the look-ahead did not prepare the jobs")
    return prefetcher


def _wait(done: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_the_prepared_jobs_after_a_commit_are_committed_ahead_of_rq(
    res: proc.Resources, conn: psycopg.Connection[Any]
) -> None:
    add_rate(conn)
    docs = [event(f"a{i}", user_id=f"u{i % 3}") for i in range(50)]
    q = ingest_queue(res)
    jobs = [enqueue_batch(q, [text(d) for d in docs[i : i + 10]] + ["not json"]) for i in range(0, 50, 10)]
    packed = {j.id: res.redis.hget(Job.key_for(j.id), "data") for j in jobs}
    prefetcher = _ahead_of(res, q, jobs, merge_events=22)  # a transaction: a job and one rider
    try:
        q.remove(jobs[0].id)  # the worker took the first job: its own to run, never committed ahead
        assert prefetcher.merged_into(jobs[0].id, packed[jobs[0].id]) is None
        prefetcher.go_ahead()  # as its commit does: jobs 1 and 2 commit, then (a chain) jobs 3 and 4
        _wait(lambda: prefetcher.committed_ahead == 4, "the jobs were not committed ahead")
        assert_consistent(conn, docs[10:])
        assert q.job_ids == [j.id for j in jobs[1:]]  # rq has not taken them yet: nothing else happened
        claims = conn.execute("SELECT job_id, result->>'inserted' FROM ingest_jobs ORDER BY committed_at, job_id")
        assert sorted(claims.fetchall()) == sorted((j.id, "10") for j in jobs[1:])
        # when rq hands each job over, it finishes at once with what its transaction stored for it
        results = [prefetcher.merged_into(j.id, packed[j.id]) for j in jobs[1:]]
        assert all(r is not None for r in results)
        r1, r2, r3, r4 = (r or {} for r in results)
        assert r1["merged"] == [jobs[2].id] and "merged_into" not in r1 and r2["merged_into"] == jobs[1].id
        assert r3["merged"] == [jobs[4].id] and r4["merged_into"] == jobs[3].id
        assert [(r["inserted"], r["rejected"], r["received"]) for r in (r1, r2, r3, r4)] == [(10, 1, 11)] * 4
        parked = conn.execute("SELECT job_id, count(*) FROM rejected_events GROUP BY 1").fetchall()
        assert dict(parked) == {j.id: 1 for j in jobs[1:]}
    finally:
        assert prefetcher.stop_ahead(timeout=10)
        prefetcher.activate(False)


def test_a_failed_transaction_ahead_leaves_its_jobs_to_run_alone(
    res: proc.Resources, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    conn.execute("ALTER TABLE events ADD CONSTRAINT test_poison CHECK (model <> 'poison-model')")
    docs = [event(f"f{i}") for i in range(30)]
    q = ingest_queue(res)
    batches = [[text(d) for d in docs[:10]], [text(d) for d in docs[10:20]], [text(d) for d in docs[20:]]]
    batches[1].append(text(event("bad", model="poison-model")))  # valid, refused by the database
    jobs = [enqueue_batch(q, b) for b in batches]
    prefetcher = _ahead_of(res, q, jobs, merge_events=1000)
    try:
        q.remove(jobs[0].id)
        assert prefetcher.merged_into(jobs[0].id, res.redis.hget(Job.key_for(jobs[0].id), "data")) is None
        with caplog.at_level(logging.WARNING, logger="usagebill.prefetch"):
            prefetcher.go_ahead()
            _wait(lambda: prefetcher.ahead_failures == 1, "the transaction ahead did not fail")
        assert any("committing 2 job(s) ahead failed, each runs on its own" in r.message for r in caplog.records)
        assert prefetcher.committed_ahead == 0 and conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        for job in jobs[1:]:  # not done: each runs on its own
            assert prefetcher.merged_into(job.id, res.redis.hget(Job.key_for(job.id), "data")) is None
    finally:
        assert prefetcher.stop_ahead(timeout=10)
        prefetcher.activate(False)
    q.enqueue_job(jobs[0])  # back in the queue: a worker runs all three (the poison event isolated)
    proc.make_worker(res.redis, [res.settings.queue]).work(burst=True, logging_level="WARNING")
    assert_consistent(conn, docs)
    rows = conn.execute("SELECT event_id, reason FROM rejected_events").fetchall()
    assert len(rows) == 1 and rows[0][0] == "bad" and "test_poison" in rows[0][1]
    assert FailedJobRegistry(q.name, connection=res.redis).count == 0


def test_the_mirror_refresh_after_a_transaction_ahead_writes_what_that_transaction_read(
    res: proc.Resources, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_rate(conn)
    quotas.set_quota(conn, org_id="org-m", kind="tokens", limit=Decimal(10**9), redis_client=res.redis)
    assert quotas.rebuild_mirror(conn, res.redis)
    now = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    docs = [event(f"m{i}", org_id="org-m", occurred_at=now) for i in range(30)]
    q = ingest_queue(res)
    jobs = [enqueue_batch(q, [text(d) for d in docs[i : i + 10]]) for i in range(0, 30, 10)]
    # the refresh runs on a thread of its own: it must write the totals the transaction read (handed over
    # from the committing thread), never read them again
    reads: list[str] = []
    real_read = quotas._read_totals

    def read_totals(*args: Any, **kwargs: Any) -> Any:
        reads.append(threading.current_thread().name)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(quotas, "_read_totals", read_totals)
    prefetcher = _ahead_of(res, q, jobs, merge_events=1000)
    try:
        q.remove(jobs[0].id)  # rq's own: the other two commit ahead, in one transaction
        assert prefetcher.merged_into(jobs[0].id, res.redis.hget(Job.key_for(jobs[0].id), "data")) is None
        prefetcher.go_ahead()
        _wait(lambda: prefetcher.committed_ahead == 2, "the jobs were not committed ahead")
        assert prefetcher.drain_after(timeout=10)
    finally:
        assert prefetcher.stop_ahead(timeout=10)
        prefetcher.activate(False)
    assert reads == []
    assert QuotaClient(res.redis).check("org-m").remaining_tokens == 10**9 - 20 * 1200
    assert quotas.mirror_drift(conn, res.redis) == []


def test_sigkill_after_jobs_committed_ahead_then_rerun_counts_once(
    settings: Settings,
    rconn: redis.Redis,
    conn: psycopg.Connection[Any],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    docs, q, jobs = _three_jobs(settings, rconn, conn, "z")
    # the first job pauses after its commit; meanwhile the others commit ahead of rq, which never hands
    # them over: the worker is killed first
    worker = start_paused(cli_env, "after_commit", tmp_path / "marker", burst=True, seconds=60)
    deadline = time.monotonic() + 30
    while conn.execute("SELECT count(*) FROM ingest_jobs").fetchone() != (3,):
        assert time.monotonic() < deadline, "the queued jobs were not committed ahead"
        time.sleep(0.02)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (60,)
    assert q.job_ids == [j.id for j in jobs[1:]]  # committed, still queued
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=10)
    rerun, results = _rerun_counts_each_once(cli_env, rconn, conn, docs, q, jobs)
    assert "re-queued 1 abandoned" in rerun.stderr
    # every job ran again and found what the transaction that committed it stored: nothing twice
    assert all(r["already_committed"] for r in results)


def test_sigkill_during_a_transaction_ahead_then_rerun_counts_once(
    settings: Settings,
    rconn: redis.Redis,
    conn: psycopg.Connection[Any],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    docs, q, jobs = _three_jobs(settings, rconn, conn, "y")
    # only the thread that commits ahead of rq pauses, inside its transaction and for ever: rq's own run of
    # the first job commits, then the queued jobs go ahead in a transaction that never ends
    worker = start_paused(cli_env, "in_tx@usagebill-commit-ahead", tmp_path / "marker", burst=True)
    # the paused transaction: its last statement was the alerts hook's lock, sent after its jobs' results
    # (the pause is right after it)
    open_tx = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        " AND query LIKE %s",
        ("%Serialize threshold checks per (org, month)%",),
    ).fetchone()
    claimed = {str(j) for (j,) in conn.execute("SELECT job_id FROM ingest_jobs")}
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=10)
    assert open_tx == (1,) and jobs[0].id in claimed and len(claimed) < len(jobs)
    # the transaction ahead died with the worker: only what rq's own runs committed is in
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (20 * len(claimed),)
    assert {str(j) for (j,) in conn.execute("SELECT job_id FROM ingest_jobs")} == claimed
    _rerun_counts_each_once(cli_env, rconn, conn, docs, q, jobs)


def test_claims_older_than_90_days_are_pruned(res: proc.Resources, conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO ingest_jobs (job_id, committed_at, result) VALUES"
        " ('old', now() - interval '91 days', '{}'), ('recent', now() - interval '89 days', '{}')"
    )
    proc.prune_job_claims()
    assert conn.execute("SELECT job_id FROM ingest_jobs").fetchall() == [("recent",)]
