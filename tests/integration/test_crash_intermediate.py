"""A job left in rq's intermediate list (dequeued, never started: its worker or Redis died in between)
is recovered by the next `usagebill worker --burst`, not stranded where no job count shows it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from billing.settings import Settings
from tests.integration.ingest_util import add_rate, assert_consistent, event, text
from worker import worker as proc
from worker.jobs import enqueue_batch


def test_job_stranded_in_the_intermediate_list_is_run(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    add_rate(conn)
    docs = [event(f"s{i}") for i in range(30)]
    q = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    first = enqueue_batch(q, [text(d) for d in docs[:15]])
    enqueue_batch(q, [text(d) for d in docs[15:]])
    # what a worker's dequeue does (LMOVE queue -> intermediate) before it records the job as started;
    # the worker then dies: the job is in no queue and no registry
    moved = rconn.lmove(q.key, q.intermediate_queue_key)
    assert moved == first.id.encode()
    counts = proc.job_counts(rconn, [q.name])[0]
    assert (counts.queued, counts.started, counts.scheduled, counts.failed) == (1, 0, 0, 0)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", "--burst"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "stranded in the intermediate list" in done.stderr
    assert rconn.llen(q.intermediate_queue_key) == 0
    assert_consistent(conn, docs)
