"""Worker process setup: settings, pool and Redis made once, rq worker class, abandoned-job recovery."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg
import redis
from psycopg_pool import ConnectionPool, PoolTimeout
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError, StopRequested
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from billing import ingest, migrate, quotas
from billing.db import first_line, make_pool
from billing.errors import ConfigError, RedisUnavailable
from billing.settings import Settings, redact
from producer import jobspec
from worker.prefetch import ROUND_JOBS, Prefetcher

log = logging.getLogger("usagebill.worker")

#: how often a running worker cleans the registries (rq's default is 600 s): a job abandoned by a
#: dead worker on another host is retried within its started-registry TTL + this interval
MAINTENANCE_INTERVAL = 30
#: worker registration TTL; an idle worker waits on the queues for WORKER_TTL - 15 s between
#: maintenance checks (rq's 420 s default would make the interval above moot while idle). During a
#: job rq extends it to the job timeout + 60 s.
WORKER_TTL = 45
#: how often a worker with a look-ahead checks whether it is the only worker on its queues (seconds)
ALONE_RECHECK = 5.0


@dataclass(frozen=True)
class Resources:
    """What a worker process makes once and hands to every job."""

    settings: Settings
    pool: ConnectionPool
    redis: redis.Redis


_resources: Resources | None = None
#: the look-ahead of this process's worker (worker/prefetch.py), when it has one
_prefetcher: Prefetcher | None = None


def setup(settings: Settings) -> Resources:
    """Validate the configuration and make the pool and the Redis client, once per process.

    Bad configuration fails here, at start: an unreachable database or Redis, a schema with pending
    migrations. An evicting or non-persistent Redis only warns (DESIGN.md: it can lose queued jobs).
    """
    global _resources  # noqa: PLW0603 - the process-wide resources of this worker
    if _resources is not None:
        return _resources
    client = redis_client(settings)
    for warning in redis_warnings(client):
        log.warning(warning)
    # the connections a worker ingests on: its own, and the one committing ahead of rq (worker/prefetch.py)
    ingesting = min(2 if settings.prefetch and settings.commit_ahead else 1, settings.db_pool_size)
    pool = make_pool(settings, min_size=ingesting)
    try:
        with pool.connection() as conn:
            migrate.require_current(conn)
    except Exception:
        pool.close()
        raise
    # made ready now rather than by the first batches (a job arriving at an idle worker waits less); an
    # optimisation only: a failure here is the jobs' to meet, with their retries
    try:
        with contextlib.ExitStack() as held:
            for conn in [held.enter_context(pool.connection()) for _ in range(ingesting)]:
                ingest.warm(conn)
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("warming the ingest connections failed (the first batches do it): %s", first_line(exc))
    # the quota mirror app code checks: rebuilt at start when missing or drifted (one rebuilder, locked)
    try:
        with pool.connection() as conn:
            quotas.ensure_mirror(conn, client)
            conn.commit()  # hand the connection back to the pool idle, as ingest expects it
    except (redis.RedisError, psycopg.Error) as exc:
        log.warning("quota mirror not checked at start: %s", exc)
    _resources = Resources(settings=settings, pool=pool, redis=client)
    return _resources


def resources() -> Resources:
    """The process's resources; made from the environment when a plain rq worker runs our jobs."""
    return _resources if _resources is not None else setup(Settings())


#: at exit, how long to wait for a transaction committing ahead (it commits whole or not at all either way)
CLOSE_WAIT_SECONDS = 30.0


def close() -> None:
    """Close the pool and the Redis client (at worker exit), once no transaction commits ahead."""
    global _resources  # noqa: PLW0603
    if _prefetcher is not None and not _prefetcher.stop_ahead(timeout=CLOSE_WAIT_SECONDS):
        log.warning(
            "a transaction committing ahead is still open at exit: it commits whole or not at all, and its"
            " jobs stay queued (a later run of each finds its claim if it committed)"
        )
    if _prefetcher is not None and not _prefetcher.drain_after(timeout=CLOSE_WAIT_SECONDS):
        log.warning("a quota mirror refresh is still running at exit (the mirror is rebuilt from Postgres)")
    if _resources is not None:
        _resources.pool.close()
        _resources.redis.close()
        _resources = None


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client, checked with PING so a wrong URL fails at start."""
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
        client.ping()
    except ValueError as exc:
        raise ConfigError(f"invalid REDIS_URL {redact(settings.redis_url)}: {exc}") from exc
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis unreachable at {redact(settings.redis_url)}: {exc}") from exc
    return client


def redis_warnings(client: redis.Redis) -> list[str]:
    """Warnings about a Redis that can lose queued jobs (needs appendonly yes, maxmemory-policy noeviction)."""
    try:
        conf: dict[Any, Any] = dict(client.config_get("appendonly"))
        conf.update(client.config_get("maxmemory-policy"))
    except redis.ResponseError:  # CONFIG disabled (managed Redis): cannot check
        return ["cannot read the Redis configuration (CONFIG GET refused): check appendonly and maxmemory-policy"]
    found = {str(k): str(v) for k, v in conf.items()}
    warnings = []
    if found.get("appendonly") != "yes":
        warnings.append("Redis runs without appendonly: queued events are lost if Redis restarts (set appendonly yes)")
    if found.get("maxmemory-policy", "noeviction") != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {found.get('maxmemory-policy')}: it may evict queued jobs (set noeviction)"
        )
    return warnings


def queue_names(client: redis.Redis, settings: Settings, requested: Sequence[str] = ()) -> list[str]:
    """The queues to serve: those requested, else every usagebill queue (the configured one and
    any queue named after it, e.g. `usagebill-orgs-1`)."""
    if requested:
        return list(dict.fromkeys(requested))
    base = settings.queue
    names = {base}
    for queue in Queue.all(connection=client, serializer=JSONSerializer):
        if queue.name.startswith((f"{base}-", f"{base}:", f"{base}.")):
            names.add(queue.name)
    return sorted(names)


def queues(client: redis.Redis, names: Sequence[str]) -> list[Queue]:
    return [Queue(name, connection=client, serializer=JSONSerializer, job_class=IngestJob) for name in names]


class IngestJob(Job):
    """An rq Job that saves its payload as the compressed bytes it was loaded with.

    rq saves the whole job hash when a job finishes and compresses the payload again each time: for a
    1000-event batch (~0.6 MB of JSON) that was ~3.5 ms of zlib per job, 5% of the job. The payload of a
    loaded job never changes (rq only replaces it through the setters, which this check sees), so the
    bytes read from Redis are written back as they are. A job the look-ahead already read (the very same
    bytes) takes its decompressed and decoded payload instead of decoding it again (~2.5 ms per
    1000-event job: +4.5% end to end, 4 alternating rounds).
    """

    _packed: tuple[bytes, bytes] | None = None  # (payload as loaded, its compressed form in Redis)

    def restore(self, raw_data: dict[bytes, bytes]) -> None:
        packed = raw_data.get(b"data")
        ahead = None
        if _prefetcher is not None and packed is not None and self.serializer is JSONSerializer:
            ahead = _prefetcher.payload(self.id, packed)
        if packed is not None and ahead is not None:
            # the look-ahead decompressed and decoded these very bytes: rq keeps a payload it cannot
            # decompress as it is (JSON never is a zlib stream), and gets the decoded payload as its own
            # decoding would have made it
            plain, decoded = ahead
            super().restore({**raw_data, b"data": plain})
            self._func_name, self._instance, self._args, self._kwargs = decoded
            self._packed = (plain, packed)
            return
        super().restore(raw_data)
        data = self._data
        # rq keeps a payload it cannot decompress as it was read: the same object, nothing to reuse
        self._packed = (data, packed) if isinstance(data, bytes) and packed is not None and packed is not data else None

    def stored_payload(self) -> bytes | None:
        """The payload as stored in Redis when this job was loaded from it and has not changed since."""
        packed = self._packed
        return packed[1] if packed is not None and self._data is packed[0] else None

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        stored = self.stored_payload()
        if stored is None:
            return super().to_dict(include_meta=include_meta, include_result=include_result)
        return jobspec.dict_with_payload(self, stored, include_meta=include_meta, include_result=include_result)


class UsagebillWorker(SimpleWorker):
    """rq's non-forking worker: jobs run in this process and reuse its pool (see docs/worker.md).

    Its maintenance also re-queues jobs abandoned by a dead worker on this host at once, instead of
    waiting for their started-registry entry to expire. With a look-ahead, and alone on its queues, each
    job it runs asks the look-ahead to validate the job queued after it (`look_ahead`).
    """

    prefetcher: Prefetcher | None = None
    _alone = False
    _alone_checked = -ALONE_RECHECK

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.prefetcher is not None:
            # the job asks for the look-ahead once its batch goes to Postgres (worker.jobs, look_ahead):
            # started with the job, it competed with rq's own bookkeeping for the GIL (-9% measured)
            self.prefetcher.activate(self._serves_alone())
        super().execute_job(job, queue)

    def _serves_alone(self) -> bool:
        # With other workers on these queues the next job is as likely theirs: a look-ahead would mostly
        # validate batches this worker never runs, on the cores the others need (measured: 2 workers
        # that both looked ahead ingested 20-30% less). Rechecked every ALONE_RECHECK seconds.
        # A worker killed with SIGKILL stays registered until its registration expires (WORKER_TTL), and
        # keeps the others from looking ahead until then.
        now = time.monotonic()
        if now - self._alone_checked >= ALONE_RECHECK:
            try:
                self._alone = all(SimpleWorker.count(connection=self.connection, queue=q) <= 1 for q in self.queues)
            except redis.RedisError:
                self._alone = False  # the job itself then meets the Redis failure, as it would have
            self._alone_checked = now
        return self._alone

    def register_death(self) -> None:
        # rq's SIGTERM handler raises StopRequested wherever an idle worker is, possibly between MULTI and
        # EXEC of one of its pipelines (rq issue #2175): that connection goes back to the pool with its
        # transaction open, and the teardown's own pipeline on it fails ("Wrong number of response items
        # from pipeline execution"; seen once in ~14 benchmark shutdowns), so the worker exited with a
        # traceback and stayed registered. Once more on fresh connections: the pool forgets its old ones.
        try:
            super().register_death()  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            log.warning("registering the worker's death failed (%s): again on a fresh connection", exc)
            self.connection.connection_pool.reset()
            super().register_death()  # type: ignore[no-untyped-call]

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        # rq raises StopRequested from its SIGTERM handler when the worker is idle, wherever the main thread
        # is: an `except Exception` on the way up swallows it (logging's Handler.emit catches every
        # Exception), and rq has already made the next SIGTERM a cold stop. Remembered here, the request
        # is honoured anyway: by rq's loop before its next dequeue (`should_run_maintenance_tasks`).
        self._stop_requested = True
        if self.prefetcher is not None:
            self.prefetcher.stop_ahead()  # nothing more committed ahead: the jobs it would take stay queued
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    @property
    def should_run_maintenance_tasks(self) -> bool:
        # rq's loops ask this before every dequeue: a recorded stop request is honoured there, at once
        return self._stop_requested or bool(super().should_run_maintenance_tasks)

    def run_maintenance_tasks(self) -> None:
        if self._stop_requested:
            raise StopRequested  # asked while idle and swallowed on its way (see request_stop)
        for queue in self.queues:
            recover_abandoned(queue)
        prune_job_claims()
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]


def prune_job_claims() -> None:
    """Forget the ingest job claims older than 90 days (ingest_jobs); a failure is logged, never raised."""
    try:
        with resources().pool.connection() as conn:
            pruned = ingest.prune_jobs(conn)
            conn.commit()
    except (psycopg.Error, PoolTimeout) as exc:  # maintenance: tried again at the next pass
        # only the database's errors: rq's StopRequested (its SIGTERM handler raises it in an idle
        # worker, and maintenance runs while idle) must reach rq
        log.warning("pruning old ingest job claims failed: %s", exc)
        return
    if pruned:
        log.info("pruned %d ingest job claims older than 90 days", pruned)


def make_worker(client: redis.Redis, names: Sequence[str], *, prefetch: bool = True) -> UsagebillWorker:
    """The worker of `names`; with `prefetch`, and a look-ahead that validates the next queued job."""
    global _prefetcher  # noqa: PLW0603 - one look-ahead per worker process
    serve = queues(client, names)
    worker = UsagebillWorker(
        serve,
        connection=client,
        serializer=JSONSerializer,
        job_class=IngestJob,
        maintenance_interval=MAINTENANCE_INTERVAL,
        worker_ttl=WORKER_TTL,
        default_result_ttl=jobspec.RESULT_TTL,
    )
    if prefetch:
        settings = resources().settings
        keys, most, size = [q.key for q in serve], settings.batch_size, settings.batch_max_bytes
        merge = settings.merge_max_events
        if _prefetcher is None:
            _prefetcher = Prefetcher(client, keys, max_events=most, max_bytes=size, merge_events=merge)
        else:  # a process that makes another worker (tests): one thread, now for these queues
            _prefetcher.retarget(client, keys, max_events=most, max_bytes=size, merge_events=merge)
        if settings.commit_ahead:
            from worker.jobs import commit_ahead  # noqa: PLC0415 - worker.jobs imports this module

            _prefetcher.commit_ahead(commit_ahead)
        else:
            _prefetcher.stop_ahead()
        worker.prefetcher = _prefetcher
    return worker


def look_ahead(job_id: str | None) -> None:
    """The job `job_id` (and its riders) goes to Postgres now: the look-ahead may prepare the jobs queued
    after them."""
    if _prefetcher is not None and _prefetcher.active and job_id is not None:
        _prefetcher.ahead(job_id)


def riders_for(job: Job | None, own_events: int, own_bytes: int) -> list[ingest.Rider]:
    """The prepared jobs waiting right after `job` in its queue that its transaction may carry (empty
    without an active look-ahead, or when merging is off)."""
    if _prefetcher is None or not _prefetcher.active or job is None or _prefetcher.merge_events <= own_events:
        return []
    try:
        # only jobs still queued, at the front: a job taken or removed since it was prepared is not carried
        queued = job.connection.lrange(Queue(job.origin, connection=job.connection).key, 0, ROUND_JOBS - 1)
    except redis.RedisError:
        return []  # the job itself meets Redis again when it finishes
    return _prefetcher.riders(job.id, queued, own_events, own_bytes)


def go_ahead() -> None:
    """A job's transaction committed: the look-ahead may commit the next prepared jobs ahead of rq."""
    if _prefetcher is not None and _prefetcher.active:
        _prefetcher.go_ahead()


def merge_committed(results: dict[str, dict[str, Any]]) -> None:
    """The transaction carrying this job's riders committed: `results` are what each of them returns."""
    if _prefetcher is not None:
        _prefetcher.committed(results)


def merge_dropped() -> None:
    """The transaction carrying this job's riders failed: they run on their own."""
    if _prefetcher is not None:
        _prefetcher.dropped()


def merged_into(job: Job | None) -> dict[str, Any] | None:
    """The result of this job when a committed transaction of another job carried its batch (loaded from
    the very same payload), else None."""
    if _prefetcher is None or job is None or not isinstance(job, IngestJob):
        return None
    return _prefetcher.merged_into(job.id, job.stored_payload())


def prepared_for(job: Job | None) -> ingest.Prepared | None:
    """The look-ahead's prepared batch for this job, when prepared from the very payload the job was loaded
    from (None: validate it in the job)."""
    if _prefetcher is None or job is None:
        return None
    return _prefetcher.take(job.id, job.stored_payload() if isinstance(job, IngestJob) else None)


def _worker_dead(client: redis.Redis, worker_name: str) -> bool:
    if not worker_name:
        return False
    hostname, pid = client.hmget(f"rq:worker:{worker_name}", ["hostname", "pid"])
    if hostname is None and pid is None:
        return True  # its registration expired (worker_ttl) or was removed: nobody runs the job
    if hostname is None or _text(hostname) != socket.gethostname() or pid is None:
        return False  # another host: only its started-registry TTL tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def recover_abandoned(queue: Queue) -> list[str]:
    """Re-queue now the jobs of `queue` whose worker is dead or whose started entry expired, and the
    jobs stranded in rq's intermediate list.

    rq alone would leave them in the started registry until their TTL (job timeout + 60 s after the
    last heartbeat), then schedule the retry. Each recovery uses one of the job's retries; a job
    with none left goes to the failed registry (kept for FAILURE_TTL, re-queueable). Returns the ids.

    A worker of one queue dequeues with LMOVE into `<queue>:intermediate`, then adds the job to the
    started registry: a worker (or Redis) that dies in between leaves the job in that list only, where
    rq's own cleanup finds it after two sightings a minute apart (a burst worker never does) and no
    job count shows it. A job still there, outside the started registry, INTERMEDIATE_GRACE seconds
    later is abandoned (a live worker moves it on within milliseconds; were it still picked up, a
    second run inserts nothing: event ids dedup).
    """
    client = queue.connection
    registry = StartedJobRegistry(queue.name, connection=client, serializer=JSONSerializer)
    expired = {registry.parse_job_id(e) for e in registry.get_expired_job_ids()}
    recovered: list[str] = []
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        worker_name = client.hget(f"rq:execution:{job_id}:{execution_id}", "worker_name")
        dead = worker_name is None or _worker_dead(client, _text(worker_name))
        if not dead and job_id not in expired:
            continue
        if not client.zrem(registry.key, f"{job_id}:{execution_id}"):
            continue  # another worker recovered it first
        try:
            job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        except NoSuchJobError:  # the job hash expired: nothing left to run
            log.warning("abandoned job %s has no data left; dropped from the started registry", job_id)
            continue
        if job.retries_left:
            job.retries_left -= 1
            queue.enqueue_job(job)
            log.warning("re-queued job %s abandoned by a dead worker (%s retries left)", job_id, job.retries_left)
        else:
            job.set_status(JobStatus.FAILED)
            FailedJobRegistry(queue.name, connection=client, serializer=JSONSerializer).add(
                job, ttl=job.failure_ttl, exc_string="abandoned: its worker died and it has no retries left"
            )
            log.warning("job %s abandoned with no retries left: moved to the failed registry", job_id)
        recovered.append(job_id)
    stranded = _stranded(queue, registry)
    if stranded:
        time.sleep(INTERMEDIATE_GRACE)
        still = set(_stranded(queue, registry))
        for job_id in stranded:
            if job_id not in still or not client.lrem(queue.intermediate_queue_key, 1, job_id):
                continue  # moved on by its worker, or recovered by another one
            try:
                job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            if job.retries_left:
                job.retries_left -= 1
                queue.enqueue_job(job)
                log.warning(
                    "re-queued job %s stranded in the intermediate list (%s retries left)", job_id, job.retries_left
                )
            else:
                job.set_status(JobStatus.FAILED)
                FailedJobRegistry(queue.name, connection=client, serializer=JSONSerializer).add(
                    job, ttl=job.failure_ttl, exc_string="abandoned in the intermediate list, no retries left"
                )
            recovered.append(job_id)
    return recovered


#: seconds a job may sit in rq's intermediate list outside the started registry before it is abandoned
INTERMEDIATE_GRACE = 2.0


def _stranded(queue: Queue, registry: StartedJobRegistry) -> list[str]:
    started = set(registry.get_job_ids(cleanup=False))
    return [j for j in queue.intermediate_queue.get_job_ids() if j not in started]


def enqueue_due(queue: Queue) -> int:
    """Enqueue the scheduled jobs (retries) of `queue` that are due now. Returns how many."""
    registry = ScheduledJobRegistry(  # type: ignore[no-untyped-call]
        queue.name, connection=queue.connection, serializer=JSONSerializer
    )
    job_ids = registry.get_jobs_to_schedule()
    count = 0
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
        except NoSuchJobError:  # expired job data
            registry.remove(job_id)
            continue
        if not queue.connection.zrem(registry.key, job_id):
            continue  # another worker (or the scheduler) enqueued it first
        queue.enqueue_job(job)
        count += 1
    return count


@dataclass(frozen=True)
class JobCounts:
    """Jobs of one queue by state (for `usagebill status`)."""

    queue: str
    queued: int
    started: int
    scheduled: int
    failed: int


def job_counts(client: redis.Redis, names: Sequence[str]) -> list[JobCounts]:
    """Queued, started, scheduled (retries waiting) and failed (exhausted, kept) jobs per queue."""
    out = []
    for q in queues(client, names):
        out.append(
            JobCounts(
                queue=q.name,
                queued=q.count,
                started=StartedJobRegistry(q.name, connection=client).get_job_count(cleanup=False),
                scheduled=ScheduledJobRegistry(  # type: ignore[no-untyped-call]
                    q.name, connection=client
                ).get_job_count(cleanup=False),
                failed=FailedJobRegistry(q.name, connection=client).get_job_count(cleanup=False),
            )
        )
    return out


def requeue_failed(client: redis.Redis, names: Sequence[str]) -> int:
    """Put every failed (exhausted) job of these queues back on its queue, with fresh retries."""
    count = 0
    for q in queues(client, names):
        registry = FailedJobRegistry(q.name, connection=client, serializer=JSONSerializer)
        for job_id in registry.get_job_ids(cleanup=False):
            try:
                job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
            except NoSuchJobError:  # its data expired: nothing to run
                registry.remove(job_id)
                continue
            job.retries_left = jobspec.RETRY_MAX
            job.retry_intervals = list(jobspec.RETRY_INTERVALS)
            job.save()
            registry.requeue(job)
            count += 1
    return count
