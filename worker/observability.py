"""Worker observability: structured (JSON) logs and Prometheus metrics of ingestion and the queues."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: LogRecord attributes that are not "extra" fields
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: int = logging.INFO, fmt: str = "json") -> None:
    """Logs to standard error (standard output stays for requested output), JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


REGISTRY = CollectorRegistry(auto_describe=True)
EVENTS = Counter(
    "usagebill_events_total",
    "Events seen by ingest jobs, by outcome: ingested (new), duplicate, conflict, rejected",
    ["outcome"],
    registry=REGISTRY,
)
UNPRICED = Counter("usagebill_events_unpriced_total", "New events stored unpriced (no rate)", registry=REGISTRY)
BATCH_SECONDS = Histogram(
    "usagebill_batch_seconds",
    "Seconds from job start to commit of one ingest batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BATCHES = Counter(
    "usagebill_batches_total",
    "Ingest jobs finished, by result: committed, split, merged (carried by another job's transaction),"
    " already_committed (an earlier run committed it)",
    ["result"],
    registry=REGISTRY,
)


class QueueCollector(Collector):
    """Queue depth, started, scheduled (retries) and failed jobs, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis, names: Sequence[str]) -> None:
        self.client = client
        self.names = list(names)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from worker.worker import job_counts  # noqa: PLC0415  # worker.worker imports this module

        gauge = GaugeMetricFamily("usagebill_queue_jobs", "Jobs per queue and state", labels=["queue", "state"])
        try:
            for c in job_counts(self.client, self.names):
                for state in ("queued", "started", "scheduled", "failed"):
                    gauge.add_metric([c.queue, state], getattr(c, state))
        except redis.RedisError:
            pass  # a scrape while Redis is away shows no queue figures rather than failing
        yield gauge


def record_batch(result: dict[str, Any], seconds: float) -> None:
    """Count one finished ingest job (its result dict) and log it as one structured line.

    A job that ran again and found its result stored (`already_committed`) counts no events: they were
    counted by the run that committed them.
    """
    if not result.get("already_committed"):
        EVENTS.labels("ingested").inc(result.get("inserted", 0))
        EVENTS.labels("duplicate").inc(result.get("duplicates", 0))
        EVENTS.labels("conflict").inc(result.get("conflicts", 0))
        EVENTS.labels("rejected").inc(result.get("rejected", 0))
        UNPRICED.inc(result.get("unpriced", 0))
    if result.get("merged_into") or result.get("already_committed"):
        # committed by another transaction (that carried it, or an earlier run): no batch time of its own
        BATCHES.labels("merged" if result.get("merged_into") else "already_committed").inc()
    else:
        BATCH_SECONDS.observe(seconds)
        BATCHES.labels("split" if result.get("split") else "committed").inc()
    logging.getLogger("usagebill.ingest").info(
        "batch done",
        extra={
            "received": result.get("received", 0),
            "inserted": result.get("inserted", 0),
            "duplicates": result.get("duplicates", 0),
            "conflicts": result.get("conflicts", 0),
            "rejected": result.get("rejected", 0),
            "unpriced": result.get("unpriced", 0),
            "seconds": round(seconds, 4),
        },
    )


def serve_metrics(port: int, client: redis.Redis, queue_names: Sequence[str], addr: str = "127.0.0.1") -> None:
    """Expose /metrics on `addr:port` from a daemon thread (port 0: not exposed)."""
    if port <= 0:
        return
    REGISTRY.register(QueueCollector(client, queue_names))
    start_http_server(port, addr=addr, registry=REGISTRY)
    logging.getLogger("usagebill.worker").info("metrics on http://%s:%d/metrics", addr, port)


def now() -> float:
    return time.perf_counter()
