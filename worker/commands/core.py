"""Core commands: `usagebill migrate`."""

from __future__ import annotations

import typer

from billing import migrate as migrations
from billing.db import connect
from worker.context import log, settings_from


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("migrate")(migrate)


def migrate(
    ctx: typer.Context,
    check: bool = typer.Option(False, "--check", help="Only report pending migrations; exit 1 if any."),
) -> None:
    """Apply the pending schema migrations in order (a no-op when the schema is current)."""
    settings = settings_from(ctx)
    with connect(settings, autocommit=True) as conn:
        if check:
            todo = migrations.pending(conn)
            for mig in todo:
                print(mig.filename)
            if todo:
                raise typer.Exit(1)
            return
        done = migrations.migrate(conn)
    for mig in done:
        log(f"applied {mig.filename}")
    log(f"schema is current ({len(done)} migration(s) applied)")
