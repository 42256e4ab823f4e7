"""Benchmark: close + export (JSON and CSV, every org) of a month of N events across 1,000 orgs.

Loading is excluded from the timing. Each size runs in a fresh database of its own and the measured
part runs in a child process, so its peak RSS is that of close + export alone (memory should stay
flat in the number of events: invoices read the aggregates, never the events).

    .venv/bin/python bench/bench_invoices.py                  # 100k and 1M events, 1,000 orgs
    .venv/bin/python bench/bench_invoices.py --events 200000  # one size
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg

from billing import aggregates, exports, invoices, migrate
from billing.db import CONNECT_OPTIONS, connect
from billing.settings import Settings

ADMIN_URL = os.environ.get("USAGEBILL_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MONTH = date(2026, 1, 1)
LOAD_SQL = (Path(__file__).with_suffix(".sql")).read_text()


def _db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def load(url: str, events: int, orgs: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn:
        migrate.migrate(conn)
        with conn.transaction():
            conn.execute(LOAD_SQL, {"events": events, "orgs": orgs})
            aggregates.add(conn, "events")
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def measure(url: str) -> dict[str, float | int]:
    """Close the month, then export it as JSON and CSV for every org (rendered, written to memory)."""
    settings = Settings(DATABASE_URL=url)
    started = time.perf_counter()
    with connect(settings) as conn:
        result = invoices.close_month(conn, MONTH)
    closed = time.perf_counter()
    with connect(settings) as conn:
        texts = list(invoices.invoice_texts(conn, MONTH))
        conn.rollback()
    json_body = exports.render_json(texts)
    csv_body = exports.render_csv(texts)
    done = time.perf_counter()
    sink = io.StringIO()
    sink.write(json_body)
    sink.write(csv_body)
    assert len(json.loads(json_body)) == result.invoices
    return {
        "invoices": result.invoices,
        "lines": result.total_lines,
        "close_s": round(closed - started, 3),
        "export_s": round(done - closed, 3),
        "total_s": round(done - started, 3),
        "json_bytes": len(json_body),
        "csv_bytes": len(csv_body),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_size(events: int, orgs: int) -> dict[str, float | int]:
    name = f"usagebill_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _db_url(name)
        load_s = load(url, events, orgs)
        child = subprocess.run(
            [sys.executable, __file__, "--measure", url], check=True, capture_output=True, text=True, timeout=600
        )
        figures = json.loads(child.stdout)
        figures.update(events=events, orgs=orgs, load_s=round(load_s, 1))
        return figures
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append", help="events per run (repeatable)")
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    sizes = args.events or [100_000, 1_000_000]
    print("events    orgs  invoices  lines   close_s  export_s  total_s  peak_rss_mb  (load_s, excluded)")
    for events in sizes:
        f = run_size(events, args.orgs)
        print(
            f"{f['events']:>9,} {f['orgs']:>5} {f['invoices']:>9} {f['lines']:>6} {f['close_s']:>9} {f['export_s']:>9}"
            f" {f['total_s']:>8} {f['peak_rss_mb']:>12}  ({f['load_s']})",
            flush=True,
        )


if __name__ == "__main__":
    main()
