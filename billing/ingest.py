"""Ingest one batch of usage events in one transaction: validate, dedup, price, route, aggregate."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import importlib
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from pydantic import ConfigDict, ValidationError

from billing import aggregates, pricing
from billing.errors import AlreadyCommitted, TransientError
from billing.settings import Settings
from billing.sqlfiles import queries, query
from producer.event import UsageEvent

#: test-only: `USAGEBILL_TEST_PAUSE_AT=<step>` makes the ingest job block at that step (before_tx,
#: in_tx, after_commit) so a test can SIGKILL the worker at a known point; `<step>@<thread name>` blocks
#: only the thread of that name (e.g. the worker's transactions ahead of rq); with
#: `USAGEBILL_TEST_PAUSE_MARKER=<path>` it first creates that file; with
#: `USAGEBILL_TEST_PAUSE_SECONDS=<n>` it goes on after n seconds. Never set them in production.
PAUSE_STEPS = ("before_tx", "in_tx", "after_commit")
_PAUSE_AT, _, _PAUSE_THREAD = os.environ.get("USAGEBILL_TEST_PAUSE_AT", "").partition("@")
_PAUSE_MARKER = os.environ.get("USAGEBILL_TEST_PAUSE_MARKER", "")
_PAUSE_SECONDS = float(os.environ.get("USAGEBILL_TEST_PAUSE_SECONDS", "0") or 0)


#: connections whose session already has the staging tables (made once per session, not per batch)
_staged: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


class _Incoming(UsageEvent):
    """A UsageEvent that also keeps the unknown top-level fields (stored as `extra`, kept as sent)."""

    model_config = ConfigDict(frozen=True, extra="allow")


@dataclass(frozen=True)
class Rejection:
    """An event that failed validation: what could be read of it, why, and the payload as received."""

    pos: int
    reason: str
    raw: str
    event_id: str | None = None
    org_id: str | None = None


#: a valid event: its position in the batch, occurred_at (for the clock's check), its COPY text line of
#: ingest_stage (`_copy_line`: every validated field typed, and its hash) and its canonical JSON (what a
#: conflict stores; kept as the serializer's bytes, decoded only for a conflict)
Row = tuple[int, datetime, str, bytes]


@dataclass(frozen=True)
class Parsed:
    """A batch after validation: its COPY rows and its rejections."""

    rows: list[Row]
    rejected: list[Rejection]


@dataclass(frozen=True)
class IngestResult:
    """What one committed batch did. received = inserted + duplicates + conflicts + rejected."""

    received: int
    inserted: int
    duplicates: int
    conflicts: int
    rejected: int
    unpriced: int
    #: (org_id, usage month) of the inserted events: what the quota hooks refresh
    org_months: list[tuple[str, date]] = field(default_factory=list)
    #: quota reservations settled by the inserted events
    reservation_ids: list[str] = field(default_factory=list)
    #: the counts of each waiting job whose batch this transaction also carried (`Rider`), in the order
    #: staged; the counts above are this job's own, org_months and reservation_ids the transaction's
    merged: dict[str, IngestResult] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """The job's own counts (what ingest_jobs keeps for it)."""
        return {
            "received": self.received,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": self.rejected,
            "unpriced": self.unpriced,
        }


def test_pause(step: str) -> None:
    """Test-only: block at `step` when USAGEBILL_TEST_PAUSE_AT names it (see PAUSE_STEPS)."""
    if step != _PAUSE_AT or (_PAUSE_THREAD and threading.current_thread().name != _PAUSE_THREAD):
        return
    if _PAUSE_MARKER:
        with open(_PAUSE_MARKER, "w", encoding="utf-8") as marker:
            marker.write(f"{os.getpid()} {step}\n")
    sys.stderr.write(f"usagebill: test pause at {step} (pid {os.getpid()})\n")
    sys.stderr.flush()
    if _PAUSE_SECONDS > 0:
        time.sleep(_PAUSE_SECONDS)
        return
    while True:
        time.sleep(3600)


def parse(events: Sequence[Any], *, now: datetime, future_tolerance: timedelta) -> Parsed:
    """Validate each event (wire format v1); the valid ones become COPY rows, the others rejections."""
    rejected: list[Rejection] = []
    rows = list(validated(events, now=now, future_tolerance=future_tolerance, rejected=rejected))
    return Parsed(rows, rejected)


@dataclass(frozen=True)
class Prepared:
    """A batch validated ahead of its transaction (the worker's look-ahead, worker/prefetch.py): its COPY
    rows, all their lines as one block, the latest occurred_at, the rejections, and the usage months of
    its rows (`_month_of`), for exactly `events`. The future check is not applied yet: it depends on the
    server clock when the batch runs (`ingest_batch` applies it)."""

    events: Sequence[Any]
    rows: list[Row]
    block: str
    latest: datetime | None
    rejected: list[Rejection]
    months: frozenset[date] = frozenset()


@dataclass(frozen=True)
class Rider:
    """The prepared batch of another job waiting in the queue, carried by this job's transaction (the
    worker merges waiting jobs, worker/prefetch.py): its rows are staged after the job's own, in order,
    and its rejections are parked under its own job id."""

    job_id: str
    prepared: Prepared


def prepare(events: Sequence[Any]) -> Prepared:
    """Validate `events` now, for a transaction that runs later (see Prepared)."""
    rejected: list[Rejection] = []
    rows = list(_checked(events, rejected))
    latest = max((r[1] for r in rows), default=None)
    months = frozenset(_months(rows))
    return Prepared(events, rows, "".join(r[2] for r in rows), latest, rejected, months)


def validated(
    events: Sequence[Any], *, now: datetime, future_tolerance: timedelta, rejected: list[Rejection]
) -> Iterator[Row]:
    """Yield the COPY row of each valid event (wire format v1), in order; append a rejection to
    `rejected` for each invalid one.

    The canonical form is the validated event dumped as sorted JSON (`UsageEvent.canonical()`); its
    sha256 is the conflict hash. Events more than `future_tolerance` ahead of `now` are rejected.
    """
    return _in_time(_checked(events, rejected), events, now=now, future_tolerance=future_tolerance, rejected=rejected)


def _in_time(
    rows: Iterable[Row],
    events: Sequence[Any],
    *,
    now: datetime,
    future_tolerance: timedelta,
    rejected: list[Rejection],
) -> Iterator[Row]:
    # the future check: an event more than future_tolerance ahead of the server clock is rejected
    limit = now + future_tolerance
    for row in rows:
        occurred_at = row[1]
        if occurred_at > limit:
            pos = row[0]
            rejected.append(
                _reject(
                    pos,
                    _as_text(events[pos]),
                    f"occurred_at: {occurred_at.isoformat()} is more than "
                    f"{int(future_tolerance.total_seconds())} s ahead of the server clock",
                )
            )
            continue
        yield row


def _checked(events: Sequence[Any], rejected: list[Rejection]) -> Iterator[Row]:
    # validation and canonical form of each event, without the clock's check (see validated)
    # the validator and the serializer themselves (what model_validate_json and model_dump_json wrap, with
    # their defaults): the same results, without the wrappers' cost (~0.5 us per event for the validator)
    validate = _Incoming.__pydantic_validator__.validate_json
    serialize = _Incoming.__pydantic_serializer__.to_json
    for pos, item in enumerate(events):
        text = _as_text(item)
        if text is None:
            rejected.append(_reject(pos, item, "event is not a JSON text"))
            continue
        try:
            event: _Incoming = validate(text)
        except ValidationError as exc:
            rejected.append(_reject(pos, text, _reason(exc)))
            continue
        extra = event.__pydantic_extra__  # (what model_extra returns, without the property's call)
        if extra:
            raw = serialize(event, exclude=set(extra))
            extra_json: str | None = _jsonb_safe(extra)
        else:
            raw = serialize(event)
            extra_json = None
        yield pos, event.occurred_at, _copy_line(pos, event, raw, extra_json), raw


def ingest_batch(
    conn: psycopg.Connection[Any],
    events: Sequence[Any],
    *,
    settings: Settings,
    job_id: str | None = None,
    prepared: Prepared | None = None,
    riders: Sequence[Rider] = (),
) -> IngestResult:
    """Ingest one batch in one transaction on `conn`; returns once it is committed.

    Invalid events are parked in rejected_events (the rest goes on); each new event_id is inserted
    once, priced set-based, routed to its billing month and added to the aggregates; a known
    event_id with another payload is recorded in event_conflicts and never counted. Database errors
    propagate (the caller decides: retry when transient, split the batch when not). `prepared`, when
    given, is `events` already validated (`prepare`): its rows are used instead of validating again.
    `riders` are other jobs' prepared batches that the same transaction carries, staged after this
    one in their order: all of them commit together, or none does.

    With a `job_id`, the transaction first claims the ids of its jobs in ingest_jobs and stores each
    one's counts there: a rider already committed elsewhere is left out, and a job already committed
    raises AlreadyCommitted with its stored result (nothing is ingested twice, nor parked twice).
    """
    if prepared is not None and prepared.events is not events:
        # a caller's bug, not the data's: never split a batch for it (ValueError would, see worker.jobs)
        raise RuntimeError("prepared rows belong to another batch")
    test_pause("before_tx")
    fresh = conn not in _staged
    try:
        result = _transaction(conn, events, settings, fresh=fresh, job_id=job_id, prepared=prepared, riders=riders)
    except psycopg.errors.UndefinedTable as exc:
        _staged.discard(conn)
        if "ingest_stage" in str(exc) or "ingest_new" in str(exc):
            # the session lost its temp tables (e.g. DISCARD TEMP by a pool reset): make them again
            raise TransientError(f"staging tables missing in this session: {exc}") from exc
        raise
    if fresh:
        _staged.add(conn)  # only once committed: a rolled-back CREATE leaves nothing behind
    return result


def warm(conn: psycopg.Connection[Any]) -> None:
    """Make this session's staging tables and run the ingest statements once on them, empty (no row is
    written; the statements' table locks are held until its commit): the first batch on a new connection
    otherwise pays for it,
    ~30 ms here (the temp tables, and the catalog caches of every table, index and function it reads).
    A worker warms its connections at start (worker.worker.setup)."""
    with conn.transaction():
        conn.execute(query("ingest", "create_stage"))
        with conn.cursor() as cur:
            cur.execute(query("ingest", "route_months"), {"months": []})
            cur.execute(_claim_and_price(), {"usage_months": [], "billing_months": []})
            cur.execute(query("ingest", "new_summary")).fetchall()
            cur.execute(query("ingest", "upsert_orgs"), {"org_ids": []})
            cur.execute(query("ingest", "insert_events"))
            aggregates.add(conn, "ingest_new")
            cur.execute(query("ingest", "part_counts"), {"bounds": [0]}).fetchall()
            cur.execute(query("ingest", "conflicting")).fetchall()
    _staged.add(conn)


#: COPY lines handed to psycopg at a time: few calls, and the server still parses one part of a batch
#: while the next is validated
COPY_CHUNK = 64


def _transaction(
    conn: psycopg.Connection[Any],
    events: Sequence[Any],
    settings: Settings,
    *,
    fresh: bool,
    job_id: str | None,
    prepared: Prepared | None,
    riders: Sequence[Rider] = (),
) -> IngestResult:
    rejected: list[Rejection] = [] if prepared is None else list(prepared.rejected)
    summary: list[tuple[str, date, int]] = []
    reservations: list[str] = []
    with conn.transaction():
        if fresh:
            conn.execute(query("ingest", "create_stage"))
        if job_id is not None:
            riders = _claim_jobs(conn, job_id, riders)
        elif riders:
            raise RuntimeError("a batch carrying other jobs needs its own job id")
        # each rider's rejections, parked under its own job id (the clock's check appends to them)
        rider_rejected = [list(r.prepared.rejected) for r in riders]
        # per part of the transaction (the job's batch, then each rider's): events received, rows staged,
        # inserted, conflicting, unpriced; each part's first position
        received = [len(events), *(len(r.prepared.events) for r in riders)]
        staged = [0] * len(received)
        inserted, conflicts, unpriced = [0] * len(received), [0] * len(received), [0] * len(received)
        bounds = [sum(received[:i]) for i in range(len(received))]
        with conn.cursor() as cur:
            # validated in the job, the lines feed the COPY as they come (COPY_CHUNK at a time), so the
            # server parses and stores one part of the batch while this process validates the next, on
            # the other core; a batch the look-ahead prepared goes as one block
            now, tolerance = datetime.now(UTC), timedelta(seconds=settings.future_tolerance_seconds)
            rows: Iterable[Row]
            block = ""
            # the job's valid rows, kept for the canonical JSON of any conflicting copy (not staged)
            own: list[Row] = []
            # the usage months of the staged rows, for routing (the worker's: no pass over the stage for them)
            months: set[date] = set()
            if prepared is None:
                rows = _keeping(validated(events, now=now, future_tolerance=tolerance, rejected=rejected), own)
            elif prepared.latest is None or prepared.latest <= now + tolerance:
                # every prepared row is in time: its block goes as it is
                rows, block, staged[0] = (), prepared.block, len(prepared.rows)
                months.update(prepared.months)
            else:
                rows = _in_time(prepared.rows, events, now=now, future_tolerance=tolerance, rejected=rejected)
            with cur.copy(query("ingest", "copy_stage")) as copy:
                if block:
                    copy.write(block)
                staged[0] += _copy_lines(copy, (row[2] for row in _noting(rows, months)))
                for i, (rider, its) in enumerate(zip(riders, rider_rejected, strict=True), start=1):
                    staged[i] = _copy_rider(
                        copy, rider.prepared, bounds[i], now=now, tolerance=tolerance, rejected=its, months=months
                    )
            if any(staged):
                routes = cur.execute(query("ingest", "route_months"), {"months": sorted(months)}).fetchall()
                with conn.cursor() as news:
                    try:
                        # the claim and the summary of what it inserted, in one round trip (pipeline mode)
                        with conn.pipeline():
                            cur.execute(
                                _claim_and_price(),
                                {"usage_months": [r[0] for r in routes], "billing_months": [r[1] for r in routes]},
                            )
                            news.execute(query("ingest", "new_summary"))
                    except psycopg.errors.NotNullViolation as exc:
                        # every staged field that must not be null was validated: a NULL here is an event whose
                        # month was not routed, a fault of ours, never the data's (a RuntimeError: the job is
                        # retried and kept, never split into parked events)
                        raise RuntimeError(f"a staged event's usage month was not routed: {exc}") from exc
                    inserted[0] = cur.rowcount
                    rows_by_month = news.fetchall()
                # a staged copy can only conflict when its key was already taken (by an earlier batch or an
                # earlier copy in this one): a batch of only new keys skips the lookups
                look_up = inserted[0] < sum(staged)
                if inserted[0]:
                    summary = [(str(o), m, int(n)) for o, m, n, _ in rows_by_month]
                    reservations = sorted({str(r) for *_, settled in rows_by_month for r in settled or ()})
                    unpriced[0] = sum(n for _, _, n in summary)
                with conn.cursor() as by_part, conn.cursor() as lookups:
                    # one round trip (psycopg's pipeline mode): the server runs these in order, back to back,
                    # instead of waiting for this thread (which shares the GIL with the look-ahead) between
                    # them; what the worker reads comes back at the end, an error at the end of the block
                    with conn.pipeline():
                        if inserted[0]:
                            # orgs before events and aggregates: the lock order every ingest takes
                            cur.execute(query("ingest", "upsert_orgs"), {"org_ids": sorted({o for o, _, _ in summary})})
                            cur.execute(query("ingest", "insert_events"))
                            aggregates.add(conn, "ingest_new")
                            if riders:
                                by_part.execute(query("ingest", "part_counts"), {"bounds": bounds})
                        if look_up:
                            lookups.execute(query("ingest", "conflicting"))
                    if inserted[0] and riders:
                        # each job's own counts: the part of the first copy of each inserted event
                        inserted[0] = unpriced[0] = 0
                        for part, n, u in by_part.fetchall():
                            inserted[part - 1], unpriced[part - 1] = int(n), int(u)
                    found = lookups.fetchall() if look_up else []
                    if found:
                        parts = [(0, prepared.rows if prepared is not None else own)]
                        parts += [(bounds[i], r.prepared.rows) for i, r in enumerate(riders, start=1)]
                        _record_conflicts(cur, found, parts)
                        for pos, *_ in found:
                            conflicts[bisect.bisect_right(bounds, pos) - 1] += 1
        if prepared is not None:
            rejected.sort(key=lambda r: r.pos)  # the clock's rejections come after the prepared ones
        for its_rejected in rider_rejected:
            its_rejected.sort(key=lambda r: r.pos)
        parked = [(job_id, r) for r in rejected]
        parked += [(rider.job_id, r) for rider, its in zip(riders, rider_rejected, strict=True) for r in its]
        org_months = [(o, m) for o, m, _ in summary]
        counts = [
            IngestResult(
                received=received[i],
                inserted=inserted[i],
                duplicates=staged[i] - inserted[i] - conflicts[i],
                conflicts=conflicts[i],
                rejected=len(rejected if i == 0 else rider_rejected[i - 1]),
                unpriced=unpriced[i],
            )
            for i in range(len(staged))
        ]
        # the last statements in one round trip too: the alerts hook reads last (its first read flushes them all)
        with conn.pipeline():
            if parked:
                _park_all(conn, parked)
            if job_id is not None:
                ids = [job_id, *(r.job_id for r in riders)]
                stored = [
                    {**counts[0].counts(), "merged": ids[1:]},
                    *({**c.counts(), "merged_into": job_id} for c in counts[1:]),
                ]
                _store_results(conn, ids, stored)
            if org_months:
                hook = quota_hook("record_alerts")
                if hook is not None:
                    hook(conn, org_months)
        test_pause("in_tx")
    return dataclasses.replace(
        counts[0],
        org_months=org_months,
        reservation_ids=reservations,
        merged={rider.job_id: c for rider, c in zip(riders, counts[1:], strict=True)},
    )


def _month_of(at: datetime) -> date:
    # the usage month of an occurred_at (UTC: validation converts every timestamp to it)
    return date(at.year, at.month, 1)


def _months(rows: Iterable[Row]) -> set[date]:
    return {_month_of(row[1]) for row in rows}


def _noting(rows: Iterable[Row], months: set[date]) -> Iterator[Row]:
    # the rows as they come, the usage month of each added to `months`
    for row in rows:
        months.add(_month_of(row[1]))
        yield row


def _keeping(rows: Iterable[Row], kept: list[Row]) -> Iterator[Row]:
    # the rows as they come, each also appended to `kept`
    for row in rows:
        kept.append(row)
        yield row


def _record_conflicts(
    cur: psycopg.Cursor[Any], found: Sequence[tuple[Any, ...]], parts: Sequence[tuple[int, Sequence[Row]]]
) -> None:
    # Keep the conflicting copies (`conflicting`: position, event_id, first and conflict hash) with their
    # canonical JSON, found among the rows of the transaction's parts (each: its first staged position,
    # its rows with their own positions).
    wanted = {int(f[0]) for f in found}
    docs = {first + row[0]: row[3] for first, rows in parts for row in rows if first + row[0] in wanted}
    cur.execute(
        query("ingest", "insert_conflicts"),
        {
            "event_ids": [f[1] for f in found],
            "first_hashes": [f[2] for f in found],
            "conflict_hashes": [f[3] for f in found],
            "payloads": [docs[int(f[0])].decode() for f in found],
        },
    )


def _claim_jobs(conn: psycopg.Connection[Any], job_id: str, riders: Sequence[Rider]) -> list[Rider]:
    # claims the ids of the transaction's jobs; returns the riders it claimed (a rider committed by another
    # transaction meanwhile is left out); raises AlreadyCommitted when the job itself was committed before
    ids = [job_id, *(r.job_id for r in riders)]
    claimed = {str(j) for (j,) in conn.execute(query("ingest", "claim_jobs"), {"job_ids": ids})}
    if job_id not in claimed:
        row = conn.execute(query("ingest", "job_results"), {"job_ids": [job_id]}).fetchone()
        raise AlreadyCommitted(job_id, row[1] if row is not None else None)
    return [r for r in riders if r.job_id in claimed]


def park_job(conn: psycopg.Connection[Any], rejected: Sequence[Rejection], *, job_id: str | None) -> dict[str, int]:
    """Park the events of a job that cannot be ingested (e.g. a poison event isolated by splitting) and claim
    the job, in the caller's transaction; returns the job's counts. Raises AlreadyCommitted when the job
    was committed before: nothing is parked twice."""
    result = {"received": len(rejected), "rejected": len(rejected), "parked": len(rejected)}
    if job_id is not None:
        _claim_jobs(conn, job_id, ())
        _store_results(conn, [job_id], [result])
    _park_all(conn, [(job_id, r) for r in rejected])
    return result


def _store_results(conn: psycopg.Connection[Any], job_ids: Sequence[str], results: Sequence[dict[str, Any]]) -> None:
    # what each claimed job of the transaction did, kept with its claim (what a run of it again returns)
    conn.execute(
        query("ingest", "store_results"), {"job_ids": list(job_ids), "results": [json.dumps(r) for r in results]}
    )


def prune_jobs(conn: psycopg.Connection[Any]) -> int:
    """Forget the job claims older than 90 days (ingest_jobs); returns how many."""
    return conn.execute(query("ingest", "prune_jobs")).rowcount


@functools.cache
def _claim_and_price() -> sql.Composed:
    # one statement: claim the new keys, expand the claimed events and price them into ingest_new
    # (each event's staged position carried along: part_counts reads it)
    return pricing.priced_insert("ingest_stage", "fresh", "ingest_new", queries("ingest")["claim_new"], carry=("pos",))


def _park_all(conn: psycopg.Connection[Any], parked: Sequence[tuple[str | None, Rejection]]) -> None:
    # one statement for every rejection of the transaction, each under the job it came with
    conn.execute(
        query("ingest", "insert_rejected"),
        {
            "job_ids": [j for j, _ in parked],
            "event_ids": [r.event_id for _, r in parked],
            "org_ids": [r.org_id for _, r in parked],
            "reasons": [r.reason for _, r in parked],
            "raws": [r.raw for _, r in parked],
        },
    )


def _copy_rider(
    copy: psycopg.Copy,
    prepared: Prepared,
    offset: int,
    *,
    now: datetime,
    tolerance: timedelta,
    rejected: list[Rejection],
    months: set[date],
) -> int:
    """COPY a rider's rows after what is staged, its positions moved past `offset` (a copy of an event_id
    that comes first in the queue keeps coming first: the first copy by position claims the key); the
    clock's check as for the job's own batch; the usage months of the rows staged added to `months`.
    Returns how many rows were staged."""
    rows: Iterable[Row] = prepared.rows
    if prepared.latest is not None and prepared.latest > now + tolerance:
        rows = _noting(_in_time(rows, prepared.events, now=now, future_tolerance=tolerance, rejected=rejected), months)
    else:
        months.update(prepared.months)
    # each line starts with its position: the rider's own, from 0. Validated already, the rider goes as one
    # block (psycopg sends it in a few large chunks), not COPY_CHUNK lines at a time
    lines = [f"{pos + offset}{line[len(str(pos)) :]}" for pos, _, line, _ in rows]
    copy.write("".join(lines))
    return len(lines)


def _copy_lines(copy: psycopg.Copy, lines: Iterable[str]) -> int:
    """Hand COPY lines to psycopg COPY_CHUNK at a time, as they come; returns how many were written."""
    written = 0
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == COPY_CHUNK:
            copy.write("".join(chunk))
            written += len(chunk)
            chunk.clear()
    copy.write("".join(chunk))
    return written + len(chunk)


def rejection(pos: int, item: Any, reason: str) -> Rejection:
    """A rejection for an event that could not be ingested (e.g. a poison event isolated by splitting)."""
    return _reject(pos, item, reason)


def quota_hook(name: str) -> Callable[..., None] | None:
    """The quota module's hook `name` (record_alerts, refresh_mirror) when that module provides it."""
    try:
        module = importlib.import_module("billing.quotas")
    except ModuleNotFoundError as exc:
        if exc.name != "billing.quotas":
            raise
        return None
    hook = getattr(module, name, None)
    return hook if callable(hook) else None


# --- helpers ------------------------------------------------------------------------------------


def _copy_line(pos: int, event: _Incoming, raw: bytes, extra_json: str | None) -> str:
    # One line of COPY text format for ingest_stage: the validated fields typed, so Postgres neither
    # parses a jsonb document per event nor extracts its fields. The sha256 of the canonical JSON (`raw`)
    # is the conflict hash; the JSON itself is not staged (see create_stage). The fields are read from
    # the instances' dicts (a validated frozen model's values): ~15% less than attribute reads, per event.
    d = event.__dict__
    u = d["usage"].__dict__
    digest = hashlib.sha256(raw).hexdigest()
    org, user, session, rtype = d["org_id"], d["user_id"], d["session_id"], d["request_type"]
    provider, model, tier, resv = d["provider"], d["model"], d["service_tier"], d["reservation_id"]
    null = "\\N"
    if b"\\" not in raw and (extra_json is None or "\\" not in extra_json):
        # The canonical JSON holds every field, and JSON writes a backslash, quote, tab, newline or
        # carriage return in a string as a backslash sequence: without one, no value needs a COPY
        # escape and no tag needs a JSON escape (the common case: no per-field scan). org_id, provider
        # and model are never null.
        user = null if user is None else user
        session = null if session is None else session
        rtype = null if rtype is None else rtype
        tier = null if tier is None else tier
        resv = null if resv is None else resv
        tags = "{" + ",".join([f'"{k}":"{v}"' for k, v in d["tags"].items()]) + "}"
        extra = null if extra_json is None else extra_json
    else:
        org, user, session, rtype, provider, model, tier, resv = (
            _copy_opt(v) for v in (org, user, session, rtype, provider, model, tier, resv)
        )
        tags = _copy_text(json.dumps(d["tags"], ensure_ascii=False))
        extra = _copy_opt(extra_json)
    cost, latency = u["provider_cost"], d["latency_ms"]
    return (
        f"{pos}\t{d['event_id']}\t{d['occurred_at'].isoformat()}\t\\\\x{digest}\t{extra}\t{org}\t{user}\t"
        f"{session}\t{rtype}\t{provider}\t{model}\t{tier}\t{d['status']}\t{'t' if d['estimated'] else 'f'}\t"
        f"{null if latency is None else latency}\t{resv}\t{tags}\t{u['input_tokens']}\t{u['cached_input_tokens']}\t"
        f"{u['cache_write_tokens']}\t{u['cache_write_1h_tokens']}\t{u['output_tokens']}\t{u['reasoning_tokens']}\t"
        f"{null if cost is None else cost}\n"
    )


def _copy_text(value: str) -> str:
    # COPY text format: backslash, tab, newline and carriage return are escaped (NUL never gets here:
    # validation rejects it in every text field, and JSON escapes it)
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_opt(value: str | None) -> str:
    return "\\N" if value is None else _copy_text(value)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _as_text(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes | bytearray):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(item, dict):  # a publisher that sent the object itself: validate it the same way
        try:
            return json.dumps(item)
        except (TypeError, ValueError):
            return None
    return None


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "json_invalid":
            parts.append(f"invalid JSON: {err['msg']}")
        else:
            parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return _clean_text("; ".join(parts))[:2000]


def _reject(pos: int, item: Any, reason: str) -> Rejection:
    raw = item if isinstance(item, str) else _safe_repr(item)
    event_id = org_id = None
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        event_id = _short_text(doc.get("event_id"))
        org_id = _short_text(doc.get("org_id"))
    return Rejection(pos=pos, reason=_clean_text(reason), raw=_clean_text(raw), event_id=event_id, org_id=org_id)


def _safe_repr(item: Any) -> str:
    if isinstance(item, bytes | bytearray):
        return bytes(item).decode("utf-8", errors="backslashreplace")
    try:
        return json.dumps(item)
    except (TypeError, ValueError):
        return repr(item)


def _short_text(value: Any) -> str | None:
    return _clean_text(value)[:256] if isinstance(value, str) else None


def _clean_text(text: str) -> str:
    # Postgres text holds neither NUL nor lone surrogates: keep the payload readable, never fail on it.
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text


def _jsonb_safe(extra: dict[str, Any]) -> str:
    # jsonb holds neither \u0000 nor lone surrogates: replace them instead of failing the batch
    return json.dumps(_jsonb_clean(extra), ensure_ascii=False, default=str)


def _jsonb_clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", errors="replace").decode("utf-8")
    if isinstance(value, dict):
        return {_jsonb_clean(k): _jsonb_clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonb_clean(v) for v in value]
    return value
