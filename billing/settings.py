"""The one typed settings object, read from the environment at the edge (documented defaults)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """usagebill configuration. Every field reads the environment variable of its alias."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/usagebill",
        alias="DATABASE_URL",
        description="Postgres connection URL (libpq form).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", alias="REDIS_URL", description="Redis URL of the queues and the quota mirror."
    )
    queue: str = Field("usagebill", alias="USAGEBILL_QUEUE", description="Name of the rq ingest queue.")
    batch_size: int = Field(
        1000, alias="USAGEBILL_BATCH_SIZE", ge=1, le=100_000, description="Events per ingest job at most."
    )
    batch_max_bytes: int = Field(
        4_000_000, alias="USAGEBILL_BATCH_MAX_BYTES", ge=1024, description="Bytes of JSON per ingest job at most."
    )
    job_timeout: int = Field(
        60, alias="USAGEBILL_JOB_TIMEOUT", ge=1, le=170, description="Seconds an ingest job may run (rq timeout)."
    )
    invoice_grace_hours: float = Field(
        24, alias="USAGEBILL_INVOICE_GRACE_HOURS", ge=0, description="Hours after a month ends before it may close."
    )
    spool_dir: str = Field(
        "~/.usagebill/spool", alias="USAGEBILL_SPOOL_DIR", description="Directory of the producer's durable spool."
    )
    future_tolerance_seconds: int = Field(
        300, alias="USAGEBILL_FUTURE_TOLERANCE", ge=0, description="How far ahead of the server clock an event may be."
    )
    prefetch: bool = Field(
        True,
        alias="USAGEBILL_PREFETCH",
        description="Worker look-ahead: validate the next queued batch while the current one runs in Postgres.",
    )
    merge_max_events: int = Field(
        8000,
        alias="USAGEBILL_MERGE_MAX_EVENTS",
        ge=0,
        le=100_000,
        description="Events one ingest transaction may carry from jobs waiting in the queue, its own included"
        " (with the look-ahead; 0: one job per transaction).",
    )
    commit_ahead: bool = Field(
        True,
        alias="USAGEBILL_COMMIT_AHEAD",
        description="With the look-ahead: commit the next prepared jobs while rq does its bookkeeping of the last.",
    )
    db_pool_size: int = Field(4, alias="USAGEBILL_DB_POOL_SIZE", ge=1, description="Connections per worker process.")
    metrics_port: int = Field(
        0,
        alias="USAGEBILL_METRICS_PORT",
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus /metrics on 127.0.0.1 (0: not exposed).",
    )
    log_format: Literal["json", "text"] = Field(
        "json", alias="USAGEBILL_LOG_FORMAT", description="Worker and scheduler logs on stderr: json lines or text."
    )

    @property
    def invoice_grace(self) -> timedelta:
        return timedelta(hours=self.invoice_grace_hours)


def redact(url: str) -> str:
    """The URL without its password: credentials never appear in logs or error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if parts.password is not None else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
