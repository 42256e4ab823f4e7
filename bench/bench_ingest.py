"""End-to-end ingestion bench: publish -> committed, priced, aggregated, with 1 and 2 workers.

Events are published as an app publishes them, with the producer's Publisher (a few jobs per MULTI/EXEC),
and the clock runs from the first publish to the last job committed.

In the same run, on the same rows: (a) a plain COPY into an unindexed table (the physical ceiling),
(b) a naive baseline (one rq job per event, row-by-row inserts and updates; measured on a sample and
its rate extrapolated), the event -> aggregate latency at a paced 5k events/s, the cost of each
aggregate (few hot rows vs one row per user and day), table sizes, and a cProfile of the ingest path.
Runs on a private redis-server and throwaway databases on the local Postgres.

    .venv/bin/python bench/bench_ingest.py [--events 100000] [--naive 2000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import naive_ingest
import psycopg
import redis
from ingest_env import MODELS, event_doc, fresh_db, private_redis, start_workers, stop_workers, template_db
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

import billing.ingest
from billing.db import CONNECT_OPTIONS
from billing.settings import Settings
from billing.sqlfiles import queries
from producer.publisher import Publisher
from worker.jobs import enqueue_batch

QUEUE = "usagebill"
#: runs of the COPY ceiling and of the 1-worker figure
RUNS = 5


def make_events(n: int, *, dup_frac: float, orgs: int, users: int, seed: int = 1) -> tuple[list[str], int]:
    """n published events, dup_frac of them re-sends of earlier ones (same payload). Returns (texts, distinct)."""
    rng = random.Random(seed)
    distinct = int(n * (1 - dup_frac))
    texts = []
    for i in range(distinct):
        doc = event_doc(rng, f"ev_{seed}_{i:09d}", orgs, users)
        texts.append(json.dumps(doc))
    for _ in range(n - distinct):  # re-sends land later in the stream, as a publisher retry would
        pos = rng.randrange(len(texts))
        texts.insert(rng.randrange(pos, len(texts) + 1), texts[pos])
    return texts, distinct


def add_rates(url: str) -> None:
    with psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn:
        for i, model in enumerate(MODELS[:3]):  # the last model stays unpriced: a realistic mix
            conn.execute(
                "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_cached_input,"
                " price_output, source) VALUES ('openai', %s, '2020-01-01', 'USD', %s, %s, %s, 'bench')",
                (model, 2.5 + i, 1.25 + i, 10 + i),
            )


@contextmanager
def publisher(redis_url: str, batch: int) -> Iterator[Publisher]:
    """The producer's Publisher, as an app publishes: `batch`-event jobs, a few jobs per MULTI/EXEC, each group
    in Redis (and taken by the workers) while the next one is built. `enqueue` raises if Redis does not take a
    group: the bench then stops."""
    with tempfile.TemporaryDirectory() as spool:
        pub = Publisher(redis_url=redis_url, queue=QUEUE, batch_size=batch, spool_dir=spool, handle_sigterm=False)
        try:
            yield pub
        finally:
            pub.close()


#: seconds between two looks at the registries while jobs run: the bench shares the machine's two cores with
#: the pipeline it measures, so it looks rarely (until 23 Nov 04:10 it looked every 2 ms, ~28% of the bench
#: process's CPU in a run); the end of a run is not when it looks but when the last job ended (rq's ended_at,
#: set once the job returned, i.e. after its commit, and a few ms before rq has saved its result: a run
#: lasts seconds)
POLL_SECONDS = 0.05


def wait_done(client: redis.Redis, jobs: int, timeout: float = 600) -> datetime:
    """Wait until `jobs` jobs have finished; returns when the last of them ended (rq's ended_at, set once a
    job's transaction committed: the worker's clock, this machine's)."""
    finished = FinishedJobRegistry(QUEUE, connection=client)
    failed = FailedJobRegistry(QUEUE, connection=client)
    deadline = time.monotonic() + timeout
    while True:
        done, bad = finished.get_job_count(cleanup=False), failed.get_job_count(cleanup=False)
        if bad:
            raise SystemExit(f"{bad} job(s) failed")
        if done >= jobs:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"timeout: {done}/{jobs} jobs done")
        time.sleep(POLL_SECONDS)
    ids = finished.get_job_ids(cleanup=False)
    ends = [job.ended_at for job in Job.fetch_many(ids, connection=client, serializer=JSONSerializer) if job]
    if len(ends) < jobs or not all(ends):
        raise SystemExit(f"{jobs - len(ends)} finished job(s) without their end time")
    return max(_aware(end) for end in ends if end is not None)


def _aware(at: datetime) -> datetime:
    # rq keeps its times in UTC; older rq versions read them back naive
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def check_totals(url: str, distinct: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn:
        ev = conn.execute("SELECT count(*) FROM events").fetchone()
        daily = conn.execute("SELECT sum(events) FROM usage_daily").fetchone()
        assert ev == (distinct,) and daily == (distinct,), (ev, daily, distinct)
        sizes = {}
        for table in ("events", "event_keys", "usage_daily", "invoice_usage"):
            rows, size = conn.execute(  # events is partitioned: its size is its partitions'
                "SELECT (SELECT count(*) FROM " + table + "), coalesce(sum(pg_total_relation_size(c)), 0)"
                " FROM (SELECT %s::regclass AS c UNION ALL SELECT inhrelid FROM pg_inherits"
                " WHERE inhparent = %s::regclass) t",
                (table, table),
            ).fetchone()  # type: ignore[misc]
            sizes[table] = (int(rows), int(size))
        return sizes


class Run(NamedTuple):
    """One end-to-end run: its rate, the table sizes after it, and where its CPU went."""

    rate: float  # events/s
    sizes: dict[str, Any]
    cpu: dict[str, float]  # us of CPU per published event: the workers, their backends, this process, Redis


def e2e(
    template: str,
    redis_url: str,
    texts: list[str],
    distinct: int,
    workers: int,
    batch: int,
    env: dict[str, str] | None = None,
) -> Run:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with fresh_db(template) as url:
        add_rates(url)
        procs = start_workers(workers, url, redis_url, QUEUE, env)
        try:
            with publisher(redis_url, batch) as pub:
                jobs = len(pub._batches(texts))  # the jobs it makes of them (by count and bytes), for wait_done
                # the workers' connections are open (and warmed) once they have registered
                cpu0 = _cpu_now([p.pid for p in procs], url, client)
                started = datetime.now(UTC)  # the wall clock: what the jobs' ended_at is read against
                pub.enqueue(texts)
            elapsed = (wait_done(client, jobs) - started).total_seconds()
            cpu1 = _cpu_now([p.pid for p in procs], url, client)
        finally:
            stop_workers(procs)
        sizes = check_totals(url, distinct)
    client.close()
    cpu = {part: (cpu1[part] - cpu0[part]) * 1e6 / len(texts) for part in cpu1}
    return Run(len(texts) / elapsed, sizes, cpu)


def _cpu_now(worker_pids: list[int], url: str, client: redis.Redis) -> dict[str, float]:
    """CPU seconds so far of the worker processes (all their threads), of the Postgres backends connected to
    the run's database (a backend opened during the run counts from 0 at its end; one closed during it is
    missed), of this process (the publisher, and the polling of wait_done) and of the Redis server."""
    with psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn:
        pids = [
            int(r[0])
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        ]
    return {
        "workers": sum(backend_cpu(pid) for pid in worker_pids),
        "backends": sum(backend_cpu(pid) for pid in pids),
        "bench": time.process_time(),
        "redis": sum(float(v) for k, v in client.info("cpu").items() if k in ("used_cpu_sys", "used_cpu_user")),
    }


def latency(template: str, redis_url: str, rate: int, seconds: float, batch: int, workers: int = 1) -> list[float]:
    """Event -> committed latency (s) per event at `rate` events/s, published as `batch`-event jobs.

    Events are born at a steady `rate`; a job is enqueued when its batch is full (as the producer's
    buffered mode does by size), so each event's latency includes the time it waited for its batch, then
    the queue, then the job: job end (rq's ended_at) minus the event's birth.
    """
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    texts, _ = make_events(int(rate * seconds), dup_frac=0.1, orgs=50, users=100, seed=7)
    q = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    with fresh_db(template) as url:
        add_rates(url)
        procs = start_workers(workers, url, redis_url, QUEUE)
        job_ids = []
        try:
            born, t0 = datetime.now(UTC), time.perf_counter()
            for k, i in enumerate(range(0, len(texts), batch)):
                delay = t0 + (k + 1) * batch / rate - time.perf_counter()  # the batch's last event is born
                if delay > 0:
                    time.sleep(delay)
                job_ids.append(enqueue_batch(q, texts[i : i + batch]).id)
            wait_done(client, len(job_ids))
        finally:
            stop_workers(procs)
    out = []
    for k, job_id in enumerate(job_ids):
        job = q.fetch_job(job_id)
        assert job is not None and job.ended_at
        ended = _aware(job.ended_at)
        for i in range(len(job.args[0])):
            out.append((ended - born).total_seconds() - (k * batch + i) / rate)
    client.close()
    return out


CEILING_COPY = (
    "COPY copy_ceiling (event_id, org_id, user_id, request_type, provider, model, latency_ms, tags, occurred_at,"
    " usage_month, billing_month, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,"
    " reasoning_tokens) FROM STDIN"
)


def copy_ceiling(template: str, texts: list[str]) -> tuple[float, float]:
    """Plain COPY of the same rows (the events' columns) into an unindexed table, two ways (events/s each).

    The ceiling: the rows already in COPY text, sent as one block, so the clock times the server loading
    them (the physical limit), not the client formatting them. Also the same rows handed to psycopg one by one
    (`write_row`, which formats each value in Python): what the bench called the ceiling until 23 Nov 01:51.
    """
    rows = []
    for t in texts:
        d = json.loads(t)
        u = d["usage"]
        at = datetime.fromisoformat(d["occurred_at"])
        month = at.date().replace(day=1)
        rows.append(
            (
                d["event_id"],
                d["org_id"],
                d["user_id"],
                d["request_type"],
                d["provider"],
                d["model"],
                d["latency_ms"],
                json.dumps(d["tags"]),
                at,
                month,
                month,
                u["input_tokens"],
                u["cached_input_tokens"],
                u["cache_write_tokens"],
                u["output_tokens"],
                u["reasoning_tokens"],
            )
        )
    block = "".join("\t".join(_copy_value(v) for v in row) + "\n" for row in rows)
    rates = []
    for as_block in (True, False):
        with fresh_db(template) as url, psycopg.connect(url, options=CONNECT_OPTIONS) as conn:
            conn.execute("CREATE TABLE copy_ceiling (LIKE events INCLUDING DEFAULTS)")  # no indexes, no keys
            conn.commit()
            t0 = time.perf_counter()
            with conn.cursor() as cur, cur.copy(CEILING_COPY) as copy:
                if as_block:
                    copy.write(block)
                else:
                    for row in rows:
                        copy.write_row(row)
            conn.commit()
            rates.append(len(rows) / (time.perf_counter() - t0))
            if conn.execute("SELECT count(*) FROM copy_ceiling").fetchone() != (len(rows),):
                raise SystemExit("the ceiling's COPY did not load every row")
    return rates[0], rates[1]


def _copy_value(value: Any) -> str:
    # COPY text of one of the ceiling's values (the bench's own data: no character needs an escape)
    text = "\\N" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
    if any(c in text for c in "\t\n\r") or ("\\" in text and text != "\\N"):
        raise SystemExit(f"the ceiling's rows need COPY escapes: {text!r}")
    return text


def naive(template: str, redis_url: str, texts: list[str]) -> float:
    """One rq job per event (SimpleWorker, the faster class), row-by-row inserts and updates."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    q = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    with fresh_db(template) as url:
        add_rates(url)
        os.environ["BENCH_NAIVE_DATABASE_URL"] = url
        with client.pipeline() as pipe:
            for t in texts:
                q.enqueue_call("naive_ingest.ingest_one", args=(t,), pipeline=pipe, result_ttl=600)
            pipe.execute()
        t0 = time.perf_counter()
        SimpleWorker([q], connection=client, serializer=JSONSerializer).work(burst=True, logging_level="ERROR")
        elapsed = time.perf_counter() - t0
        if naive_ingest._conn is not None:
            naive_ingest._conn.close()
            naive_ingest._conn = None
    client.close()
    return len(texts) / elapsed


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system, all its threads) of a local process (a Postgres backend, a worker), from
    /proc; NaN when not readable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def aggregate_cost(template: str, texts: list[str], batch: int, profile: bool) -> tuple[dict[str, float], str]:
    """Per-step time of the in-process ingest path (ms per batch), and a cProfile summary.

    Each statement is timed by its named block; `claim + expand + price` is the one statement that claims
    the new keys and prices the claimed events into ingest_new; what the named steps do not cover (COPY,
    commit, round trips, Python glue) is the rest of `whole batch`.
    """
    timings: dict[str, float] = defaultdict(float)
    names: dict[str, str] = {}
    for area in ("ingest", "aggregates"):
        for name, text in queries(area).items():
            names[text.replace("{table}", '"ingest_new"').replace("{n}", "count(*)").replace("{w}", "")] = name
    context: list[str] = []
    real_exec = psycopg.Cursor.execute
    real_validated = billing.ingest.validated
    real_pipeline = psycopg.Connection.pipeline

    def one_by_one(self: psycopg.Connection[Any]) -> Any:
        # the ingest sends some statements together (pipeline mode), where `execute` returns at once: here each
        # runs alone, so that its own time is its statement's (the real path saves their round trips)
        return contextlib.nullcontext()

    def timed_exec(self: psycopg.Cursor[Any], q: Any, params: Any = None, **kw: Any) -> Any:
        text = q.as_string(self.connection) if isinstance(q, psycopg.sql.Composable) else str(q)
        name = names.get(text.strip()) or (context[-1] if context else "quota hooks")
        t = time.perf_counter()
        try:
            return real_exec(self, q, params, **kw)
        finally:
            timings[name] += time.perf_counter() - t

    def timed_validated(*args: Any, **kwargs: Any) -> Iterator[Any]:
        # validation runs inside the COPY (it feeds it): the time spent producing each row
        rows = real_validated(*args, **kwargs)
        while True:
            t = time.perf_counter()
            try:
                row = next(rows)
            except StopIteration:
                return
            finally:
                timings["validate (Python)"] += time.perf_counter() - t
            yield row

    prof = cProfile.Profile()
    try:
        with fresh_db(template) as url:
            add_rates(url)
            settings = Settings(DATABASE_URL=url)
            with psycopg.connect(url, options=CONNECT_OPTIONS) as conn:
                claim = getattr(billing.ingest, "_claim_and_price", None)  # absent before pricing joined the claim
                if claim is not None:
                    names[claim().as_string(conn).strip()] = "claim + expand + price"
                psycopg.Cursor.execute = timed_exec  # type: ignore[method-assign]
                psycopg.Connection.pipeline = one_by_one  # type: ignore[method-assign,assignment]
                billing.ingest.validated = timed_validated  # type: ignore[assignment]
                backend = conn.info.backend_pid
                t0, c0, b0 = time.perf_counter(), time.process_time(), backend_cpu(backend)
                if profile:
                    prof.enable()
                batches = 0
                for i in range(0, len(texts), batch):
                    billing.ingest.ingest_batch(conn, texts[i : i + batch], settings=settings)
                    batches += 1
                if profile:
                    prof.disable()
                timings["whole batch"] = time.perf_counter() - t0
                if not profile:  # CPU seconds spent, less sensitive to other work on the machine than wall time
                    timings["CPU: this process"] = time.process_time() - c0
                    timings["CPU: its Postgres backend"] = backend_cpu(backend) - b0
                psycopg.Cursor.execute = real_exec  # type: ignore[method-assign]
                psycopg.Connection.pipeline = real_pipeline  # type: ignore[method-assign]
    finally:
        psycopg.Cursor.execute = real_exec  # type: ignore[method-assign]
        psycopg.Connection.pipeline = real_pipeline  # type: ignore[method-assign]
        billing.ingest.validated = real_validated  # type: ignore[assignment]
    named = sum(v for k, v in timings.items() if k != "whole batch" and not k.startswith("CPU"))
    timings["COPY, commit, glue"] = timings["whole batch"] - named
    out = io.StringIO()
    if profile:
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return {k: v * 1000 / batches for k, v in timings.items()}, out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--naive", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--latency-seconds", type=float, default=8.0)
    ap.add_argument("--steps-only", action="store_true", help="only the in-process per-step cost (no rq, no workers)")
    args = ap.parse_args()
    texts, distinct = make_events(args.events, dup_frac=0.1, orgs=50, users=100)
    if args.steps_only:
        with template_db() as template:
            print_steps(args.batch, *steps(template, texts, args.batch))
        return
    print(f"events: {len(texts)} published, {distinct} distinct (10% duplicates), batches of {args.batch}")
    with private_redis() as redis_url, template_db() as template:
        # The machine's speed moves by a quarter within minutes: the ceiling is the best of RUNS plain COPYs (a
        # ceiling: the best the machine did), the 1-worker figure the median of RUNS runs (what it typically does).
        # The two alternate, a ceiling then a worker run, so that both sample the same spells of the machine (until
        # 23 Nov 09:05 the ceilings ran first, then the worker runs: a spell that changed between them moved the ratio)
        ceilings: list[tuple[float, float]] = []
        ones: list[Run] = []
        for _ in range(RUNS):
            ceilings.append(copy_ceiling(template, texts))
            ones.append(e2e(template, redis_url, texts, distinct, 1, args.batch))
        ceiling, by_row = max(c for c, _ in ceilings), max(r for _, r in ceilings)
        median = sorted(ones, key=lambda r: r.rate)[RUNS // 2]
        one, sizes = median.rate, median.sizes
        # the same worker without its look-ahead (validation in the job), then with bigger jobs
        alone = e2e(template, redis_url, texts, distinct, 1, args.batch, {"USAGEBILL_PREFETCH": "false"}).rate
        # with the look-ahead and merging, without committing ahead of rq's bookkeeping
        behind = e2e(template, redis_url, texts, distinct, 1, args.batch, {"USAGEBILL_COMMIT_AHEAD": "false"}).rate
        # with the look-ahead but one job per transaction (no merging of waiting jobs)
        unmerged = e2e(template, redis_url, texts, distinct, 1, args.batch, {"USAGEBILL_MERGE_MAX_EVENTS": "0"}).rate
        # many small jobs (many app processes each flushing a few events): merging on, then off
        small_texts, small_distinct = make_events(args.events * 3 // 10, dup_frac=0.1, orgs=50, users=100, seed=5)
        small = {
            merge: e2e(template, redis_url, small_texts, small_distinct, 1, 100, {"USAGEBILL_MERGE_MAX_EVENTS": m}).rate
            for merge, m in (("on", str(Settings.model_fields["merge_max_events"].default)), ("off", "0"))
        }
        big = args.batch * 5 // 2
        bigjobs = e2e(template, redis_url, texts, distinct, 1, big, {"USAGEBILL_BATCH_SIZE": str(big)}).rate
        two = e2e(template, redis_url, texts, distinct, 2, args.batch).rate
        naive_rate = naive(template, redis_url, texts[: args.naive])
        # the goal's rate, then a rate this machine sustains (latency without a growing backlog)
        lats = {
            (rate, workers, size): latency(template, redis_url, rate, args.latency_seconds, size, workers)
            for rate, workers, size in ((5000, 1, 1000), (5000, 1, 250), (5000, 2, 250), (1000, 1, 250))
        }
        hot, wide, wide_cpu, prof = steps(template, texts, args.batch)
    print(
        f"COPY ceiling (unindexed table):      {ceiling:10.0f} events/s   (rows in COPY text, one block; best of "
        + ", ".join(f"{c:.0f}" for c, _ in ceilings)
        + ")"
    )
    print(
        f"  the same rows via write_row:       {by_row:10.0f} events/s   (formatted by psycopg; best of "
        + ", ".join(f"{r:.0f}" for _, r in ceilings)
        + f"): 1 worker is {one / by_row:.3f} of it"
    )
    print(
        f"end to end, 1 worker:                {one:10.0f} events/s   = {one / ceiling:.3f} of the COPY ceiling"
        " (median of " + ", ".join(f"{r.rate:.0f}" for r in ones) + ")"
    )
    print(
        "  each run over the ceiling run just before it: "
        + ", ".join(f"{r.rate / c:.3f}" for r, (c, _) in zip(ones, ceilings, strict=True))
    )
    cpu, cores = median.cpu, os.cpu_count() or 1
    total = sum(cpu.values())
    print(
        f"  CPU per event in that run (us): the worker process {cpu['workers']:.1f} (all its threads), its Postgres"
        f" backends {cpu['backends']:.1f}, this process (publishing) {cpu['bench']:.1f}, Redis {cpu['redis']:.1f};"
        f" {total:.1f} in all, over"
        f" {cores} cores: at most {cores * 1e6 / total:.0f} events/s with every core busy the whole run"
    )
    # the worker's transactions run one at a time (its connections take turns: committing ahead, then rq's
    # job), so its backends' CPU per event bounds one worker whatever the other cores do
    print(
        f"  its backends, one transaction at a time: at most {1e6 / cpu['backends']:.0f} events/s with one core"
        " busy on them the whole run"
    )
    print(
        f"  same, look-ahead off:              {alone:10.0f} events/s   = {alone / ceiling:.3f} "
        f"(look-ahead: x{one / alone:.2f})"
    )
    print(
        f"  same, commit-ahead off:            {behind:10.0f} events/s   = {behind / ceiling:.3f} "
        f"(committing ahead: x{one / behind:.2f})"
    )
    print(
        f"  same, merging off:                 {unmerged:10.0f} events/s   = {unmerged / ceiling:.3f} "
        f"(merging waiting jobs: x{one / unmerged:.2f})"
    )
    print(f"  same, {big}-event jobs:            {bigjobs:10.0f} events/s   = {bigjobs / ceiling:.3f} of the ceiling")
    print(
        f"  100-event jobs ({len(small_texts)} events): merging {small['on']:.0f} events/s, "
        f"merging off {small['off']:.0f} (x{small['on'] / small['off']:.2f})"
    )
    print(f"end to end, 2 workers:               {two:10.0f} events/s   = {two / ceiling:.3f} of the COPY ceiling")
    print(
        f"naive (1 job/event, row by row; {args.naive} events): {naive_rate:6.0f} events/s   -> 1 worker is "
        f"{one / naive_rate:.0f}x the naive baseline"
    )
    for (rate, workers, size), lat in lats.items():
        q = statistics.quantiles(lat, n=100)
        print(
            f"event -> committed+aggregated latency at {rate} events/s ({workers} worker(s), {size}-event jobs, "
            "batch fill included): "
            f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
        )
    print("table sizes after the 1-worker run (rows, bytes incl. indexes):")
    for table, (rows, size) in sizes.items():
        print(f"  {table:14s} {rows:9d} rows {size / 1e6:8.1f} MB")
    print_steps(args.batch, hot, wide, wide_cpu, prof)


def steps(
    template: str, texts: list[str], batch: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float], str]:
    """The in-process per-step cost: a hot mix, the wide mix profiled, and the wide mix's CPU unprofiled."""
    hot_texts, _ = make_events(30_000, dup_frac=0.0, orgs=2, users=1, seed=3)
    hot, _ = aggregate_cost(template, hot_texts, batch, profile=False)
    wide, prof = aggregate_cost(template, texts[:30_000], batch, profile=True)
    wide_cpu, _ = aggregate_cost(template, texts[:30_000], batch, profile=False)
    return hot, wide, wide_cpu, prof


def print_steps(
    batch: int, hot: dict[str, float], wide: dict[str, float], wide_cpu: dict[str, float], prof: str
) -> None:
    print(f"ingest steps, ms per {batch}-event batch (in-process):")
    print(f"  {'step':24s} {'hot rows (2 orgs, 1 user)':>26s} {'wide (50 orgs x 100 users)':>28s}")
    cpu = [k for k in hot if k.startswith("CPU")]
    names = [*sorted((k for k in wide if k != "whole batch" and k not in cpu), key=lambda k: -wide[k]), "whole batch"]
    for step in names:
        print(f"  {step:24s} {hot.get(step, 0):26.1f} {wide.get(step, 0):28.1f}")
    for step in cpu:  # the wide mix's CPU comes from a second, unprofiled run
        print(f"  {step:26s} {hot[step]:24.1f} {wide_cpu.get(step, 0):28.1f}")
    print("cProfile of the ingest path (wide mix), top entries by own time:")
    print("\n".join(line for line in prof.splitlines() if line.strip())[:4000])


if __name__ == "__main__":
    main()
