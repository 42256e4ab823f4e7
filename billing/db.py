"""Database connections and pools: every session runs in UTC; driver errors are translated here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool

from billing.errors import DatabaseUnavailable, TransientError
from billing.settings import Settings, redact

#: every connection runs in UTC: an event's day and month are those of occurred_at in UTC. JIT is off:
#: usagebill's statements are short and wide (the pricing statement has ~350 expressions), so compiling
#: them costs more than it saves, and a misestimated batch (temp tables have no statistics) crossed
#: jit_optimize_above_cost and spent 3.2 s compiling a statement that runs in 0.26 s.
CONNECT_OPTIONS = "-c TimeZone=UTC -c jit=off"

#: SQLSTATEs worth retrying: serialization failure, deadlock, admin shutdown, connection failures
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001"})


def connect(settings: Settings, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection, in UTC. Raises DatabaseUnavailable with a redacted URL when unreachable."""
    try:
        return psycopg.connect(
            settings.database_url, autocommit=autocommit, options=CONNECT_OPTIONS, connect_timeout=5, **kwargs
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"database unreachable at {redact(settings.database_url)}: {first_line(exc)}"
        ) from exc


def make_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None) -> ConnectionPool:
    """A pool made once per process; waits until it has a connection so bad config fails at start."""
    pool = ConnectionPool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        kwargs={"options": CONNECT_OPTIONS, "connect_timeout": 5},
        open=False,
        name="usagebill",
    )
    try:
        pool.open(wait=True, timeout=10)
    except Exception as exc:
        pool.close()
        raise DatabaseUnavailable(f"database unreachable at {redact(settings.database_url)}") from exc
    return pool


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is worth retrying."""
    if isinstance(exc, TransientError | psycopg.OperationalError | pgerrors.SerializationFailure):
        return True
    if isinstance(exc, psycopg.Error):
        return (exc.sqlstate or "") in TRANSIENT_SQLSTATES
    return False


@contextmanager
def translated(settings: Settings) -> Iterator[None]:
    """Translate a connection-level driver error into DatabaseUnavailable, once, at the boundary."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database error at {redact(settings.database_url)}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (driver messages span several), or its type's name."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
