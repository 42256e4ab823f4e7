"""Named SQL blocks loaded once from the `.sql` files in sql/queries (no SQL in Python strings)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


@cache
def queries(area: str) -> dict[str, str]:
    """The named blocks of sql/queries/{area}.sql: `-- name: xyz` starts a block."""
    text = resources.files("sql").joinpath("queries", f"{area}.sql").read_text(encoding="utf-8")
    return named_blocks(text, f"sql/queries/{area}.sql")


def named_blocks(text: str, origin: str) -> dict[str, str]:
    """The named blocks of one SQL text (`-- name: xyz` starts a block); `origin` names it in errors."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"{origin}: block {name!r} defined twice")
        blocks[name] = body.strip()
    return blocks


def query(area: str, name: str) -> sql.SQL:
    """One named block as a psycopg SQL object (static text from a file, safe to execute)."""
    try:
        return sql.SQL(queries(area)[name])
    except KeyError:
        raise KeyError(f"no block {name!r} in sql/queries/{area}.sql") from None
