"""Test fixtures on the real services: a migrated template database cloned per test, a Redis db per run."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from billing import migrate
from billing.db import CONNECT_OPTIONS
from billing.settings import Settings

ADMIN_URL = os.environ.get("USAGEBILL_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("USAGEBILL_TEST_REDIS", "redis://127.0.0.1:6379")
#: databases 12-15 belong to acceptance runs, 9-11 to `usagebill demo`; tests take one of 1-8, locked per run
TEST_REDIS_DBS = range(1, 9)
RUN_ID = uuid.uuid4().hex[:8]
# subprocesses find this environment's `usagebill` even when pytest runs without an activated venv
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "provider-corpus"


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); start it (see DEVELOPERS.md) to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _url_with_db(url: str, dbname: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated once per session, used as the template of each test's database."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unavailable("Postgres", exc)
        raise
    name = f"usagebill_test_tpl_{RUN_ID}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(_url_with_db(ADMIN_URL, name), autocommit=True, options=CONNECT_OPTIONS) as conn:
            migrate.migrate(conn)
    yield name
    # a new connection: tests that restart Postgres (crash matrix, worker restart) cut any held one
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated database of its own for this test (cloned from the template)."""
    name = f"usagebill_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _url_with_db(ADMIN_URL, name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number of this run's own, held by a lock key in db 0 for the whole run."""
    try:
        client = redis.Redis.from_url(REDIS_BASE + "/0", socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
        raise
    for db in TEST_REDIS_DBS:
        key = f"usagebill:test-db-lock:{db}"
        if client.set(key, RUN_ID, nx=True, ex=6 * 3600):
            try:
                yield db
            finally:
                if client.get(key) == RUN_ID.encode():
                    client.delete(key)
                client.close()
            return
    pytest.fail("every test Redis database (1-8) is held by another run")


@pytest.fixture
def redis_url(redis_db: int) -> Iterator[str]:
    """This run's Redis database, flushed before and after the test."""
    url = f"{REDIS_BASE}/{redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    """Settings pointing at this test's database, Redis database and queue."""
    return Settings(DATABASE_URL=database_url, REDIS_URL=redis_url, USAGEBILL_QUEUE="usagebill")


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database, in UTC."""
    with psycopg.connect(database_url, autocommit=True, options=CONNECT_OPTIONS) as c:
        yield c


@pytest.fixture
def rconn(redis_url: str) -> Iterator[redis.Redis]:
    """A Redis client on this test's (flushed) database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def cli_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """Environment for running the `usagebill` CLI as a subprocess against this test's services."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        USAGEBILL_QUEUE=settings.queue,
        USAGEBILL_SPOOL_DIR=str(tmp_path / "spool"),
    )
    return env
