"""Commands for prices: `rates import|list|missing` and per-org pricing `org set-currency|discount|rate|show`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from billing import rates as rate_tables
from billing.errors import InputError
from worker.context import log, migrated_db, settings_from

rates_app = typer.Typer(help="Import and inspect rate tables (prices per million tokens).", no_args_is_help=True)
org_app = typer.Typer(help="Per-org pricing: billing currency, discount or markup, custom rates.", no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    json = "json"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=_json_default, indent=2))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return text.removesuffix("T00:00:00Z")
    return str(value)


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console(soft_wrap=True, width=1000).print(table)


def _when(text: str, option: str) -> datetime:
    try:
        return rate_tables.parse_when(text)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


# --- rates ----------------------------------------------------------------------------------------


@rates_app.command("import")
def import_command(  # noqa: PLR0917 - the CLI's options
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Argument(help="A CSV with the header of DESIGN.md.", dir_okay=False, show_default=False)
    ] = None,
    builtin: Annotated[
        bool, typer.Option("--builtin", help="Import the shipped list of public prices (each row dated).")
    ] = False,
    genai_prices: Annotated[
        bool, typer.Option("--genai-prices", help="Import the installed genai-prices catalogue (extra 'catalog').")
    ] = False,
    org: Annotated[str | None, typer.Option("--org", help="Import FILE as this org's custom (net) rates.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="--genai-prices: date its prices apply from (default: today, 00:00 UTC)."),
    ] = None,
    provider: Annotated[
        list[str] | None, typer.Option("--provider", help="--genai-prices: only these providers (repeatable).")
    ] = None,
) -> None:
    """Import rates: a CSV file (validated as a whole: nothing is imported when a row is bad), the shipped
    public list (--builtin) or the genai-prices catalogue (--genai-prices). Re-importing is a no-op;
    an existing key with other prices is an error (a published rate is never edited)."""
    chosen = sum([file is not None, builtin, genai_prices])
    if chosen != 1:
        raise typer.BadParameter("give exactly one of FILE, --builtin, --genai-prices")
    if org is not None and file is None:
        raise typer.BadParameter("--org goes with FILE (custom rates of that org)")
    if (since or provider) and not genai_prices:
        raise typer.BadParameter("--since and --provider go with --genai-prices")
    settings = settings_from(ctx)
    if genai_prices:
        from billing import catalog  # noqa: PLC0415 - needs the optional genai-prices package

        start = (
            _when(since, "--since") if since else datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        )
        mapped = catalog.catalog_rows(since=start, providers=set(provider) if provider else None)
        for note in mapped.notes:
            log(f"genai-prices: {note}")
        if not mapped.rows:
            raise InputError("the genai-prices catalogue gave no rows (check --provider)")
        where = f"genai-prices {mapped.version}"
        rows = list(enumerate(mapped.rows, start=1))
        with migrated_db(settings) as conn:
            result = rate_tables.import_rows(conn, rows, where=where, default_source=where)
    elif builtin:
        where = rate_tables.BUILTIN_SOURCE
        with migrated_db(settings) as conn:
            result = rate_tables.import_builtin(conn)
    else:
        assert file is not None
        where = str(file)
        with migrated_db(settings) as conn:
            result = rate_tables.import_csv(conn, file, org_id=org)
    log(f"{where}: {result.inserted} rate(s) added, {result.unchanged} already present")


@rates_app.command("list")
def list_command(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Only rows that could price this model.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Only this provider.")] = None,
    org: Annotated[str | None, typer.Option("--org", help="Only this org's custom rows.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """List rate rows with their source, the date the source gives and when they were imported (prices per
    million tokens; empty = the fallback)."""
    with migrated_db(settings_from(ctx)) as conn:
        rows = rate_tables.list_rates(conn, model=model, provider=provider, org_id=org)
    if fmt is Format.json:
        _print_json(rows)
        return
    _print_table(
        rows,
        [
            "rate_id",
            "org_id",
            "provider",
            "model",
            "effective_from",
            "currency",
            "service_tier",
            "min_input_tokens",
            "input",
            "cached_input",
            "cache_write",
            "cache_write_1h",
            "output",
            "reasoning",
            "source",
            "source_date",
            "created_at",
        ],
    )
    if not rows:
        log("no rate rows match")


@rates_app.command("missing")
def missing_command(
    ctx: typer.Context,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Unpriced usage (no rate matched) by provider and model: import a rate, then `usagebill reprice`."""
    with migrated_db(settings_from(ctx)) as conn:
        rows = rate_tables.missing(conn)
    if fmt is Format.json:
        _print_json(rows)
        return
    _print_table(
        rows,
        ["provider", "model", "events", "orgs", "input_tokens", "output_tokens", "tokens", "first_seen", "last_seen"],
    )
    if not rows:
        log("every event is priced")


# --- org pricing ------------------------------------------------------------------------------------


@org_app.command("set-currency")
def set_currency_command(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org id.")],
    currency: Annotated[str, typer.Argument(help="ISO 4217 code, e.g. EUR.")],
) -> None:
    """Set the org's billing currency: its events are priced from rate rows in that currency only."""
    with migrated_db(settings_from(ctx)) as conn:
        rate_tables.set_currency(conn, org, currency)
    log(f"org {org}: currency {currency} (applies to events priced from now on)")


# a negative PERCENT (-10) is an argument, not an unknown option
@org_app.command("discount", context_settings={"ignore_unknown_options": True})
def discount_command(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org id.")],
    percent: Annotated[str, typer.Argument(help="-10 = 10 % discount, 5 = 5 % markup, 0 = none.")],
    since: Annotated[str, typer.Option("--from", help="Date (00:00 UTC) or RFC 3339 time it applies from.")],
    note: Annotated[str | None, typer.Option("--note", help="Why (kept with the adjustment).")] = None,
) -> None:
    """Add an effective-dated discount or markup on the public unit prices of the org's events."""
    try:
        value = Decimal(percent.strip())
    except InvalidOperation:
        raise InputError(f"PERCENT must be a decimal number, got {percent!r}") from None
    with migrated_db(settings_from(ctx)) as conn:
        added = rate_tables.set_adjustment(conn, org, value, _when(since, "--from"), note)
    log(f"org {org}: {value}% from {since}" + ("" if added else " (already recorded)"))


@org_app.command("rate")
def org_rate_command(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org id.")],
    file: Annotated[Path, typer.Argument(help="A rates CSV of net prices for this org.", dir_okay=False)],
) -> None:
    """Import custom (net) rate rows for one org: they win over public rows for the models they match."""
    with migrated_db(settings_from(ctx)) as conn:
        result = rate_tables.import_csv(conn, file, org_id=org)
    log(f"{file}: {result.inserted} custom rate(s) added for org {org}, {result.unchanged} already present")


@org_app.command("show")
def show_command(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org id.")],
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Show the org's pricing: currency, discounts/markups and custom rate rows."""
    with migrated_db(settings_from(ctx)) as conn:
        info = rate_tables.org_pricing(conn, org)
    if fmt is Format.json:
        _print_json(info)
        return
    typer.echo(f"org {info['org_id']}: currency {info['currency']}" + ("" if info["known"] else " (no events yet)"))
    if info["adjustments"]:
        _print_table(info["adjustments"], ["effective_from", "percent", "note"], title="adjustments")
    else:
        typer.echo("no discount or markup")
    if info["custom_rates"]:
        _print_table(
            info["custom_rates"],
            [
                "rate_id",
                "provider",
                "model",
                "effective_from",
                "currency",
                "service_tier",
                "min_input_tokens",
                "input",
                "cached_input",
                "cache_write",
                "cache_write_1h",
                "output",
                "reasoning",
                "source",
            ],
            title="custom rates",
        )
    else:
        typer.echo("no custom rates")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(rates_app, name="rates")
    app.add_typer(org_app, name="org")
