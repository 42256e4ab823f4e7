"""Services for the ingestion benches: a private redis-server, throwaway migrated Postgres databases,
`usagebill worker` processes, and the events they publish."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from rq import Worker

from billing import migrate
from billing.db import CONNECT_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash"]
START = datetime(2026, 10, 1, tzinfo=UTC)
ADMIN_URL = os.environ.get("USAGEBILL_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port (no persistence: a bench, not production)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.025)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextmanager
def template_db() -> Iterator[str]:
    """A migrated database used as the template of each phase's database; dropped at the end."""
    name = f"usagebill_bench_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(_url(name), autocommit=True, options=CONNECT_OPTIONS) as conn:
            migrate.migrate(conn)
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_db(template: str) -> Iterator[str]:
    """A database cloned from `template` for one phase; its URL. Dropped at the end."""
    name = f"usagebill_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def event_doc(rng: random.Random, event_id: str, orgs: int, users: int) -> dict[str, Any]:
    """One wire-format event of the benches' mix: an org of `orgs`, a user of `users` per org, a month."""
    org = rng.randrange(orgs)
    return {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": (START + timedelta(seconds=rng.randrange(30 * 86400))).isoformat(),
        "org_id": f"org-{org}",
        "user_id": f"user-{org}-{rng.randrange(users)}",
        "provider": "openai",
        "model": rng.choice(MODELS),
        "request_type": "chat",
        "latency_ms": rng.randrange(100, 5000),
        "tags": {"feature": rng.choice(["chat", "search", "summarize"])},
        "usage": {
            "input_tokens": (inp := rng.randrange(100, 20000)),
            "cached_input_tokens": rng.randrange(0, inp // 2),
            "cache_write_tokens": 0,
            "output_tokens": (out := rng.randrange(10, 2000)),
            "reasoning_tokens": rng.randrange(0, out // 4 + 1),
        },
    }


def start_workers(
    n: int, db_url: str, redis_url: str, queue: str, extra_env: dict[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """`n` `usagebill worker` processes on `queue` (with `extra_env` set); returns once all have registered."""
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, USAGEBILL_QUEUE=queue, PYTHONPATH=str(ROOT))
    env.update(extra_env or {})
    procs = [subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env, cwd=ROOT) for _ in range(n)]
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    while len(Worker.all(connection=client)) < n:
        if time.monotonic() > deadline:
            raise SystemExit("workers did not start")
        time.sleep(0.05)
    client.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (each finishes its current batch), then wait."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(30)
