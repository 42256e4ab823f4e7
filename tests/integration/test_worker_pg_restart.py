"""Postgres restarted while a worker ingests: transient failures are retried, every event counts once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from billing.db import CONNECT_OPTIONS
from billing.settings import Settings
from tests.integration.ingest_util import add_rate, assert_consistent, event, text
from worker import worker as proc
from worker.jobs import enqueue_batch

WORKER = [sys.executable, "-m", "worker.cli", "worker", "--burst"]


def _cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if not versions:
        pytest.skip("no local Postgres cluster to restart (pg_ctlcluster)")
    return versions[-1], "main"


@pytest.mark.slow
def test_postgres_restart_during_a_run(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    version, name = _cluster()
    add_rate(conn)
    docs = [event(f"r{i}", user_id=f"u{i % 5}") for i in range(6000)]
    q = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    for i in range(0, len(docs), 100):
        enqueue_batch(q, [text(d) for d in docs[i : i + 100]])
    worker = subprocess.Popen(WORKER, env=cli_env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM events").fetchone() == (0,):
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never committed a batch"
        time.sleep(0.02)
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart", "-m", "fast"], check=True, timeout=60
    )
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    # retries scheduled during the outage: run bursts until every job is done (each re-queues due ones)
    deadline = time.monotonic() + 120
    while True:
        counts = proc.job_counts(rconn, [q.name])[0]
        if counts.queued == counts.started == counts.scheduled == 0:
            break
        assert time.monotonic() < deadline, counts
        time.sleep(1)
        subprocess.run(WORKER, env=cli_env, check=True, capture_output=True, timeout=120)
    assert counts.failed == 0
    with psycopg.connect(settings.database_url, autocommit=True, options=CONNECT_OPTIONS) as fresh:
        assert_consistent(fresh, docs)
