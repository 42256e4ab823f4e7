"""The Procfile's `scheduler:` process: rq's CronScheduler enqueueing the periodic jobs (month close,
alert delivery, reconciliation); the jobs themselves run on the workers.

Adding a periodic job is one line in PERIODIC_JOBS: the dotted path of a function taking no arguments
(it reads its settings from the environment, like the worker) and a cron expression (UTC) or an
interval in seconds. A path that does not import yet is logged and skipped, so an area can register
its job before it lands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from typing import Any

import redis
from rq import Queue, cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.serializers import JSONSerializer

from billing.invoices import month_text
from billing.settings import Settings
from worker.invoicing import close_due

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    """One periodic job: a function path and either a cron expression (UTC) or an interval (seconds)."""

    func: str
    cron: str | None = None
    interval: int | None = None
    timeout: int = 600


#: the periodic jobs; one line each
PERIODIC_JOBS: tuple[Periodic, ...] = (
    # close every month whose grace period is over (idempotent; refuses while an old backlog remains)
    Periodic("worker.scheduler.close_due_months", cron="*/15 * * * *"),
    # quota alert delivery (quota area: `billing.alerts.deliver_pending()`)
    Periodic("billing.alerts.deliver_pending", interval=60),
    # reconciliation of the aggregates against the events (ops area: `billing.reconcile.run_periodic()`)
    Periodic("billing.reconcile.run_periodic", cron="17 3 * * *"),
    # the quota mirror: rebuilt from Postgres when missing (a Redis flush) or drifted
    Periodic("billing.quotas.check_mirror", interval=60),
)


def close_due_months() -> list[str]:
    """Periodic job: close every month whose grace period has passed. Returns what it did, for the job result."""
    done = []
    for result in close_due(Settings(), now=datetime.now(UTC)):
        state = "already closed" if result.already_closed else f"closed, {result.invoices} invoice(s)"
        done.append(f"{month_text(result.month)}: {state}")
        _log.info("%s: %s", month_text(result.month), state)
    return done


class JsonCronJob(CronJob):
    """A CronJob enqueued with the JSON serializer: the workers never unpickle anything."""

    def enqueue(self, connection: redis.Redis) -> Any:
        if self.func is None:
            raise ValueError(f"cron job {self.name} has no function")
        queue = Queue(self.queue_name, connection=connection, serializer=JSONSerializer)
        # as rq's CronJob.enqueue: the job and its history entry in one round trip
        with connection.pipeline() as pipeline:
            job = queue.enqueue(self.func, *self.args, **self.kwargs, **self.job_options, pipeline=pipeline)
            assert job.enqueued_at is not None
            stamp = job.enqueued_at.timestamp()
            pipeline.zadd(self.job_history_key, {job.id: stamp})
            pipeline.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipeline.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(self.name, pipeline, enqueue_timestamp=stamp)
            pipeline.execute()
        _log.info("enqueued %s on %s", self.func_name, self.queue_name)
        return job


def resolve(path: str) -> Callable[..., Any] | None:
    """The function at a dotted path, or None when its module or name does not exist (yet)."""
    module_name, _, attr = path.rpartition(".")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError:
        return None
    func = getattr(module, attr, None)
    return func if callable(func) else None


def build(connection: redis.Redis, queue: str, jobs: tuple[Periodic, ...] = PERIODIC_JOBS) -> CronScheduler:
    """A CronScheduler with every importable periodic job registered on `queue`."""
    scheduler = CronScheduler(connection=connection, name=f"usagebill:{queue}")
    for spec in jobs:
        func = resolve(spec.func)
        if func is None:
            _log.warning("periodic job %s is not available (yet): skipped", spec.func)
            continue
        job = JsonCronJob(queue_name=queue, func=func, cron=spec.cron, interval=spec.interval, job_timeout=spec.timeout)
        scheduler.get_jobs().append(job)  # rq's register() builds a pickling CronJob; ours enqueues JSON
        _log.info("registered %s (%s)", spec.func, spec.cron or f"every {spec.interval} s")
    return scheduler


def run(settings: Settings) -> None:
    """Run the scheduler until SIGINT/SIGTERM (rq's CronScheduler loop)."""
    connection = redis.Redis.from_url(settings.redis_url)
    scheduler = build(connection, settings.queue)
    scheduler.start()  # type: ignore[no-untyped-call]
