"""Trivial rq jobs per second with rq's forking Worker and its non-forking SimpleWorker (one process each).

Why: the ingest job runs ~1000 events per job, but a forking worker pays a fork per job and cannot
keep a connection pool across jobs. Run: .venv/bin/python bench/bench_worker_classes.py [N]
"""

from __future__ import annotations

import sys
import time

import redis
from ingest_env import private_redis
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer


def rate(worker_class: type[Worker] | type[SimpleWorker], url: str, n: int) -> float:
    client = redis.Redis.from_url(url)
    client.flushdb()
    q = Queue("bench", connection=client, serializer=JSONSerializer)
    with client.pipeline() as pipe:
        for i in range(n):
            q.enqueue_call("builtins.len", args=([i],), pipeline=pipe, result_ttl=60)
        pipe.execute()
    w = worker_class([q], connection=client, serializer=JSONSerializer)
    t0 = time.perf_counter()
    w.work(burst=True, logging_level="ERROR")
    elapsed = time.perf_counter() - t0
    client.close()
    return n / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with private_redis() as url:
        simple = rate(SimpleWorker, url, n)
        forking = rate(Worker, url, n)
    print(f"trivial jobs/s over {n} jobs: SimpleWorker (non-forking) {simple:.0f}/s, Worker (forking) {forking:.0f}/s")


if __name__ == "__main__":
    main()
