"""Commands for quotas: `quota set|delete|show|alerts|rebuild-mirror|deliver-alerts|unpriced-rate`."""

from __future__ import annotations

import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from billing import alerts, quotas
from billing.errors import InputError, RedisUnavailable
from billing.money import round_amount
from billing.settings import Settings, redact
from worker.context import log, migrated_db, settings_from

quota_app = typer.Typer(help="Set and show quotas; maintain the Redis mirror and alert delivery.", no_args_is_help=True)


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise InputError(f"{what} must be a decimal number, got {text!r}") from exc
    if not value.is_finite():
        raise InputError(f"{what} must be a finite number, got {text!r}")
    return value


@quota_app.command("set")
def set_command(  # noqa: PLR0917 - the CLI's options
    ctx: typer.Context,
    org: Annotated[str, typer.Option("--org", help="The org the limit applies to.")],
    user: Annotated[
        str | None, typer.Option("--user", help="Limit one user of the org (default: the whole org).")
    ] = None,
    tokens: Annotated[str | None, typer.Option("--tokens", help="Token limit per month (input + output).")] = None,
    money: Annotated[str | None, typer.Option("--money", help="Money limit per month, e.g. 250.00.")] = None,
    currency: Annotated[
        str | None, typer.Option("--currency", help="Currency of --money (default and only allowed: the org's).")
    ] = None,
    hard: Annotated[bool, typer.Option("--hard/--soft", help="Hard: deny past the limit. Soft: alert only.")] = False,
    thresholds: Annotated[
        str, typer.Option("--thresholds", help="Alert thresholds in percent of the limit.")
    ] = "50,80,100",
    webhook: Annotated[str | None, typer.Option("--webhook", help="URL that alerts are POSTed to.")] = None,
    secret: Annotated[str | None, typer.Option("--secret", help="HMAC-SHA256 key signing the webhook body.")] = None,
) -> None:
    """Create or replace a monthly (UTC) quota: --tokens N or --money AMOUNT (give both to set two)."""
    if tokens is None and money is None:
        raise InputError("give --tokens N and/or --money AMOUNT")
    settings = settings_from(ctx)
    levels = quotas.parse_thresholds(thresholds)
    specs: list[tuple[str, Decimal]] = []
    if tokens is not None:
        specs.append(("tokens", _decimal(tokens, "--tokens")))
    if money is not None:
        specs.append(("money", _decimal(money, "--money")))
    client = _redis(settings)
    with migrated_db(settings) as conn:
        for kind, limit in specs:
            quota_id = quotas.set_quota(
                conn,
                org_id=org,
                user_id=user,
                kind=kind,
                limit=limit,
                currency=currency,
                mode="hard" if hard else "soft",
                thresholds=levels,
                webhook_url=webhook,
                webhook_secret=secret,
            )
            scope = f"org {org}" + (f" user {user}" if user else "")
            log(f"quota {quota_id}: {scope}, {kind} limit {limit} per month, {'hard' if hard else 'soft'}")
        try:
            quotas.sync_org(conn, client, org)
        except (redis.RedisError, OSError) as exc:
            log(
                f"warning: Redis at {redact(settings.redis_url)} unreachable ({exc}); the quota is stored and "
                "reaches the mirror at its next rebuild (`usagebill quota rebuild-mirror`)"
            )


@quota_app.command("delete")
def delete_command(
    ctx: typer.Context,
    org: Annotated[str, typer.Option("--org")],
    kind: Annotated[str, typer.Option("--kind", help="tokens or money.")],
    user: Annotated[str | None, typer.Option("--user")] = None,
) -> None:
    """Remove a quota (and its alerts)."""
    settings = settings_from(ctx)
    with migrated_db(settings) as conn:
        if not quotas.delete_quota(conn, org_id=org, kind=kind, user_id=user):
            raise InputError(f"no {kind} quota for org {org}" + (f" user {user}" if user else ""))
        try:
            quotas.sync_org(conn, _redis(settings), org)
        except (redis.RedisError, OSError) as exc:
            log(f"warning: Redis unreachable ({exc}); run `usagebill quota rebuild-mirror` when it is back")
    log("quota deleted")


def _amount(status: quotas.QuotaStatus, value: Decimal) -> str:
    if status.kind == "tokens":
        return f"{int(value):,}"
    currency = (status.currency or "USD").strip()
    return f"{round_amount(value, currency):,} {currency}"


@quota_app.command("show")
def show_command(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option("--org", help="Only this org's quotas.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Quotas against the current UTC month: used / limit / remaining / percent."""
    if fmt not in ("table", "json"):
        raise InputError(f"unknown format {fmt!r}: expected table or json")
    settings = settings_from(ctx)
    with migrated_db(settings) as conn:
        rows = quotas.quota_status(conn, org)
    if fmt == "json":
        sys.stdout.write(json.dumps([r.as_json() for r in rows], indent=2) + "\n")
        return
    if not rows:
        log("no quotas" + (f" for org {org}" if org else "") + " (set one with `usagebill quota set`)")
        return
    table = Table(title=f"Quotas, {rows[0].month:%Y-%m} (UTC)")
    for name, justify in (
        ("org", "left"),
        ("user", "left"),
        ("kind", "left"),
        ("mode", "left"),
        ("used", "right"),
        ("limit", "right"),
        ("remaining", "right"),
        ("percent", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        pct = f"{r.percent}%"
        style = "red" if r.exceeded else ("yellow" if r.percent >= 80 else "")
        table.add_row(
            r.org_id,
            r.user_id or "-",
            r.kind,
            r.mode,
            _amount(r, r.used),
            _amount(r, r.quota_limit),
            _amount(r, r.remaining),
            f"[{style}]{pct}[/{style}]" if style else pct,
        )
    Console(file=sys.stdout, soft_wrap=True).print(table)


@quota_app.command("alerts")
def alerts_command(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option("--org")] = None,
) -> None:
    """The alerts outbox as JSON: fired thresholds and their delivery state."""
    settings = settings_from(ctx)
    with migrated_db(settings) as conn:
        rows = quotas.list_alerts(conn, org)
    sys.stdout.write(json.dumps(rows, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return value.isoformat()


@quota_app.command("rebuild-mirror")
def rebuild_command(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="Only rebuild when the mirror is missing or drifted.")] = False,
) -> None:
    """Rebuild the Redis quota mirror from Postgres (one rebuilder at a time)."""
    settings = settings_from(ctx)
    client = _redis(settings)
    try:
        with migrated_db(settings) as conn:
            if check:
                rebuilt = quotas.ensure_mirror(conn, client)
                log("quota mirror drifted: rebuilt" if rebuilt else "quota mirror is current")
                return
            if not quotas.rebuild_mirror(conn, client, wait=30):
                raise RedisUnavailable("another rebuild holds the lock for more than 30 s")
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis unreachable at {redact(settings.redis_url)}: {exc}") from exc
    log("quota mirror rebuilt")


@quota_app.command("deliver-alerts")
def deliver_command(ctx: typer.Context) -> None:
    """Enqueue delivery of every undelivered alert never handed over or stuck (the periodic sweep)."""
    settings = settings_from(ctx)
    try:
        with migrated_db(settings) as conn:
            count = alerts.sweep_alerts(conn, _redis(settings), settings.queue)
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis unreachable at {redact(settings.redis_url)}: {exc}") from exc
    log(f"{count} alert delivery job(s) enqueued")


@quota_app.command("unpriced-rate")
def unpriced_rate_command(
    ctx: typer.Context,
    input_rate: Annotated[str, typer.Option("--input", help="Per-million price for unpriced input tokens.")],
    output_rate: Annotated[str, typer.Option("--output", help="Per-million price for unpriced output tokens.")],
    currency: Annotated[str, typer.Option("--currency", help="A currency, or * for every other one.")] = "*",
) -> None:
    """Set the floor of the conservative rate that charges unpriced usage against money limits."""
    settings = settings_from(ctx)
    with migrated_db(settings) as conn:
        quotas.set_unpriced_rate(
            conn,
            input_per_million=_decimal(input_rate, "--input"),
            output_per_million=_decimal(output_rate, "--output"),
            currency=currency,
        )
        try:
            quotas.rebuild_mirror(conn, _redis(settings), wait=30)
        except (redis.RedisError, OSError) as exc:
            log(f"warning: Redis unreachable ({exc}); run `usagebill quota rebuild-mirror` when it is back")
    log("unpriced rate set")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(quota_app, name="quota")
