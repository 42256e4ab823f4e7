"""What every CLI command shares: settings read once at the edge, and how commands fail."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from pydantic import ValidationError

from billing.errors import ConfigError
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
