"""Commands for invoices: `invoice close|export`, `reprice` and the `scheduler` process."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import psycopg
import redis
import typer

from billing import exports, invoices, quotas
from billing.db import connect, is_transient, translated
from billing.errors import InputError
from billing.invoices import month_text, parse_month
from billing.reprice import RepriceResult
from billing.reprice import reprice as run_reprice
from billing.settings import Settings
from worker import observability, scheduler
from worker.context import log, settings_from
from worker.invoicing import close

#: attempts of a reprice aborted by a transient database error (failover, restart, serialization failure)
REPRICE_ATTEMPTS = 3

invoice_app = typer.Typer(help="Close months and export invoices.", no_args_is_help=True)


@invoice_app.command("close")
def close_command(
    ctx: typer.Context,
    month: Annotated[str, typer.Option("--month", help="The month to finalize, YYYY-MM (UTC).")],
    force: Annotated[
        bool, typer.Option("--force", help="Close before the grace period is over or while an old backlog remains.")
    ] = False,
) -> None:
    """Finalize one invoice per org for the month (numbers, snapshots); exits 0 when already closed."""
    settings = settings_from(ctx)
    result = close(settings, parse_month(month), force=force)
    label = month_text(result.month)
    if result.already_closed:
        log(f"month {label} is already closed: nothing to do")
        return
    for item in result.unpriced:
        log(
            f"warning: {label}: {item.events} unpriced event(s) of {item.provider}/{item.model} "
            f"({item.input_tokens} input, {item.output_tokens} output tokens) are not on these invoices; "
            "they are billed as late lines once `usagebill reprice` prices them"
        )
    if result.invoices:
        log(
            f"month {label} closed: {result.invoices} invoice(s) finalized, numbers "
            f"{result.first_number}-{result.last_number}, {result.total_lines} line(s)"
        )
    else:
        log(f"month {label} closed: no usage, no invoice")


@invoice_app.command("export")
def export_command(
    ctx: typer.Context,
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM.")],
    fmt: Annotated[str, typer.Option("--format", help="json, csv or html.")] = "json",
    org: Annotated[str | None, typer.Option("--org", help="Only this org's invoice.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="A file (json, csv) or a directory (html, one file per invoice).")
    ] = None,
) -> None:
    """Export a month's invoices: finalized ones from their stored snapshots, open months as drafts."""
    if fmt not in exports.FORMATS:
        raise InputError(f"unknown format {fmt!r}: expected one of {', '.join(exports.FORMATS)}")
    settings = settings_from(ctx)
    wanted = parse_month(month)
    with translated(settings), connect(settings) as conn:
        texts = list(invoices.invoice_texts(conn, wanted, org))
        conn.rollback()
    if fmt == "html":
        _write_html(texts, output)
        return
    body = exports.render_json(texts) if fmt == "json" else exports.render_csv(texts)
    if output is None:
        sys.stdout.write(body)
        sys.stdout.flush()
    else:
        _write_file(output, body)
        log(f"wrote {len(texts)} invoice(s) to {output}")


def _write_file(path: Path, body: str) -> None:
    try:
        path.write_text(body, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


def _write_html(texts: list[str], output: Path | None) -> None:
    rendered = [exports.render_html(text) for text in texts]
    if output is None:
        if len(rendered) > 1:
            raise InputError(f"{len(rendered)} HTML invoices: give --output DIR (one file per invoice) or --org ID")
        for item in rendered:
            sys.stdout.write(item.html)
        return
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create directory {output}: {exc.strerror}") from exc
    for item in rendered:
        _write_file(output / item.filename, item.html)
    log(f"wrote {len(rendered)} HTML invoice(s) to {output}")


def reprice_command(
    ctx: typer.Context,
    month: Annotated[
        str | None, typer.Option("--month", help="Re-rate every event of this usage month (YYYY-MM).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be posted; write nothing.")] = False,
) -> None:
    """Price unpriced events now that a rate exists, or re-rate a month after a rate correction.

    Finalized invoices are never edited: the difference is posted as reversal and re-bill lines on the
    earliest open month, carrying the original month. Prints the postings as JSON.
    """
    settings = settings_from(ctx)
    wanted = parse_month(month) if month else None
    result = _reprice_with_retries(settings, wanted, dry_run)
    if result.applied:
        _refresh_quota_mirror(settings)
    sys.stdout.write(json.dumps([line.to_json() for line in result.lines], indent=1) + "\n")
    what = "would change" if dry_run else "changed"
    scope = f"usage month {month_text(wanted)}" if wanted else "unpriced events"
    log(
        f"reprice ({scope}): {result.events} event(s) {what}, {result.newly_priced} of them previously unpriced; "
        f"{len(result.lines)} posting(s){' (dry run: nothing written)' if dry_run else ''}"
    )


def _reprice_with_retries(settings: Settings, month: date | None, dry_run: bool) -> RepriceResult:
    # a transient failure (failover, restart) aborts the whole reprice: run it again (it moves aggregate
    # rows in the ingest's lock order, so a concurrent ingest does not deadlock it)
    with translated(settings):  # the last failure, if any, leaves as a one-line DatabaseUnavailable
        for attempt in range(1, REPRICE_ATTEMPTS):
            try:
                with connect(settings) as conn:
                    return run_reprice(conn, month=month, dry_run=dry_run)
            except psycopg.Error as exc:
                if not is_transient(exc):
                    raise
                log(f"reprice: {type(exc).__name__}, retrying ({attempt}/{REPRICE_ATTEMPTS - 1})")
                time.sleep(0.2 * attempt)
        with connect(settings) as conn:
            return run_reprice(conn, month=month, dry_run=dry_run)


def _refresh_quota_mirror(settings: Settings) -> None:
    # reprice moved cost between unpriced and priced usage: the mirror app code checks must follow
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        with connect(settings, autocommit=True) as conn:
            quotas.ensure_mirror(conn, client)
        client.close()
    except (redis.RedisError, psycopg.Error) as exc:
        log(f"warning: quota mirror not refreshed ({exc}); the scheduler's check rebuilds it")


def scheduler_command(ctx: typer.Context) -> None:
    """Run the periodic-job scheduler (month close, alerts, reconcile) until SIGTERM: the Procfile's `scheduler:`."""
    settings = settings_from(ctx)
    observability.setup_logging(logging.INFO, settings.log_format)
    scheduler.run(settings)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(invoice_app, name="invoice")
    app.command("reprice")(reprice_command)
    app.command("scheduler")(scheduler_command)
