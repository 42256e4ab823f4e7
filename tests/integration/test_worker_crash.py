"""Worker processes killed or stopped at known points, and 4 workers at once: every event counts once."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from billing.settings import Settings
from tests.integration.ingest_util import WORKER, add_rate, assert_consistent, event, run_burst, start_paused, text
from worker.jobs import enqueue_batch


def _queue(settings: Settings, rconn: redis.Redis) -> Queue:
    return Queue(settings.queue, connection=rconn, serializer=JSONSerializer)


@pytest.mark.parametrize("step", ["before_tx", "in_tx", "after_commit"])
def test_sigkill_then_rerun_counts_once(
    step: str,
    settings: Settings,
    rconn: redis.Redis,
    conn: psycopg.Connection[Any],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    add_rate(conn)
    docs = [event(f"k{i}", user_id=f"u{i % 3}") for i in range(40)]
    q = _queue(settings, rconn)
    enqueue_batch(q, [text(d) for d in docs[:20]])
    enqueue_batch(q, [text(d) for d in docs[10:]])  # overlaps the first batch
    # the second job runs as a job of its own (test_worker_merge kills a worker that committed jobs ahead)
    env = dict(cli_env, USAGEBILL_COMMIT_AHEAD="false")
    proc = start_paused(env, step, tmp_path / "marker", burst=True)
    in_flight = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
    ).fetchone()
    assert in_flight == ((1,) if step == "in_tx" else (0,))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    committed = conn.execute("SELECT count(*) FROM events").fetchone()
    assert committed == ((20,) if step == "after_commit" else (0,))
    assert StartedJobRegistry(q.name, connection=rconn).count == 1  # abandoned: rq would wait for its TTL
    rerun = run_burst(cli_env)
    assert rerun.returncode == 0, rerun.stderr
    assert "re-queued 1 abandoned" in rerun.stderr
    assert StartedJobRegistry(q.name, connection=rconn).count == 0
    assert q.count == 0
    assert_consistent(conn, docs)


def test_sigterm_finishes_the_current_batch(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    docs = [event(f"t{i}") for i in range(30)]
    q = _queue(settings, rconn)
    enqueue_batch(q, [text(d) for d in docs[:15]])
    enqueue_batch(q, [text(d) for d in docs[15:]])
    proc = start_paused(cli_env, "in_tx", tmp_path / "marker", burst=False, seconds=2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (15,)  # the current batch, committed
    assert q.count == 1  # the next batch was left for another worker
    assert out == ""
    assert run_burst(cli_env).returncode == 0
    assert_consistent(conn, docs)


def test_four_workers_on_the_same_hot_rows(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    add_rate(conn)
    rng = random.Random(5)
    docs = [event(f"h{i}", user_id=f"u{i % 4}", input_tokens=rng.randint(100, 5000)) for i in range(4000)]
    texts = [text(d) for d in docs]
    q = _queue(settings, rconn)
    jobs = []
    # every event in two batches, in different orders: workers race on the same keys and aggregate rows
    for _ in range(2):
        order = list(range(len(texts)))
        rng.shuffle(order)
        for i in range(0, len(order), 200):
            jobs.append(enqueue_batch(q, [texts[j] for j in order[i : i + 200]]))
    before = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    # one job per transaction: a worker that starts first, alone, would otherwise carry most of the
    # backlog in a few transactions before the others register (merging is tested in test_worker_merge)
    env = dict(cli_env, USAGEBILL_MERGE_MAX_EVENTS="0")
    procs = [subprocess.Popen([*WORKER, "--burst"], env=env, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "failed job" not in err and "retry" not in err.lower(), err
    conn.execute("SELECT pg_stat_clear_snapshot()")
    after = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert after == before
    workers = {Job.fetch(j.id, connection=rconn, serializer=JSONSerializer).worker_name for j in jobs}
    assert len(workers) >= 2  # the batches really were shared between workers
    got = assert_consistent(conn, docs)
    assert conn.execute("SELECT count(*), sum(events) FROM usage_daily").fetchone() == (4, 4000)
    assert got["cost"] > 0


@pytest.mark.slow
def test_running_worker_recovers_a_killed_batch_within_its_maintenance_interval(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    docs = [event(f"m{i}") for i in range(20)]
    q = _queue(settings, rconn)
    enqueue_batch(q, [text(d) for d in docs])
    victim = start_paused(cli_env, "in_tx", tmp_path / "marker", burst=True)
    survivor = subprocess.Popen(WORKER, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the survivor has started (its start-up maintenance saw the victim alive)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        killed_at = time.monotonic()
        while conn.execute("SELECT count(*) FROM events").fetchone() != (20,):
            assert time.monotonic() - killed_at < 45, "the batch was not re-run within the maintenance interval"
            time.sleep(0.25)
        took = time.monotonic() - killed_at
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.communicate(timeout=30)
    assert took < 35  # MAINTENANCE_INTERVAL (30 s) + the job itself
    assert_consistent(conn, docs)
