"""Commands that publish events: `usagebill ingest FILE.jsonl` and `usagebill spool replay`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import typer
from pydantic import ValidationError

from billing.errors import InputError, RedisUnavailable
from billing.settings import Settings, redact
from producer.event import EVENT_ID_RE, UsageEvent
from producer.publisher import Publisher, PublisherConfig
from worker.context import log, settings_from

#: valid lines handed to the publisher at a time (it cuts them into jobs of `batch_size` events)
CHUNK_BATCHES = 8

spool_app = typer.Typer(help="The producer's durable spool of events Redis did not take.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("ingest")(ingest)
    spool_app.command("replay")(spool_replay)
    app.add_typer(spool_app, name="spool")


def cli_publisher(settings: Settings, spool_dir: str | None = None) -> Publisher:
    """A direct publisher for a one-shot command: the settings' Redis and queue, patient timeouts."""
    return Publisher(
        PublisherConfig(
            redis_url=settings.redis_url,
            queue=settings.queue,
            mode="direct",
            batch_size=settings.batch_size,
            batch_max_bytes=settings.batch_max_bytes,
            spool_dir=spool_dir or settings.spool_dir,
            # a command is not an app thread on a hot path: wait for Redis like any client would
            connect_timeout=5.0,
            socket_timeout=30.0,
            background_timeout=30.0,
            handle_sigterm=False,
        )
    )


def _require_redis(pub: Publisher) -> None:
    try:
        pub.ping()
    except Exception as exc:
        pub.close()
        raise RedisUnavailable(f"Redis at {redact(pub.config.redis_url)} is unreachable: {exc}") from exc


def check_line(text: str) -> str | None:
    """Why this line is not a publishable event, or None when it is one."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(obj, dict):
        return "not a JSON object"
    event_id = obj.get("event_id")
    if event_id is None:
        # an id invented here would differ on every import: the file would count twice
        return "no event_id"
    if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
        return "invalid event_id (1-128 characters of A-Z a-z 0-9 . _ : -)"
    try:
        UsageEvent.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{loc}: {err['msg']}{more}"
    return None


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(stream, start=1):
        yield number, raw.rstrip(b"\r\n")


def ingest(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="A JSONL file of usage events (wire format v1), or - for standard input."),
) -> None:
    """Publish a file of events (backfills, imports) through the producer's publisher.

    Every line must carry its event_id, so importing a file twice is a no-op. A malformed line is
    reported on standard error with its line number; the valid lines are still published. Prints
    the counts as JSON; exits 4 when some lines were rejected.
    """
    settings = settings_from(ctx)
    if file == "-":
        stream: BinaryIO = sys.stdin.buffer
    else:
        path = Path(file)
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror or exc}") from exc
    pub = cli_publisher(settings)
    _require_redis(pub)
    counts = {"lines": 0, "valid": 0, "rejected": 0}
    chunk: list[str] = []
    chunk_size = settings.batch_size * CHUNK_BATCHES
    try:
        with stream:
            for number, raw in _lines(stream):
                if not raw.strip():
                    continue
                counts["lines"] += 1
                try:
                    text = raw.decode()
                except UnicodeDecodeError as exc:
                    reason: str | None = f"not UTF-8 ({exc.reason} at byte {exc.start})"
                else:
                    reason = check_line(text)
                if reason is not None:
                    counts["rejected"] += 1
                    log(f"{file}:{number}: rejected: {reason}")
                    continue
                counts["valid"] += 1
                chunk.append(text)
                if len(chunk) >= chunk_size:
                    pub.publish_many(chunk)
                    chunk = []
            pub.publish_many(chunk)
    finally:
        pub.close()
    summary = {**counts, "published": pub.published, "spooled": pub.spooled, "dropped": pub.dropped}
    if pub.spooled:
        log(
            f"Redis failed during the import: {pub.spooled} events were spooled to {pub.spool_dir}; "
            "`usagebill spool replay` sends them"
        )
    print(json.dumps(summary))
    if pub.dropped:
        raise RedisUnavailable(f"{pub.dropped} events could be neither enqueued nor spooled")
    if counts["rejected"]:
        raise typer.Exit(4)


def spool_replay(
    ctx: typer.Context,
    directory: str | None = typer.Option(None, "--dir", help="Spool directory (default: USAGEBILL_SPOOL_DIR)."),
) -> None:
    """Enqueue the events of every spool file no live process holds into REDIS_URL, then remove those files."""
    settings = settings_from(ctx)
    pub = cli_publisher(settings, spool_dir=directory)
    _require_redis(pub)
    try:
        report = pub.replay(all_destinations=True)
    finally:
        pub.close()
    if report.locked_files:
        log(f"{report.locked_files} spool file(s) are held by a running process: left to it")
    print(json.dumps(report.as_dict()))
    if report.failed_files:
        raise RedisUnavailable(f"replay stopped: {'; '.join(report.errors)}")
