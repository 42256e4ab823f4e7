"""Quotas: limits and their status, threshold alerts recorded in the ingest transaction, and the Redis mirror.

The mirror (key layout in producer/quota.py) holds, per org with a quota, its limits and the absolute
usage totals of each month read from Postgres, never deltas: a worker killed between its commit and its
Redis write, or a re-run that inserted nothing, leaves it right at the next refresh. An ingest batch's
totals are read once, by the statement that records its alerts, inside its transaction and under its
per-(org, month) lock, and written after commit; every other read of them takes the same lock (shared),
so no read can fall between a batch's read and its commit. Each write carries a stamp (the xmax of the
snapshot that read it; a later snapshot has one at least as large), so two workers refreshing out of
order cannot move it back. `rebuild_mirror` rebuilds it whole under a
Redis lock (one rebuilder at a time): at worker start, after a flush (the `ready` key is gone) and when
`mirror_drift` finds a difference.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from types import EllipsisType
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row
from redis import Redis
from redis.exceptions import RedisError

from billing.db import connect
from billing.errors import InputError
from billing.settings import Settings
from billing.sqlfiles import query
from producer.quota import (
    MONTH_KEY_TTL_MS,
    NANOS,
    READY_KEY,
    field,
    limits_key,
    resv_keys,
    settle,
    used_key,
)

logger = logging.getLogger("usagebill.quotas")

KINDS = ("tokens", "money")
MODES = ("soft", "hard")
DEFAULT_THRESHOLDS = (Decimal(50), Decimal(80), Decimal(100))
REBUILD_LOCK = "usagebill:quota:rebuild-lock"
#: seconds the rebuild lock lives if its holder dies mid-rebuild
REBUILD_LOCK_TIMEOUT = 120

# Write absolute totals unless the mirror already holds a newer read (larger stamp); at an equal stamp
# keep the larger value. One call for many org-months (one used hash each). KEYS: used hashes. ARGV: ttl_ms,
# then per key: stamp, number of fields n, n pairs of field, value. Returns how many hashes were written.
_WRITE_USED = """
local ttl = ARGV[1]
local j = 2
local written = 0
for k = 1, #KEYS do
  local stamp = ARGV[j]
  local n = tonumber(ARGV[j + 1])
  local first = j + 2
  j = first + 2 * n
  local cur = redis.call('HGET', KEYS[k], 'stamp')
  local s = tonumber(stamp)
  if not (cur and tonumber(cur) > s) then
    local same = cur and tonumber(cur) == s
    for i = first, j - 1, 2 do
      local v = ARGV[i + 1]
      if same then
        local old = redis.call('HGET', KEYS[k], ARGV[i])
        if old and tonumber(old) > tonumber(v) then v = old end
      end
      redis.call('HSET', KEYS[k], ARGV[i], v)
    end
    redis.call('HSET', KEYS[k], 'stamp', stamp)
    redis.call('PEXPIRE', KEYS[k], ttl)
    written = written + 1
  end
end
return written
"""
#: used hashes per script call: a rebuild of many orgs is cut into calls that each hold Redis briefly
WRITE_CHUNK = 100

# KEYS: the ready key, then reservation sets. Returns whether the ready key exists, then every member.
_ACTIVE_RESERVATIONS = """
local out = {redis.call('EXISTS', KEYS[1])}
for i = 2, #KEYS do
  for _, member in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do out[#out + 1] = member end
end
return out
"""


@dataclass(frozen=True)
class QuotaStatus:
    """One quota against the current UTC month (a row of the quota_status view)."""

    quota_id: int
    org_id: str
    user_id: str | None
    kind: str
    mode: str
    currency: str | None
    month: date
    quota_limit: Decimal
    used: Decimal
    remaining: Decimal
    percent: Decimal
    exceeded: bool
    unpriced_tokens: Decimal
    thresholds: list[Decimal]

    def as_json(self) -> dict[str, Any]:
        """For scripts: tokens as integers, money as exact decimal strings, percent as a number."""

        def amount(value: Decimal) -> int | str:
            return int(value) if self.kind == "tokens" else plain_decimal(value)

        return {
            "quota_id": self.quota_id,
            "org_id": self.org_id,
            "user_id": self.user_id,
            "kind": self.kind,
            "mode": self.mode,
            "currency": self.currency,
            "month": self.month.strftime("%Y-%m"),
            "used": amount(self.used),
            "limit": amount(self.quota_limit),
            "remaining": amount(self.remaining),
            "percent": float(self.percent),
            "exceeded": self.exceeded,
            "unpriced_tokens": int(self.unpriced_tokens),
            "thresholds": [_plain(t) for t in self.thresholds],
        }


def plain_decimal(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros: 250, 0.004375."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _plain(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def parse_thresholds(text: str) -> list[Decimal]:
    """'50,80,100' -> sorted distinct percents, each in (0, 1000]."""
    try:
        values = sorted({Decimal(part.strip()) for part in text.split(",") if part.strip()})
    except ArithmeticError as exc:
        raise InputError(f"thresholds must be comma-separated percents, got {text!r}") from exc
    if not values or any(not v.is_finite() or v <= 0 or v > 1000 for v in values):
        raise InputError(f"thresholds must be percents in (0, 1000], got {text!r}")
    return values


def set_quota(
    conn: psycopg.Connection[Any],
    *,
    org_id: str,
    kind: str,
    limit: Decimal,
    user_id: str | None = None,
    currency: str | None = None,
    mode: str = "soft",
    thresholds: Sequence[Decimal] = DEFAULT_THRESHOLDS,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    redis_client: Redis | None = None,
) -> int:
    """Create or replace the quota of (org, user, kind); returns its id. Refreshes the org's mirror.

    A money limit is in the org's currency: `currency` defaults to it and must match it.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be tokens or money, got {kind!r}")
    if mode not in MODES:
        raise InputError(f"mode must be soft or hard, got {mode!r}")
    if not org_id:
        raise InputError("an org id is required")
    if user_id == "":
        user_id = None
    if not limit.is_finite() or limit <= 0:
        raise InputError(f"a limit must be positive, got {limit}")
    if kind == "tokens":
        if limit != limit.to_integral_value():
            raise InputError(f"a token limit is a whole number, got {limit}")
        currency = None
    else:
        row = conn.execute(query("quotas", "org_currency"), {"org_id": org_id}).fetchone()
        org_currency = str(row[0]) if row else "USD"
        currency = (currency or org_currency).upper()
        if currency != org_currency:
            raise InputError(
                f"org {org_id} is billed in {org_currency}: a money limit must be in {org_currency}, not {currency}"
            )
    if (webhook_url is None) != (webhook_secret is None):
        raise InputError("a webhook needs both --webhook URL and --secret")
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        raise InputError(f"a webhook URL must be http(s), got {webhook_url!r}")
    with conn.transaction():
        row = conn.execute(
            query("quotas", "upsert_quota"),
            {
                "org_id": org_id,
                "user_id": user_id,
                "kind": kind,
                "quota_limit": limit,
                "currency": currency,
                "mode": mode,
                "thresholds": list(thresholds),
                "webhook_url": webhook_url,
                "webhook_secret": webhook_secret,
            },
        ).fetchone()
    assert row is not None
    if redis_client is not None:
        sync_org(conn, redis_client, org_id)
    return int(row[0])


def delete_quota(
    conn: psycopg.Connection[Any],
    *,
    org_id: str,
    kind: str,
    user_id: str | None = None,
    redis_client: Redis | None = None,
) -> bool:
    """Remove a quota (its alerts go with it). Returns whether one existed."""
    with conn.transaction():
        row = conn.execute(
            query("quotas", "delete_quota"), {"org_id": org_id, "user_id": user_id or None, "kind": kind}
        ).fetchone()
    if redis_client is not None:
        sync_org(conn, redis_client, org_id)
    return row is not None


def quota_status(conn: psycopg.Connection[Any], org_id: str | None = None) -> list[QuotaStatus]:
    """Every quota (of one org) against the current UTC month."""
    with conn.cursor(row_factory=class_row(QuotaStatus)) as cur:
        return cur.execute(query("quotas", "quota_status"), {"org_id": org_id}).fetchall()


def _pairs(org_months: Iterable[tuple[str, date]]) -> tuple[list[str], list[date]]:
    unique = sorted({(org, _month_start(month)) for org, month in org_months})
    return [o for o, _ in unique], [m for _, m in unique]


def _month_start(value: date) -> date:
    return date(value.year, value.month, 1)


@dataclass(frozen=True)
class _TxRead:
    """What record_alerts read inside an ingest transaction, for the refresh after its commit."""

    org_months: list[tuple[str, date]]  # the caller's list itself: its refresh passes the same object
    rows: list[tuple[Any, ...]]  # mirror_totals rows of the (org, month) pairs it locked
    fired: int  # alerts recorded by that transaction


# per thread: a worker thread ingests and then refreshes the same batch
_tx_reads = threading.local()


def record_alerts(conn: psycopg.Connection[Any], org_months: list[tuple[str, date]]) -> None:
    """Record the threshold crossings of these (org, month) pairs, inside the caller's ingest transaction.

    Call it after the aggregates are written, as the last step before commit, in a READ COMMITTED
    transaction. It takes a transaction-level advisory lock per (org, month) of orgs with quotas, so
    concurrent ingest transactions check in turn, each seeing the usage the others committed: a
    crossing is recorded exactly once (the outbox's unique key), even when two batches make it together.

    The same statement reads the absolute totals the mirror holds for the locked pairs, stamped with its
    snapshot: `refresh_mirror`, called after commit with the same `org_months` list, writes them instead
    of reading them again (every other mirror read waits for this lock, see `_read_totals`).
    """
    if not org_months:
        return
    org_ids, months = _pairs(org_months)
    params = {"org_ids": org_ids, "months": months}
    locked = {(str(o), m) for o, m, _ in conn.execute(query("quotas", "lock_org_months"), params)}
    if not locked:
        # none of these orgs has a quota: nothing to cross, and the mirror keeps the locked pairs' totals only
        _tx_reads.last = _TxRead(org_months=org_months, rows=[], fired=0)
        return
    # a new statement, so a new snapshot: it sees what transactions that held the locks before committed
    rows = conn.execute(query("quotas", "record_alerts"), params).fetchall()
    _tx_reads.last = _TxRead(
        org_months=org_months,
        rows=[tuple(r[:6]) for r in rows if (r[0], r[1]) in locked],
        fired=int(rows[0][6]) if rows else 0,
    )


def take_tx_read(org_months: list[tuple[str, date]]) -> _TxRead | None:
    """The read record_alerts made in this thread for this very list (once; None when another batch's, or
    none): for a refresh that runs in another thread (`refresh_mirror(..., tx_read=...)`)."""
    read: _TxRead | None = getattr(_tx_reads, "last", None)
    _tx_reads.last = None
    return read if read is not None and read.org_months is org_months else None


def refresh_mirror(
    conn: psycopg.Connection[Any],
    redis_client: Redis,
    org_months: list[tuple[str, date]],
    reservation_ids: Iterable[str] = (),
    tx_read: _TxRead | EllipsisType | None = ...,
) -> None:
    """After commit: write the absolute totals of these (org, month) pairs to the mirror, settle the
    reservations whose events are now counted, and hand new alerts to the delivery queue.

    The totals are those `record_alerts` read in the batch's own transaction (under its per-(org, month)
    lock, stamped with that snapshot: a refresh that comes late cannot move the mirror back) when
    `org_months` is the list that transaction was given; otherwise they are read again now. A refresh in
    the thread that ran the transaction finds that read itself; one in another thread is given it
    (`tx_read`, what `take_tx_read` returned in the transaction's thread; None: read them again).

    Reservations settled: `reservation_ids` if given, plus every active reservation of these orgs (this
    month and the one before) whose event is in the events table, so a reservation left by a worker
    killed before this step is settled by the next refresh. The events are looked up before the totals
    are read (a reservation of another batch found counted makes this refresh read the totals again, after
    the lookup), so a reservation is removed only once its usage is in the mirror (for a moment it may
    count twice: conservative, never zero times).

    Alerts: handed over when this batch's transaction recorded some (or, when the totals are read again,
    any of these pairs not yet handed over); alerts of a worker killed before this step are handed over by
    the periodic sweep (`billing.alerts.deliver_pending`).

    Never raises for a Redis or database failure (logged): the next refresh or rebuild repairs the
    mirror, and an unsettled reservation expires. Rebuilds the whole mirror first when it is gone.
    """
    if not org_months:
        return
    if tx_read is ...:
        tx_read = take_tx_read(org_months)
    try:
        counted = _refresh(conn, redis_client, org_months, reservation_ids, tx_read)
        settle(redis_client, counted)
    except (RedisError, psycopg.Error, OSError) as exc:
        logger.warning("quota mirror refresh failed (the next refresh or rebuild repairs it): %s", exc)
    if tx_read is not None and tx_read.fired == 0:
        return  # the transaction recorded no alert: nothing new to hand over
    try:
        from billing.alerts import enqueue_alerts  # noqa: PLC0415 - alerts imports this module

        enqueue_alerts(conn, redis_client, org_months=org_months)
    except (RedisError, psycopg.Error, OSError) as exc:
        logger.warning("handing alerts to the delivery queue failed (the sweep re-enqueues them): %s", exc)


def _refresh(
    conn: psycopg.Connection[Any],
    redis_client: Redis,
    org_months: list[tuple[str, date]],
    reservation_ids: Iterable[str],
    tx_read: _TxRead | None,
) -> list[str]:
    """Write the totals; return the reservation ids whose events are counted in them."""
    org_ids, months = _pairs(org_months)
    own = {r for r in reservation_ids if r}
    scanned = sorted(
        {(o, m) for o, m in zip(org_ids, months, strict=True)}
        | {(o, _previous_month(m)) for o, m in zip(org_ids, months, strict=True)}
    )
    # one command for every reservation set: their members, then whether the mirror exists
    keys = [resv_keys(month.strftime("%Y-%m"), org_id)[0] for org_id, month in scanned]
    found = redis_client.register_script(_ACTIVE_RESERVATIONS)(keys=[READY_KEY, *keys])
    ready, active = bool(found[0]), [_s(r) for r in found[1:]]
    candidates = sorted(own | set(active))
    with conn.transaction():
        # first which reservations are counted, then the totals: a later snapshot, so it includes them
        counted = (
            [str(r[0]) for r in conn.execute(query("quotas", "counted_reservations"), {"ids": candidates})]
            if candidates
            else []
        )
    if tx_read is not None and not set(counted) <= own:
        tx_read = None  # another batch's event, maybe committed after our read: read the totals now
    if not ready:
        rebuild_mirror(conn, redis_client)  # the current month of every org; this batch's months follow
    rows = tx_read.rows if tx_read is not None else _read_totals(conn, org_ids, months)
    write_totals(redis_client, rows)
    return counted


#: org-months per mirror read transaction (each takes a shared advisory lock per pair)
READ_CHUNK = 256


def _read_totals(conn: psycopg.Connection[Any], org_ids: list[str], months: list[date]) -> list[Any]:
    """mirror_totals of these (org, month) pairs, each chunk read under shared locks of its pairs.

    The lock makes the read wait for ingest transactions of those pairs between their own read
    (record_alerts) and their commit: without it this read, lacking their usage, could carry a newer
    stamp than theirs and the mirror would keep it. `conn` must not be inside a transaction (the locks
    last until the end of the transaction).
    """
    rows: list[Any] = []
    for i in range(0, len(org_ids), READ_CHUNK):
        params = {"org_ids": org_ids[i : i + READ_CHUNK], "months": months[i : i + READ_CHUNK]}
        with conn.transaction():
            conn.execute(query("quotas", "lock_org_months_shared"), params)
            rows += conn.execute(query("quotas", "mirror_totals"), params).fetchall()
    return rows


def _previous_month(month: date) -> date:
    return date(month.year - 1, 12, 1) if month.month == 1 else date(month.year, month.month - 1, 1)


def write_totals(redis_client: Redis, rows: Sequence[Sequence[Any]]) -> None:
    """Write mirror_totals rows (org_id, month, user_id, tokens, nanos, stamp): one script call (one round
    trip) per WRITE_CHUNK org-months."""
    grouped: dict[tuple[str, date], tuple[str, list[str]]] = {}
    for org_id, month, user_id, tokens, nanos, stamp in rows:
        _, args = grouped.setdefault((org_id, month), (str(stamp), []))
        args += [field("t", user_id), str(tokens), field("n", user_id), str(nanos)]
    if not grouped:
        return
    items = list(grouped.items())
    script = redis_client.register_script(_WRITE_USED)
    for i in range(0, len(items), WRITE_CHUNK):
        keys: list[str] = []
        argv: list[str] = [str(MONTH_KEY_TTL_MS)]
        for (org_id, month), (stamp, args) in items[i : i + WRITE_CHUNK]:
            keys.append(used_key(month.strftime("%Y-%m"), org_id))
            argv += [stamp, str(len(args) // 2), *args]
        script(keys=keys, args=argv)  # EVALSHA, loading the script only when Redis does not know it


def _limit_fields(rows: Sequence[Sequence[Any]]) -> dict[str, dict[str, str]]:
    by_org: dict[str, dict[str, str]] = {}
    for org_id, user_id, kind, mode, units in rows:
        by_org.setdefault(org_id, {})[field("t" if kind == "tokens" else "n", user_id)] = (
            f"{'H' if mode == 'hard' else 'S'}{units}"
        )
    return by_org


def sync_org(conn: psycopg.Connection[Any], redis_client: Redis, org_id: str) -> None:
    """Bring one org's limits and current-month totals into the mirror (after its quotas changed)."""
    with conn.transaction():
        limits = conn.execute(query("quotas", "mirror_limits"), {"org_ids": [org_id]}).fetchall()
        month = _current_month(conn)
    totals = _read_totals(conn, [org_id], [month])
    fields = _limit_fields(limits).get(org_id, {})
    pipe = redis_client.pipeline(transaction=True)
    pipe.delete(limits_key(org_id))
    if fields:
        pipe.hset(limits_key(org_id), mapping=fields)  # type: ignore[arg-type]
    pipe.execute()
    write_totals(redis_client, totals)


def _current_month(conn: psycopg.Connection[Any]) -> date:
    row = conn.execute(query("quotas", "current_month")).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def rebuild_mirror(conn: psycopg.Connection[Any], redis_client: Redis, *, wait: float | None = None) -> bool:
    """Rebuild the whole mirror from Postgres (limits of every org with a quota, current-month totals),
    then mark it ready. One rebuilder at a time (a Redis lock); returns False when another holds it
    (after waiting up to `wait` seconds)."""
    lock = redis_client.lock(
        REBUILD_LOCK, timeout=REBUILD_LOCK_TIMEOUT, blocking=wait is not None, blocking_timeout=wait
    )
    if not lock.acquire():
        return False
    try:
        with conn.transaction():
            month = _current_month(conn)
            limits = conn.execute(query("quotas", "mirror_limits"), {"org_ids": None}).fetchall()
        by_org = _limit_fields(limits)
        org_ids = sorted(by_org)
        totals = _read_totals(conn, org_ids, [month] * len(org_ids))
        # limits of orgs whose quotas are gone must go too
        stale = [
            k
            for k in redis_client.scan_iter(match=limits_key("*"), count=1000)
            if (k.decode() if isinstance(k, bytes) else str(k))[len(limits_key("")) :] not in by_org
        ]
        pipe = redis_client.pipeline(transaction=True)
        if stale:
            pipe.delete(*stale)
        for org_id, fields in by_org.items():
            pipe.delete(limits_key(org_id))
            pipe.hset(limits_key(org_id), mapping=fields)  # type: ignore[arg-type]
        pipe.execute()
        write_totals(redis_client, totals)
        redis_client.set(READY_KEY, datetime.now(UTC).isoformat())
        logger.info("quota mirror rebuilt: %d org(s) with quotas, month %s", len(org_ids), month)
        return True
    finally:
        # expired while rebuilding: another rebuilder may have started; its result stands
        with contextlib.suppress(RedisError):
            lock.release()


@dataclass(frozen=True)
class Drift:
    """One mirror value that differs from Postgres (value None: missing from the mirror)."""

    key: str
    field: str
    mirror: int | None
    database: int


def mirror_drift(conn: psycopg.Connection[Any], redis_client: Redis) -> list[Drift]:
    """Compare the mirror with Postgres (limits and current-month totals); empty when they agree or the
    mirror holds newer reads than this one. A missing `ready` key is reported as drift."""
    with conn.transaction():
        month = _current_month(conn)
        limits = conn.execute(query("quotas", "mirror_limits"), {"org_ids": None}).fetchall()
    by_org = _limit_fields(limits)
    org_ids = sorted(by_org)
    totals = _read_totals(conn, org_ids, [month] * len(org_ids))
    drift: list[Drift] = []
    if not redis_client.exists(READY_KEY):
        drift.append(Drift(READY_KEY, "", None, 1))
    pipe = redis_client.pipeline(transaction=False)
    for org_id in org_ids:
        pipe.hgetall(limits_key(org_id))
    mirrored = pipe.execute()
    for org_id, got in zip(org_ids, mirrored, strict=True):
        have = {_s(k): _s(v) for k, v in got.items()}
        for f, want in by_org[org_id].items():
            if have.get(f) != want:
                drift.append(Drift(limits_key(org_id), f, None, 0))
    mkey = month.strftime("%Y-%m")
    pipe = redis_client.pipeline(transaction=False)
    for row in totals:
        pipe.hmget(used_key(mkey, row[0]), [field("t", row[2]), field("n", row[2]), "stamp"])
    for row, (tok, nan, stamp) in zip(totals, pipe.execute(), strict=True):
        if stamp is not None and int(_s(stamp)) > int(row[5]):
            continue  # the mirror holds a newer read than ours
        for f, have_v, want_v in ((field("t", row[2]), tok, row[3]), (field("n", row[2]), nan, row[4])):
            if have_v is None and int(want_v) == 0:
                continue
            if have_v is None or int(_s(have_v)) != int(want_v):
                drift.append(Drift(used_key(mkey, row[0]), f, None if have_v is None else int(_s(have_v)), int(want_v)))
    return drift


def ensure_mirror(conn: psycopg.Connection[Any], redis_client: Redis) -> bool:
    """Rebuild the mirror when it is missing or drifted (worker start, periodic check). True if rebuilt."""
    found = mirror_drift(conn, redis_client)
    if not found:
        return False
    logger.warning("quota mirror drift (%d value(s), e.g. %s): rebuilding", len(found), found[0])
    return rebuild_mirror(conn, redis_client)


def nanos_to_money(value: int) -> Decimal:
    return Decimal(value) / NANOS


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def set_unpriced_rate(
    conn: psycopg.Connection[Any], *, input_per_million: Decimal, output_per_million: Decimal, currency: str = "*"
) -> None:
    """Set the conservative floor rate that charges unpriced usage against money limits."""
    if input_per_million < 0 or output_per_million < 0:
        raise InputError("rates cannot be negative")
    with conn.transaction():
        conn.execute(
            query("quotas", "set_unpriced_rate"),
            {
                "currency": currency.upper() if currency != "*" else "*",
                "input": input_per_million,
                "output": output_per_million,
            },
        )


def list_alerts(conn: psycopg.Connection[Any], org_id: str | None = None) -> list[dict[str, Any]]:
    """The alerts outbox (of one org), oldest first: what fired and whether it was delivered."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("quotas", "alerts_list"), {"org_id": org_id}).fetchall()


def check_mirror() -> bool:
    """Periodic job (for the scheduler) and worker start: rebuild the mirror when missing or drifted.
    Settings from the environment. True when it rebuilt."""
    settings = Settings()
    client = Redis.from_url(settings.redis_url)
    try:
        with connect(settings, autocommit=True) as conn:
            return ensure_mirror(conn, client)
    finally:
        client.close()
