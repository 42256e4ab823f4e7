"""The `usagebill worker` command: run rq workers over the usagebill queues."""

from __future__ import annotations

import contextlib
import logging

import typer
from rq.exceptions import StopRequested

from worker import observability
from worker import worker as proc
from worker.context import log, settings_from


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("worker")(worker)


def worker(
    ctx: typer.Context,
    burst: bool = typer.Option(
        False, "--burst", help="Re-queue abandoned and due jobs, drain the queues, exit 0 (failed jobs on stderr)."
    ),
    queues: list[str] = typer.Option(
        [], "--queues", "-q", help="Queue to serve (repeatable). Default: every usagebill queue."
    ),
    requeue_failed: bool = typer.Option(
        False,
        "--requeue-failed",
        help="Put the failed (exhausted) jobs back on their queues with fresh retries, then exit.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every job."),
) -> None:
    """Run an rq worker (non-forking) that ingests event batches. SIGTERM finishes the current batch and exits."""
    settings = settings_from(ctx)
    observability.setup_logging(logging.INFO if verbose else logging.WARNING, settings.log_format)
    if requeue_failed:
        client = proc.redis_client(settings)
        names = proc.queue_names(client, settings, queues)
        count = proc.requeue_failed(client, names)
        log(f"re-queued {count} failed job(s) on {', '.join(names)}")
        return
    res = proc.setup(settings)
    try:
        names = proc.queue_names(res.redis, settings, queues)
        w = proc.make_worker(res.redis, names, prefetch=settings.prefetch)
        observability.serve_metrics(settings.metrics_port, res.redis, names)
        if burst:
            recovered = requeued = 0
            for queue in w.queues:
                recovered += len(proc.recover_abandoned(queue))
                requeued += proc.enqueue_due(queue)
            if recovered or requeued:
                log(f"re-queued {recovered} abandoned and {requeued} due job(s) before draining")
        # rq raises StopRequested from its SIGTERM handler when the worker is idle; a signal that lands
        # between two of rq's loop iterations escapes rq's own handler (seen once in ~20 benchmark
        # shutdowns): rq has already torn the worker down, so this is the requested clean stop
        with contextlib.suppress(StopRequested):
            w.work(burst=burst, with_scheduler=not burst, logging_level="INFO" if verbose else "WARNING")
        if burst:
            for counts in proc.job_counts(res.redis, names):
                if counts.failed or counts.scheduled:
                    log(
                        f"queue {counts.queue}: {counts.failed} failed job(s) (usagebill worker --requeue-failed), "
                        f"{counts.scheduled} retry(ies) scheduled"
                    )
    finally:
        proc.close()
