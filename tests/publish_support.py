"""Helpers of the publishing tests: a private redis-server to stop and restart, events, the queue's contents."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from producer import Usage, UsageEvent, build_event, jobspec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may stop, freeze and restart.

    It keeps an append-only file (as production Redis must, DESIGN.md) so that a restart keeps the
    jobs enqueued before the stop (a clean SIGTERM shutdown writes it out) and the test can read
    every job at the end.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: redis shuts down cleanly, the AOF is complete
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def event(i: int, org: str = "org_pub") -> UsageEvent:
    """A valid event; the same i gives the same event."""
    return build_event(
        provider="openai",
        model="gpt-4o-mini",
        usage=Usage(input_tokens=100 + i, output_tokens=10, cached_input_tokens=5),
        org_id=org,
        event_id=f"ev_pub_{i:06d}",
        occurred_at=datetime(2026, 1, 15, tzinfo=UTC) + timedelta(seconds=i),
    )


def queued_jobs(client: redis.Redis, queue: str = jobspec.DEFAULT_QUEUE) -> list[Any]:
    """Every job waiting on the queue (rq Job objects, JSON-deserialized)."""
    return list(Queue(queue, connection=client, serializer=JSONSerializer).get_jobs())


def queued_event_ids(client: redis.Redis, queue: str = jobspec.DEFAULT_QUEUE) -> list[str]:
    """The event ids of all events in all jobs on the queue, in queue order (duplicates kept)."""
    ids: list[str] = []
    for job in queued_jobs(client, queue):
        assert job.func_name == jobspec.INGEST_FUNC
        (batch,) = job.args
        ids.extend(json.loads(text)["event_id"] for text in batch)
    return ids


def duplicates(ids: list[str]) -> dict[str, int]:
    return {k: n for k, n in Counter(ids).items() if n > 1}
