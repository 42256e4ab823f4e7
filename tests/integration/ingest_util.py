"""Helpers for the ingest and worker tests: event factories, totals read back from Postgres, worker
resources and worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from billing.settings import Settings
from worker import worker as proc

#: the `usagebill worker` command, run as a subprocess
WORKER = [sys.executable, "-m", "worker.cli", "worker"]

DEFAULT_AT = "2026-10-15T12:00:00+00:00"


def event(
    event_id: str,
    *,
    org_id: str = "org-a",
    user_id: str | None = "u1",
    model: str = "gpt-4o",
    provider: str = "openai",
    occurred_at: str = DEFAULT_AT,
    input_tokens: int = 1000,
    cached: int = 100,
    cache_write: int = 0,
    cache_write_1h: int = 0,
    output: int = 200,
    reasoning: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One event as a publisher would send it (wire format v1)."""
    doc: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "org_id": org_id,
        "user_id": user_id,
        "provider": provider,
        "model": model,
        "usage": {
            "input_tokens": input_tokens,
            "cached_input_tokens": cached,
            "cache_write_tokens": cache_write,
            "cache_write_1h_tokens": cache_write_1h,
            "output_tokens": output,
            "reasoning_tokens": reasoning,
        },
    }
    doc.update(extra)
    return doc


def text(doc: dict[str, Any]) -> str:
    return json.dumps(doc)


def add_rate(
    conn: psycopg.Connection[Any], model: str = "gpt-4o", price_in: str = "2.5", price_out: str = "10"
) -> None:
    """A public USD rate in force since 2020 (cached: 1.25, cache writes and reasoning: the fallbacks)."""
    conn.execute(
        "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_cached_input,"
        " price_output, source) VALUES ('openai', %s, %s, 'USD', %s, '1.25', %s, 'test')",
        (model, datetime(2020, 1, 1, tzinfo=UTC), price_in, price_out),
    )


def totals(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Events, tokens and cost as stored, and as aggregated (both must match the distinct valid events)."""
    ev = conn.execute(
        "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
        " coalesce(sum(cost_total), 0) FROM events"
    ).fetchone()
    daily = conn.execute(
        "SELECT coalesce(sum(events), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
        " coalesce(sum(cost), 0) FROM usage_daily"
    ).fetchone()
    inv = conn.execute("SELECT coalesce(sum(amount), 0) FROM invoice_usage").fetchone()
    assert ev is not None and daily is not None and inv is not None
    return {
        "events": int(ev[0]),
        "input": int(ev[1]),
        "output": int(ev[2]),
        "cost": ev[3],
        "daily_events": int(daily[0]),
        "daily_input": int(daily[1]),
        "daily_output": int(daily[2]),
        "daily_cost": daily[3],
        "invoice_amount": inv[0],
    }


def expected(docs: list[dict[str, Any]]) -> dict[str, int]:
    """Counts over the distinct event ids (first copy wins) of valid docs."""
    seen: dict[str, dict[str, Any]] = {}
    for d in docs:
        seen.setdefault(d["event_id"], d)
    return {
        "events": len(seen),
        "input": sum(d["usage"]["input_tokens"] for d in seen.values()),
        "output": sum(d["usage"]["output_tokens"] for d in seen.values()),
    }


def assert_consistent(conn: psycopg.Connection[Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Stored events and both aggregates equal the sums over the distinct valid events."""
    got = totals(conn)
    want = expected(docs)
    assert (got["events"], got["input"], got["output"]) == (want["events"], want["input"], want["output"])
    assert (got["daily_events"], got["daily_input"], got["daily_output"]) == (
        want["events"],
        want["input"],
        want["output"],
    )
    assert got["daily_cost"] == got["cost"]
    assert got["invoice_amount"] == got["cost"]
    return got


def ingest_queue(res: proc.Resources) -> Queue:
    """The ingest queue of the worker's resources."""
    return Queue(res.settings.queue, connection=res.redis, serializer=JSONSerializer)


@contextmanager
def worker_resources(settings: Settings, **update: Any) -> Iterator[proc.Resources]:
    """The worker's pool, Redis client and settings (`update` changed in them), closed after."""
    res = proc.setup(settings.model_copy(update=update))
    try:
        yield res
    finally:
        proc.close()


def run_burst(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`usagebill worker --burst` to its end."""
    return subprocess.run([*WORKER, "--burst"], check=False, env=env, capture_output=True, text=True, timeout=120)


def start_paused(
    env: dict[str, str], step: str, marker: Path, *, burst: bool, seconds: float = 0
) -> subprocess.Popen[str]:
    """A worker process whose ingest pauses at `step` (`seconds` long, or for ever), once it has paused
    there the first time (`marker` written: see billing.ingest.test_pause)."""
    env = dict(env, USAGEBILL_TEST_PAUSE_AT=step, USAGEBILL_TEST_PAUSE_MARKER=str(marker))
    if seconds:
        env["USAGEBILL_TEST_PAUSE_SECONDS"] = str(seconds)
    args = [*WORKER, "--burst"] if burst else WORKER
    worker = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_pause(worker, step, marker)
    return worker


def wait_for_pause(worker: subprocess.Popen[str], step: str, marker: Path) -> None:
    """Wait until the paused worker has written `marker` (at most 30 s); fail with its stderr otherwise."""
    deadline = time.monotonic() + 30
    while not marker.exists():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            _, err = worker.communicate()
            pytest.fail(f"worker never reached {step}: rc={worker.returncode} {err[-2000:]}")
        time.sleep(0.02)
