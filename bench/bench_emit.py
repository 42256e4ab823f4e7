"""Benchmark: what `emit()` costs the app thread, buffered and direct, against a bare rq enqueue in the same run.

Goals (issue 3): buffered p50 <= 20 us; direct within 1.2x of a bare `rq.Queue.enqueue` of one job
carrying the same payload. Runs against a private redis-server on a free port (started and stopped
here) unless --redis-url is given. Prints the figures; exits 1 when a goal is missed.

    .venv/bin/python bench/bench_emit.py [--n 20000] [--direct-n 3000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from ingest_env import private_redis  # the same private redis-server the other benches use
from rq import Queue
from rq.serializers import JSONSerializer

import producer
from producer import Publisher, Usage, build_event, jobspec
from producer import publisher as publisher_module

BUFFERED_P50_GOAL_US = 20.0
DIRECT_RATIO_GOAL = 1.2


def events(n: int) -> list[producer.UsageEvent]:
    at = datetime(2026, 1, 15, tzinfo=UTC)
    return [
        build_event(
            provider="openai",
            model="gpt-4o-mini",
            usage=Usage(input_tokens=1200 + i % 100, cached_input_tokens=256, output_tokens=300),
            org_id="org_bench",
            user_id="user_42",
            event_id=f"ev_bench_{i:08d}",
            occurred_at=at,
        )
        for i in range(n)
    ]


def timed(fn: Callable[[object], None], items: list[object]) -> list[float]:
    """Per-call wall time in microseconds."""
    out = []
    clock = time.perf_counter_ns
    for item in items:
        t0 = clock()
        fn(item)
        out.append((clock() - t0) / 1000)
    return out


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def describe(name: str, samples: list[float]) -> str:
    return (
        f"{name:<34} n={len(samples):>6}  p50={pct(samples, 50):8.1f} us  p99={pct(samples, 99):8.1f} us  "
        f"mean={statistics.fmean(samples):8.1f} us"
    )


def run(url: str, n: int, direct_n: int, spool: str) -> bool:
    client = redis.Redis.from_url(url)
    client.flushdb()

    # -- buffered: the app thread appends to memory; a background thread enqueues batches meanwhile
    evs = events(n)
    pub = producer.configure(
        redis_url=url, mode="buffered", flush_interval=0.2, spool_dir=spool, handle_sigterm=False, buffer_max=n * 2
    )
    for ev in evs[:1000]:  # warm-up (thread start, connection, first INFO)
        producer.emit(ev)
    pub.flush()
    buffered = timed(producer.emit, evs)  # type: ignore[arg-type]
    pub.flush(30)
    sent = pub.counters()
    pub.close()
    publisher_module._default = None
    queued = sum(
        len(job.args[0])
        for job in Queue(jobspec.DEFAULT_QUEUE, connection=client, serializer=JSONSerializer).get_jobs()
    )
    client.flushdb()

    # -- direct vs bare enqueue, interleaved in rounds so drift hits both alike
    devs = events(direct_n)
    texts = [ev.model_dump_json() for ev in devs]
    direct_pub = Publisher(redis_url=url, mode="direct", spool_dir=spool, handle_sigterm=False)
    bare_q = Queue("bench_bare", connection=redis.Redis.from_url(url), serializer=JSONSerializer)
    direct_pub.publish(devs[0])
    bare_q.enqueue(jobspec.INGEST_FUNC, [texts[0]])
    direct: list[float] = []
    bare: list[float] = []
    rounds = 10
    step = max(direct_n // rounds, 1)
    for r in range(rounds):
        chunk = slice(r * step, (r + 1) * step)
        direct += timed(direct_pub.publish, devs[chunk])  # type: ignore[arg-type]
        bare += timed(lambda t: bare_q.enqueue(jobspec.INGEST_FUNC, [t]), texts[chunk])  # type: ignore[arg-type]
        client.flushdb()
    direct_stats = direct_pub.counters()
    direct_pub.close()

    ratio_p50 = pct(direct, 50) / pct(bare, 50)
    ratio_mean = statistics.fmean(direct) / statistics.fmean(bare)
    print(f"redis: {url}  python {sys.version.split()[0]}")
    print(describe("buffered emit() (app thread)", buffered))
    print(f"{'':<34} delivered={queued}/{n + 1000} published={sent['published']} dropped={sent['dropped']}")
    print(describe("direct publish() (one job/event)", direct))
    print(describe("baseline: bare Queue.enqueue", bare))
    print(f"direct / bare: p50 ratio={ratio_p50:.2f}  mean ratio={ratio_mean:.2f}  (spooled={direct_stats['spooled']})")
    ok_buffered = pct(buffered, 50) <= BUFFERED_P50_GOAL_US
    ok_direct = ratio_p50 <= DIRECT_RATIO_GOAL
    print(f"goal buffered p50 <= {BUFFERED_P50_GOAL_US:.0f} us: {'met' if ok_buffered else 'MISSED'}")
    print(f"goal direct <= {DIRECT_RATIO_GOAL}x bare enqueue (p50): {'met' if ok_direct else 'MISSED'}")
    client.close()
    return ok_buffered and ok_direct


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="buffered emits timed")
    parser.add_argument("--direct-n", type=int, default=3000, help="direct publishes and bare enqueues timed")
    parser.add_argument(
        "--redis-url", default=None, help="use this Redis (its db is flushed!) instead of a private one"
    )
    args = parser.parse_args()
    spool = tempfile.mkdtemp(prefix="usagebill-bench-spool-")
    try:
        if args.redis_url:
            ok = run(args.redis_url, args.n, args.direct_n, spool)
        else:
            with private_redis() as url:
                ok = run(url, args.n, args.direct_n, spool)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
