"""Operations commands: `status`, `reconcile`, `demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from billing import reconcile as recon
from billing.db import connect
from billing.errors import RedisUnavailable
from billing.invoices import parse_month
from billing.migrate import require_current
from billing.settings import Settings, redact
from billing.sqlfiles import query
from producer.spool import spool_files
from worker import worker as proc
from worker.context import log, settings_from

FORMATS = ("table", "json")
DEMO_OUTPUT = Path("demo-output")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("status")(status)
    app.command("reconcile")(reconcile)
    app.command("demo")(demo)


def _format(value: str) -> str:
    if value not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    return value


def status(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", help="table or json", callback=_format),
) -> None:
    """Summarize queue depth, failed jobs, unpriced events, rejected events and the spool size."""
    settings = settings_from(ctx)
    with connect(settings) as conn:
        require_current(conn)
        db = _db_status(conn)
    client = proc.redis_client(settings)
    try:
        names = proc.queue_names(client, settings)
        jobs = [c.__dict__ for c in proc.job_counts(client, names)]
        warnings = proc.redis_warnings(client)
    finally:
        client.close()
    spool = _spool_status(settings)
    report: dict[str, Any] = {
        "database": redact(settings.database_url),
        "redis": redact(settings.redis_url),
        "queues": jobs,
        "redis_warnings": warnings,
        **db,
        "spool": spool,
    }
    if fmt == "json":
        print(json.dumps(report, default=str, indent=2))
        return
    console = Console()
    table = Table(title="usagebill status")
    for col in ("queue", "queued", "started", "scheduled (retries)", "failed"):
        table.add_column(col, justify="right" if col != "queue" else "left")
    for j in jobs:
        table.add_row(j["queue"], str(j["queued"]), str(j["started"]), str(j["scheduled"]), str(j["failed"]))
    console.print(table)
    console.print(
        f"events: {db['events']}  unpriced: {db['unpriced_events']}  rejected: {db['rejected_events']}  "
        f"conflicts: {db['conflicts']}"
    )
    console.print(f"open months: {', '.join(db['open_months']) or '-'}")
    console.print(f"spool: {spool['files']} file(s), {spool['bytes']} bytes in {spool['dir']}")
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _db_status(conn: Any) -> dict[str, Any]:
    row = conn.execute(query("ops", "counts")).fetchone()
    months = [r[0] for r in conn.execute(query("ops", "open_months"))]
    return {
        "events": row[0],
        "unpriced_events": row[1],
        "rejected_events": row[2],
        "conflicts": row[3],
        "open_months": months,
    }


def _spool_status(settings: Settings) -> dict[str, Any]:
    directory = Path(settings.spool_dir).expanduser()
    files = spool_files(directory) if directory.is_dir() else []
    size = 0
    for f in files:
        try:
            size += f.stat().st_size
        except FileNotFoundError:  # replayed meanwhile
            continue
    return {"dir": str(directory), "files": len(files), "bytes": size}


def reconcile(
    ctx: typer.Context,
    month: str | None = typer.Option(None, "--month", help="YYYY-MM; default: every month"),
    repair_mirror: bool = typer.Option(False, "--repair-mirror", help="Rebuild a drifted Redis mirror."),
    fmt: str = typer.Option("table", "--format", help="table or json", callback=_format),
) -> None:
    """Check that events, aggregates, invoice lines and the Redis quota mirror agree; exit 3 on drift."""
    settings = settings_from(ctx)
    wanted = parse_month(month) if month else None
    with connect(settings) as conn:
        require_current(conn)
        conn.rollback()  # the checks take their own repeatable-read snapshot
        try:
            client = proc.redis_client(settings)
        except RedisUnavailable as exc:
            log(f"warning: {exc}; the quota mirror is not checked")
            client = None
        try:
            report = recon.reconcile(conn, client, wanted, repair_mirror=repair_mirror)
        finally:
            if client is not None:
                client.close()
    if report.mirror_repaired:
        log("quota mirror rebuilt from Postgres")
    if fmt == "json":
        print(
            json.dumps(
                {
                    "clean": report.clean,
                    "mirror_checked": report.mirror_checked,
                    "drift": [d.to_json() for d in report.drifts],
                },
                indent=2,
            )
        )
    elif report.drifts:
        table = Table(title="reconcile: drift")
        for col in ("org", "month", "what", "expected", "found"):
            table.add_column(col)
        for d in report.drifts:
            table.add_row(d.org_id, d.month, d.what, d.expected, d.found)
        Console().print(table)
    else:
        print("reconcile: clean" + ("" if report.mirror_checked else " (database only; Redis not checked)"))
    if report.drifts:
        raise typer.Exit(3)


def demo(
    output: Path = typer.Option(DEMO_OUTPUT, "--output", help="Directory for the invoices it writes."),
    calls_per_user: int = typer.Option(12, "--calls-per-user", min=1, max=1000, help="LLM calls per demo user."),
    embedded: bool = typer.Option(
        False, "--embedded", help="Start embedded Postgres and Redis even when servers are answering."
    ),
) -> None:
    """Run the end-to-end demo on throwaway databases: LLM calls in, quota table and invoices out."""
    from worker.demo import main_demo  # noqa: PLC0415  # the demo pulls in the SDKs; other commands need not

    main_demo(output, calls_per_user, embedded)
