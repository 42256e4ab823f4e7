"""What every CLI command shares: settings read once at the edge, and how commands fail."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import psycopg
import typer
from pydantic import ValidationError

from billing import migrate
from billing.db import connect, first_line, translated
from billing.errors import ConfigError, PermanentError, TransientError
from billing.settings import Settings


def settings_from(ctx: typer.Context) -> Settings:
    """The settings of this invocation, read from the environment once."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        try:
            root.obj = Settings()
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"invalid setting {loc}: {err['msg']}") from exc
    assert isinstance(root.obj, Settings)
    return root.obj


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with a one-line reason on standard error."""
    print(f"usagebill: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def log(message: str) -> None:
    """Progress and logs go to standard error; standard output carries only the requested output."""
    print(message, file=sys.stderr)


@contextmanager
def migrated_db(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a migrated database for one command; a driver error becomes a
    one-line failure (a constraint the database enforces: permanent; anything else: transient)."""
    with translated(settings), connect(settings, autocommit=True) as conn:
        migrate.require_current(conn)
        try:
            yield conn
        except psycopg.errors.IntegrityError as exc:
            raise PermanentError(f"rejected by the database: {first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise TransientError(f"database error: {first_line(exc)}") from exc
