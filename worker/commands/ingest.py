"""Commands that publish events: `usagebill ingest FILE.jsonl` and `usagebill spool replay`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
